"""PKI with pulumi-tls: three CAs, every certificate, the service-account key and the Secrets key.

The cluster CA signs component and node identities, the etcd CA etcd's, and the front-proxy CA
only the apiserver's identity towards aggregated APIs (metrics-server and the like), as kubeadm does.

Private keys are Pulumi secrets; each host receives only the files it needs, as one secret
bundle over SSH (remote step `<host>-pki`). The CA private keys never leave Pulumi's state.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls
import yaml

from components.render import digest
from components.settings import HostPlan, Settings

KEY_ALGORITHM = "ECDSA"
KEY_CURVE = "P256"
CA_VALIDITY_HOURS = 10 * 8760
CA_EARLY_RENEWAL_HOURS = 8760
SERVER = ("digital_signature", "key_encipherment", "server_auth")
CLIENT = ("digital_signature", "key_encipherment", "client_auth")
BOTH = ("digital_signature", "key_encipherment", "server_auth", "client_auth")
MASTER_PUBLIC_IP = "@master-public-ip"
"""Placeholder in a spec's IP list for the master's Elastic IP (an Output)."""


@dataclass(frozen=True)
class CertSpec:
    """One leaf certificate: files `<file>.crt` and `<file>.key` on the hosts in `hosts`."""

    file: str
    ca: str
    """`cluster`, `etcd` or `front-proxy`."""
    cn: str
    org: str | None
    uses: tuple[str, ...]
    hosts: tuple[str, ...]
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


def cert_specs(settings: Settings) -> list[CertSpec]:
    """Every leaf certificate of the cluster (pure)."""
    m = settings.master
    minions = tuple(h.name for h in settings.minions)
    api_dns = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{settings.cluster_domain}",
        m.name,
        "localhost",
    )
    specs = [
        CertSpec("etcd-server", "etcd", m.name, None, BOTH, (m.name,), (m.name, "localhost"), (m.private_ip, "127.0.0.1")),
        CertSpec("etcd-peer", "etcd", m.name, None, BOTH, (m.name,), (m.name, "localhost"), (m.private_ip, "127.0.0.1")),
        CertSpec("apiserver-etcd-client", "etcd", "kube-apiserver", None, CLIENT, (m.name,)),
        CertSpec(
            "apiserver", "cluster", "kube-apiserver", None, SERVER, (m.name,), api_dns,
            (settings.api_service_ip, m.private_ip, MASTER_PUBLIC_IP, "127.0.0.1"),
        ),
        CertSpec("apiserver-kubelet-client", "cluster", "kube-apiserver-kubelet-client", None, CLIENT, (m.name,)),
        CertSpec("controller-manager", "cluster", "system:kube-controller-manager", None, CLIENT, (m.name,)),
        CertSpec("scheduler", "cluster", "system:kube-scheduler", None, CLIENT, (m.name,)),
        # As kubeadm 1.29+: the exported admin is in a group RBAC binds to cluster-admin (revocable by
        # deleting the binding); the system:masters identity, which RBAC cannot revoke, stays on the
        # master for emergencies and for the step that creates that binding.
        CertSpec("admin", "cluster", "kubernetes-admin", "kubeadm:cluster-admins", CLIENT, (m.name,)),
        CertSpec("super-admin", "cluster", "kubernetes-super-admin", "system:masters", CLIENT, (m.name,)),
        CertSpec("front-proxy-client", "front-proxy", "front-proxy-client", None, CLIENT, (m.name,)),
        CertSpec("kube-proxy", "cluster", "system:kube-proxy", "system:node-proxier", CLIENT, minions),
    ]
    # Each host's flanneld is its own etcd user (RBAC in the flannel-network step): a stolen key
    # is one host's, and removing a host deletes its user.
    for h in settings.hosts:
        specs.append(CertSpec(f"flannel-etcd-{h.name}", "etcd", f"flannel-{h.name}", None, CLIENT, (h.name,)))
    for h in settings.minions:
        specs.append(
            CertSpec(f"kubelet-{h.name}", "cluster", f"system:node:{h.name}", "system:nodes", BOTH, (h.name,), (h.name,), (h.private_ip,))
        )
    return specs


def host_file_name(spec_file: str, host: HostPlan) -> str:
    """On a host its own per-host certificates drop the host name: `kubelet`, `flannel-etcd`."""
    for base in ("kubelet", "flannel-etcd"):
        if spec_file == f"{base}-{host.name}":
            return base
    return spec_file


def make_bundle(files: dict[str, str]) -> str:
    """base64 of a tar.gz of {name: content}, byte-identical for identical input."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name].encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode()


class Pki(pulumi.ComponentResource):
    """Keys and certificates; `bundle(host)` is the secret that host's `-pki` step installs."""

    def __init__(
        self, name: str, settings: Settings, master_public_ip: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kube-ec2:index:Pki", name, None, opts)
        self._settings = settings
        child = pulumi.ResourceOptions(parent=self)
        self.ca_cert: dict[str, pulumi.Output[str]] = {}
        self._ca_key: dict[str, pulumi.Output[str]] = {}
        cas = (
            ("cluster", f"{settings.cluster_name} CA"),
            ("etcd", f"{settings.cluster_name} etcd CA"),
            ("front-proxy", f"{settings.cluster_name} front-proxy CA"),
        )
        for ca, cn in cas:
            key = tls.PrivateKey(f"{name}-{ca}-ca-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
            cert = tls.SelfSignedCert(
                f"{name}-{ca}-ca",
                private_key_pem=key.private_key_pem,
                subject=tls.SelfSignedCertSubjectArgs(common_name=cn, organization="kube-ec2"),
                is_ca_certificate=True,
                validity_period_hours=CA_VALIDITY_HOURS,
                early_renewal_hours=CA_EARLY_RENEWAL_HOURS,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature", "key_encipherment"],
                opts=child,
            )
            self.ca_cert[ca], self._ca_key[ca] = cert.cert_pem, key.private_key_pem

        self.cert: dict[str, pulumi.Output[str]] = {}
        self.key: dict[str, pulumi.Output[str]] = {}
        self.specs = cert_specs(settings)
        for spec in self.specs:
            key = tls.PrivateKey(f"{name}-{spec.file}-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
            csr = tls.CertRequest(
                f"{name}-{spec.file}-csr",
                private_key_pem=key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(common_name=spec.cn, organization=spec.org),
                dns_names=list(spec.dns),
                ip_addresses=[master_public_ip if ip == MASTER_PUBLIC_IP else ip for ip in spec.ips],
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{name}-{spec.file}",
                cert_request_pem=csr.cert_request_pem,
                ca_private_key_pem=self._ca_key[spec.ca],
                ca_cert_pem=self.ca_cert[spec.ca],
                validity_period_hours=settings.cert_validity_hours,
                early_renewal_hours=settings.cert_early_renewal_hours,
                allowed_uses=list(spec.uses),
                opts=child,
            )
            self.cert[spec.file], self.key[spec.file] = cert.cert_pem, key.private_key_pem

        sa_key = tls.PrivateKey(f"{name}-service-account-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
        self._sa_private, self._sa_public = sa_key.private_key_pem, sa_key.public_key_pem
        # 32 random bytes for the secretbox provider; pulumi-random stores the value as a secret.
        self._encryption_key = random.RandomBytes(f"{name}-secrets-encryption-key", length=32, opts=child).base64
        self.register_outputs({})

    def _files(self, host: HostPlan) -> tuple[dict[str, pulumi.Output[str]], dict[str, pulumi.Output[str]]]:
        """(secret files, public files) for one host."""
        public = {"ca.crt": self.ca_cert["cluster"], "etcd-ca.crt": self.ca_cert["etcd"]}
        secret: dict[str, pulumi.Output[str]] = {}
        for spec in self.specs:
            if host.name in spec.hosts:
                base = host_file_name(spec.file, host)
                public[f"{base}.crt"] = self.cert[spec.file]
                secret[f"{base}.key"] = self.key[spec.file]
        if host.role == "master":
            public["front-proxy-ca.crt"] = self.ca_cert["front-proxy"]
            secret["service-account.key"] = self._sa_private
            public["service-account.pub"] = self._sa_public
            secret["encryption.key"] = self._encryption_key
        return secret, public

    def bundle(self, host: HostPlan) -> pulumi.Output[str]:
        """Everything the host needs, as the secret standard input of its `-pki` step."""
        secret, public = self._files(host)
        return pulumi.Output.secret(pulumi.Output.all(**secret, **public).apply(make_bundle))

    def fingerprint(self, host: HostPlan) -> pulumi.Output[str]:
        """Hash of the host's public certificates: changes when any of them is renewed (non-secret)."""
        _, public = self._files(host)
        return pulumi.Output.all(*(public[k] for k in sorted(public))).apply(lambda pems: digest(*pems))

    def admin_kubeconfig(self, server: pulumi.Input[str]) -> pulumi.Output[str]:
        """Admin kubeconfig with embedded credentials (a secret output)."""
        return pulumi.Output.secret(
            pulumi.Output.all(
                server=server, ca=self.ca_cert["cluster"], cert=self.cert["admin"], key=self.key["admin"]
            ).apply(lambda v: kubeconfig(self._settings.cluster_name, v["server"], v["ca"], v["cert"], v["key"]))
        )


def kubeconfig(cluster: str, server: str, ca_pem: str, cert_pem: str, key_pem: str) -> str:
    """A kubeconfig with embedded certificate data (pure)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "admin"}}],
        "current-context": cluster,
    }
    return yaml.safe_dump(doc, sort_keys=False)
