"""Lifecycle wiring and the range rules, with expected values written here.

- Drain hooks never have triggers: a trigger change replaces a Command, and replacing a drain
  hook runs its delete (drain and delete the node) on a node that stays.
- The node-ready step, when the node never turns Ready, prints the journal of every unit
  readiness depends on (run for real in the step sandbox, on a virtual clock).
- podCidr capacity as flannel computes it: it never hands out the first /24 of the range, and
  wants at least four (flannel-io/flannel pkg/subnet/config.go, CheckNetworkConfig, commit
  0f89b8d5): a /23 holds one usable /24, a /22 three.
- Range overlaps are refused whichever range contains the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from components import offline
from components.settings import ConfigError
from tests.conftest import dev_settings
from tests.shipped import COMMAND, step_script
from tests.step_sandbox import JOURNAL_MARKER, Sandbox, require_sandbox, sandbox

# --- drain hooks


def test_drain_hooks_have_no_triggers_and_every_other_step_does(stack: offline.Run) -> None:
    commands = stack.mocks.of_type(COMMAND)
    drains = [c for c in commands if c.inputs.get("delete")]
    assert sorted(c.name for c in drains) == sorted(f"minion-{i}-drain" for i in range(len(stack.cluster.minions)))
    for hook in drains:
        assert not hook.inputs.get("triggers"), f"{hook.name}: a trigger change would drain a live node"
    for step in commands:
        if step not in drains:
            assert step.inputs.get("triggers"), f"{step.name}: never re-runs on a replaced host"


def test_drain_hook_drains_and_deletes_its_own_node(dev: offline.Run) -> None:
    script = step_script(dev, "minion-1-drain", "delete")
    words = " ".join(script.split())
    assert re.search(r"kubectl drain [^\n]*minion-1\b", words), "drains its node"
    assert re.search(r"kubectl delete node [^\n]*minion-1\b", words), "deletes its node"
    assert "minion-0" not in words and "minion-2" not in words


# --- node readiness: the journals an operator needs when a node never turns Ready

NODE_READY_UNITS = {"kubelet.service", "kube-proxy.service", "cri-docker.service", "docker.service", "flanneld.service"}


@pytest.fixture
def box() -> Iterator[Sandbox]:
    require_sandbox()
    with sandbox() as b:
        yield b


def test_node_ready_failure_prints_the_journal_of_every_unit_readiness_depends_on(dev: offline.Run, box: Sandbox) -> None:
    box.rule("curl", "*", rc=22, stderr="curl: (22) The requested URL returned error: 404 (sandbox stub)\n")
    result = box.run(step_script(dev, "minion-0-ready"), virtual_clock=True, timeout=60)
    assert result.returncode != 0
    assert "node minion-0 Ready: not ready after" in result.stderr
    journals = set(re.findall(rf"{JOURNAL_MARKER} journalctl -u (\S+) -n \d+ --no-pager", result.stderr))
    assert journals == NODE_READY_UNITS
    asked = [c for c in result.calls if c[0] == "curl"]
    assert asked and all(c[-1] == "https://10.240.0.10:6443/api/v1/nodes/minion-0" for c in asked)


# --- podCidr capacity as flannel computes it


@pytest.mark.parametrize(
    ("pod", "minions", "subnets", "largest"),
    [
        ("10.200.0.0/23", 1, 1, 22),  # 2 hosts: the /23's second /24 is its only usable one
        ("10.200.0.0/22", 3, 3, 21),  # 4 hosts, 3 usable /24s
        ("10.200.0.0/24", 3, 0, 21),
        ("10.200.0.0/21", 7, 7, 20),  # 8 hosts, 7 usable
    ],
)
def test_pod_range_too_small_for_flannel_says_what_is_allowed(pod: str, minions: int, subnets: int, largest: int) -> None:
    with pytest.raises(ConfigError) as err:
        dev_settings(podCidr=pod, minionCount=str(minions))
    hosts = minions + 1
    assert (
        f"kube-ec2:podCidr: {pod} gives flannel {subnets} /24 subnets (it never uses the first) "
        f"but {hosts} hosts need one each; allowed: /{largest} or larger"
    ) in err.value.problems


@pytest.mark.parametrize(("pod", "minions"), [("10.200.0.0/22", 2), ("10.200.0.0/21", 6), ("10.200.0.0/20", 14)])
def test_pod_range_exactly_large_enough_is_accepted(pod: str, minions: int) -> None:
    assert dev_settings(podCidr=pod, minionCount=str(minions)).pod_cidr == pod


# --- overlaps, whichever range contains the other


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"podCidr": "10.0.0.0/8"}, "kube-ec2:podCidr: 10.0.0.0/8 overlaps vpcCidr 10.240.0.0/16"),  # pod contains the VPC
        ({"podCidr": "10.240.4.0/22"}, "kube-ec2:podCidr: 10.240.4.0/22 overlaps vpcCidr 10.240.0.0/16"),  # VPC contains pod
        ({"serviceCidr": "10.0.0.0/12", "podCidr": "10.100.0.0/16"}, None),  # disjoint: accepted
        ({"serviceCidr": "10.192.0.0/12"}, "kube-ec2:serviceCidr: 10.192.0.0/12 overlaps podCidr 10.200.0.0/16"),
        ({"serviceCidr": "10.200.8.0/24"}, "kube-ec2:serviceCidr: 10.200.8.0/24 overlaps podCidr 10.200.0.0/16"),
        ({"serviceCidr": "10.240.8.0/24"}, "kube-ec2:serviceCidr: 10.240.8.0/24 overlaps vpcCidr 10.240.0.0/16"),
        ({"podCidr": "172.16.0.0/12"}, "kube-ec2:podCidr: 172.16.0.0/12 overlaps Docker's bridge 172.17.0.0/16"),
        ({"podCidr": "172.17.0.0/20"}, "kube-ec2:podCidr: 172.17.0.0/20 overlaps Docker's bridge 172.17.0.0/16"),
    ],
)
def test_overlaps_are_refused_in_both_directions(raw: dict[str, str], problem: str | None) -> None:
    if problem is None:
        dev_settings(**raw)
        return
    with pytest.raises(ConfigError) as err:
        dev_settings(**raw)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
