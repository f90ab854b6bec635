"""Every certificate the program issues, against a table written here (not the specs that made it).

Real certificates come from the offline engine's pulumi-tls emulation. Per certificate: the CA
that must have signed it (checked by signature with every CA's key: the right one verifies, each
wrong one fails), its subject, its key usages and its extended key usages. Then who trusts whom:
the CA file each daemon trusts is the one that issued the certificates it is shown.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from components import offline
from tests.shipped import certificate, common_name, daemon, organizations, yaml_file

LEAF = "tls:index/locallySignedCert:LocallySignedCert"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"

SERVER = {ExtendedKeyUsageOID.SERVER_AUTH}
CLIENT = {ExtendedKeyUsageOID.CLIENT_AUTH}
BOTH = SERVER | CLIENT

# file: (issuing CA, CN, O, extended key usages). Dev stack: 3 minions.
EXPECTED = {
    "etcd-server": ("etcd", "master", [], BOTH),
    "etcd-peer": ("etcd", "master", [], BOTH),
    "apiserver-etcd-client": ("etcd", "kube-apiserver", [], CLIENT),
    **{f"flannel-etcd-{h}": ("etcd", f"flannel-{h}", [], CLIENT) for h in ("master", "minion-0", "minion-1", "minion-2")},
    "apiserver": ("cluster", "kube-apiserver", [], SERVER),
    "apiserver-kubelet-client": ("cluster", "kube-apiserver-kubelet-client", [], CLIENT),
    "controller-manager": ("cluster", "system:kube-controller-manager", [], CLIENT),
    "scheduler": ("cluster", "system:kube-scheduler", [], CLIENT),
    "admin": ("cluster", "kubernetes-admin", ["kubeadm:cluster-admins"], CLIENT),
    "super-admin": ("cluster", "kubernetes-super-admin", ["system:masters"], CLIENT),
    "front-proxy-client": ("front-proxy", "front-proxy-client", [], CLIENT),
    "kube-proxy": ("cluster", "system:kube-proxy", ["system:node-proxier"], CLIENT),
    **{f"kubelet-minion-{i}": ("cluster", f"system:node:minion-{i}", ["system:nodes"], BOTH) for i in range(3)},
}
CAS = {
    "cluster": "kube-ec2-dev CA",
    "etcd": "kube-ec2-dev etcd CA",
    "front-proxy": "kube-ec2-dev front-proxy CA",
}


def issued(run: offline.Run, typ: str) -> dict[str, x509.Certificate]:
    return {
        r.name.removeprefix("pki-").removesuffix("-ca"): x509.load_pem_x509_certificate(r.outputs["certPem"].encode())
        for r in run.mocks.of_type(typ)
        if r.name.startswith("pki-")
    }


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca`'s key made `cert`'s signature (names are not looked at)."""
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def test_every_certificate_is_in_the_table(dev: offline.Run) -> None:
    assert set(issued(dev, LEAF)) == set(EXPECTED)
    assert {name: common_name(c) for name, c in issued(dev, SELF_SIGNED).items()} == CAS


def test_cas_are_distinct_cas(dev: offline.Run) -> None:
    cas = issued(dev, SELF_SIGNED)
    keys = {ca.public_key().public_numbers() for ca in cas.values()}  # type: ignore[union-attr]
    assert len(keys) == len(cas), "each CA has its own key"
    for name, ca in cas.items():
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, name
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign, name
        assert signed_by(ca, ca) and ca.issuer == ca.subject, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_certificate_issuer_subject_and_usages(dev: offline.Run, name: str) -> None:
    ca_name, cn, orgs, eku = EXPECTED[name]
    cert = issued(dev, LEAF)[name]
    cas = issued(dev, SELF_SIGNED)
    assert (common_name(cert), organizations(cert)) == (cn, orgs)
    assert cert.issuer == cas[ca_name].subject
    assert signed_by(cert, cas[ca_name]), f"{name} is not signed by the {ca_name} CA"
    for other, ca in cas.items():
        if other != ca_name:
            assert not signed_by(cert, ca), f"{name} verifies against the {other} CA too"
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == eku
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _trusts(run: offline.Run, host: str, ca_path: str, cert: x509.Certificate) -> bool:
    return signed_by(cert, certificate(run, host, ca_path))


def test_each_daemon_trusts_the_ca_that_issued_what_it_is_shown(dev: offline.Run) -> None:
    api = daemon(dev, "master", "kube-apiserver")
    etcd = yaml_file(dev, "master", "/etc/etcd/etcd.conf.yml")["client-transport-security"]
    # etcd is shown the apiserver's and flanneld's client certificates; they are shown etcd's.
    assert _trusts(dev, "master", etcd["trusted-ca-file"], certificate(dev, "master", api["etcd-certfile"]))
    assert _trusts(dev, "master", api["etcd-cafile"], certificate(dev, "master", etcd["cert-file"]))
    for host in ("master", "minion-0"):
        flannel = daemon(dev, host, "flanneld")
        assert _trusts(dev, "master", etcd["trusted-ca-file"], certificate(dev, host, flannel["etcd-certfile"])), host
        assert _trusts(dev, host, flannel["etcd-cafile"], certificate(dev, "master", etcd["cert-file"])), host
    # The apiserver and the kubelet, both ways.
    kubelet = yaml_file(dev, "minion-0", "/var/lib/kubelet/config.yaml")
    ca_on_minion = kubelet["authentication"]["x509"]["clientCAFile"]
    assert _trusts(dev, "minion-0", ca_on_minion, certificate(dev, "master", api["kubelet-client-certificate"]))
    assert _trusts(dev, "master", api["kubelet-certificate-authority"], certificate(dev, "minion-0", kubelet["tlsCertFile"]))
    # Aggregated APIs are shown the front-proxy client; the apiserver checks it against its CA.
    assert _trusts(dev, "master", api["requestheader-client-ca-file"], certificate(dev, "master", api["proxy-client-cert-file"]))
    assert not _trusts(dev, "master", api["client-ca-file"], certificate(dev, "master", api["proxy-client-cert-file"]))
    # Every kubeconfig: the apiserver accepts its client certificate, it accepts the apiserver's.
    serving = certificate(dev, "master", api["tls-cert-file"])
    for host, path in KUBECONFIGS:
        config = yaml_file(dev, host, path)
        client = certificate(dev, host, config["users"][0]["user"]["client-certificate"])
        assert _trusts(dev, "master", api["client-ca-file"], client), f"{host}:{path}"
        assert _trusts(dev, host, config["clusters"][0]["cluster"]["certificate-authority"], serving), f"{host}:{path}"


KUBECONFIGS = (
    ("master", "/etc/kubernetes/admin.kubeconfig"),
    ("master", "/etc/kubernetes/super-admin.kubeconfig"),
    ("master", "/etc/kubernetes/controller-manager.kubeconfig"),
    ("master", "/etc/kubernetes/scheduler.kubeconfig"),
    ("minion-0", "/etc/kubernetes/kubelet.kubeconfig"),
    ("minion-0", "/etc/kubernetes/kube-proxy.kubeconfig"),
)
