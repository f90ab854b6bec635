"""Reaching hosts: minions at their fixed private IPs through the master, SSH on minions only from
the master's security group. The whole program under Pulumi mocks (preview=False).

Expected values are written here: the dev stack's VPC is 10.240.0.0/16 (master .10, minion-N
.11+N), the offline engine gives the master's Elastic IP 203.0.113.10 and the dev stack's admin
range is the offline placeholder 192.0.2.1/32.
"""

from __future__ import annotations

import pulumi
import pytest

from components import offline
from components.offline import ec2
from components.offline.monitor import OfflineMonitor
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


# --- dependencies the engine must keep on destroy and scale-down (recorded by the offline monitor)

NETWORK = {"network-vpc", "network-default-sg", "network-igw", "network-subnet", "network-routes", "network-routes-subnet"}
GROUPS = {"security-master", "security-minion", "security-master-egress", "security-minion-egress"}
RULES = {
    "security-master-tcp22-from-192-0-2-1-32",
    "security-master-tcp6443-from-192-0-2-1-32",
    "security-minion-tcp30000-from-192-0-2-1-32",
    "security-master-tcp6443-from-minion",
    "security-master-tcp2379-from-minion",
    "security-master-udp8472-from-minion",
    "security-minion-tcp22-from-master",
    "security-minion-tcp10250-from-master",
    "security-minion-udp8472-from-master",
    "security-minion-udp8472-from-minion",
}
FOUNDATION = NETWORK | GROUPS | RULES


def monitor(run: offline.Run) -> OfflineMonitor:
    assert run.mocks.monitor is not None
    return run.mocks.monitor


def test_foundation_is_every_network_and_security_resource(dev: offline.Run) -> None:
    """The list above is complete: nothing under network/ or security/ escapes it."""
    children = {r.name for r in dev.mocks.resources if r.name.startswith(("network-", "security-"))}
    assert children == FOUNDATION


def test_instances_eip_and_steps_depend_on_network_groups_and_rules(dev: offline.Run) -> None:
    dependents = [*(f"{h}-instance" for h in ("master", *MINION_IPS)), "master-eip", *(s.name for s in dev.cluster.steps)]
    assert len(dependents) == 4 + 1 + len(dev.cluster.steps)
    for name in dependents:
        missing = FOUNDATION - monitor(dev).dependencies(name)
        assert not missing, f"{name} does not depend on {sorted(missing)}"


def test_step_edges_are_recorded_too(dev: offline.Run) -> None:
    deps = monitor(dev).dependencies
    assert {"minion-0-ready", "minion-0-instance"} <= deps("minion-0-drain")
    assert {"minion-0-pki", "master-flannel-network"} <= deps("minion-0-flanneld")


# --- secrets fed to a step are neither logged nor stored in plain


def _resolved(output: object) -> object:
    from pulumi.runtime.sync_await import _sync_await

    return _sync_await(output)  # type: ignore[arg-type]


def test_pki_steps_log_nothing_and_store_their_output_as_secrets(dev: offline.Run) -> None:
    pki = {f"{h}-pki" for h in ("master", *MINION_IPS)}
    for cmd in dev.mocks.of_type(COMMAND):
        registration = monitor(dev).registrations[cmd.name]
        if cmd.name in pki:
            assert cmd.inputs["logging"] == "none", cmd.name
            # `connection` is the SDK's own (the schema marks it secret); stdout and stderr are ours.
            assert set(registration.additional_secret_outputs) == {"connection", "stdout", "stderr"}, cmd.name
            # The engine made them secret (the offline monitor applies additionalSecretOutputs as it does).
            resource = dev.cluster.commands[cmd.name]
            assert _resolved(resource.stdout.is_secret()) and _resolved(resource.stderr.is_secret()), cmd.name
        else:
            assert "logging" not in cmd.inputs, cmd.name  # the others stream their progress
            assert registration.additional_secret_outputs == ("connection",), cmd.name
            assert not _resolved(dev.cluster.commands[cmd.name].stdout.is_secret()), cmd.name


# --- the availability zone: chosen from EC2's offerings when unset

SUBNET = "aws:ec2/subnet:Subnet"
OLD_ZONE = frozenset({"t3", "t3a", "m6i"})


def subnet_zone(run: offline.Run) -> str:
    return str(run.mocks.of_type(SUBNET)[0].inputs["availabilityZone"])


def dev_with(**config: str) -> offline.Run:
    return offline.run("dev", {**offline.stack_config("dev"), **{f"kube-ec2:{k}": v for k, v in config.items()}})


def test_dev_gets_the_first_zone_offering_t3_and_a_local_zone_is_never_chosen(dev: offline.Run) -> None:
    # us-east-1-bos-1a (an opted-in Local Zone) sorts first and offers t3 in the model: excluded.
    assert subnet_zone(dev) == "us-east-1a"
    assert dev.cluster.availability_zone == "us-east-1a"
    # The etcd volume must sit in the master's zone to attach.
    assert [v.inputs["availabilityZone"] for v in dev.mocks.of_type("aws:ebs/volume:Volume")] == ["us-east-1a"]


def test_a_zone_that_is_set_is_used_and_nothing_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import run_stack

    assert subnet_zone(run_stack("prod")) == "eu-west-1a"
    assert subnet_zone(run_stack("unusual")) == "ap-southeast-2b"

    def refuse(*_: object) -> None:
        raise AssertionError("looked up offerings although availabilityZone is set")

    monkeypatch.setattr(ec2, "instance_type_offerings", refuse)
    assert subnet_zone(dev_with(availabilityZone="us-east-1c")) == "us-east-1c"


def test_us_east_1e_without_t3_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """a-d lack t3 and e (the first of the rest) lacks every current family: f is chosen."""
    zones = {z: ec2.Zone(lacks=OLD_ZONE) for z in ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d")}
    zones |= {"us-east-1e": ec2.Zone(lacks=ec2.CURRENT_FAMILIES_MISSING_IN_OLD_ZONES), "us-east-1f": ec2.Zone()}
    monkeypatch.setitem(ec2.REGIONS, "us-east-1", zones)
    assert subnet_zone(dev_with()) == "us-east-1f"


def test_the_zone_offers_both_instance_types(monkeypatch: pytest.MonkeyPatch) -> None:
    zones = {
        "us-east-1a": ec2.Zone(lacks=frozenset({"m5"})),  # the master's t3, not the minions' m5
        "us-east-1b": ec2.Zone(lacks=frozenset({"t3"})),  # the minions' m5, not the master's t3
        "us-east-1c": ec2.Zone(),
    }
    monkeypatch.setitem(ec2.REGIONS, "us-east-1", zones)
    assert subnet_zone(dev_with(minionInstanceType="m5.large")) == "us-east-1c"
    assert subnet_zone(dev_with()) == "us-east-1a"


def test_the_choice_is_stable_whatever_order_ec2_answers_in(monkeypatch: pytest.MonkeyPatch) -> None:
    first = subnet_zone(dev_with())
    assert subnet_zone(dev_with()) == first == "us-east-1a"
    real_zones, real_offerings = ec2.availability_zones, ec2.instance_type_offerings

    def reversed_zones(region: str, args: dict) -> dict:
        answer = real_zones(region, args)
        return {**answer, "names": answer["names"][::-1]}

    def reversed_offerings(region: str, args: dict) -> dict:
        answer = real_offerings(region, args)
        return {**answer, "instanceTypes": answer["instanceTypes"][::-1], "locations": answer["locations"][::-1]}

    monkeypatch.setattr(ec2, "availability_zones", reversed_zones)
    monkeypatch.setattr(ec2, "instance_type_offerings", reversed_offerings)
    assert subnet_zone(dev_with()) == "us-east-1a"


def test_no_zone_offering_both_types_is_a_clear_error_and_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    zones = {"us-east-1a": ec2.Zone(lacks=frozenset({"m5"})), "us-east-1b": ec2.Zone(lacks=frozenset({"t3"}))}
    monkeypatch.setitem(ec2.REGIONS, "us-east-1", zones)
    mocks = offline.OfflineMocks()
    config = {**offline.stack_config("dev"), "kube-ec2:minionInstanceType": "m5.large"}
    with pytest.raises(pulumi.RunError) as err:
        offline.run("dev", config, mocks)
    assert str(err.value) == (
        "kube-ec2:availabilityZone: unset, and no availability zone of us-east-1 offers m5.large and t3.medium "
        "(EC2 instance-type offerings); allowed: instance types that share a zone in us-east-1 "
        "(masterInstanceType, minionInstanceType), or another aws:region"
    )
    assert [r for r in mocks.resources if not r.typ.startswith("kube-ec2:")] == []
