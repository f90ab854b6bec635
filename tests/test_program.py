"""The whole program under Pulumi mocks (preview=False): resources, rules, hosts and outputs."""

from __future__ import annotations

import base64
import gzip
import ipaddress

from components import offline
from components.offline import tls as offline_tls
from components.settings import ROOT

INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
COMMAND = "command:remote:Command"



def test_resource_counts(stack: offline.Run) -> None:
    minions = len(stack.cluster.minions)
    admin = {r.inputs.get("cidrIpv4") for r in stack.mocks.of_type(INGRESS)} - {None}
    counts = {
        "aws:ec2/vpc:Vpc": 1,
        "aws:ec2/subnet:Subnet": 1,
        "aws:ec2/internetGateway:InternetGateway": 1,
        "aws:ec2/routeTable:RouteTable": 1,
        "aws:ec2/routeTableAssociation:RouteTableAssociation": 1,
        "aws:ec2/securityGroup:SecurityGroup": 2,
        "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": 1,
        INGRESS: 3 * len(admin) + 7,
        EGRESS: 2,
        "aws:ec2/keyPair:KeyPair": 1,
        INSTANCE: 1 + minions,
        "aws:ec2/eip:Eip": 1,
        # master: 9 steps; per minion: cloud-init, pki, flanneld, docker, cordon, kubelet, ready, uncordon, drain;
        # then coredns, smoke test.
        COMMAND: 9 + 9 * minions + 2,
        "tls:index/selfSignedCert:SelfSignedCert": 3,
        "tls:index/locallySignedCert:LocallySignedCert": 12 + 2 * minions,  # per minion: kubelet, flannel-etcd
    }
    for typ, expected in counts.items():
        assert len(stack.mocks.of_type(typ)) == expected, typ


def _groups(run: offline.Run) -> dict[str, str]:
    """security group resource id -> `master` / `minion`."""
    return {f"{r.name}-id": r.name.removeprefix("security-") for r in run.mocks.of_type("aws:ec2/securityGroup:SecurityGroup")}


def _rules(run: offline.Run) -> set[tuple[str, str, int, int, str]]:
    groups = _groups(run)
    return {
        (
            groups[r.inputs["securityGroupId"]],
            r.inputs["ipProtocol"],
            int(r.inputs["fromPort"]),
            int(r.inputs["toPort"]),
            r.inputs.get("cidrIpv4") or "sg:" + groups[r.inputs["referencedSecurityGroupId"]],
        )
        for r in run.mocks.of_type(INGRESS)
    }


def test_every_security_group_rule_dev(dev: offline.Run) -> None:
    admin = "192.0.2.1/32"
    assert _rules(dev) == {
        ("master", "tcp", 22, 22, admin),
        ("master", "tcp", 6443, 6443, admin),
        ("minion", "tcp", 30000, 32767, admin),
        ("minion", "tcp", 22, 22, "sg:master"),
        ("master", "tcp", 6443, 6443, "sg:minion"),
        ("master", "tcp", 2379, 2379, "sg:minion"),
        ("master", "udp", 8472, 8472, "sg:minion"),
        ("minion", "tcp", 10250, 10250, "sg:master"),
        ("minion", "udp", 8472, 8472, "sg:master"),
        ("minion", "udp", 8472, 8472, "sg:minion"),
    }


def test_rules_have_descriptions_and_explicit_egress(stack: offline.Run) -> None:
    for rule in stack.mocks.of_type(INGRESS) + stack.mocks.of_type(EGRESS):
        assert len(rule.inputs["description"]) > 10
    groups = _groups(stack)
    egress = {(groups[r.inputs["securityGroupId"]], r.inputs["ipProtocol"], r.inputs["cidrIpv4"]) for r in stack.mocks.of_type(EGRESS)}
    assert egress == {("master", "-1", "0.0.0.0/0"), ("minion", "-1", "0.0.0.0/0")}


def test_cluster_internal_ports_only_from_members(stack: offline.Run) -> None:
    """etcd, kubelet and VXLAN never from a CIDR; 2380 never; the world only where the user wrote it."""
    configured = set(run_admin(stack))
    for group, _proto, low, high, source in _rules(stack):
        assert not (low <= 2380 <= high), "etcd peer port must stay closed"
        if low in (2379, 10250, 8472):
            assert source.startswith("sg:"), (group, low, source)
        if not source.startswith("sg:"):
            assert source in configured
            assert (group, low, high) in {("master", 22, 22), ("master", 6443, 6443), ("minion", 30000, 32767)}


def run_admin(run: offline.Run) -> list[str]:
    return sorted({r.inputs["cidrIpv4"] for r in run.mocks.of_type(INGRESS) if r.inputs.get("cidrIpv4")})


def test_world_is_open_only_when_written() -> None:
    from tests.conftest import run_stack

    assert "0.0.0.0/0" not in run_admin(run_stack("dev"))
    assert "0.0.0.0/0" not in run_admin(run_stack("prod"))
    assert run_admin(run_stack("unusual")) == ["0.0.0.0/0"]
    assert run_admin(run_stack("prod")) == ["192.0.2.1/32"]  # unset: the offline placeholder for the deployer's /32
    two = offline.run("dev", {**offline.stack_config("dev"), "kube-ec2:adminCidrs": ["81.2.69.160/28", "151.101.1.7/32"]})
    assert run_admin(two) == ["151.101.1.7/32", "81.2.69.160/28"]


def test_hosts_imdsv2_encryption_tags_and_fixed_ips(stack: offline.Run) -> None:
    instances = {r.name: r for r in stack.mocks.of_type(INSTANCE)}
    cluster = stack.cluster.master.instance  # noqa: F841 (the component exists)
    names = ["master", *[f"minion-{i}" for i in range(len(stack.cluster.minions))]]
    assert sorted(instances) == sorted(f"{n}-instance" for n in names)
    subnet = ipaddress.ip_network(stack.mocks.of_type("aws:ec2/subnet:Subnet")[0].inputs["cidrBlock"])
    cluster_name = stack.mocks.of_type("aws:ec2/vpc:Vpc")[0].inputs["tags"]["Name"].removesuffix("-vpc")
    for index, name in enumerate(names):
        inputs = instances[f"{name}-instance"].inputs
        assert inputs["metadataOptions"]["httpTokens"] == "required"
        assert inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
        assert inputs["rootBlockDevice"]["encrypted"] is True
        assert inputs["rootBlockDevice"]["volumeType"] == "gp3"
        assert inputs["tags"]["Name"] == f"{cluster_name}-{name}"
        assert inputs["tags"]["Role"] == ("master" if index == 0 else "minion")
        assert inputs["tags"][f"kubernetes.io/cluster/{cluster_name}"] == "owned"
        assert inputs["privateIp"] == str(subnet[10 + index])
        assert inputs["ami"].startswith("ami-")


def test_vpc_dns_and_public_subnet(stack: offline.Run) -> None:
    vpc = stack.mocks.of_type("aws:ec2/vpc:Vpc")[0].inputs
    assert vpc["enableDnsSupport"] and vpc["enableDnsHostnames"]
    assert stack.mocks.of_type("aws:ec2/subnet:Subnet")[0].inputs["mapPublicIpOnLaunch"] is True
    route = stack.mocks.of_type("aws:ec2/routeTable:RouteTable")[0].inputs["routes"][0]
    assert route["cidrBlock"] == "0.0.0.0/0" and route["gatewayId"]


def test_master_has_an_elastic_ip_used_by_api_and_kubeconfig(dev: offline.Run) -> None:
    eip = dev.mocks.of_type("aws:ec2/eip:Eip")[0]
    assert eip.inputs["instance"] == "master-instance-id"
    assert dev.outputs["masterPublicIp"] == eip.outputs["publicIp"]
    assert f"server: https://{eip.outputs['publicIp']}:6443" in dev.outputs["kubeconfig"]


def test_outputs_and_secrets(stack: offline.Run) -> None:
    assert set(stack.outputs) == {
        "masterPublicIp", "masterPrivateIp", "minionPublicIps", "minionPrivateIps", "sshUser", "sshPrivateKey", "kubeconfig",
        "etcdSnapshotBucket",
    }
    assert stack.secret_outputs == {"sshPrivateKey", "kubeconfig"}
    assert stack.outputs["sshUser"] == "ubuntu"
    assert "OPENSSH PRIVATE KEY" in stack.outputs["sshPrivateKey"]
    assert stack.outputs["minionPrivateIps"] == [m.private_ip for m in stack.cluster.minions]
    assert len(stack.outputs["minionPublicIps"]) == len(stack.cluster.minions)


def test_user_data_is_gzip_cloud_config_and_carries_no_secret(stack: offline.Run) -> None:
    keys = _private_material(stack)
    for instance in stack.mocks.of_type(INSTANCE):
        text = gzip.decompress(base64.b64decode(instance.inputs["userDataBase64"])).decode()
        assert text.startswith("#cloud-config\n")
        assert "PRIVATE KEY" not in text
        assert not any(k in text for k in keys)


def _private_material(run: offline.Run) -> list[str]:
    values = []
    for r in run.mocks.resources:
        for field in ("privateKeyPem", "privateKeyOpenssh", "privateKeyPemPkcs8", "base64", "hex"):
            if isinstance(r.outputs.get(field), str) and r.typ != COMMAND:
                values.append(r.outputs[field].strip())
    return [v for v in values if v]


def test_no_private_key_in_any_plain_command_input(stack: offline.Run) -> None:
    """Secrets travel only as a Command's stdin (a secret); never in create/delete/triggers."""
    keys = _private_material(stack)
    assert keys
    for cmd in stack.mocks.of_type(COMMAND):
        plain = " ".join(str(cmd.inputs.get(f, "")) for f in ("create", "delete", "triggers", "environment"))
        assert "PRIVATE KEY" not in plain, cmd.name
        assert not any(k in plain for k in keys), cmd.name
        connection, secret = unwrap(cmd.inputs["connection"])
        assert secret and connection["user"] == "ubuntu" and "PRIVATE KEY" in connection["privateKey"]


def unwrap(value: object) -> tuple[object, bool]:
    """(value without Pulumi's secret envelope, whether it was secret)."""
    plain = offline_tls.plain(value)
    return plain, plain != value


def test_pki_bundles_only_go_to_pki_steps(stack: offline.Run) -> None:
    with_stdin = sorted(c.name for c in stack.mocks.of_type(COMMAND) if c.inputs.get("stdin"))
    hosts = ["master", *[f"minion-{i}" for i in range(len(stack.cluster.minions))]]
    assert with_stdin == sorted(f"{h}-pki" for h in hosts)
    for name in with_stdin:
        bundle, secret = unwrap(stack.mocks.named(name).inputs["stdin"])
        assert secret, f"{name}: the PKI bundle must be a secret input"
        assert isinstance(bundle, str) and len(bundle) > 1000


def test_stack_files_exist() -> None:
    assert (ROOT / "Pulumi.dev.yaml").exists() and (ROOT / "Pulumi.prod.yaml").exists()


def test_scaling_adds_and_removes_exactly_one_minions_resources() -> None:
    def names(count: str) -> set[str]:
        run = offline.run("dev", {**offline.stack_config("dev"), "kube-ec2:minionCount": count})
        return {r.name for r in run.mocks.resources}

    three, four = names("3"), names("4")
    added = four - three
    assert three - four == set()
    steps = {
        f"minion-3-{s}" for s in ("cloud-init", "pki", "flanneld", "docker", "cordon", "kubelet", "ready", "uncordon", "drain")
    }
    pki = {f"pki-{cert}-minion-3{suffix}" for cert in ("kubelet", "flannel-etcd") for suffix in ("", "-key", "-csr")}
    assert added == {"minion-3", "minion-3-instance", *steps, *pki}


def test_hosts_ignore_user_data_and_looked_up_ami_changes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """User data only runs at first boot (the steps carry later changes); a newer Canonical AMI must
    not replace running hosts, but an amiId the user sets does."""
    import components.host as host_module

    seen: dict[str, list[str]] = {}
    real = host_module.aws.ec2.Instance

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, name, *args, opts=None, **kwargs):  # type: ignore[no-untyped-def]
            seen[name] = list(opts.ignore_changes or [])
            super().__init__(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(host_module.aws.ec2, "Instance", Recording)
    offline.run("dev")
    assert seen and all(v == ["userData", "userDataBase64", "ebsOptimized", "ami"] for v in seen.values()), seen
    seen.clear()
    offline.run("dev", {**offline.stack_config("dev"), "kube-ec2:amiId": "ami-0abcdef1234567890"})
    assert seen and all(v == ["userData", "userDataBase64", "ebsOptimized"] for v in seen.values()), seen
