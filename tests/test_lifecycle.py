"""How `pulumi up` replaces what the program declares: replacements must never conflict.

The Pulumi engine creates a replacement before deleting the old resource unless the provider or
the program asks for delete-before-replace (pulumi/pulumi pkg/resource/deploy/step_generator.go
at 1a16857a44f16e46a9dce29f184c511062a70f80: `deleteBeforeReplace := diff.DeleteBeforeReplace`,
overridden by the resource option; for a delete-before-replace it first deletes the dependents that
would be replaced too, `calculateDependentReplacements`). The AWS provider asks for it only for
resources whose explicit name is fixed, which none of the identities below is.
"""

from __future__ import annotations

import functools
import re

import pytest

from components import offline
from tests.engine_options import Options, recording
from tests.lifecycle import Plan, up

# Identities AWS allows once, and the input that pins each: creating the replacement next to the
# old resource fails (the address, the CIDR or the volume is in use).
IDENTITY_PINNING = {
    "aws:ec2/instance:Instance": "privateIp",
    "aws:ec2/subnet:Subnet": "cidrBlock",
    "aws:ec2/volumeAttachment:VolumeAttachment": "volumeId",  # a volume attaches to one instance at a time
}


@functools.cache
def options(stack: str = "dev") -> dict[tuple[str, str], Options]:
    with recording() as seen:
        offline.run(stack)
    return dict(seen)


def test_identity_pinning_resources_are_deleted_before_replaced() -> None:
    found = {typ: 0 for typ in IDENTITY_PINNING}
    for (typ, name), opts in options().items():
        if typ in IDENTITY_PINNING:
            found[typ] += 1
            assert opts.delete_before_replace, f"{name} pins {IDENTITY_PINNING[typ]} but is created before the old one goes"
    assert found == {"aws:ec2/instance:Instance": 4, "aws:ec2/subnet:Subnet": 1, "aws:ec2/volumeAttachment:VolumeAttachment": 1}


def test_options_recorder_sees_what_the_program_declared() -> None:
    """The recorder reads the real request: ignore_changes and dependencies as cluster.py sets them."""
    master = options()[("aws:ec2/instance:Instance", "master-instance")]
    assert master.ignore_changes == ("userData", "userDataBase64", "ebsOptimized", "ami")
    assert master.property_dependencies["subnetId"] == ("network-subnet",)
    etcd = options()[("command:remote:Command", "master-etcd")]
    assert "master-pki" in etcd.dependencies and not etcd.delete_before_replace


# --- what a change to each key does (tests/lifecycle.py: offline runs, the providers' replace rules)

MASTER_STEPS = {
    "master-cloud-init", "master-pki", "master-etcd", "master-flannel-network", "master-flanneld", "master-kube-apiserver",
    "master-kube-controller-manager", "master-kube-scheduler", "master-cluster-rbac", "master-coredns", "master-smoke-test",
}
MINION_STEPS = {f"minion-N-{s}" for s in ("cloud-init", "pki", "flanneld", "docker", "kubelet", "ready", "cordon", "uncordon")}
EVERY_STEP = MASTER_STEPS | MINION_STEPS | {"kubeconfig-check"}
INSTANCES = {"master-instance", "minion-N-instance"}
LEAF_CERTS = {
    "pki-admin", "pki-apiserver", "pki-apiserver-etcd-client", "pki-apiserver-kubelet-client", "pki-controller-manager",
    "pki-etcd-peer", "pki-etcd-server", "pki-flannel-etcd-master", "pki-flannel-etcd-minion-N", "pki-front-proxy-client",
    "pki-kube-proxy", "pki-kubelet-minion-N", "pki-scheduler", "pki-super-admin",
}
NEW_MINION = {
    *(f"minion-N-{s}" for s in ("cloud-init", "pki", "flanneld", "docker", "kubelet", "ready", "cordon", "uncordon", "drain", "instance")),
    *(f"pki-{c}-minion-N{suffix}" for c in ("kubelet", "flannel-etcd") for suffix in ("", "-csr", "-key")),
}
SECURITY = {
    "security-master", "security-minion", "security-master-egress", "security-minion-egress",
    "security-master-tcp22-from-192-0-2-1-32", "security-master-tcp6443-from-192-0-2-1-32",
    "security-minion-tcp30000-from-192-0-2-1-32", "security-master-tcp2379-from-minion", "security-master-tcp6443-from-minion",
    "security-master-udp8472-from-minion", "security-minion-tcp10250-from-master", "security-minion-tcp22-from-master",
    "security-minion-udp8472-from-master", "security-minion-udp8472-from-minion",
}

# key -> (new value, {action: resources}); every resource not named is unchanged. minion-N: every minion.
CHANGES: dict[str, tuple[object, dict[str, set[str]]]] = {
    # A new host: its resources; every host's /etc/hosts (cloud-init step); flannel and the smoke test count hosts.
    "minionCount": ("4", {
        "create": NEW_MINION,
        "update": {"master-cloud-init", "master-flannel-network", "master-smoke-test", "minion-N-cloud-init"},
    }),
    # Stop, resize, start (EC2 changes the type in place); nothing re-runs.
    "masterInstanceType": ("t3.large", {"update": {"master-instance"}}),
    "minionInstanceType": ("t3.large", {"update": {"minion-N-instance"}}),
    "rootVolumeGb": ("40", {"update": INSTANCES}),
    # New binaries are fetched (cloud-init step) and swapped in, control plane first, each minion cordoned.
    "kubernetesVersion": ("1.36.0", {"update": {
        "master-cloud-init", "master-kube-apiserver", "master-kube-controller-manager", "master-kube-scheduler",
        "minion-N-cloud-init", "minion-N-kubelet", "minion-N-cordon", "minion-N-uncordon",
    }}),
    # Only flannel's network config and kube-proxy's cluster CIDR are rewritten.
    "podCidr": ("10.201.0.0/16", {"update": {"master-flannel-network", "minion-N-kubelet"}}),
    # The apiserver certificate (new Service IP) is reissued: every master step re-runs; kubelets get the new DNS IP.
    "serviceCidr": ("10.33.0.0/24", {
        "replace": {"pki-apiserver", "pki-apiserver-csr", "kubeconfig-check", "minion-N-cordon", "minion-N-uncordon"} | MASTER_STEPS,
        "update": {"minion-N-kubelet"},
    }),
    # Every leaf certificate is reissued with the new lifetime and every step re-runs to install it.
    "certValidityHours": ("720", {"replace": LEAF_CERTS | EVERY_STEP}),
    "allowUpstreamChecksums": ("true", {}),
    # Only the rules naming the range: one created, one deleted (rule names carry the range).
    "adminCidrs": (["34.201.10.7/32"], {
        "create": {"security-master-tcp22-from-34-201-10-7-32", "security-master-tcp6443-from-34-201-10-7-32",
                   "security-minion-tcp30000-from-34-201-10-7-32"},
        "delete": {"security-master-tcp22-from-192-0-2-1-32", "security-master-tcp6443-from-192-0-2-1-32",
                   "security-minion-tcp30000-from-192-0-2-1-32"},
    }),
    # Every host is replaced (delete first: fixed IPs); the master's new instance gets the same etcd volume.
    "amiId": ("ami-0abcdef1234567890", {
        "replace": INSTANCES | EVERY_STEP | {"etcd-attachment"},
        "update": {"master-eip"},
    }),
    # A new subnet (deleted first: its CIDR), every host in it, and a new etcd volume in the new zone:
    # the cluster state comes back only from a snapshot (README: restoring etcd).
    "availabilityZone": ("us-east-1b", {
        "replace": INSTANCES | EVERY_STEP | {"etcd-attachment", "etcd-volume", "network-subnet", "network-routes-subnet"},
        "update": {"master-eip"},
    }),
    # A new VPC and everything in it (gateway, routes, groups, rules, hosts); certificates naming the
    # new addresses. The etcd volume stays (same zone) and is attached to the new master.
    "vpcCidr": ("10.241.0.0/16", {
        "replace": INSTANCES | EVERY_STEP | SECURITY | {
            "etcd-attachment", "network-vpc", "network-default-sg", "network-igw", "network-subnet", "network-routes",
            "network-routes-subnet",
            "pki-apiserver", "pki-apiserver-csr", "pki-etcd-peer", "pki-etcd-peer-csr", "pki-etcd-server", "pki-etcd-server-csr",
            "pki-kubelet-minion-N", "pki-kubelet-minion-N-csr",
        },
        "update": {"master-eip"},
    }),
}
# Identities AWS allows once: a replacement created next to the old one would fail.
PINNED = tuple(IDENTITY_PINNING)


def short(name: str) -> str:
    return re.sub(r"minion-\d+", "minion-N", name)


def summary(plan: Plan) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for (_typ, name), change in plan.changes.items():
        if change.action != "same":
            result.setdefault(change.action, set()).add(short(name))
    return result


def dev_config() -> dict[str, object]:
    return dict(offline.stack_config("dev"))


def assert_no_identity_conflict(plan: Plan) -> None:
    for (typ, name), change in plan.changes.items():
        if change.action == "replace" and typ in PINNED:
            assert plan.new_options[(typ, name)].delete_before_replace, f"{name}: replaced next to the old one ({change.paths})"
        if typ == "aws:ec2/internetGateway:InternetGateway" and change.action == "update":
            assert "vpcId" not in change.paths, "the gateway would be detached from a VPC whose hosts hold public addresses"


def test_every_key_is_in_the_table() -> None:
    import yaml

    keys = set(yaml.safe_load((offline.ROOT / "Pulumi.yaml").read_text())["config"])
    assert keys == set(CHANGES), keys ^ set(CHANGES)


def test_a_run_without_changes_changes_nothing() -> None:
    plan = up("dev", dev_config(), dev_config())
    assert summary(plan) == {}
    assert plan.old_options == plan.new_options


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_what_a_change_of_each_key_does(key: str) -> None:
    value, expected = CHANGES[key]
    new = {**dev_config(), f"kube-ec2:{key}": value}
    if key == "kubernetesVersion":
        new["kube-ec2:allowUpstreamChecksums"] = "true"  # 1.36.0 has no pinned hashes
    plan = up("dev", dev_config(), new)
    assert summary(plan) == expected
    assert_no_identity_conflict(plan)


def test_a_replaced_master_keeps_its_etcd_volume() -> None:
    plan = up("dev", dev_config(), {**dev_config(), "kube-ec2:amiId": "ami-0abcdef1234567890"})
    assert plan.changes[("aws:ebs/volume:Volume", "etcd-volume")].action == "same"
    attachment = plan.changes[("aws:ec2/volumeAttachment:VolumeAttachment", "etcd-attachment")]
    assert attachment.action == "replace" and attachment.paths == ("instanceId",)


def test_conflict_check_fails_without_delete_before_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity check is shown failing on a program that replaces a fixed IP next to the old one."""
    import components.host as host_module

    real = host_module.aws.ec2.Instance

    class CreatedFirst(real):  # type: ignore[misc, valid-type]
        def __init__(self, name, *args, opts=None, **kwargs):  # type: ignore[no-untyped-def]
            opts.delete_before_replace = None
            super().__init__(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(host_module.aws.ec2, "Instance", CreatedFirst)
    plan = up("dev", dev_config(), {**dev_config(), "kube-ec2:amiId": "ami-0abcdef1234567890"})
    with pytest.raises(AssertionError, match=r"(master|minion-\d)-instance: replaced next to the old one"):
        assert_no_identity_conflict(plan)


def test_gateway_check_fails_when_a_new_vpc_would_move_the_gateway_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import components.network as network_module

    real = network_module.aws.ec2.InternetGateway

    class MovedInPlace(real):  # type: ignore[misc, valid-type]
        def __init__(self, name, *args, opts=None, **kwargs):  # type: ignore[no-untyped-def]
            opts.replace_on_changes = None
            super().__init__(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(network_module.aws.ec2, "InternetGateway", MovedInPlace)
    plan = up("dev", dev_config(), {**dev_config(), "kube-ec2:vpcCidr": "10.241.0.0/16"})
    assert plan.changes[("aws:ec2/internetGateway:InternetGateway", "network-igw")].action == "update"
    with pytest.raises(AssertionError, match="gateway would be detached"):
        assert_no_identity_conflict(plan)


def test_one_minion_fewer_deletes_exactly_its_resources() -> None:
    plan = up("dev", dev_config(), {**dev_config(), "kube-ec2:minionCount": "2"})
    assert summary(plan) == {
        "delete": NEW_MINION,
        "update": {"master-cloud-init", "master-flannel-network", "master-smoke-test", "minion-N-cloud-init"},
    }
    deleted = {name for (_t, name), c in plan.changes.items() if c.action == "delete"}
    assert all("minion-2" in name for name in deleted)  # the last one, never another
