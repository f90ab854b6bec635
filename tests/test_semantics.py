"""What the shipped flags and configs mean, with every expected value written here.

Goldens catch any change, right or wrong, and after `make golden` they catch nothing. These tests
parse what the hosts receive (tests/shipped.py reads it back from an offline run) and compare it
with values written in this file: the CIS settings of the README's table, one daemon at a time,
then the invariants that tie files together (one test each), checked on every stack.
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

import yaml

from components import offline
from tests.shipped import (
    PKI,
    certificate,
    common_name,
    daemon,
    dns_sans,
    heredoc,
    ip_sans,
    json_file,
    organizations,
    step_script,
    unit_section,
    user_data_files,
    yaml_file,
)

# --- CIS Kubernetes Benchmark settings (README "CIS Kubernetes Benchmark settings"), dev stack

APISERVER = {
    "anonymous-auth": "false",  # 1.2.1
    "kubelet-client-certificate": f"{PKI}/apiserver-kubelet-client.crt",  # 1.2.3-1.2.5
    "kubelet-client-key": f"{PKI}/apiserver-kubelet-client.key",
    "kubelet-certificate-authority": f"{PKI}/ca.crt",
    "authorization-mode": "Node,RBAC",  # 1.2.6-1.2.8
    "profiling": "false",  # 1.2.16
    "audit-log-path": "/var/log/kubernetes/audit.log",  # 1.2.17-1.2.20
    "audit-log-maxage": "30",
    "audit-log-maxbackup": "10",
    "audit-log-maxsize": "100",
    "audit-policy-file": "/etc/kubernetes/audit-policy.yaml",
    "service-account-lookup": "true",  # 1.2.23-1.2.24
    "service-account-key-file": f"{PKI}/service-account.pub",
    "service-account-signing-key-file": f"{PKI}/service-account.key",
    "service-account-issuer": "https://kubernetes.default.svc.cluster.local",
    "etcd-certfile": f"{PKI}/apiserver-etcd-client.crt",  # 1.2.25, 1.2.29
    "etcd-keyfile": f"{PKI}/apiserver-etcd-client.key",
    "etcd-cafile": f"{PKI}/etcd-ca.crt",
    "etcd-servers": "https://127.0.0.1:2379",
    "tls-cert-file": f"{PKI}/apiserver.crt",  # 1.2.26-1.2.28
    "tls-private-key-file": f"{PKI}/apiserver.key",
    "client-ca-file": f"{PKI}/ca.crt",
    "tls-min-version": "VersionTLS12",
    "encryption-provider-config": f"{PKI}/encryption-config.yaml",  # 1.2.30-1.2.31
    "secure-port": "6443",
    "requestheader-client-ca-file": f"{PKI}/front-proxy-ca.crt",
    "requestheader-allowed-names": "front-proxy-client",
}
# Flags that would open a door whatever their value; none may appear.
APISERVER_FORBIDDEN = ("insecure-port", "insecure-bind-address", "token-auth-file", "basic-auth-file", "kubelet-https")

CONTROLLER_MANAGER = {
    "bind-address": "127.0.0.1",  # 1.3.7
    "profiling": "false",  # 1.3.2
    "use-service-account-credentials": "true",  # 1.3.3
    "service-account-private-key-file": f"{PKI}/service-account.key",  # 1.3.4
    "root-ca-file": f"{PKI}/ca.crt",  # 1.3.5
    "terminated-pod-gc-threshold": "1000",  # 1.3.1
    "kubeconfig": "/etc/kubernetes/controller-manager.kubeconfig",
    "authentication-kubeconfig": "/etc/kubernetes/controller-manager.kubeconfig",
    "authorization-kubeconfig": "/etc/kubernetes/controller-manager.kubeconfig",
}

ETCD_TLS = {
    "client-transport-security": {
        "cert-file": f"{PKI}/etcd-server.crt",
        "key-file": f"{PKI}/etcd-server.key",
        "client-cert-auth": True,
        "trusted-ca-file": f"{PKI}/etcd-ca.crt",
        "auto-tls": False,
    },
    "peer-transport-security": {
        "cert-file": f"{PKI}/etcd-peer.crt",
        "key-file": f"{PKI}/etcd-peer.key",
        "client-cert-auth": True,
        "trusted-ca-file": f"{PKI}/etcd-ca.crt",
        "auto-tls": False,
    },
}

KUBELET = {
    "authentication": {  # 4.2.1-4.2.3
        "anonymous": {"enabled": False},
        "webhook": {"enabled": True},
        "x509": {"clientCAFile": f"{PKI}/ca.crt"},
    },
    "authorization": {"mode": "Webhook"},  # 4.2.2
    "readOnlyPort": 0,  # 4.2.4
    "makeIPTablesUtilChains": True,  # 4.2.7
    "tlsCertFile": f"{PKI}/kubelet.crt",  # 4.2.10
    "tlsPrivateKeyFile": f"{PKI}/kubelet.key",
    "tlsMinVersion": "VersionTLS12",
}


def master_flags(run: offline.Run, unit: str) -> dict[str, str]:
    return daemon(run, "master", unit)


def minion_names(run: offline.Run) -> list[str]:
    return [f"minion-{i}" for i in range(len(run.cluster.minions))]


def test_apiserver_cis_flags(dev: offline.Run) -> None:
    flags = master_flags(dev, "kube-apiserver")
    assert {k: flags.get(k) for k in APISERVER} == APISERVER
    assert "NodeRestriction" in flags["enable-admission-plugins"].split(",")  # 1.2.15
    assert "AlwaysAdmit" not in flags["enable-admission-plugins"].split(",")
    assert not [f for f in APISERVER_FORBIDDEN if f in flags]


def test_audit_policy_logs_secrets_as_metadata_only(dev: offline.Run) -> None:
    """First matching rule wins (audit.k8s.io/v1): Secrets, ConfigMaps and token reviews are
    never logged with their bodies, for any verb; writes elsewhere are logged with the request."""
    policy = yaml_file(dev, "master", "/etc/kubernetes/audit-policy.yaml")
    assert (policy["apiVersion"], policy["kind"]) == ("audit.k8s.io/v1", "Policy")

    def level(verb: str, group: str, resource: str) -> str:
        for rule in policy["rules"]:
            if "nonResourceURLs" in rule or verb not in rule.get("verbs", [verb]):
                continue
            groups = rule.get("resources")
            if groups is None or any(g.get("group", "") == group and resource in g.get("resources", []) for g in groups):
                return str(rule["level"])
        return "None"

    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert level(verb, "", "secrets") == "Metadata", verb
        assert level(verb, "", "configmaps") == "Metadata", verb
        assert level(verb, "authentication.k8s.io", "tokenreviews") == "Metadata", verb
    assert level("create", "apps", "deployments") == "Request"
    assert level("get", "", "pods") == "Metadata"


def test_secrets_are_encrypted_with_secretbox_first(dev: offline.Run) -> None:
    config = yaml_file(dev, "master", "/etc/kubernetes/encryption-config.yaml.tmpl")
    assert config["kind"] == "EncryptionConfiguration"
    [entry] = config["resources"]
    assert entry["resources"] == ["secrets"]
    first, *rest = entry["providers"]
    assert list(first) == ["secretbox"], "the first provider is the one that writes"
    assert first["secretbox"]["keys"] == [{"name": "key1", "secret": "__ENCRYPTION_KEY__"}]
    assert rest == [{"identity": {}}], "identity only to read what was written before encryption"


def test_controller_manager_cis_flags(dev: offline.Run) -> None:
    flags = master_flags(dev, "kube-controller-manager")
    assert {k: flags.get(k) for k in CONTROLLER_MANAGER} == CONTROLLER_MANAGER


def test_scheduler_cis_settings(dev: offline.Run) -> None:
    flags = master_flags(dev, "kube-scheduler")
    assert flags["bind-address"] == "127.0.0.1"  # 1.4.2
    config = yaml_file(dev, "master", flags["config"])
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert config["enableProfiling"] is False  # 1.4.1
    assert config.get("enableContentionProfiling", False) is False
    assert config["clientConnection"]["kubeconfig"] == "/etc/kubernetes/scheduler.kubeconfig"
    assert flags["authentication-kubeconfig"] == flags["authorization-kubeconfig"] == "/etc/kubernetes/scheduler.kubeconfig"


def test_etcd_tls_and_listeners(dev: offline.Run) -> None:
    assert master_flags(dev, "etcd") == {"config-file": "/etc/etcd/etcd.conf.yml"}, "every etcd setting lives in its config file"
    config = yaml_file(dev, "master", "/etc/etcd/etcd.conf.yml")
    assert {k: config[k] for k in ETCD_TLS} == ETCD_TLS  # 2.1-2.7
    assert config["listen-client-urls"] == "https://10.240.0.10:2379,https://127.0.0.1:2379"
    assert config["listen-peer-urls"] == "https://10.240.0.10:2380"
    assert config["listen-metrics-urls"] == "http://127.0.0.1:2381", "plain-HTTP metrics only on loopback"


def test_kubelet_cis_settings(dev: offline.Run) -> None:
    for minion in minion_names(dev):
        config = yaml_file(dev, minion, "/var/lib/kubelet/config.yaml")
        assert {k: config.get(k) for k in KUBELET} == KUBELET, minion
        # 4.2.5: not 0 (no timeout); the kubelet's default is 4h0m0s.
        assert config.get("streamingConnectionIdleTimeout", "4h0m0s") not in ("0", "0s"), minion
        flags = daemon(dev, minion, "kubelet")
        # Nothing on the command line overrides the config file.
        assert set(flags) == {"config", "hostname-override", "kubeconfig", "node-ip"}, minion
        assert flags["config"] == "/var/lib/kubelet/config.yaml"


def test_kube_proxy_listens_on_loopback_only(dev: offline.Run) -> None:
    for minion in minion_names(dev):
        assert daemon(dev, minion, "kube-proxy") == {"config": "/var/lib/kube-proxy/config.yaml"}
        config = yaml_file(dev, minion, "/var/lib/kube-proxy/config.yaml")
        assert config["metricsBindAddress"] == "127.0.0.1:10249"
        assert config["healthzBindAddress"] == "127.0.0.1:10256"
        assert config["clientConnection"]["kubeconfig"] == "/etc/kubernetes/kube-proxy.kubeconfig"


# --- invariants that tie files together, on every stack (dev values written out as well)


def test_service_range_is_one_range_holding_the_apiserver_service_ip(stack: offline.Run) -> None:
    api = master_flags(stack, "kube-apiserver")["service-cluster-ip-range"]
    assert master_flags(stack, "kube-controller-manager")["service-cluster-ip-range"] == api
    net = ipaddress.ip_network(api)
    cert = certificate(stack, "master", master_flags(stack, "kube-apiserver")["tls-cert-file"])
    in_range = sorted(ip for ip in ip_sans(cert) if ipaddress.ip_address(ip) in net)
    assert in_range == [str(net[1])], "the `kubernetes` Service takes the range's first address"
    if is_dev(stack):
        assert (api, in_range) == ("10.32.0.0/24", ["10.32.0.1"])


def test_kubelet_cluster_dns_is_the_coredns_service(stack: offline.Run) -> None:
    manifest = list(yaml.safe_load_all(heredoc(step_script(stack, "master-coredns"), "/etc/kube-ec2/coredns.yaml")))
    [service] = [d for d in manifest if d["kind"] == "Service" and d["metadata"]["name"] == "kube-dns"]
    dns_ip = service["spec"]["clusterIP"]
    service_range = ipaddress.ip_network(master_flags(stack, "kube-apiserver")["service-cluster-ip-range"])
    assert ipaddress.ip_address(dns_ip) in service_range
    [corefile] = [d["data"]["Corefile"] for d in manifest if d["kind"] == "ConfigMap"]
    for minion in minion_names(stack):
        config = yaml_file(stack, minion, "/var/lib/kubelet/config.yaml")
        assert config["clusterDNS"] == [dns_ip], minion
        assert f"kubernetes {config['clusterDomain']} " in corefile, "CoreDNS serves the kubelet's cluster domain"
    if is_dev(stack):
        assert dns_ip == "10.32.0.10"


def test_every_kubeconfig_server_is_named_by_the_apiserver_certificate(stack: offline.Run) -> None:
    flags = master_flags(stack, "kube-apiserver")
    cert = certificate(stack, "master", flags["tls-cert-file"])
    names = ip_sans(cert) | dns_sans(cert)
    servers: dict[str, str] = {"output kubeconfig": yaml.safe_load(stack.outputs["kubeconfig"])["clusters"][0]["cluster"]["server"]}
    for host in ["master", *minion_names(stack)]:
        for path, content in user_data_files(stack, host).items():
            if path.endswith(".kubeconfig"):
                servers[f"{host}:{path}"] = yaml.safe_load(content)["clusters"][0]["cluster"]["server"]
    assert len(servers) == 1 + 4 + 2 * len(stack.cluster.minions)  # output; master: admin, super-admin, kcm, scheduler
    for where, server in servers.items():
        url = urlsplit(server)
        assert url.scheme == "https", where
        assert url.hostname in names, f"{where}: {server} is not in the apiserver certificate"
        assert str(url.port) == flags["secure-port"], where
    if is_dev(stack):
        assert servers["minion-0:/etc/kubernetes/kubelet.kubeconfig"] == "https://10.240.0.10:6443"
        assert servers["master:/etc/kubernetes/scheduler.kubeconfig"] == "https://127.0.0.1:6443"
        assert servers["output kubeconfig"] == "https://203.0.113.10:6443"


def _client_cert(run: offline.Run, host: str, kubeconfig: str):  # type: ignore[no-untyped-def]
    user = yaml_file(run, host, kubeconfig)["users"][0]["user"]
    return certificate(run, host, user["client-certificate"])


def test_rbac_subjects_are_the_cns_their_components_present(stack: offline.Run) -> None:
    rbac = list(yaml.safe_load_all(heredoc(step_script(stack, "master-cluster-rbac"), "/etc/kube-ec2/cluster-rbac.yaml")))
    users = {s["name"] for doc in rbac for s in doc.get("subjects", []) if s["kind"] == "User"}
    apiserver = master_flags(stack, "kube-apiserver")
    kubelet_client = common_name(certificate(stack, "master", apiserver["kubelet-client-certificate"]))
    assert users == {kubelet_client} == {"kube-apiserver-kubelet-client"}
    [binding] = [d for d in rbac if d["kind"] == "ClusterRoleBinding" and d["subjects"][0]["name"] == kubelet_client]
    assert binding["roleRef"]["name"] == "system:kubelet-api-admin"

    # Kubernetes' own bindings name these identities (system:kube-controller-manager, ...).
    presented = {
        ("master", "/etc/kubernetes/controller-manager.kubeconfig"): ("system:kube-controller-manager", []),
        ("master", "/etc/kubernetes/scheduler.kubeconfig"): ("system:kube-scheduler", []),
        ("master", "/etc/kubernetes/admin.kubeconfig"): ("kubernetes-admin", ["kubeadm:cluster-admins"]),
        ("master", "/etc/kubernetes/super-admin.kubeconfig"): ("kubernetes-super-admin", ["system:masters"]),
    }
    for minion in minion_names(stack):
        presented[(minion, "/etc/kubernetes/kube-proxy.kubeconfig")] = ("system:kube-proxy", ["system:node-proxier"])
        # The Node authorizer: CN system:node:<node name>, the name the kubelet registers.
        node = daemon(stack, minion, "kubelet")["hostname-override"]
        presented[(minion, "/etc/kubernetes/kubelet.kubeconfig")] = (f"system:node:{node}", ["system:nodes"])
    for (host, path), (cn, orgs) in presented.items():
        cert = _client_cert(stack, host, path)
        assert (common_name(cert), organizations(cert)) == (cn, orgs), f"{host}:{path}"
    assert daemon(stack, "minion-0", "kubelet")["hostname-override"] == "minion-0"

    front_proxy = certificate(stack, "master", apiserver["proxy-client-cert-file"])
    assert apiserver["requestheader-allowed-names"] == common_name(front_proxy) == "front-proxy-client"


def test_etcd_rbac_users_are_the_cns_of_the_etcd_clients(stack: offline.Run) -> None:
    script = step_script(stack, "master-flannel-network")
    granted = dict(re.findall(r"^ensure_user (\S+) (\S+)$", script, re.MULTILINE))
    apiserver = common_name(certificate(stack, "master", master_flags(stack, "kube-apiserver")["etcd-certfile"]))
    assert granted[apiserver] == "root", "the apiserver's etcd identity holds the root role"
    for host in ["master", *minion_names(stack)]:
        flannel = common_name(certificate(stack, host, daemon(stack, host, "flanneld")["etcd-certfile"]))
        assert granted[flannel] == "flanneld", f"{host}: flanneld's etcd identity must have the flanneld role"
    flannel_users = {f"flannel-{h}": "flanneld" for h in ["master", *minion_names(stack)]}
    assert granted == {"root": "root", "kube-apiserver": "root", **flannel_users}


def test_flanneld_reads_the_prefix_the_flannel_network_step_writes(stack: offline.Run) -> None:
    script = step_script(stack, "master-flannel-network")
    [written] = set(re.findall(r'"\$\{ADMIN\[@\]\}" put (\S+) ', script))  # written, and restored if a host could change it
    [read] = re.findall(r"role grant-permission flanneld read (\S+) ", script)
    [subnets] = re.findall(r"role grant-permission flanneld --prefix=true readwrite (\S+) ", script)
    for host in ["master", *minion_names(stack)]:
        prefix = daemon(stack, host, "flanneld")["etcd-prefix"]
        assert written == read == f"{prefix}/config", host
        assert subnets == f"{prefix}/subnets", host  # flanneld lists and watches this key WithPrefix
    assert written == "/coreos.com/network/config"

    net_conf = heredoc(script, "/etc/kube-ec2/flannel-net-conf.json")
    conf = json.loads(net_conf)
    cluster_cidr = {yaml_file(stack, m, "/var/lib/kube-proxy/config.yaml")["clusterCIDR"] for m in minion_names(stack)}
    assert cluster_cidr == {conf["Network"]}, "kube-proxy's clusterCIDR is flannel's network"
    assert conf["SubnetLen"] == 24
    assert conf["Backend"] == {"Type": "vxlan", "VNI": 1, "Port": 8472}
    if is_dev(stack):
        assert conf["Network"] == "10.200.0.0/16"


def test_etcd_clients_reach_an_address_etcd_listens_on_and_its_certificate_names(stack: offline.Run) -> None:
    config = yaml_file(stack, "master", "/etc/etcd/etcd.conf.yml")
    listening = set(config["listen-client-urls"].split(","))
    server = certificate(stack, "master", config["client-transport-security"]["cert-file"])
    endpoints = {"kube-apiserver": master_flags(stack, "kube-apiserver")["etcd-servers"]}
    for host in ["master", *minion_names(stack)]:
        endpoints[f"{host} flanneld"] = daemon(stack, host, "flanneld")["etcd-endpoints"]
    for who, urls in endpoints.items():
        for url in urls.split(","):
            assert url in listening, f"{who}: {url} is not one of etcd's client listeners"
            assert urlsplit(url).hostname in ip_sans(server) | dns_sans(server), who


def test_pod_mtu_is_one_value_within_the_vxlan_limit(stack: offline.Run) -> None:
    """EC2 inside a VPC: 9001-byte frames; VXLAN costs 50 bytes (flannel subtracts the same)."""
    for minion in minion_names(stack):
        cni = json_file(stack, minion, "/etc/cni/net.d/10-flannel.conflist")
        [flannel] = [p for p in cni["plugins"] if p["type"] == "flannel"]
        docker = json_file(stack, minion, "/etc/docker/daemon.json")
        mtus = {"cni": flannel["delegate"].get("mtu"), "docker": docker.get("mtu")}
        present = {k: v for k, v in mtus.items() if v is not None}
        assert len(set(present.values())) <= 1, f"{minion}: {mtus}"
        assert all(v <= 9001 - 50 for v in present.values()), f"{minion}: {mtus}"
        if is_dev(stack):
            # Pods take flannel's FLANNEL_MTU (no MTU in the CNI config); the flanneld step fails
            # unless that is 8951.
            assert mtus == {"cni": None, "docker": 8951}


def test_cgroup_driver_agrees_between_kubelet_and_docker(stack: offline.Run) -> None:
    for minion in minion_names(stack):
        kubelet = yaml_file(stack, minion, "/var/lib/kubelet/config.yaml")["cgroupDriver"]
        opts = json_file(stack, minion, "/etc/docker/daemon.json")["exec-opts"]
        assert [o for o in opts if o.startswith("native.cgroupdriver=")] == [f"native.cgroupdriver={kubelet}"]
        assert kubelet == "systemd", "cgroup v2 hosts (Ubuntu 24.04) run the systemd driver"


def test_kubelet_talks_to_the_socket_cri_dockerd_listens_on(stack: offline.Run) -> None:
    for minion in minion_names(stack):
        endpoint = yaml_file(stack, minion, "/var/lib/kubelet/config.yaml")["containerRuntimeEndpoint"]
        socket = unit_section(user_data_files(stack, minion)["/etc/systemd/system/cri-docker.socket"], "Socket")
        assert endpoint == f"unix://{socket['ListenStream'][0]}" == "unix:///run/cri-dockerd.sock"


def is_dev(run: offline.Run) -> bool:
    """The dev stack is the one whose values the tests also write out."""
    return bool(run.cluster.settings.stack == "dev")
