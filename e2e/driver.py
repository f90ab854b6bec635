"""The e2e lifecycle on one throwaway stack: up, no-change up, scale up and down, a re-run, destroy.

Everything outside (the Automation API stack, the API calls, clocks) is injected, so the suite
runs this same code against a fake stack. Destroy runs whatever happened before it; the stack is
removed only when destroy emptied it, so a failed destroy keeps the state needed to finish it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pulumi.automation import ConfigValue

from e2e.checks import CheckError, wait_for_nodes
from e2e.events import COMMAND_TYPE, INSTANCE_TYPE, RERUN_OPS, UNCHANGED_OPS, EventLog

PROJECT = "kube-ec2"
# Names the program gives (components/bootstrap.py, components/host.py); tests check they exist.
SMOKE_TEST = "master-smoke-test"
# The local step that uses the exported kubeconfig from the machine running `pulumi up` (this one).
KUBECONFIG_CHECK = "kubeconfig-check"
# Nodes are polled until they match, within this bound (they are Ready when the smoke test passed).
NODE_ATTEMPTS = 30
NODE_INTERVAL = 10.0
DESTROY_ATTEMPTS = 2


def minion(index: int) -> str:
    return f"minion-{index}"


def ready_step(index: int) -> str:
    return f"{minion(index)}-ready"


def drain_step(index: int) -> str:
    return f"{minion(index)}-drain"


def instance(host: str) -> str:
    return f"{host}-instance"


class Stack(Protocol):
    """What the driver uses of pulumi.automation.Stack."""

    name: str
    workspace: Any

    def set_config(self, key: str, value: ConfigValue, *, path: bool = False) -> None: ...
    def up(self, **kwargs: Any) -> Any: ...
    def destroy(self, **kwargs: Any) -> Any: ...
    def outputs(self) -> Mapping[str, Any]: ...
    def export_stack(self) -> Any: ...


@dataclass(frozen=True)
class Options:
    stack_name: str
    region: str
    minions: int
    master_type: str
    minion_type: str
    root_volume_gb: int
    admin_cidr: str
    cert_validity_hours: int
    rerun_cert_validity_hours: int

    def config(self) -> dict[str, str]:
        """The stack's configuration for the first up (adminCidrs is set by path)."""
        return {
            "aws:region": self.region,
            f"{PROJECT}:minionCount": str(self.minions),
            f"{PROJECT}:masterInstanceType": self.master_type,
            f"{PROJECT}:minionInstanceType": self.minion_type,
            f"{PROJECT}:rootVolumeGb": str(self.root_volume_gb),
            f"{PROJECT}:certValidityHours": str(self.cert_validity_hours),
        }

    def instance_type(self, resource_name: str) -> str:
        return self.master_type if resource_name.startswith("master") else self.minion_type


@dataclass
class Phase:
    name: str
    what: str
    status: str = "not run"  # passed | failed | not run
    started: int | None = None
    seconds: float = 0.0
    message: str = ""
    changes: dict[str, int] = field(default_factory=dict)
    log: EventLog = field(default_factory=EventLog)


@dataclass
class Run:
    options: Options
    phases: list[Phase]
    started: int
    ended: int | None = None
    removed: bool = False
    left_behind: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(p.status == "passed" for p in self.phases)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


PHASES = (
    ("up", "first up: the smoke test and kubeconfig-check passed, every node Ready through the kubeconfig from here"),
    ("no-changes", "a second up changes nothing"),
    ("scale-up", "minionCount + 1: the new minion joins Ready"),
    ("scale-down", "minionCount back: its drain ran, its node and instance are gone"),
    ("rerun", "certValidityHours changed: steps re-run on the running hosts, the smoke test and kubeconfig-check pass again"),
    ("destroy", "destroy (always), then the stack is removed"),
)


class Driver:
    def __init__(
        self,
        options: Options,
        make_stack: Callable[[str], Stack],
        fetch_nodes: Callable[[str], list[dict[str, Any]]],
        output: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], int] = lambda: int(time.time()),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self.make_stack = make_stack
        self.fetch_nodes = fetch_nodes
        self.output = output
        self.clock = clock
        self.now = now
        self.sleep = sleep

    def run(self) -> Run:
        run = Run(self.options, [Phase(name, what) for name, what in PHASES], started=self.now())
        try:
            stack = self.make_stack(self.options.stack_name)
        except Exception as err:  # nothing exists yet, so nothing to clean up
            run.phases[0].status, run.phases[0].message = "failed", f"creating the stack failed: {_short(err)}"
            run.ended = self.now()
            return run
        bodies = {
            "up": self._up,
            "no-changes": self._no_changes,
            "scale-up": self._scale_up,
            "scale-down": self._scale_down,
            "rerun": self._rerun,
        }
        try:
            for phase in run.phases[:-1]:
                if not self._timed(phase, lambda p, body=bodies[phase.name]: body(stack, p)):
                    break
        finally:
            self._cleanup(run, stack)
            run.ended = self.now()
        return run

    def _timed(self, phase: Phase, body: Callable[[Phase], None]) -> bool:
        self.output(f"e2e: phase {phase.name}: {phase.what}")
        phase.started, start = self.now(), self.clock()
        try:
            body(phase)
            phase.status = "passed"
        except KeyboardInterrupt:
            phase.status, phase.message = "failed", "interrupted (Ctrl-C)"
        except Exception as err:  # any failure ends the phase; cleanup follows
            phase.status, phase.message = "failed", _short(err)
        phase.seconds = round(float(self.clock() - start), 1)
        self.output(f"e2e: phase {phase.name} {phase.status} in {phase.seconds} s {phase.message}".rstrip())
        return phase.status == "passed"

    # --- the phases -------------------------------------------------------------------------

    def _up_once(self, stack: Stack, phase: Phase) -> None:
        result = stack.up(on_event=phase.log, on_output=self.output, color="never", show_secrets=False)
        phase.changes = dict(result.summary.resource_changes or {})

    def _up(self, stack: Stack, phase: Phase) -> None:
        for key, value in self.options.config().items():
            stack.set_config(key, ConfigValue(value))
        stack.set_config(f"{PROJECT}:adminCidrs[0]", ConfigValue(self.options.admin_cidr), path=True)
        self._up_once(stack, phase)
        _expect_step(phase.log, SMOKE_TEST, {"create"})
        _expect_step(phase.log, KUBECONFIG_CHECK, {"create"})
        self._expect_nodes(stack, range(self.options.minions))

    def _no_changes(self, stack: Stack, phase: Phase) -> None:
        self._up_once(stack, phase)
        changed = {op: n for op, n in phase.changes.items() if op not in UNCHANGED_OPS and n}
        if changed:
            names = ", ".join(f"{s.name} ({s.op})" for s in phase.log.changed())
            raise CheckError(f"the second up reported changes {changed}: {names or 'no resource events'}")

    def _scale_up(self, stack: Stack, phase: Phase) -> None:
        count = self.options.minions
        stack.set_config(f"{PROJECT}:minionCount", ConfigValue(str(count + 1)))
        self._up_once(stack, phase)
        _expect_step(phase.log, ready_step(count), {"create"})
        self._expect_nodes(stack, range(count + 1))

    def _scale_down(self, stack: Stack, phase: Phase) -> None:
        count = self.options.minions
        stack.set_config(f"{PROJECT}:minionCount", ConfigValue(str(count)))
        self._up_once(stack, phase)
        _expect_step(phase.log, drain_step(count), {"delete"})
        _expect_step(phase.log, instance(minion(count)), {"delete"})
        self._expect_nodes(stack, range(count))

    def _rerun(self, stack: Stack, phase: Phase) -> None:
        stack.set_config(f"{PROJECT}:certValidityHours", ConfigValue(str(self.options.rerun_cert_validity_hours)))
        self._up_once(stack, phase)
        hosts = [f"{s.name} ({s.op})" for s in phase.log.changed() if s.type == INSTANCE_TYPE]
        if hosts:
            raise CheckError(f"the re-run was to keep the running hosts, but it changed {', '.join(hosts)}")
        if not any(s.type == COMMAND_TYPE and s.op in RERUN_OPS and s.name != SMOKE_TEST for s in phase.log.ops):
            raise CheckError("no remote step re-ran on the running hosts")
        _expect_step(phase.log, SMOKE_TEST, RERUN_OPS)
        _expect_step(phase.log, KUBECONFIG_CHECK, RERUN_OPS)
        self._expect_nodes(stack, range(self.options.minions))

    def _expect_nodes(self, stack: Stack, indexes: range) -> None:
        kubeconfig = stack.outputs()["kubeconfig"].value
        expected = {minion(i) for i in indexes}
        wait_for_nodes(lambda: self.fetch_nodes(kubeconfig), expected, NODE_ATTEMPTS, NODE_INTERVAL, self.sleep)

    # --- cleanup ----------------------------------------------------------------------------

    def _cleanup(self, run: Run, stack: Stack) -> None:
        destroy = run.phase("destroy")
        if self._timed(destroy, lambda p: self._destroy(stack, p)):
            try:
                stack.workspace.remove_stack(stack.name)
                run.removed = True
            except Exception as err:  # reported, the run has failed
                destroy.status, destroy.message = "failed", f"destroyed, but removing the stack failed: {_short(err)}"
        else:
            run.left_behind = left_behind(stack)

    def _destroy(self, stack: Stack, phase: Phase) -> None:
        destroy(stack, phase.log, self.output)
        # Counted from the events: a failed attempt returns no summary, but what it deleted is gone.
        phase.changes = dict(Counter(s.op for s in phase.log.ops if s.status == "ok"))
        remaining = left_behind(stack)
        if remaining:
            raise CheckError(f"destroy finished but the state still holds {len(remaining)} resources")


def destroy(stack: Stack, log: EventLog, output: Callable[[str], None]) -> None:
    """Destroy; once more if that fails (AWS often refuses a delete while a dependent is still going)."""
    for attempt in range(1, DESTROY_ATTEMPTS + 1):
        try:
            stack.destroy(on_event=log, on_output=output, color="never", show_secrets=False)
            return
        except Exception as err:
            if attempt == DESTROY_ATTEMPTS:
                raise
            output(f"e2e: destroy attempt {attempt} failed, trying again: {_short(err, 3)}")


def left_behind(stack: Stack) -> list[str]:
    """Cloud resources the stack's state still holds (type, name, id); providers and components excluded."""
    try:
        resources = (stack.export_stack().deployment or {}).get("resources") or []
    except Exception as err:  # reported as unknown
        return [f"unknown: reading the stack's state failed: {_short(err)}"]
    return [
        f"{r['type']} {r['urn'].rsplit('::', 1)[-1]} id={r.get('id', '?')}"
        for r in resources
        if r.get("custom") and not r.get("type", "").startswith("pulumi:providers:")
    ]


def _expect_step(log: EventLog, name: str, ops: set[str] | frozenset[str]) -> None:
    if not log.succeeded(name, ops):
        seen = ", ".join(f"{s.op} {s.status}" for s in log.ops if s.name == name) or "no event"
        raise CheckError(f"{name}: expected a successful {'/'.join(sorted(ops))}; saw {seen}")


def _short(err: BaseException, lines: int = 30) -> str:
    """The error's last lines (a CommandError carries the whole CLI output)."""
    text = str(err).strip() or type(err).__name__
    return "\n".join(text.splitlines()[-lines:])
