"""Security settings, each with its expected value written here (issue 9).

Every assertion names the advisory, benchmark check or baseline it stands for; the values are
written in the test, never read from the code that produces them.
"""

from __future__ import annotations

import base64
import gzip

import pytest
import yaml
from cryptography import x509

from components import offline, versions
from tests.shipped import (
    certificate,
    daemon,
    heredoc,
    step_script,
    unit_flags,
    unit_section,
    user_data_files,
    yaml_file,
)
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
        "LimitNPROC": ["infinity"], "LimitCORE": ["infinity"], "TasksMax": ["infinity"], "TimeoutStartSec": ["120"],
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


# --- CIS Kubernetes Benchmark v1.12 (kube-bench cfg/cis-1.12, the newest for 1.3x): the value each
# check wants, written here. README "CIS Kubernetes Benchmark" lists every check, applied or not.

PKI = "/etc/kubernetes/pki"
APISERVER = {
    "anonymous-auth": "false",  # 1.2.1
    "kubelet-client-certificate": f"{PKI}/apiserver-kubelet-client.crt",  # 1.2.4
    "kubelet-client-key": f"{PKI}/apiserver-kubelet-client.key",  # 1.2.4
    "kubelet-certificate-authority": f"{PKI}/ca.crt",  # 1.2.5
    "authorization-mode": "Node,RBAC",  # 1.2.6-1.2.8
    "enable-admission-plugins": "DenyServiceExternalIPs,NodeRestriction",  # 1.2.3, 1.2.14 (not AlwaysAdmit: 1.2.10)
    "profiling": "false",  # 1.2.15
    "audit-log-path": "/var/log/kubernetes/audit.log",  # 1.2.16
    "audit-log-maxage": "30",  # 1.2.17
    "audit-log-maxbackup": "10",  # 1.2.18
    "audit-log-maxsize": "100",  # 1.2.19
    "service-account-lookup": "true",  # 1.2.21
    "service-account-key-file": f"{PKI}/service-account.pub",  # 1.2.22
    "etcd-certfile": f"{PKI}/apiserver-etcd-client.crt",  # 1.2.23
    "etcd-keyfile": f"{PKI}/apiserver-etcd-client.key",  # 1.2.23
    "tls-cert-file": f"{PKI}/apiserver.crt",  # 1.2.24
    "tls-private-key-file": f"{PKI}/apiserver.key",  # 1.2.24
    "client-ca-file": f"{PKI}/ca.crt",  # 1.2.25
    "etcd-cafile": f"{PKI}/etcd-ca.crt",  # 1.2.26
    "encryption-provider-config": f"{PKI}/encryption-config.yaml",  # 1.2.27
    "service-account-extend-token-expiration": "false",  # 1.2.30
    "tls-min-version": "VersionTLS12",
}
CONTROLLER_MANAGER = {
    "terminated-pod-gc-threshold": "1000",  # 1.3.1
    "profiling": "false",  # 1.3.2
    "use-service-account-credentials": "true",  # 1.3.3
    "service-account-private-key-file": f"{PKI}/service-account.key",  # 1.3.4
    "root-ca-file": f"{PKI}/ca.crt",  # 1.3.5
    "bind-address": "127.0.0.1",  # 1.3.7
}
ETCD = {  # 2.1-2.6
    ("client-transport-security", "cert-file"): f"{PKI}/etcd-server.crt",
    ("client-transport-security", "key-file"): f"{PKI}/etcd-server.key",
    ("client-transport-security", "client-cert-auth"): True,
    ("client-transport-security", "auto-tls"): False,
    ("client-transport-security", "trusted-ca-file"): f"{PKI}/etcd-ca.crt",  # 2.7: etcd's own CA
    ("peer-transport-security", "cert-file"): f"{PKI}/etcd-peer.crt",
    ("peer-transport-security", "key-file"): f"{PKI}/etcd-peer.key",
    ("peer-transport-security", "client-cert-auth"): True,
    ("peer-transport-security", "auto-tls"): False,
}
KUBELET = {
    ("authentication", "anonymous", "enabled"): False,  # 4.2.1
    ("authentication", "webhook", "enabled"): True,  # 4.2.1
    ("authorization", "mode"): "Webhook",  # 4.2.2
    ("authentication", "x509", "clientCAFile"): f"{PKI}/ca.crt",  # 4.2.3
    ("readOnlyPort",): 0,  # 4.2.4
    ("makeIPTablesUtilChains",): True,  # 4.2.6
    ("eventRecordQPS",): 5,  # 4.2.8
    ("tlsCertFile",): f"{PKI}/kubelet.crt",  # 4.2.9
    ("tlsPrivateKeyFile",): f"{PKI}/kubelet.key",  # 4.2.9
    # 4.2.10 is not applied: certificates come from Pulumi, no CSR signer (README says why).
    ("rotateCertificates",): False,
}
# 1.1.x and 4.1.x: path -> mode (owner root:root everywhere: cloud-init writes as root).
MODES = {
    "master": {
        "/etc/systemd/system/kube-apiserver.service": "0600",  # 1.1.1 (a unit, not a pod spec)
        "/etc/systemd/system/kube-controller-manager.service": "0600",  # 1.1.3
        "/etc/systemd/system/kube-scheduler.service": "0600",  # 1.1.5
        "/etc/systemd/system/etcd.service": "0600",  # 1.1.7
        "/etc/kubernetes/admin.kubeconfig": "0600",  # 1.1.13
        "/etc/kubernetes/super-admin.kubeconfig": "0600",  # 1.1.13
        "/etc/kubernetes/scheduler.kubeconfig": "0600",  # 1.1.15
        "/etc/kubernetes/controller-manager.kubeconfig": "0600",  # 1.1.17
    },
    "minion-0": {
        "/etc/systemd/system/kubelet.service": "0600",  # 4.1.1
        "/etc/kubernetes/kube-proxy.kubeconfig": "0600",  # 4.1.3
        "/etc/kubernetes/kubelet.kubeconfig": "0600",  # 4.1.5
        "/var/lib/kubelet/config.yaml": "0600",  # 4.1.9
        "/etc/cni/net.d/10-flannel.conflist": "0600",  # 1.1.9
    },
}


def dig(doc: object, path: tuple[str, ...]) -> object:
    for key in path:
        assert isinstance(doc, dict), path
        doc = doc[key]
    return doc


def test_cis_apiserver_flags(dev: offline.Run) -> None:
    flags = daemon(dev, "master", "kube-apiserver")
    assert {flag: flags.get(flag) for flag in APISERVER} == APISERVER
    assert "token-auth-file" not in flags  # 1.2.2
    assert "disable-admission-plugins" not in flags  # 1.2.12, 1.2.13: ServiceAccount, NamespaceLifecycle stay on
    assert "AlwaysAdmit" not in flags["enable-admission-plugins"]  # 1.2.10


def test_cis_controller_manager_and_scheduler(dev: offline.Run) -> None:
    flags = daemon(dev, "master", "kube-controller-manager")
    assert {flag: flags.get(flag) for flag in CONTROLLER_MANAGER} == CONTROLLER_MANAGER
    assert "feature-gates" not in flags  # 1.3.6: RotateKubeletServerCertificate keeps its default (true)
    scheduler = daemon(dev, "master", "kube-scheduler")
    assert scheduler["bind-address"] == "127.0.0.1"  # 1.4.2
    config = yaml_file(dev, "master", scheduler["config"])
    assert config["enableProfiling"] is False  # 1.4.1


def test_cis_etcd_config(dev: offline.Run) -> None:
    config = yaml_file(dev, "master", "/etc/etcd/etcd.conf.yml")
    assert {path: dig(config, path) for path in ETCD} == ETCD


def test_cis_kubelet_and_kube_proxy(dev: offline.Run) -> None:
    config = yaml_file(dev, "minion-0", "/var/lib/kubelet/config.yaml")
    assert {path: dig(config, path) for path in KUBELET} == KUBELET
    # 4.2.5: the field has had no effect since 1.34 (kubernetes PR 131992; flag audit): not set.
    assert "streamingConnectionIdleTimeout" not in config
    proxy = yaml_file(dev, "minion-0", "/var/lib/kube-proxy/config.yaml")
    assert proxy["metricsBindAddress"] == "127.0.0.1:10249"  # 4.3.1


def test_cis_file_modes(dev: offline.Run) -> None:
    for host, modes in MODES.items():
        instance = dev.mocks.named(f"{host}-instance")
        text = gzip.decompress(base64.b64decode(instance.inputs["userDataBase64"])).decode()
        written = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
        assert {path: written[path]["permissions"] for path in modes} == modes, host
        assert all(written[path].get("owner", "root:root") == "root:root" for path in modes), host
