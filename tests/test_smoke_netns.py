"""The smoke test's own decision logic against real networks built from namespaces.

The bash below is cloudinit/steps/smoke-lib.sh.j2 exactly as the master-smoke-test step embeds it
(asserted); only the three primitives differ: on the cluster `kubectl exec` into a pod and curl on
the master, here `ip netns exec` into a pod's or the master's namespace (tests/netns_cluster.py
builds VXLAN, bridges, routes and DNAT the way flanneld, the bridge CNI plugin and kube-proxy do).
It must pass on the healthy network and fail, naming the path and with curl's own words, when one
host's underlay has a 1500-byte MTU under 8951-byte pods, when one pair of hosts cannot reach each
other, and when DNS answers only the pods on its own node.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from components import bootstrap, render
from tests import netns_cluster
from tests.conftest import dev_settings
from tests.netns_cluster import SERVICE_IP, SERVICE_NAME, Cluster

SETTINGS = dev_settings()
PAYLOAD_BYTES = 12320  # "kube-ec2-smoke-NNNNNN." (22 bytes) x 560: above the 9001-byte VPC frame


@functools.cache
def smoke_lib() -> str:
    lib = render.render("steps/smoke-lib.sh.j2", render.context(SETTINGS, SETTINGS.master))
    step = next(s for s in bootstrap.plan(SETTINGS) if s.name == "master-smoke-test")
    assert lib in step.script, "the cluster's smoke step does not embed the tested logic unchanged"
    return lib


def driver(body: str, master_ns: str = "", hosts: list[netns_cluster.Host] | None = None) -> str:
    report = "".join(
        f'  echo "{h.name}: underlay $(ip -n {h.ns} -o link show eth0 | grep -o "mtu [0-9]*"),'
        f' flannel.1 $(ip -n {h.ns} -o link show flannel.1 | grep -o "mtu [0-9]*")"\n'
        for h in hosts or []
    )
    return (
        "set -euo pipefail\n"
        "log() { printf '%s\\n' \"smoke: $*\" >&2; }\n"
        'pod_exec() { local pod=$1; shift; timeout $((SMOKE_PROBE_SECONDS + 5)) ip netns exec "$pod" "$@"; }\n'
        f'master_exec() {{ timeout $((SMOKE_PROBE_SECONDS + 5)) ip netns exec {shlex.quote(master_ns)} "$@"; }}\n'
        f"node_report() {{\n{report}  true\n}}\n" + smoke_lib() + body
    )


def run_bash(script: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SMOKE_ATTEMPTS": "1", "SMOKE_PROBE_SECONDS": "2"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


def smoke(c: Cluster) -> subprocess.CompletedProcess[str]:
    pods = " ".join(shlex.quote(p) for p in c.smoke_pods())
    body = f"SMOKE_PODS=({pods})\nsmoke_run http://{SERVICE_IP}:80 http://{SERVICE_NAME}:80\n"
    return run_bash(driver(body, c.master.ns, c.hosts))


def failures(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.removeprefix("FAILED ") for line in result.stderr.splitlines() if line.startswith("FAILED ")]


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stderr[-6000:]}"


# --- the pure parts: which nodes, where the pods are, which pairs


def test_payload_is_larger_than_the_largest_frame() -> None:
    result = run_bash(driver('printf %s "$SMOKE_PAYLOAD"'))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == PAYLOAD_BYTES > 9001
    assert result.stdout.startswith("kube-ec2-smoke-000001.kube-ec2-smoke-000002.")
    assert result.stdout.endswith("kube-ec2-smoke-000560.")


def test_only_ready_schedulable_nodes_are_tested() -> None:
    status = "minion-0,,True\nminion-1,true,True\nminion-2,,False\nminion-3,,Unknown\nminion-4,,\nminion-5,,True\n"
    result = run_bash(driver(f"smoke_nodes <<'EOF'\n{status}EOF\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["minion-0", "minion-5"]
    assert "node minion-1 is cordoned: not probed" in result.stderr
    assert "node minion-2 is not Ready (False): not probed" in result.stderr
    assert "node minion-4 is not Ready (no Ready condition): not probed" in result.stderr


@pytest.mark.parametrize(
    ("pods", "message"),
    [
        (["a 10.200.1.5 minion-0", "b 10.200.2.5 minion-1"], None),
        (["a 10.200.1.5 minion-0", "b 10.200.1.6 minion-0"], "node minion-1 runs 0 echo pods, expected 1"),
        (["a 10.200.1.5 minion-0"], "node minion-1 runs 0 echo pods, expected 1"),
        (["a 10.200.1.5 minion-0", "b 10.200.2.5 minion-1", "c 10.200.3.5 minion-2"],
         "node minion-2 is not a Ready, schedulable node but runs 1 echo pods"),
    ],
    ids=["one-each", "crowded", "missing", "on-a-cordoned-node"],
)
def test_placement_is_one_pod_on_each_tested_node(pods: list[str], message: str | None) -> None:
    body = f"SMOKE_PODS=({' '.join(shlex.quote(p) for p in pods)})\nsmoke_check_placement minion-0 minion-1\n"
    result = run_bash(driver(body))
    if message is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and message in result.stderr, result.stderr


def pairs(n: int) -> set[tuple[int, int]]:
    result = run_bash(driver(f"smoke_pairs {n}\n"))
    assert result.returncode == 0, result.stderr
    found = [tuple(int(x) for x in line.split()) for line in result.stdout.splitlines()]
    assert len(found) == len(set(found)), "a pair probed twice"
    return set(found)  # type: ignore[arg-type]


def test_pairs_are_every_ordered_pair_up_to_ten_nodes_then_a_ring_both_ways() -> None:
    assert pairs(1) == set()
    assert pairs(3) == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)}
    assert len(pairs(10)) == 90
    ring = pairs(12)
    assert len(ring) == 24
    for i in range(12):
        assert (i, (i + 1) % 12) in ring and ((i + 1) % 12, i) in ring


# --- real networks


@pytest.fixture(scope="module")
def netns_works() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the namespace smoke tests need root; CI must run them as root")
        pytest.skip("needs root (network namespaces)")
    missing = netns_cluster.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)} for the namespace smoke tests (Makefile APT_PACKAGES)")


@dataclass
class Run:
    """One scenario's smoke run, on its own cluster (built, broken, probed, removed)."""

    result: subprocess.CompletedProcess[str]
    pods: list[str]
    small_request: str = ""

    @property
    def failed(self) -> list[str]:
        return failures(self.result)

    def explain(self) -> str:
        return explain(self.result)


def _healthy(c: Cluster) -> Run:
    return Run(smoke(c), [h.pod_ns or "" for h in c.minions])


def _no_jumbo_frames(c: Cluster) -> Run:
    """minion-2's link into the VPC carries 1500-byte frames while pods use 8951."""
    c.set_underlay_mtu(c.minions[2], 1500)
    small = subprocess.run(
        ["ip", "netns", "exec", c.minions[0].pod_ns or "", "curl", "-sS", "--max-time", "3", f"http://{c.minions[2].pod_ip}:8080/echo?msg=small"],
        capture_output=True, text=True, timeout=10,
    )
    return Run(smoke(c), [h.pod_ns or "" for h in c.minions], small.stdout)


def _pair_cut(c: Cluster) -> Run:
    """minion-0 and minion-1 lost each other's VXLAN forwarding entry (a lease never seen)."""
    c.forget_peer(c.minions[0], c.minions[1])
    c.forget_peer(c.minions[1], c.minions[0])
    return Run(smoke(c), [h.pod_ns or "" for h in c.minions])


SCENARIOS: dict[str, tuple[Callable[[Cluster], Run], bool]] = {
    "healthy": (_healthy, False),
    "no-jumbo-frames": (_no_jumbo_frames, False),
    "pair-cut": (_pair_cut, False),
    "dns-local-only": (_healthy, True),
}


def _scenario(name: str) -> Run:
    make, dns_local_only = SCENARIOS[name]
    with netns_cluster.cluster(dns_local_only=dns_local_only) as c:
        return make(c)


@pytest.fixture(scope="module")
def runs(netns_works: None) -> dict[str, Run]:
    """Every scenario at once, each on its own namespaces: most of their time is probes timing out."""
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        futures = {name: pool.submit(_scenario, name) for name in SCENARIOS}
        return {name: f.result() for name, f in futures.items()}


def test_healthy_network_passes_every_probe(runs: dict[str, Run]) -> None:
    run = runs["healthy"]
    assert run.result.returncode == 0, run.explain()
    # 3 nodes: 6 ordered pod pairs, then per pod master -> pod, ClusterIP and DNS.
    assert "all 15 probes passed over 3 nodes" in run.result.stderr, run.explain()
    oks = [line for line in run.result.stderr.splitlines() if line.startswith("smoke: ok: ")]
    assert len(oks) == 15
    assert f"smoke: ok: pod -> pod: minion-0 ({run.pods[0]}) -> minion-2 (10.200.3.5) (12320 bytes each way)" in oks
    assert "smoke: ok: master -> pod: minion-1 (10.200.2.5) (12320 bytes each way)" in oks
    assert run.failed == []


def test_namespaces_are_removed_afterwards(netns_works: None) -> None:
    with netns_cluster.cluster(minions=2) as c:
        prefix = c.prefix
        assert len(netns_cluster.existing_namespaces(prefix + "-")) == 7  # vpc, master, 2 minions, 2 pods, DNS
        dirs = list(c.netns_dirs)
    assert netns_cluster.existing_namespaces(prefix + "-") == []
    assert not any(d.exists() for d in dirs)


def test_one_host_without_jumbo_frames_fails_on_its_paths(runs: dict[str, Run]) -> None:
    """A TCP handshake and a small request pass; full-size frames to minion-2 vanish (the VPC
    bridge drops them, no ICMP comes back)."""
    run = runs["no-jumbo-frames"]
    assert run.small_request == "small", "a small request must pass: the fault is the MTU, not reachability"
    assert run.result.returncode != 0, run.explain()
    for start in (
        f"pod -> pod: minion-0 ({run.pods[0]}) -> minion-2 (10.200.3.5): exit 28",
        f"pod -> pod: minion-1 ({run.pods[1]}) -> minion-2 (10.200.3.5): exit 28",
        "master -> pod: minion-2 (10.200.3.5): exit 28",
    ):
        assert any(f.startswith(start) for f in run.failed), f"{start}\n{run.explain()}"
    direct = [f for f in run.failed if f.startswith(("pod -> pod:", "master -> pod:"))]
    assert all("minion-2" in f for f in direct), "a path that does not touch minion-2 failed"
    assert any("Operation timed out" in f for f in run.failed), "curl's own output is missing"
    assert f"smoke: ok: pod -> pod: minion-0 ({run.pods[0]}) -> minion-1 (10.200.2.5)" in run.result.stderr
    assert "minion-2: underlay mtu 1500, flannel.1 mtu 8951" in run.result.stderr, "no node report"
    assert re.search(r"smoke test FAILED: \d+ of 15 probes failed", run.result.stderr)


def test_one_pair_that_cannot_reach_each_other_fails(runs: dict[str, Run]) -> None:
    run = runs["pair-cut"]
    assert run.result.returncode != 0, run.explain()
    pair = sorted(re.findall(r"^pod -> pod: (\S+) \(\S+\) -> (\S+) \(", "\n".join(run.failed), re.MULTILINE))
    assert pair == [("minion-0", "minion-1"), ("minion-1", "minion-0")], run.explain()
    assert all("exit 28" in f and "timed out" in f for f in run.failed if f.startswith("pod -> pod:")), run.explain()
    assert "smoke: ok: master -> pod: minion-0" in run.result.stderr
    assert "smoke: ok: master -> pod: minion-1" in run.result.stderr
    # minion-1's pod cannot reach the DNS pod on minion-0 either: that is found and reported too.
    assert any(f.startswith("pod -> Service by DNS name: from minion-1") for f in run.failed), run.explain()


def test_dns_answering_only_its_own_node_fails_for_every_other_node(runs: dict[str, Run]) -> None:
    """The DNS pod's node (minion-0) gets answers, so a retry loop from one pod could pass."""
    run = runs["dns-local-only"]
    assert run.result.returncode != 0, run.explain()
    dns = [f for f in run.failed if f.startswith("pod -> Service by DNS name")]
    assert [f.split("from ")[1].split(" (")[0] for f in dns] == ["minion-1", "minion-2"], run.explain()
    assert all("Could not resolve host" in f for f in dns), run.explain()
    assert "smoke: ok: pod -> Service by DNS name: from minion-0" in run.result.stderr
    assert len(run.failed) == 2, "only DNS is broken"
