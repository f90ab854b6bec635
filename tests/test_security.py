"""Security settings, each with its expected value written here (issue 9).

Every assertion names the advisory, benchmark check or baseline it stands for; the values are
written in the test, never read from the code that produces them.
"""

from __future__ import annotations

import base64

import pytest
import yaml
from cryptography import x509

from components import offline, versions
from tests.shipped import certificate, heredoc, step_script, unit_flags, unit_section, user_data_files
from tests.test_pki import bundle

# First release of each line past every published etcd RBAC-bypass advisory: GHSA-rfx7-8w68-q57q
# (nested txn), GHSA-q8m4-xhhv-38mg (unauthenticated Alarm, Lease, ...), GHSA-x35m-3gp4-4fh5 /
# CVE-2026-44283 (PrevKv or lease in txn), GHSA-xg4h-6gfc-h4m8 (Watch from a key).
ETCD_FIXED = {(3, 5): 33, (3, 6): 14, (3, 7): 1}


def etcd_is_fixed(version: str) -> bool:
    major, minor, patch = (int(part) for part in version.split("."))
    first_fixed = ETCD_FIXED.get((major, minor))
    if first_fixed is None:
        return (major, minor) > max(ETCD_FIXED)
    return patch >= first_fixed


@pytest.mark.parametrize(
    ("version", "fixed"),
    [("3.5.27", False), ("3.5.32", False), ("3.4.44", False), ("3.6.13", False), ("3.5.33", True), ("3.6.14", True), ("3.7.1", True)],
)
def test_etcd_fix_table(version: str, fixed: bool) -> None:
    assert etcd_is_fixed(version) is fixed


def test_pinned_etcd_is_past_every_rbac_bypass_advisory() -> None:
    etcd = versions.load()["etcd"]
    assert etcd["version"] == "3.6.14"
    assert etcd_is_fixed(etcd["version"])
    # kubespray checksums.yml (commit 46dbdd39) etcd_binary_checksums amd64 3.6.14
    assert etcd["sha256"] == "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5"


# --- flannel's etcd identity: one per host, least privilege (flannel 0.27.4 registry.go)


def test_flannel_grants_are_read_config_and_readwrite_the_subnet_range() -> None:
    from components.etcd_fence import Grant, flannel_grants

    assert flannel_grants("/coreos.com/network") == (
        Grant("read", "/coreos.com/network/config", prefix=False),
        # flanneld lists and watches "<prefix>/subnets" WithPrefix: range end "<prefix>/subnett"
        Grant("readwrite", "/coreos.com/network/subnets", prefix=True),
    )


def test_each_host_presents_its_own_flannel_etcd_identity(dev: offline.Run) -> None:
    for host in ("master", "minion-0", "minion-1", "minion-2"):
        files = bundle(dev, host)
        cert = x509.load_pem_x509_certificate(files["flannel-etcd.crt"].encode())
        assert cert.subject.rfc4514_string() == f"CN=flannel-{host}", host
        # Only its own: the unit's file names stay flannel-etcd.crt/.key.
        assert sorted(n for n in files if n.startswith("flannel")) == ["flannel-etcd.crt", "flannel-etcd.key"], host


# --- AWS: closed defaults (CIS AWS Foundations EC2.2; explicit EBS optimisation; no instance roles)


def test_the_vpcs_default_security_group_allows_nothing(dev: offline.Run) -> None:
    [vpc] = dev.mocks.of_type("aws:ec2/vpc:Vpc")
    [default] = dev.mocks.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert default.inputs["vpcId"] == "network-vpc-id" and vpc.name == "network-vpc"
    # The provider removes every rule of an adopted default group and creates only those declared.
    assert not default.inputs.get("ingress") and not default.inputs.get("egress")


def test_every_instance_is_ebs_optimized_and_has_no_instance_role(dev: offline.Run) -> None:
    instances = dev.mocks.of_type("aws:ec2/instance:Instance")
    assert len(instances) == 4
    for instance in instances:
        assert instance.inputs["ebsOptimized"] is True, instance.name
        # Minions call no AWS API; the master's only role would be the snapshot upload (issue 8).
        if instance.name != "master-instance":
            assert "iamInstanceProfile" not in instance.inputs, instance.name


# --- cri-dockerd: streaming on loopback, the unit as upstream packages it (v0.3.24)


def test_cri_dockerd_streams_on_loopback_only(dev: offline.Run) -> None:
    unit = user_data_files(dev, "minion-0")["/etc/systemd/system/cri-docker.service"]
    assert unit_flags(unit)["streaming-bind-addr"] == "127.0.0.1:0"
    service = unit_section(unit, "Service")
    upstream = {
        "Type": ["notify"], "KillMode": ["process"], "Delegate": ["yes"], "LimitNOFILE": ["infinity"],
        "LimitNPROC": ["infinity"], "LimitCORE": ["infinity"], "TasksMax": ["infinity"], "TimeoutSec": ["0"],
        "Restart": ["always"], "RestartSec": ["2"], "ExecReload": ["/bin/kill -s HUP $MAINPID"],
    }
    assert {key: service.get(key) for key in upstream} == upstream
    assert unit_section(unit, "Unit")["StartLimitBurst"] == ["3"]
    assert unit_section(unit, "Unit")["StartLimitIntervalSec"] == ["60s"]


# --- admin credentials as kubeadm 1.29+: the exported one is revocable, system:masters stays home


def test_exported_admin_is_in_a_group_rbac_binds_not_system_masters(dev: offline.Run) -> None:
    config = yaml.safe_load(dev.outputs["kubeconfig"])
    cert = x509.load_pem_x509_certificate(base64.b64decode(config["users"][0]["user"]["client-certificate-data"]))
    assert cert.subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    manifest = step_script(dev, "master-cluster-rbac")
    docs = list(yaml.safe_load_all(heredoc(manifest, "/etc/kube-ec2/cluster-rbac.yaml")))
    [binding] = [d for d in docs if d and d["metadata"]["name"] == "kubeadm:cluster-admins"]
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "kubeadm:cluster-admins"}]


def test_system_masters_only_on_the_master_and_only_for_the_rbac_step(dev: offline.Run) -> None:
    super_admin = certificate(dev, "master", "/etc/kubernetes/pki/super-admin.crt")
    assert super_admin.subject.rfc4514_string() == "CN=kubernetes-super-admin,O=system:masters"
    for host in ("minion-0", "minion-1", "minion-2"):
        assert not [name for name in bundle(dev, host) if "admin" in name], host
    users = {}
    for step in dev.mocks.of_type("command:remote:Command"):
        for field in ("create", "delete"):
            if "super-admin.kubeconfig" in str(step.inputs.get(field, "")) and step.name != "master-kube-apiserver":
                users[step.name] = field
    # The API step only writes the file; the RBAC step is the one that must act before RBAC exists.
    assert users == {"master-cluster-rbac": "create"}
