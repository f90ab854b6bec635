"""Reaching hosts: minions at their fixed private IPs through the master, SSH on minions only from
the master's security group. The whole program under Pulumi mocks (preview=False).

Expected values are written here: the dev stack's VPC is 10.240.0.0/16 (master .10, minion-N
.11+N), the offline engine gives the master's Elastic IP 203.0.113.10 and the dev stack's admin
range is the offline placeholder 192.0.2.1/32.
"""

from __future__ import annotations

from components import offline
from tests.test_program import COMMAND, INGRESS, _rules, unwrap

MASTER_EIP = "203.0.113.10"
MINION_IPS = {"minion-0": "10.240.0.11", "minion-1": "10.240.0.12", "minion-2": "10.240.0.13"}
ADMIN = "192.0.2.1/32"


def connections(run: offline.Run) -> dict[str, tuple[dict, bool]]:
    """step name -> (its connection without the secret envelope, whether it was secret)."""
    return {c.name: unwrap(c.inputs["connection"]) for c in run.mocks.of_type(COMMAND)}  # type: ignore[misc]


def test_every_minion_step_dials_its_private_ip_through_the_master(dev: offline.Run) -> None:
    by_host = {s.name: s.host for s in dev.cluster.steps}
    conns = connections(dev)
    minion_steps = [n for n, h in by_host.items() if h != "master"]
    assert len(minion_steps) == 3 * 6  # cloud-init, pki, flanneld, docker, kubelet, ready per minion
    for name in minion_steps:
        conn, secret = conns[name]
        assert secret, name
        assert conn["host"] == MINION_IPS[by_host[name]], name
        assert conn["user"] == "ubuntu"
        proxy = conn["proxy"]
        assert proxy["host"] == MASTER_EIP, name
        # ProxyConnection's user defaults to root upstream: it must be given, and the same key.
        assert proxy["user"] == "ubuntu", name
        assert proxy["privateKey"] == conn["privateKey"] and "OPENSSH PRIVATE KEY" in proxy["privateKey"]
        assert proxy["dialErrorLimit"] == 60 and proxy["perDialTimeout"] == 10
        assert conn["dialErrorLimit"] == 60 and conn["perDialTimeout"] == 10


def test_master_steps_dial_the_elastic_ip_directly(dev: offline.Run) -> None:
    conns = connections(dev)
    master_steps = [s.name for s in dev.cluster.steps if s.host == "master"]
    assert "master-pki" in master_steps and "minion-0-drain" in master_steps
    for name in master_steps:
        conn, _ = conns[name]
        assert conn["host"] == MASTER_EIP, name
        assert "proxy" not in conn or conn["proxy"] is None, name


def test_drain_hooks_give_up_dialling_soon(dev: offline.Run) -> None:
    """A destroy with the master gone must not retry a dead address for ten minutes per hook."""
    conns = connections(dev)
    for minion in MINION_IPS:
        conn, _ = conns[f"{minion}-drain"]
        assert conn["dialErrorLimit"] == 3 and conn["perDialTimeout"] == 10
    assert conns["master-pki"][0]["dialErrorLimit"] == 60


def test_ssh_to_minions_only_from_the_master_group(dev: offline.Run) -> None:
    ssh = {(group, source) for group, proto, low, high, source in _rules(dev) if (proto, low, high) == ("tcp", 22, 22)}
    assert ssh == {("master", ADMIN), ("minion", "sg:master")}


def test_ssh_rule_names_and_descriptions(dev: offline.Run) -> None:
    names = {r.name: r.inputs for r in dev.mocks.of_type(INGRESS) if r.inputs["fromPort"] == 22}
    assert set(names) == {"security-master-tcp22-from-192-0-2-1-32", "security-minion-tcp22-from-master"}
    assert names["security-minion-tcp22-from-master"]["referencedSecurityGroupId"] == "security-master-id"
    assert names["security-minion-tcp22-from-master"].get("cidrIpv4") is None


def test_prod_admin_ranges_reach_only_the_master_ssh() -> None:
    # Pulumi.prod.yaml leaves adminCidrs unset (documentation ranges are refused); two real-looking ranges set here.
    ranges = ["81.2.69.160/28", "151.101.1.7/32"]
    run = offline.run("prod", {**offline.stack_config("prod"), "kube-ec2:adminCidrs": ranges})
    ssh = {(g, s) for g, proto, low, _h, s in _rules(run) if (proto, low) == ("tcp", 22)}
    assert ssh == {("master", "81.2.69.160/28"), ("master", "151.101.1.7/32"), ("minion", "sg:master")}
