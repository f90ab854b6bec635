"""Kubernetes upgrades through `pulumi up`: what changes, in which order, and the hosts' side of it.

1. The program under mocks at 1.34.4 and at 1.35.1 (both pinned in versions.yaml): exactly the
   steps whose binaries change get a new `create` (pulumi-command runs `create` again when it
   changes, as its `update` is unset), and nothing else does.
2. The step graph: the skew check before any host changes, the whole control plane before any
   minion is cordoned, cordon -> kubelet swap -> Ready -> uncordon per minion, no minion waiting for
   another in the graph (the one-at-a-time rule is a runtime semaphore instead).
3. The step scripts in the sandbox (tests/step_sandbox.py): the skew check (an upgrade passes; a
   downgrade, a skipped minor and a major change are refused before anything else runs), the
   binary swap, cordon/drain with the Lease semaphore (free, held and then freed, held by a stuck
   upgrade), uncordon, and the bounds of every wait.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

import pytest
import yaml

from components import bootstrap, offline, render, versions
from components.render import MARKER
from tests.conftest import dev_settings
from tests.step_sandbox import Result, Sandbox, probe, require_sandbox, sandbox

OLD, NEW = "1.34.4", "1.35.1"
COMMAND = "command:remote:Command"
MINIONS = ("minion-0", "minion-1", "minion-2")


# --- 1. what an upgrade changes


@functools.cache
def commands(version: str) -> dict[str, dict[str, object]]:
    run = offline.run("dev", {**offline.stack_config("dev"), "kube-ec2:kubernetesVersion": version})
    return {r.name: r.inputs for r in run.mocks.of_type(COMMAND)}


def test_an_upgrade_changes_exactly_the_steps_whose_binaries_change() -> None:
    old, new = commands(OLD), commands(NEW)
    assert sorted(old) == sorted(new)
    changed = {name for name in old if old[name]["create"] != new[name]["create"]}
    assert changed == {
        # The skew check (master) and every host's preparation, which stages the new binaries.
        "master-cloud-init", "minion-0-cloud-init", "minion-1-cloud-init", "minion-2-cloud-init",
        # The control plane swaps its binaries in.
        "master-kube-apiserver", "master-kube-controller-manager", "master-kube-scheduler",
        # Each minion: cordon and drain, swap kubelet and kube-proxy, uncordon.
        "minion-0-cordon", "minion-0-kubelet", "minion-0-uncordon",
        "minion-1-cordon", "minion-1-kubelet", "minion-1-uncordon",
        "minion-2-cordon", "minion-2-kubelet", "minion-2-uncordon",
    }
    # The other inputs hold keys and certificate fingerprints, which each mock run issues afresh
    # (a real stack keeps its own across ups); the instance id and the delete hooks must not move.
    for name in old:
        assert old[name].get("delete") == new[name].get("delete"), name
        assert (old[name].get("triggers") or [None])[0] == (new[name].get("triggers") or [None])[0], name


def test_the_changed_daemon_steps_name_the_new_binaries() -> None:
    new = commands(NEW)
    for step, binaries in {
        "master-kube-apiserver": ("kube-apiserver",),
        "master-kube-controller-manager": ("kube-controller-manager",),
        "master-kube-scheduler": ("kube-scheduler",),
        "minion-1-kubelet": ("kubelet", "kube-proxy"),
    }.items():
        script = str(new[step]["create"])
        for b in binaries:
            assert f"swap_binary /opt/kube-ec2/kubernetes/1.35.1/{b} /usr/local/bin/{b}" in script, (step, b)
            assert "/opt/kube-ec2/kubernetes/1.34.4/" not in script
        assert "ensure_started" in script and f"/usr/local/bin/{binaries[0]}" in script.split("ensure_started", 2)[2]
    # Other daemons swap in their own component's version (unchanged by kubernetesVersion; a bump of
    # it in versions.yaml re-runs exactly that step the same way).
    etcd = versions.load()["etcd"]["version"]
    flannel = versions.load()["flannel"]["version"]
    cri = versions.load()["cri_dockerd"]["version"]
    for step, line in {
        "master-etcd": f"swap_binary /opt/kube-ec2/etcd/{etcd}/etcd /usr/local/bin/etcd",
        "master-flanneld": f"swap_binary /opt/kube-ec2/flannel/{flannel}/flanneld /usr/local/bin/flanneld",
        "minion-1-flanneld": f"swap_binary /opt/kube-ec2/flannel/{flannel}/flanneld /usr/local/bin/flanneld",
        "minion-1-docker": f"swap_binary /opt/kube-ec2/cri_dockerd/{cri}/cri-dockerd /usr/local/bin/cri-dockerd",
    }.items():
        assert line in str(new[step]["create"]), step


def test_every_daemon_binary_is_staged_and_swapped_by_its_own_step() -> None:
    s = dev_settings()
    by_name = {x.name: x.script for x in bootstrap.plan(s)}
    for role, host in (("master", s.master), ("minion", s.minions[0])):
        staged = versions.staged_binaries(role, NEW)
        for daemon in render.ROLE_DAEMONS[role]:
            for binary in render.DAEMONS[daemon].binaries:
                assert binary in staged, (role, binary)
                assert staged[binary].startswith("/opt/kube-ec2/"), staged[binary]
                line = f"swap_binary {staged[binary]} {binary}"
                swaps = [n for n, script in by_name.items() if n.startswith(f"{host.name}-") and line in script]
                assert len(swaps) == 1, (binary, swaps)


def test_the_preparation_stages_daemon_binaries_and_never_replaces_a_running_one() -> None:
    s = dev_settings()
    for host in (s.master, s.minions[0]):
        script = render.prepare_script(s, host)
        for binary in versions.KUBERNETES_BINARIES[host.role]:
            installs = [line for line in script.splitlines() if line.startswith(f"install_binary {binary} ")]
            assert len(installs) == 1, binary
            if binary == "kubectl":
                assert installs[0].endswith(" /usr/local/bin/kubectl")
            else:
                assert installs[0].endswith(f" /opt/kube-ec2/kubernetes/1.35.1/{binary}"), installs[0]
                assert f"/usr/local/bin/{binary}" not in script, binary


# --- 2. the step graph


def ancestors(steps: tuple[bootstrap.Step, ...], name: str) -> set[str]:
    after = {s.name: s.after for s in steps}
    seen: set[str] = set()
    todo = list(after[name])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(after[n])
    return seen


def test_the_skew_check_comes_before_every_other_step() -> None:
    steps = bootstrap.plan(dev_settings())
    for s in steps:
        if s.name != "master-cloud-init":
            assert "master-cloud-init" in ancestors(steps, s.name), s.name
    by_name = {s.name: s for s in steps}
    assert "check_skew /usr/local/bin/kube-apiserver 1.35.1" in by_name["master-cloud-init"].script
    assert "check_skew" not in by_name["minion-0-cloud-init"].script


def test_the_control_plane_is_upgraded_before_any_minion_and_each_minion_in_order() -> None:
    steps = bootstrap.plan(dev_settings())
    control_plane = {"master-kube-apiserver", "master-kube-controller-manager", "master-kube-scheduler", "master-cluster-rbac"}
    for m in MINIONS:
        assert control_plane | {f"{m}-docker"} <= ancestors(steps, f"{m}-cordon") | ancestors(steps, f"{m}-kubelet")
        assert control_plane <= ancestors(steps, f"{m}-cordon")
        assert f"{m}-cordon" in ancestors(steps, f"{m}-kubelet")
        assert f"{m}-kubelet" in ancestors(steps, f"{m}-ready")
        assert f"{m}-ready" in ancestors(steps, f"{m}-uncordon")
        assert f"{m}-uncordon" in ancestors(steps, "master-smoke-test")
        others = [o for o in MINIONS if o != m]
        for s in steps:
            if s.name.startswith(f"{m}-"):
                assert not any(a.startswith(tuple(f"{o}-" for o in others)) for a in ancestors(steps, s.name)), s.name
    upgrade = {s.name: s for s in steps if s.name.endswith(("-cordon", "-uncordon"))}
    assert all(s.host == "master" for s in upgrade.values())


@pytest.mark.parametrize("count", ["1", "3", "100"])
def test_upgrade_steps_do_not_change_with_minion_count(count: str) -> None:
    """A Lease semaphore at run time, not a chain: the scripts are the same at any size."""
    three = {s.name: s.script for s in bootstrap.plan(dev_settings(minionCount="3"))}
    other = {s.name: s.script for s in bootstrap.plan(dev_settings(minionCount=count))}
    for name in ("minion-0-cordon", "minion-0-uncordon", "minion-0-kubelet"):
        assert other[name] == three[name]


# --- 3. the scripts in the sandbox

SETTINGS = dev_settings()
DOWNGRADE = dev_settings(kubernetesVersion=OLD)


@functools.cache
def step_of(version: str, name: str) -> str:
    s = SETTINGS if version == NEW else dev_settings(kubernetesVersion=version)
    return next(x for x in bootstrap.plan(s) if x.name == name).script


@pytest.fixture(scope="module")
def sandbox_works() -> None:
    require_sandbox()
    with sandbox() as box:
        assert probe(box).returncode == 0


@pytest.fixture
def box(sandbox_works: None) -> Iterator[Sandbox]:
    with sandbox() as b:
        yield b


def failed(result: Result) -> None:
    assert result.returncode != 0, result.explain()
    assert re.search(r": FAILED \(exit \d+\)", result.stderr), result.explain()


def running_apiserver(box: Sandbox, version: str) -> None:
    box.write("/usr/local/bin/kube-apiserver", f'#!/bin/sh\necho "Kubernetes v{version}"\n', 0o755)


def prepared(box: Sandbox) -> None:
    box.write(MARKER, "2025-01-01T00:00:00Z\n")
    box.write("/usr/local/sbin/kube-ec2-prepare", "#!/bin/bash\necho old preparation\n", 0o755)


@pytest.mark.parametrize(
    ("running", "target", "message"),
    [
        ("1.35.1", OLD, "refused: kubernetesVersion 1.34.4 is older than the running control plane (1.35.1); "
                        "Kubernetes does not support downgrades. Set kubernetesVersion back to 1.35.1."),
        ("1.35.2", NEW, "refused: kubernetesVersion 1.35.1 is older than the running control plane (1.35.2)"),
        ("1.33.7", NEW, "refused: kubernetesVersion 1.35.1 skips a minor version (the control plane runs 1.33.7); "
                        "upgrade one minor version at a time, to a 1.34.x release first."),
        ("2.0.0", NEW, "refused: kubernetesVersion 1.35.1 changes the major version of the running control plane (2.0.0)"),
    ],
    ids=["downgrade", "patch-downgrade", "skips-a-minor", "major"],
)
def test_the_skew_check_refuses_before_anything_changes(box: Sandbox, running: str, target: str, message: str) -> None:
    prepared(box)
    running_apiserver(box, running)
    result = box.run(step_of(target, "master-cloud-init"))
    failed(result)
    assert message in result.stderr
    # Nothing ran but the failure report (status and journal): no wait for cloud-init, no
    # preparation, no file written.
    assert result.calls == [
        ["cloud-init", "status", "--long"],
        ["journalctl", "-u", "cloud-final.service", "-n", "80", "--no-pager"],
    ], result.calls
    assert result.wrote() == [] and not box.exists("/etc/hosts")
    assert box.read("/usr/local/sbin/kube-ec2-prepare") == "#!/bin/bash\necho old preparation\n"


@pytest.mark.parametrize(
    ("running", "message"),
    [
        (OLD, "upgrade from Kubernetes 1.34.4 to 1.35.1: the control plane first, then the minions"),
        ("1.35.0", "upgrade from Kubernetes 1.35.0 to 1.35.1"),
        (NEW, "the control plane runs Kubernetes 1.35.1: no version change"),
        (None, "no control plane installed yet: this is Kubernetes 1.35.1"),
    ],
    ids=["next-minor", "patch", "same", "new-master"],
)
def test_the_skew_check_lets_an_upgrade_through(box: Sandbox, running: str | None, message: str) -> None:
    if running:
        running_apiserver(box, running)
    s = SETTINGS
    box.write(MARKER, "2025-01-01T00:00:00Z\n")
    box.write("/usr/local/sbin/kube-ec2-prepare", render.prepare_script(s, s.master), 0o755)
    result = box.run(step_of(NEW, "master-cloud-init"))
    assert result.returncode == 0, result.explain()
    assert message in result.stderr
    assert result.called("cloud-init", "status", "--wait")


def test_the_skew_check_fails_when_the_version_cannot_be_read(box: Sandbox) -> None:
    box.write("/usr/local/bin/kube-apiserver", "#!/bin/sh\necho garbage\n", 0o755)
    result = box.run(step_of(NEW, "master-cloud-init"))
    failed(result)
    assert "cannot read the running Kubernetes version" in result.stderr


def staged(box: Sandbox, binary: str, version: str) -> None:
    path = versions.staged_binaries("minion", version)[f"/usr/local/bin/{binary}"]
    assert path == f"/opt/kube-ec2/kubernetes/{version}/{binary}"
    box.write(path, f"#!/bin/sh\n# {binary} {version}\n", 0o755)


def test_the_kubelet_step_swaps_in_the_staged_version_and_restarts_both_daemons(box: Sandbox) -> None:
    for name in ("ca.crt", "kubelet.crt", "kubelet.key", "kube-proxy.crt", "kube-proxy.key"):
        box.write(f"{render.PKI_DIR}/{name}", f"dummy {name}\n", 0o600)
    for v in (OLD, NEW):
        for b in ("kubelet", "kube-proxy"):
            staged(box, b, v)
    first = box.run(step_of(OLD, "minion-0-kubelet"))
    assert first.returncode == 0, first.explain()
    assert box.read("/usr/local/bin/kubelet") == f"#!/bin/sh\n# kubelet {OLD}\n"

    upgrade = box.run(step_of(NEW, "minion-0-kubelet"))
    assert upgrade.returncode == 0, upgrade.explain()
    assert upgrade.restarted() == ["kubelet.service", "kube-proxy.service"]
    for b in ("kubelet", "kube-proxy"):
        assert box.read(f"/usr/local/bin/{b}") == f"#!/bin/sh\n# {b} {NEW}\n"
        assert box.mode(f"/usr/local/bin/{b}") == 0o755
        assert f"swapped in /usr/local/bin/{b} from /opt/kube-ec2/kubernetes/{NEW}/{b}" in upgrade.stderr
    assert box.exists(f"/opt/kube-ec2/kubernetes/{OLD}/kubelet"), "the old version's staged binary was removed"
    assert not any(p.name.endswith(".kube-ec2-new") for p in box.path("/usr/local/bin").iterdir())

    again = box.run(step_of(NEW, "minion-0-kubelet"))
    assert (again.restarted(), "swapped in" in again.stderr) == ([], False)


# The cordon and uncordon steps: kubectl answers by rules (static) or, for the semaphore's
# waits, by a stateful fake that stands in for the API's Leases.

NODE_VERSION = "get node minion-0 --ignore-not-found -o jsonpath={.status.nodeInfo.kubeletVersion}"
HOLDER = "-n kube-system get lease kube-ec2-upgrade-0 --ignore-not-found -o jsonpath={.spec.holderIdentity}"
CREATED = "-n kube-system get lease kube-ec2-upgrade-0 --ignore-not-found -o jsonpath={.metadata.creationTimestamp}"
ANNOTATION = "get node minion-0 --ignore-not-found -o jsonpath={.metadata.annotations.kube-ec2/upgrading-to}"


def kubectl_verbs(result: Result) -> list[str]:
    """Each kubectl call without its --request-timeout, as one string."""
    return [" ".join(a for a in c[1:] if not a.startswith("--request-timeout")) for c in result.called("kubectl")]


def test_cordon_passes_a_new_node_and_one_already_upgraded(box: Sandbox) -> None:
    script = step_of(NEW, "minion-0-cordon")
    new = box.run(script)
    assert new.returncode == 0, new.explain()
    assert "node minion-0 is not registered yet: nothing to drain" in new.stderr
    assert kubectl_verbs(new) == [NODE_VERSION]

    box.rule("kubectl", f"*{NODE_VERSION}", stdout="v1.35.1")
    done = box.run(script)
    assert done.returncode == 0, done.explain()
    assert "node minion-0 runs kubelet v1.35.1 already" in done.stderr
    assert kubectl_verbs(done) == [NODE_VERSION]


def test_cordon_takes_the_free_slot_then_cordons_and_drains(box: Sandbox) -> None:
    box.rule("kubectl", f"*{NODE_VERSION}", stdout="v1.34.4")
    result = box.run(step_of(NEW, "minion-0-cordon"))
    assert result.returncode == 0, result.explain()
    assert kubectl_verbs(result) == [
        NODE_VERSION,
        HOLDER,  # not ours yet
        "create -f -",
        HOLDER,  # for the log line
        "annotate node minion-0 --overwrite kube-ec2/upgrading-to=v1.35.1",
        "cordon minion-0",
        "drain minion-0 --ignore-daemonsets --delete-emptydir-data --timeout=300s",
    ]
    assert all(any(a.startswith("--request-timeout=") for a in c) for c in result.called("kubectl")[:-1])
    assert "node minion-0 cordoned and drained: kubelet v1.34.4 -> v1.35.1" in result.stderr


def test_a_drain_that_does_not_finish_fails_and_leaves_the_node_cordoned(box: Sandbox) -> None:
    box.rule("kubectl", f"*{NODE_VERSION}", stdout="v1.34.4")
    box.rule("kubectl", "drain *", rc=1, stderr="error: cannot evict pod as it would violate the pod's disruption budget (STUB)\n")
    box.rule("kubectl", "* get pods -A *", stdout="default web-1 1/1 Running STUB-PODS\n")
    result = box.run(step_of(NEW, "minion-0-cordon"))
    failed(result)
    assert "disruption budget (STUB)" in result.stderr and "STUB-PODS" in result.stderr
    assert not any(v.startswith("uncordon") for v in kubectl_verbs(result))


FAKE_API = r"""#!/bin/bash
# A stateful stand-in for the API's upgrade Leases: the slot is held by minion-1 until `free_after`
# create attempts have failed, then it is free; every call is logged like the sandbox's stubs.
{ printf '%q' kubectl; printf ' %q' "$@"; printf '\n'; } >>/run/kube-ec2-sandbox/calls.log
state=/tmp/fake-api
mkdir -p "$state"
args="$*"
case $args in
  *"get node minion-0"*kubeletVersion*) echo v1.34.4 ;;
  *"get nodes -o name"*) for ((i = 0; i < NODES; i++)); do echo "node/minion-$i"; done ;;
  *"get lease"*holderIdentity*) cat "$state/holder" 2>/dev/null || echo minion-1 ;;
  *"get lease"*creationTimestamp*) cat "$state/created" 2>/dev/null || date -u +%FT%TZ ;;
  *"create -f -"*)
    cat >"$state/lease.yaml"
    n=$(cat "$state/creates" 2>/dev/null || echo 0)
    echo $((n + 1)) >"$state/creates"
    if ((n >= FREE_AFTER)); then echo minion-0 >"$state/holder"; exit 0; fi
    echo 'Error from server (AlreadyExists): leases.coordination.k8s.io "kube-ec2-upgrade-0" already exists' >&2
    exit 1
    ;;
esac
exit 0
"""


def fake_api(box: Sandbox, free_after: int, created: str | None = None, nodes: int = 3) -> None:
    fake = FAKE_API.replace("FREE_AFTER", str(free_after)).replace("NODES", str(nodes))
    box.write("/usr/local/bin/kubectl", fake, 0o755)
    if created:
        (box.tmp / "fake-api").mkdir()
        (box.tmp / "fake-api" / "created").write_text(created + "\n")


def test_cordon_waits_while_another_minion_holds_the_slot(box: Sandbox) -> None:
    fake_api(box, free_after=3)
    result = box.run(step_of(NEW, "minion-0-cordon"), virtual_clock=True)
    assert result.returncode == 0, result.explain()
    assert "every upgrade slot is taken: waiting for one (at most 3600s)" in result.stderr
    assert "node minion-0 holds upgrade slot kube-ec2-upgrade-0" in result.stderr
    creates = [v for v in kubectl_verbs(result) if v == "create -f -"]
    assert len(creates) == 4
    sleeps = [c for c in result.calls if c[0] == "sleep"]
    assert len(sleeps) == 2, "one pause between attempts"
    verbs = kubectl_verbs(result)
    assert verbs.index("cordon minion-0") > max(i for i, v in enumerate(verbs) if v == "create -f -")
    lease = yaml.safe_load((box.tmp / "fake-api" / "lease.yaml").read_text())
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["kind"] == "Lease"
    assert lease["metadata"]["namespace"] == "kube-system" and lease["metadata"]["name"] == "kube-ec2-upgrade-0"
    assert lease["spec"]["holderIdentity"] == "minion-0"


def test_cordon_gives_up_on_a_stuck_upgrade_without_touching_its_node(box: Sandbox) -> None:
    fake_api(box, free_after=10**6, created="2020-01-01T00:00:00Z")
    result = box.run(step_of(NEW, "minion-0-cordon"), virtual_clock=True)
    failed(result)
    assert "every upgrade slot has been held for more than 1200s: another minion's upgrade looks stuck" in result.stderr
    assert not any(v.startswith(("cordon", "drain", "annotate")) for v in kubectl_verbs(result))


def test_cordon_wait_is_bounded_by_the_node_count(box: Sandbox) -> None:
    """The holder keeps looking fresh (as upgrades making progress would): the wait still ends,
    at 1200 s per node (one node here, to keep the test short), on bash's clock (virtual: sleep
    moves $SECONDS on; the real seconds the attempts take count too)."""
    fake_api(box, free_after=10**6, nodes=1)
    result = box.run(step_of(NEW, "minion-0-cordon"), virtual_clock=True, timeout=120)
    failed(result)
    assert "every upgrade slot is taken: waiting for one (at most 1200s)" in result.stderr
    assert "no upgrade slot after 1200s" in result.stderr
    slept = sum(int(c[1]) for c in result.calls if c[0] == "sleep")
    assert 1200 - result.elapsed - 10 <= slept <= 1200, (slept, result.elapsed)
    assert all(c[1] == "5" for c in result.calls if c[0] == "sleep")
    assert not any(v.startswith(("cordon", "drain")) for v in kubectl_verbs(result))


def test_uncordon_after_an_upgrade_gives_the_slot_back(box: Sandbox) -> None:
    box.rule("kubectl", f"*{ANNOTATION}", stdout="v1.35.1")
    box.rule("kubectl", "*get node minion-0 -o jsonpath={.status.nodeInfo.kubeletVersion}", stdout="v1.35.1")
    box.rule("kubectl", f"*{HOLDER}", stdout="minion-0")
    result = box.run(step_of(NEW, "minion-0-uncordon"))
    assert result.returncode == 0, result.explain()
    verbs = kubectl_verbs(result)
    assert verbs == [
        ANNOTATION,
        "get node minion-0 -o jsonpath={.status.nodeInfo.kubeletVersion}",
        "uncordon minion-0",
        "annotate node minion-0 kube-ec2/upgrading-to-",
        HOLDER,
        "-n kube-system delete lease kube-ec2-upgrade-0 --ignore-not-found",
    ]
    assert "node minion-0 upgraded to v1.35.1 and uncordoned" in result.stderr


def test_uncordon_leaves_a_node_cordoned_by_hand_and_another_minions_slot(box: Sandbox) -> None:
    box.rule("kubectl", f"*{HOLDER}", stdout="minion-1")
    result = box.run(step_of(NEW, "minion-0-uncordon"))
    assert result.returncode == 0, result.explain()
    assert kubectl_verbs(result) == [ANNOTATION, HOLDER]


def test_uncordon_waits_bounded_for_the_new_kubelet_and_keeps_the_node_cordoned(box: Sandbox) -> None:
    box.rule("kubectl", f"*{ANNOTATION}", stdout="v1.35.1")
    box.rule("kubectl", "*get node minion-0 -o jsonpath={.status.nodeInfo.kubeletVersion}", stdout="v1.34.4")
    result = box.run(step_of(NEW, "minion-0-uncordon"), virtual_clock=True, timeout=60)
    failed(result)
    assert "kubelet on minion-0 reports v1.35.1: not ready after 120s" in result.stderr
    assert not any(v.startswith(("uncordon", "-n kube-system delete")) for v in kubectl_verbs(result))
