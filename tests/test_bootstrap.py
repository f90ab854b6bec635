"""The remote-step graph: order, parallel minions, constant chain, and the Commands that carry it."""

from __future__ import annotations

import itertools
import shlex

import pytest

import components.cluster as cluster_module
from components import bootstrap, offline
from tests.conftest import dev_settings

MASTER_CHAIN = [
    "master-cloud-init", "master-pki", "master-etcd", "master-flannel-network", "master-flanneld", "master-kube-apiserver",
]


def edges(steps: tuple[bootstrap.Step, ...]) -> set[tuple[str, str]]:
    return {(a, s.name) for s in steps for a in s.after}


def reaches(steps: tuple[bootstrap.Step, ...], start: str, end: str) -> bool:
    after = {s.name: s.after for s in steps}
    todo, seen = [end], set()
    while todo:
        name = todo.pop()
        if name == start:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(after[name])
    return False


def test_every_dependency_edge() -> None:
    steps = bootstrap.plan(dev_settings())
    e = edges(steps)
    for a, b in itertools.pairwise(MASTER_CHAIN):
        assert (a, b) in e
    for name in ("master-kube-controller-manager", "master-kube-scheduler", "master-cluster-rbac"):
        assert ("master-kube-apiserver", name) in e
    for i in range(3):
        m = f"minion-{i}"
        assert {
            (f"{m}-cloud-init", f"{m}-pki"),
            (f"{m}-pki", f"{m}-flanneld"),
            ("master-flannel-network", f"{m}-flanneld"),
            (f"{m}-flanneld", f"{m}-docker"),
            (f"{m}-docker", f"{m}-kubelet"),
            # Upgrades: the control plane, then cordon and drain, swap, Ready, uncordon.
            ("master-cloud-init", f"{m}-cloud-init"),
            ("master-kube-apiserver", f"{m}-cordon"),
            ("master-kube-controller-manager", f"{m}-cordon"),
            ("master-kube-scheduler", f"{m}-cordon"),
            ("master-cluster-rbac", f"{m}-cordon"),
            (f"{m}-cordon", f"{m}-kubelet"),
            (f"{m}-kubelet", f"{m}-ready"),
            (f"{m}-ready", f"{m}-uncordon"),
            (f"{m}-uncordon", "master-coredns"),
        } <= e
    assert ("master-coredns", "master-smoke-test") in e
    assert ("master-cluster-rbac", "master-coredns") in e


def test_order_is_topological_and_names_are_host_step() -> None:
    steps = bootstrap.plan(dev_settings())
    seen: set[str] = set()
    for step in steps:
        assert set(step.after) <= seen, step.name
        assert step.name.startswith(("master-", "minion-"))
        seen.add(step.name)
    assert len(seen) == len(steps)


def test_no_minion_step_depends_on_another_minion() -> None:
    steps = bootstrap.plan(dev_settings(minionCount="5"))
    for step in steps:
        if step.name.startswith("minion-"):
            own = "-".join(step.name.split("-")[:2])
            for name in (s.name for s in steps):
                if name.startswith("minion-") and not name.startswith(own + "-"):
                    assert not reaches(steps, name, step.name), (name, step.name)


@pytest.mark.parametrize("count", ["1", "3", "100"])
def test_longest_chain_does_not_grow_with_minions(count: str) -> None:
    chain = bootstrap.longest_chain(bootstrap.plan(dev_settings(minionCount=count)))
    assert len(chain) == 13
    assert chain[0] == "master-cloud-init" and chain[-1] == "master-smoke-test"


def test_drain_runs_on_master_when_a_minion_goes() -> None:
    steps = {s.name: s for s in bootstrap.plan(dev_settings())}
    drain = steps["minion-1-drain"]
    assert drain.host == "master" and drain.about_host == "minion-1"
    assert drain.delete_script and "kubectl drain minion-1" in drain.delete_script
    assert "kubectl delete node minion-1" in drain.delete_script


def test_commands_carry_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Cluster wires depends_on exactly as the plan says, on the right host's connection."""
    seen: dict[str, list[str]] = {}
    real = cluster_module.command.remote.Command

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, name, *args, opts=None, **kwargs):  # type: ignore[no-untyped-def]
            seen[name] = sorted(getattr(d, "_name", None) or "" for d in (opts.depends_on or []))
            super().__init__(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(cluster_module.command.remote, "Command", Recording)
    run = offline.run("dev")
    for step in run.cluster.steps:
        # Every step also waits for the network and security groups (tests/test_reach.py checks those edges).
        expected = sorted([*step.after, *([f"{step.about_host}-instance"] if step.about_host else []), "network", "security"])
        if step.name == "master-etcd":  # etcd starts only on its attached volume
            expected = sorted([*expected, "etcd-attachment"])
        assert seen[step.name] == expected, step.name
        recorded = run.mocks.named(step.name)
        assert recorded.inputs["create"] == f"sudo -n bash -c {shlex.quote(step.script)}"
        host_ip = run.outputs["masterPublicIp"] if step.host == "master" else run.outputs["minionPrivateIps"][int(step.host.split("-")[1])]
        from tests.test_program import unwrap

        assert unwrap(recorded.inputs["connection"])[0]["host"] == host_ip


def test_triggers_change_only_with_content() -> None:
    a = {s.name: s.script for s in bootstrap.plan(dev_settings())}
    b = {s.name: s.script for s in bootstrap.plan(dev_settings())}
    assert a == b
    c = {s.name: s.script for s in bootstrap.plan(dev_settings(podCidr="10.100.0.0/16"))}
    changed = {n for n in a if a[n] != c[n]}
    assert "master-flannel-network" in changed and "minion-0-kubelet" in changed
    assert "master-etcd" not in changed and "master-pki" not in changed


def test_scaling_up_leaves_existing_minion_steps_untouched_but_hosts_file() -> None:
    three = {s.name: s.script for s in bootstrap.plan(dev_settings(minionCount="3"))}
    four = {s.name: s.script for s in bootstrap.plan(dev_settings(minionCount="4"))}
    changed = {n for n in three if three[n] != four[n]}
    # Only /etc/hosts (in each cloud-init step), the smoke test's replica count and the etcd users
    # (the new minion's flannel identity) change.
    hosts_file = {f"{h}-cloud-init" for h in ("master", "minion-0", "minion-1", "minion-2")}
    assert changed == hosts_file | {"master-smoke-test", "master-flannel-network"}
    assert set(four) - set(three) == {
        f"minion-3-{s}" for s in ("cloud-init", "pki", "flanneld", "docker", "cordon", "kubelet", "ready", "uncordon", "drain")
    }
