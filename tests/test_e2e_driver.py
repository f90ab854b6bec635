"""The `make e2e` driver under a fake Automation API stack: phases, timing, cleanup, reporting.

The fake keeps a small model of the cluster (which hosts and steps exist and their inputs) and
answers `up`/`destroy` the way the engine does: a ResourcePreEvent and a ResOutputsEvent (or a
ResOpFailedEvent) per step, in the engine's JSON shape, each with a timestamp from a fake clock
the driver shares. Faults are switched on by name. No AWS, no Pulumi CLI.
"""

from __future__ import annotations

import datetime
import http.server
import inspect
import json
import re
import ssl
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import ROOT, run_stack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pulumi import automation as auto
from pulumi.automation import CommandError, CommandResult, EngineEvent

from components import offline
from components import pki as program_pki
from components.settings import ConfigError, load_schema, parse_settings
from e2e import checks, cost, preflight, report
from e2e.checks import CheckError
from e2e.driver import Driver, Options, drain_step, instance, minion, ready_step
from e2e.events import EventLog

CMD, LOCAL, VM = "command:remote:Command", "command:local:Command", "aws:ec2/instance:Instance"
# Seconds the fake engine spends per step.
DURATION = {(VM, "create"): 60, (VM, "delete"): 30}
STEP_SECONDS = 10

OPTIONS = Options(
    stack_name="e2e-test",
    region="us-east-1",
    minions=2,
    master_type="t3.medium",
    minion_type="t3.large",
    root_volume_gb=30,
    admin_cidr="81.2.69.7/32",  # not a documentation range (RFC 5737): the program refuses those
    cert_validity_hours=8760,
    rerun_cert_validity_hours=8784,
)


class FakeTime:
    def __init__(self) -> None:
        self.t = 1_000_000

    def __call__(self) -> int:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += int(seconds)


class FakeWorkspace:
    def __init__(self, stack: FakeStack) -> None:
        self.stack = stack

    def remove_stack(self, name: str) -> None:
        self.stack.calls.append("remove_stack")
        if "remove-fails" in self.stack.faults:
            raise CommandError(CommandResult("", "error: stack has resources", 255))
        self.stack.removed = True


class FakeStack:
    """pulumi.automation.Stack as the driver uses it, over a model of the program's resources."""

    def __init__(self, name: str, time: FakeTime, faults: set[str]) -> None:
        self.name, self.time, self.faults = name, time, faults
        self.config: dict[str, str] = {}
        self.state: dict[str, tuple[str, str]] = {}  # resource name -> (type, inputs)
        self.calls: list[str] = []
        self.ups = 0
        self.removed = False
        self.workspace = FakeWorkspace(self)
        self.sequence = 0
        self.undrained: list[str] = []  # minions removed without their drain: their nodes stay

    def set_config(self, key: str, value: Any, *, path: bool = False) -> None:
        self.calls.append(f"set_config {key}={value.value}{' (path)' if path else ''}")
        self.config[key] = value.value

    def desired(self) -> dict[str, tuple[str, str]]:
        count, hours = int(self.config["kube-ec2:minionCount"]), self.config["kube-ec2:certValidityHours"]
        hosts_type = "replaced" if "rerun-replaces-hosts" in self.faults and hours != "8760" else ""
        wanted = {"master-instance": (VM, hosts_type), "master-pki": (CMD, hours)}
        for i in range(count):
            wanted |= {f"minion-{i}-instance": (VM, hosts_type), f"minion-{i}-pki": (CMD, hours),
                       f"minion-{i}-ready": (CMD, hours), f"minion-{i}-drain": (CMD, "")}
        drift = str(self.ups) if "drift" in self.faults else ""
        smoke_hours = "" if "smoke-not-rerun" in self.faults else hours
        wanted["master-smoke-test"] = (CMD, f"{smoke_hours}/{count}/{drift}")
        if "no-kubeconfig-check" not in self.faults:
            wanted["kubeconfig-check"] = (LOCAL, hours)
        return wanted

    def _emit(self, on_event: Any, kind: str, name: str, typ: str, op: str) -> None:
        self.sequence += 1
        urn = f"urn:pulumi:{self.name}::kube-ec2::kube-ec2:index:Cluster${typ}::{name}"
        body = {"metadata": {"op": op, "urn": urn, "type": typ, "provider": ""}}
        if kind == "resOpFailedEvent":
            body |= {"status": 1, "steps": 1}
        else:
            body["planning"] = False
        on_event(EngineEvent.from_json({"sequence": self.sequence, "timestamp": self.time(), kind: body}))

    def _step(self, on_event: Any, name: str, typ: str, op: str, fail: bool = False) -> None:
        self._emit(on_event, "resourcePreEvent", name, typ, op)
        self.time.t += 0 if op == "same" else DURATION.get((typ, op), STEP_SECONDS)
        if fail:
            self._emit(on_event, "resOpFailedEvent", name, typ, op)
            raise CommandError(CommandResult("", f"error: {name} failed: exit status 1", 255))
        self._emit(on_event, "resOutputsEvent", name, typ, op)

    def up(self, on_event: Any, **_: Any) -> Any:
        self.ups += 1
        self.calls.append("up")
        wanted, counts = self.desired(), {}

        def step(name: str, typ: str, op: str) -> None:
            fail = f"fail-up-{self.ups}" in self.faults and name == "master-smoke-test"
            self._step(on_event, name, typ, op, fail)
            counts[op] = counts.get(op, 0) + 1

        for name in sorted(self.state.keys() - wanted.keys(), key=lambda n: n.endswith("-instance")):
            if name.endswith("-drain") and "no-drain" in self.faults:
                self.undrained.append(name.removesuffix("-drain"))
            else:
                step(name, self.state[name][0], "delete")
            del self.state[name]
        order = {VM: 0, CMD: 1, LOCAL: 3}
        for name, (typ, inputs) in sorted(wanted.items(), key=lambda kv: order[kv[1][0]] + (kv[0] == "master-smoke-test")):
            if name not in self.state:
                step(name, typ, "create")
            elif self.state[name][1] != inputs:
                for op in ("create-replacement", "replace", "delete-replaced"):
                    step(name, typ, op)
            else:
                step(name, typ, "same")
            self.state[name] = (typ, inputs)
        return SimpleNamespace(summary=SimpleNamespace(resource_changes=counts))

    def destroy(self, on_event: Any, **_: Any) -> Any:
        self.calls.append("destroy")
        counts: dict[str, int] = {}
        for name in sorted(self.state, key=lambda n: n.endswith("-instance")):
            fail = name == "minion-1-instance" and ("destroy-fails" in self.faults or ("destroy-fails-once" in self.faults
                                                    and self.calls.count("destroy") == 1))
            self._step(on_event, name, self.state[name][0], "delete", fail)
            del self.state[name]
            counts["delete"] = counts.get("delete", 0) + 1
        return SimpleNamespace(summary=SimpleNamespace(resource_changes=counts))

    def outputs(self) -> dict[str, Any]:
        return {"kubeconfig": SimpleNamespace(value=f"kubeconfig {self.config['kube-ec2:certValidityHours']}")}

    def export_stack(self) -> Any:
        resources = [{"urn": f"urn:pulumi:{self.name}::kube-ec2::pulumi:pulumi:Stack::kube-ec2-{self.name}",
                      "type": "pulumi:pulumi:Stack", "custom": False},
                     {"urn": f"urn:pulumi:{self.name}::kube-ec2::pulumi:providers:aws::default", "type": "pulumi:providers:aws",
                      "custom": True, "id": "p-1"}]
        resources += [{"urn": f"urn:pulumi:{self.name}::kube-ec2::{typ}::{name}", "type": typ, "custom": True, "id": f"id-{name}"}
                      for name, (typ, _) in self.state.items()]
        return SimpleNamespace(deployment={"resources": resources})

    def nodes(self, kubeconfig: str) -> list[dict[str, Any]]:
        """The API's node list: a minion is a node from its ready step until its drain deletes it."""
        assert kubeconfig == f"kubeconfig {self.config['kube-ec2:certValidityHours']}", "a stale kubeconfig was used"
        ready = "False" if "node-not-ready" in self.faults else "True"
        names = [n.removesuffix("-ready") for n in self.state if n.endswith("-ready")] + self.undrained
        if "node-stays" in self.faults and self.ups >= 4:
            names.append("minion-2")
        return [{"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": ready}]}} for n in names]


def drive(*faults: str, options: Options = OPTIONS) -> tuple[Any, FakeStack, list[str]]:
    time = FakeTime()
    stacks: list[FakeStack] = []
    printed: list[str] = []

    def make_stack(name: str) -> FakeStack:
        stacks.append(FakeStack(name, time, set(faults)))
        return stacks[0]

    def fetch_nodes(kubeconfig: str) -> list[dict[str, Any]]:
        return stacks[0].nodes(kubeconfig)

    driver = Driver(options, make_stack, fetch_nodes, output=printed.append, clock=time, now=time, sleep=time.sleep)
    return driver.run(), stacks[0], printed


def statuses(run: Any) -> dict[str, str]:
    return {p.name: p.status for p in run.phases}


# --- the whole lifecycle -----------------------------------------------------------------------


def test_every_phase_passes_in_order_and_the_stack_is_destroyed_and_removed() -> None:
    run, stack, printed = drive()
    assert statuses(run) == {"up": "passed", "no-changes": "passed", "scale-up": "passed", "scale-down": "passed",
                             "rerun": "passed", "destroy": "passed"}
    assert run.passed and run.removed and not run.left_behind
    assert stack.calls == [
        "set_config aws:region=us-east-1", "set_config kube-ec2:minionCount=2",
        "set_config kube-ec2:masterInstanceType=t3.medium", "set_config kube-ec2:minionInstanceType=t3.large",
        "set_config kube-ec2:rootVolumeGb=30", "set_config kube-ec2:certValidityHours=8760",
        "set_config kube-ec2:adminCidrs[0]=81.2.69.7/32 (path)", "up",
        "up",
        "set_config kube-ec2:minionCount=3", "up",
        "set_config kube-ec2:minionCount=2", "up",
        "set_config kube-ec2:certValidityHours=8784", "up",
        "destroy", "remove_stack",
    ]
    assert stack.state == {}
    assert "e2e: phase destroy passed in 180.0 s" in printed


def test_phase_times_come_from_the_clock_and_step_times_from_engine_events() -> None:
    run, _, _ = drive()
    # up: 3 instances x 60 s + 8 steps x 10 s; no-changes: nothing; scale-up: 1 instance + 3 steps
    # + the smoke test replaced (3 ops); scale-down: 3 steps + 1 instance (30 s) + the smoke test (3 ops);
    # rerun: 5 pki/ready steps + the smoke test, 3 ops each; destroy: 8 steps + 3 instances x 30 s.
    # The local kubeconfig-check (after the smoke test) adds 10 s to up and destroy, 30 s to rerun.
    assert {p.name: p.seconds for p in run.phases} == {
        "up": 270.0, "no-changes": 0.0, "scale-up": 120.0, "scale-down": 90.0, "rerun": 210.0, "destroy": 180.0}
    smoke = [(s.op, s.seconds, s.status) for s in run.phase("up").log.ops if s.name == "master-smoke-test"]
    assert smoke == [("create", 10, "ok")]
    first = run.phase("up").log.ops[0]
    assert (first.name, first.type, first.start, first.end, first.seconds) == (
        "master-instance", VM, 1_000_000, 1_000_060, 60)


def test_the_report_has_phases_steps_hosts_cost_and_no_leftovers(tmp_path: Path) -> None:
    run, _, _ = drive()
    prices = {"read_on": "2026-12-01", "regions": {"us-east-1": {
        "instance_hour": {"t3.medium": {"usd": 0.036}, "t3.large": {"usd": 0.072}},
        "gp3_gb_month": {"usd": 0.073}, "public_ipv4_hour": {"usd": 0.0036}}}}
    data = report.write(run, tmp_path, prices, {"commit": "abc123"})
    assert json.loads((tmp_path / "report.json").read_text()) == data
    assert data["result"] == "passed" and data["stack_removed"] is True and data["left_behind"] == []
    assert (data["region"], data["master_instance_type"], data["minion_instance_type"]) == ("us-east-1", "t3.medium", "t3.large")
    assert data["seconds"] == 870
    up = data["phases"][0]
    assert up["changes"] == {"create": 12}
    assert [(o["name"], o["op"], o["seconds"]) for o in up["operations"]][-2:] == [
        ("master-smoke-test", "create", 10), ("kubeconfig-check", "create", 10)]
    # From each create's start to its delete's end, on the fake's timeline (seconds after the start):
    # master 0..810, minion-0 60..840, minion-1 120..870 (destroy deletes them in turn); minion-2
    # from the scale-up (270) to the end of its delete in the scale-down (450).
    assert sorted((i["name"], i["kind"], i["seconds"]) for i in data["billed_resources"]) == [
        ("master-instance", "t3.medium", 810), ("minion-0-instance", "t3.large", 780),
        ("minion-1-instance", "t3.large", 750), ("minion-2-instance", "t3.large", 180)]
    lines = {line["item"]: line["usd"] for line in data["cost_estimate"]["lines"]}
    assert lines == {
        "EC2 t3.large": 0.0342,  # 1710 s x 0.072 / 3600
        "EC2 t3.medium": 0.0081,  # 810 s x 0.036 / 3600
        "EBS gp3 root volumes (30 GiB each)": 0.0021,  # 30 GiB x 2520 s / 3600 x 0.073 / 730
        "public IPv4 addresses (one per host)": 0.0025,  # 2520 s / 3600 x 0.0036
    }
    md = (tmp_path / "REPORT.md").read_text()
    assert "**Result: PASSED**" in md and "| rerun |" in md and "| scale-down | minion-2-drain | delete | 10 | ok |" in md
    assert "| up | kubeconfig-check | create | 10 | ok |" in md and "| up | master-instance | create | 60 | ok |" in md
    assert "an estimate, not a bill" in md and "LEFT BEHIND" not in md


# --- failures: destroy always runs, the stack is removed only when it is empty -------------------


@pytest.mark.parametrize(("fault", "failed"), [("fail-up-1", "up"), ("fail-up-3", "scale-up"), ("node-not-ready", "up"),
                                                ("fail-up-5", "rerun")])
def test_a_failed_phase_stops_the_run_and_destroy_still_cleans_up(fault: str, failed: str) -> None:
    run, stack, _ = drive(fault)
    status = statuses(run)
    assert status[failed] == "failed"
    names = [p.name for p in run.phases]
    after = names[names.index(failed) + 1:-1]
    assert all(status[n] == "not run" for n in after)
    assert status["destroy"] == "passed" and stack.calls[-2:] == ["destroy", "remove_stack"]
    assert stack.state == {} and run.removed and not run.passed


def test_a_failed_up_reports_the_failing_step_and_its_time() -> None:
    run, _, _ = drive("fail-up-1")
    up = run.phase("up")
    assert "master-smoke-test failed: exit status 1" in up.message
    assert [(s.name, s.status, s.seconds) for s in up.log.ops if s.name == "master-smoke-test"] == [
        ("master-smoke-test", "failed", 10)]


def test_nodes_not_ready_are_waited_for_within_the_bound_then_named() -> None:
    run, _, _ = drive("node-not-ready")
    up = run.phase("up")
    assert "nodes after 30 attempts 10 s apart: node minion-0 is not Ready; node minion-1 is not Ready" in up.message
    assert up.seconds == 270.0 + 29 * 10


def test_destroy_is_tried_twice() -> None:
    run, stack, _ = drive("destroy-fails-once")
    assert statuses(run)["destroy"] == "passed" and run.removed
    assert stack.calls[-3:] == ["destroy", "destroy", "remove_stack"]
    assert run.phase("destroy").changes == {"delete": 12}


def test_destroy_failure_keeps_the_stack_and_says_what_is_left() -> None:
    run, stack, _ = drive("destroy-fails")
    assert statuses(run)["destroy"] == "failed" and not run.removed
    assert stack.calls[-2:] == ["destroy", "destroy"] and "remove_stack" not in stack.calls
    assert run.left_behind == [f"{VM} minion-1-instance id=id-minion-1-instance"]


def test_destroy_failure_is_in_the_report(tmp_path: Path) -> None:
    run, _, _ = drive("fail-up-1", "destroy-fails")
    data = report.write(run, tmp_path, cost.load_prices(), {"finish_command": "pulumi destroy --stack e2e-test"})
    md = (tmp_path / "REPORT.md").read_text()
    assert data["result"] == "failed"
    assert "## LEFT BEHIND (destroy did not finish)" in md
    assert f"- {VM} minion-1-instance id=id-minion-1-instance" in md
    assert "`kubernetes.io/cluster/kube-ec2-e2e-test=owned`" in md and "To finish: `pulumi destroy --stack e2e-test`" in md
    # The instance never got deleted: it counts until the end of the run.
    assert [(i["name"], i["deleted"]) for i in data["billed_resources"]] == [
        ("master-instance", True), ("minion-0-instance", True), ("minion-1-instance", False)]


def test_remove_failure_fails_the_run() -> None:
    run, _, _ = drive("remove-fails")
    assert statuses(run)["destroy"] == "failed" and not run.passed and not run.removed
    assert run.phase("destroy").message.startswith("destroyed, but removing the stack failed")


def test_interrupt_during_a_phase_still_destroys() -> None:
    time = FakeTime()
    stack = FakeStack("e2e-test", time, set())

    def interrupted_up(**_: Any) -> Any:
        raise KeyboardInterrupt

    stack.up = interrupted_up  # type: ignore[method-assign]
    run = Driver(OPTIONS, lambda _: stack, stack.nodes, output=lambda _: None, clock=time, now=time, sleep=time.sleep).run()
    assert run.phase("up").message == "interrupted (Ctrl-C)"
    assert stack.calls[-2:] == ["destroy", "remove_stack"]


def test_a_stack_that_cannot_be_created_fails_up_and_destroys_nothing() -> None:
    def no_stack(name: str) -> Any:
        raise CommandError(CommandResult("", "error: no backend", 255))

    run = Driver(OPTIONS, no_stack, lambda _: [], output=lambda _: None).run()
    assert statuses(run)["up"] == "failed" and "creating the stack failed" in run.phase("up").message
    assert statuses(run)["destroy"] == "not run"


# --- each check fails on the broken cluster it is for -------------------------------------------


def test_no_changes_fails_when_the_second_up_changes_something() -> None:
    run, stack, _ = drive("drift")
    phase = run.phase("no-changes")
    assert phase.status == "failed"
    assert phase.message == ("the second up reported changes {'create-replacement': 1, 'replace': 1, 'delete-replaced': 1}: "
                             "master-smoke-test (create-replacement), master-smoke-test (replace), master-smoke-test (delete-replaced)")
    assert stack.calls[-2:] == ["destroy", "remove_stack"]


def test_scale_down_fails_when_the_drain_did_not_run() -> None:
    run, _, _ = drive("no-drain")
    assert run.phase("scale-down").status == "failed"
    assert run.phase("scale-down").message == "minion-2-drain: expected a successful delete; saw no event"


def test_scale_down_fails_when_the_node_is_still_there() -> None:
    run, _, _ = drive("node-stays")
    assert run.phase("scale-down").status == "failed"
    assert run.phase("scale-down").message.endswith("node minion-2 should not exist")


def test_rerun_fails_when_hosts_are_replaced() -> None:
    run, _, _ = drive("rerun-replaces-hosts")
    message = run.phase("rerun").message
    assert run.phase("rerun").status == "failed"
    assert message.startswith("the re-run was to keep the running hosts, but it changed master-instance (create-replacement)")


def test_up_fails_without_the_programs_kubeconfig_check() -> None:
    run, _, _ = drive("no-kubeconfig-check")
    assert run.phase("up").message == "kubeconfig-check: expected a successful create; saw no event"


def test_rerun_fails_when_the_smoke_test_did_not_run_again() -> None:
    run, _, _ = drive("smoke-not-rerun")
    assert run.phase("rerun").status == "failed"
    assert run.phase("rerun").message == (
        "master-smoke-test: expected a successful create/create-replacement/replace/update; saw same ok")


def test_node_check_names_every_difference() -> None:
    def node(name: str, ready: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}

    assert checks.node_problems([node("minion-0", "True"), node("minion-1", "True")], {"minion-0", "minion-1"}) == []
    assert checks.node_problems([node("minion-0", "Unknown"), node("minion-2", "True")], {"minion-0", "minion-1"}) == [
        "node minion-1 is missing", "node minion-2 should not exist", "node minion-0 is not Ready"]


def test_event_log_ignores_preview_events_and_pairs_ops_per_resource() -> None:
    log = EventLog()
    urn = "urn:pulumi:s::kube-ec2::command:remote:Command::master-pki"

    def event(seq: int, t: int, kind: str, op: str, planning: bool = False) -> EngineEvent:
        return EngineEvent.from_json({"sequence": seq, "timestamp": t, kind: {
            "metadata": {"op": op, "urn": urn, "type": CMD, "provider": ""}, "planning": planning}})

    for e in (event(1, 5, "resourcePreEvent", "update", planning=True), event(2, 10, "resourcePreEvent", "create-replacement"),
              event(3, 11, "resourcePreEvent", "replace"), event(4, 11, "resOutputsEvent", "replace"),
              event(5, 17, "resOutputsEvent", "create-replacement")):
        log(e)
    assert [(s.op, s.start, s.end, s.status) for s in log.ops] == [
        ("create-replacement", 10, 17, "ok"), ("replace", 11, 11, "ok")]


# --- what the driver relies on exists in the program --------------------------------------------


def test_the_names_the_driver_checks_are_the_programs() -> None:
    dev = run_stack("dev")  # 3 minions: minion-2 is the one scale-down removes in a 2-minion run
    for name in ("master-smoke-test", ready_step(2), drain_step(2), instance(minion(2)), instance("master")):
        assert dev.mocks.named(name)
    assert dev.mocks.named(drain_step(2)).inputs.get("delete"), "the drain runs on delete"
    assert dev.mocks.named(instance(minion(2))).typ == VM
    assert dev.mocks.named("master-smoke-test").typ == CMD
    assert dev.mocks.named("kubeconfig-check").typ == LOCAL
    volumes = dev.mocks.of_type("aws:ebs/volume:Volume")  # costed by the size input of its create step
    assert volumes and all(isinstance(v.inputs["size"], (int, float)) and v.inputs["size"] > 0 for v in volumes)  # protobuf: 10.0


def test_the_calls_the_driver_makes_exist_on_the_pinned_automation_api() -> None:
    """The fake answers what the driver asks; this pins those calls to pulumi.automation as installed."""
    calls = {"on_event", "on_output", "color", "show_secrets"}
    for method, keywords in {"up": calls, "destroy": calls,
                             "set_config": {"key", "value", "path"}, "outputs": set(), "export_stack": set()}.items():
        assert keywords <= set(inspect.signature(getattr(auto.Stack, method)).parameters), method
    assert {"stack_name", "force"} <= set(inspect.signature(auto.LocalWorkspace.remove_stack).parameters)
    assert {"stack_name", "work_dir", "opts"} <= set(inspect.signature(auto.create_stack).parameters)
    assert {"env_vars", "secrets_provider"} <= set(inspect.signature(auto.LocalWorkspaceOptions).parameters)
    assert {"resource_changes"} <= set(inspect.signature(auto.UpdateSummary).parameters)
    assert {"timestamp", "resource_pre_event", "res_outputs_event", "res_op_failed_event"} <= set(
        inspect.signature(EngineEvent).parameters)


def test_the_rerun_change_renews_every_certificate_and_leaves_the_hosts_alone() -> None:
    """Phase 4 under the offline engine: what certValidityHours 8760 -> 8784 changes and what it must not.

    validity_period_hours forces a new certificate (RequiresReplace in hashicorp/terraform-provider-tls
    internal/provider/resource_locally_signed_cert.go at 14621e27b03a02fe200f109f44df7c0515abd9e3);
    each host's certificate fingerprint is a trigger of its steps, so they re-run. Instances, the
    Elastic IP and etcd's volume must see identical inputs, or the run would replace running hosts.
    """
    base = offline.stack_config("dev") | {"kube-ec2:minionCount": str(OPTIONS.minions)}
    before = offline.run("dev", base | {"kube-ec2:certValidityHours": str(OPTIONS.cert_validity_hours)})
    after = offline.run("dev", base | {"kube-ec2:certValidityHours": str(OPTIONS.rerun_cert_validity_hours)})
    leaf = "tls:index/locallySignedCert:LocallySignedCert"
    assert {r.inputs["validityPeriodHours"] for r in before.mocks.of_type(leaf)} == {8760}
    assert {r.inputs["validityPeriodHours"] for r in after.mocks.of_type(leaf)} == {8784}
    kept = [r for typ in (VM, "aws:ec2/eip:Eip", "aws:ebs/volume:Volume", "aws:ec2/volumeAttachment:VolumeAttachment")
            for r in before.mocks.of_type(typ)]
    assert len(kept) == 3 + 1 + 1 + 1
    for resource in kept:
        assert after.mocks.named(resource.name).inputs == resource.inputs, resource.name


def test_the_drivers_configuration_is_valid_for_the_program() -> None:
    schema = load_schema()
    for hours in (OPTIONS.cert_validity_hours, OPTIONS.rerun_cert_validity_hours):
        raw = {k.removeprefix("kube-ec2:"): v for k, v in OPTIONS.config().items() if k.startswith("kube-ec2:")}
        raw |= {"certValidityHours": str(hours), "adminCidrs": json.dumps([OPTIONS.admin_cidr])}
        assert set(raw) <= set(schema)
        parse_settings(raw, stack="e2e", region="us-east-1", detect_admin_cidr=lambda: "unused", schema=schema)
    with pytest.raises(ConfigError):  # the same check refuses a bad value
        parse_settings({"certValidityHours": "3"}, stack="e2e", region="us-east-1", detect_admin_cidr=lambda: "x", schema=schema)


# --- the kubeconfig works: a real HTTPS call with its client certificate --------------------------


def _cert(subject: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool = False, ip: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> str:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An HTTPS server that, like kube-apiserver, serves /api/v1/nodes only to clients with a certificate of its CA."""
    tmp = tmp_path_factory.mktemp("api")
    ca_key, server_key, client_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("kube-ec2 test CA", ca_key, None, ca=True)
    other_ca = _cert("someone else's CA", other_key, None, ca=True)
    (tmp / "server.crt").write_text(_pem(_cert("kube-apiserver", server_key, (ca.subject, ca_key), ip="127.0.0.1")))
    (tmp / "server.key").write_text(_pem(server_key))
    (tmp / "ca.crt").write_text(_pem(ca))
    body = json.dumps({"items": [{"metadata": {"name": "minion-0"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/v1/nodes" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    context.load_verify_locations(tmp / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    good = program_pki.kubeconfig("kube-ec2-e2e", url, _pem(ca), _pem(_cert("admin", client_key, (ca.subject, ca_key))), _pem(client_key))
    foreign = program_pki.kubeconfig("kube-ec2-e2e", url, _pem(ca), _pem(_cert("admin", client_key, (other_ca.subject, other_key))),
                                     _pem(client_key))
    wrong_ca = program_pki.kubeconfig("kube-ec2-e2e", url, _pem(other_ca), _pem(_cert("admin", client_key, (ca.subject, ca_key))),
                                      _pem(client_key))
    yield SimpleNamespace(good=good, foreign=foreign, wrong_ca=wrong_ca, url=url)
    server.shutdown()


def test_the_exported_kubeconfig_lists_nodes_over_https_with_its_client_certificate(api_server: Any) -> None:
    assert [n["metadata"]["name"] for n in checks.fetch_nodes(api_server.good)] == ["minion-0"]


def test_a_kubeconfig_whose_certificate_the_api_does_not_trust_fails(api_server: Any) -> None:
    with pytest.raises(CheckError, match=re.escape(f"GET {api_server.url}/api/v1/nodes with the exported kubeconfig failed")):
        checks.fetch_nodes(api_server.foreign)


def test_a_kubeconfig_that_does_not_trust_the_api_fails(api_server: Any) -> None:
    with pytest.raises(CheckError, match="CERTIFICATE_VERIFY_FAILED"):
        checks.fetch_nodes(api_server.wrong_ca)


def test_the_programs_own_kubeconfig_output_is_what_the_driver_reads() -> None:
    server, ca, cert, key = checks.kubeconfig_credentials(run_stack("dev").outputs["kubeconfig"])
    assert server == "https://203.0.113.10:6443"
    assert ca.startswith(b"-----BEGIN CERTIFICATE-----") and cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY-----" in key


# --- refusing without credentials or the Pulumi CLI --------------------------------------------


def _which(found: bool) -> Any:
    return lambda name: f"/usr/local/bin/{name}" if found else None


@pytest.mark.parametrize("env", [
    {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"},
    {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"},
])
def test_credentials_from_the_environment_are_accepted(env: dict[str, str], tmp_path: Path) -> None:
    assert preflight.problems(env, tmp_path, _which(True)) == []


def test_web_identity_needs_its_token_file(tmp_path: Path) -> None:
    env = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/e2e", "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token")}
    missing = f"AWS credentials: AWS_WEB_IDENTITY_TOKEN_FILE={tmp_path}/token does not exist."
    assert preflight.credential_problems(env, tmp_path) == [missing]
    (tmp_path / "token").write_text("eyJ")
    assert preflight.credential_problems(env, tmp_path) == []


def test_profiles_are_read_from_the_shared_files(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    assert preflight.credential_problems({}, tmp_path) == [preflight.HOW_TO_CREDENTIALS]
    (tmp_path / ".aws" / "config").write_text("[profile work]\nsso_session = x\n")
    assert preflight.credential_problems({"AWS_PROFILE": "work"}, tmp_path) == []
    assert preflight.credential_problems({"AWS_PROFILE": "home"}, tmp_path) == [
        "AWS credentials: AWS_PROFILE=home is in neither ~/.aws/credentials nor ~/.aws/config."]
    assert preflight.credential_problems({}, tmp_path) == [preflight.HOW_TO_CREDENTIALS]
    (tmp_path / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n")
    assert preflight.credential_problems({}, tmp_path) == []


def test_half_a_key_pair_is_named(tmp_path: Path) -> None:
    assert preflight.credential_problems({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}, tmp_path) == [
        "AWS credentials: AWS_SECRET_ACCESS_KEY is unset but its partner is set; set both."]


def test_without_credentials_or_cli_it_refuses_naming_both_and_how_to_get_them(tmp_path: Path) -> None:
    found = preflight.problems({}, tmp_path, _which(False))
    assert len(found) == 2
    assert found[0].startswith("AWS credentials: none found") and "aws configure" in found[0]
    assert found[1].startswith("Pulumi CLI: `pulumi` is not on PATH") and "https://get.pulumi.com" in found[1]
    assert preflight.problems({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, tmp_path, _which(False)) == [found[1]]


def test_make_e2e_refuses_before_building_anything(tmp_path: Path) -> None:
    """The real entry point, in a subprocess with no credentials and no pulumi on PATH: exit 2, nothing created."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "e2e.preflight"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "make e2e: AWS credentials: none found" in done.stderr and "make e2e: Pulumi CLI" in done.stderr
    assert "nothing was created" in done.stderr
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ne2e:", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("-m e2e.preflight") < recipe.index("$(VENV)/.installed"), "refuse before building the venv"


def test_the_entry_point_wires_the_driver_report_and_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """e2e.run.main with the Automation API stack and the API call swapped for the fakes: files and exit codes."""
    from e2e import run as entry

    time = FakeTime()
    made: list[FakeStack] = []
    passphrases: list[str] = []

    def factory(backend_url: str, passphrase: str) -> Any:
        passphrases.append(passphrase)
        assert backend_url == f"file://{tmp_path}/state"
        assert (tmp_path / "state" / "e2e-wired.passphrase").stat().st_mode & 0o777 == 0o600
        return lambda name: made.append(FakeStack(name, time, set())) or made[0]

    monkeypatch.setattr(entry, "STATE", tmp_path / "state")
    monkeypatch.setattr(entry, "stack_factory", factory)
    monkeypatch.setattr(entry.checks, "fetch_nodes", lambda kubeconfig: made[0].nodes(kubeconfig))
    monkeypatch.setattr(entry.preflight, "problems", lambda *_: [])
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.setattr("time.sleep", lambda _: None)
    code = entry.main(["--stack", "e2e-wired", "--admin-cidr", "198.51.100.7/32", "--region", "us-east-1",
                       "--backend-url", f"file://{tmp_path}/state", "--report-dir", str(tmp_path / "out")])
    assert code == 0 and len(passphrases[0]) >= 32
    assert not (tmp_path / "state" / "e2e-wired.passphrase").exists(), "removed with the stack"
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (data["result"], data["stack"], data["minions"], data["master_instance_type"]) == ("passed", "e2e-wired", 2, "t3.medium")
    assert "pulumi destroy --yes --stack e2e-wired" in data["finish_command"]
    assert (tmp_path / "out" / "REPORT.md").read_text().startswith("# `make e2e` report")
    assert made[0].calls[-1] == "remove_stack"


@pytest.mark.parametrize(("faults", "left"), [(set(), []), ({"destroy-fails"}, [f"{VM} minion-1-instance id=id-minion-1-instance"])])
def test_finish_destroys_what_an_interrupted_run_left(tmp_path: Path, faults: set[str], left: list[str]) -> None:
    """A passphrase file still in the state names a stack a killed run left; finish destroys and removes it."""
    from e2e import finish

    (tmp_path / "e2e-killed.passphrase").write_text("secret")
    (tmp_path / "unrelated.txt").write_text("")
    stack = FakeStack("e2e-killed", FakeTime(), faults)
    stack.set_config("kube-ec2:minionCount", SimpleNamespace(value="2"))
    stack.set_config("kube-ec2:certValidityHours", SimpleNamespace(value="8760"))
    stack.up(on_event=lambda _: None)
    asked: list[tuple[str, str]] = []

    def make_stack(name: str, passphrase: str) -> FakeStack:
        asked.append((name, passphrase))
        return stack

    assert finish.finish_all(tmp_path, make_stack, output=lambda _: None) == {"e2e-killed": left}
    assert asked == [("e2e-killed", "secret")]
    assert stack.removed is (not left) and (tmp_path / "e2e-killed.passphrase").exists() is bool(left)


# --- never from `make test`; the price table; CI; README --------------------------------------


def test_make_test_never_runs_the_e2e() -> None:
    assert not list((ROOT / "e2e").glob("test*.py")) and not list((ROOT / "e2e").glob("*_test.py"))
    assert "testpaths = tests" in (ROOT / "pytest.ini").read_text()
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "e2e" not in test_recipe


def test_every_price_has_a_source_and_the_defaults_are_priced() -> None:
    prices = cost.load_prices()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", prices["read_on"])
    for region in prices["regions"].values():
        entries = [*region["instance_hour"].values(), region["gp3_gb_month"], region["public_ipv4_hour"]]
        assert all(e["usd"] > 0 and e["source"] for e in entries)
    schema = load_schema()
    assert schema["masterInstanceType"]["default"] in prices["regions"]["us-east-1"]["instance_hour"]
    assert schema["minionInstanceType"]["default"] in prices["regions"]["us-east-1"]["instance_hour"]


def test_ebs_volumes_of_the_stack_are_costed_by_their_size_and_lifetime() -> None:
    """An extra EBS volume (etcd's data, say): its size from the create step's inputs, its life from the events."""
    log = EventLog()
    urn = "urn:pulumi:s::kube-ec2::kube-ec2:index:Cluster$aws:ebs/volume:Volume::master-etcd-data"
    vol = "aws:ebs/volume:Volume"
    for seq, (t, kind, op) in enumerate([(0, "resourcePreEvent", "create"), (5, "resOutputsEvent", "create"),
                                         (7200, "resourcePreEvent", "delete"), (7210, "resOutputsEvent", "delete")]):
        new = {"type": vol, "urn": urn, "inputs": {"size": 10, "type": "gp3"}} if op == "create" else None
        log(EngineEvent.from_json({"sequence": seq, "timestamp": t, kind: {
            "metadata": {"op": op, "urn": urn, "type": vol, "provider": "", "new": new}, "planning": False}}))
    found = cost.lifetimes(log.ops, 9999, OPTIONS.instance_type)
    assert found == [cost.Lifetime("master-etcd-data", "volume", 7210, True, 10)]
    prices = {"regions": {"r": {"gp3_gb_month": {"usd": 0.073}}}}
    lines = {line["item"]: (line["quantity"], line["usd"]) for line in cost.estimate(found, 30, "r", prices)["lines"]}
    assert lines["EBS volumes of the stack (priced as gp3)"] == (20.0278, 0.002)  # 10 GiB x 7210 s; x 0.073 / 730
    assert lines["EBS gp3 root volumes (30 GiB each)"] == (0, 0)


def test_cost_bills_the_minimum_and_names_what_has_no_price() -> None:
    lifetimes = [cost.Lifetime("master-instance", "t3.medium", 3630, True), cost.Lifetime("minion-0-instance", "m7i.large", 20, True)]
    prices = {"read_on": "x", "regions": {"r": {"instance_hour": {"t3.medium": {"usd": 0.04}},
                                               "gp3_gb_month": {"usd": 0.073}, "public_ipv4_hour": {"usd": 0.005}}}}
    estimate = cost.estimate(lifetimes, 20, "r", prices)
    assert [(line["item"], line["quantity"], line["usd"]) for line in estimate["lines"]] == [
        ("EC2 m7i.large", 0.0167, None),  # 20 s billed as 60 s
        ("EC2 t3.medium", 1.0083, 0.0403),
        ("EBS gp3 root volumes (20 GiB each)", 20.2778, 0.002),
        ("public IPv4 addresses (one per host)", 1.0139, 0.0051),
    ]
    assert estimate["total_usd"] == 0.0474 and estimate["unpriced"] == ["EC2 m7i.large"]
    assert cost.estimate(lifetimes, 20, "nowhere", prices)["total_usd"] == 0


def test_the_ci_workflow_is_manual_uses_oidc_and_stores_no_keys() -> None:
    text = (ROOT / ".github" / "workflows" / "e2e.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert set(triggers) == {"workflow_dispatch"}
    assert workflow["permissions"]["id-token"] == "write"
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    aws = [s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")]
    assert len(aws) == 1 and "role-to-assume" in aws[0]["with"]
    assert not re.search(r"aws-access-key-id|aws-secret-access-key|AWS_SECRET_ACCESS_KEY", text)
    runs = "\n".join(str(s.get("run", "")) for s in steps)
    assert "get.pulumi.com" in runs and "make e2e" in runs
    e2e_step = next(s for s in steps if "make e2e" in str(s.get("run", "")))
    finish_step = next(s for s in steps if "-m e2e.finish" in str(s.get("run", "")))
    # A step timeout (not only the job's) leaves time for the finish step, which runs whatever happened.
    assert e2e_step["timeout-minutes"] < workflow["jobs"]["e2e"]["timeout-minutes"] and finish_step["if"] == "always()"
    assert steps.index(finish_step) > steps.index(e2e_step)
    upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload and upload[0]["if"] == "always()" and "e2e/REPORT.md" in upload[0]["with"]["path"]


def test_readme_links_the_report_only_when_one_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- e2e:begin -->", 1)[1].split("<!-- e2e:end -->", 1)[0]
    assert "make e2e" in section
    if (ROOT / "e2e" / "REPORT.md").exists():
        assert "](e2e/REPORT.md)" in section
    else:
        assert "](e2e/REPORT.md)" not in readme
        assert "has not been run yet" in section
