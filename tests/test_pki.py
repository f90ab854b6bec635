"""PKI: real certificates issued for every pulumi-tls request under mocks, checked with cryptography and openssl."""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components import offline, pki
from tests.conftest import dev_settings, require_tool
from tests.test_program import unwrap

LEAF = "tls:index/locallySignedCert:LocallySignedCert"
CA = "tls:index/selfSignedCert:SelfSignedCert"


def certs(run: offline.Run) -> dict[str, x509.Certificate]:
    found = {r.name.removeprefix("pki-"): r.outputs["certPem"] for r in run.mocks.of_type(LEAF) + run.mocks.of_type(CA)}
    return {name: x509.load_pem_x509_certificate(pem.encode()) for name, pem in found.items()}


def subject(cert: x509.Certificate) -> dict[str, str]:
    return {a.rfc4514_attribute_name: str(a.value) for a in cert.subject}


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def bundle(run: offline.Run, host: str) -> dict[str, str]:
    value, secret = unwrap(run.mocks.named(f"{host}-pki").inputs["stdin"])
    assert secret
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(value)))) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_every_spec_is_issued_by_its_ca_with_its_subject_sans_and_usages(dev: offline.Run, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    issued = certs(dev)
    cas = {name: issued[f"{name}-ca"] for name in ("cluster", "etcd", "front-proxy")}
    eip = dev.outputs["masterPublicIp"]
    for ca_name, ca in cas.items():
        (tmp_path / f"{ca_name}.pem").write_text(pem(ca))
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for spec in pki.cert_specs(dev_settings()):
        cert = issued[spec.file]
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == spec.cn
        orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        assert orgs == ([spec.org] if spec.org else []), spec.file
        assert cert.issuer == cas[spec.ca].subject, spec.file
        leaf = tmp_path / f"{spec.file}.pem"
        leaf.write_text(pem(cert))
        result = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / f"{spec.ca}.pem"), str(leaf)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        other = "etcd" if spec.ca == "cluster" else "cluster"
        wrong = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / f"{other}.pem"), str(leaf)], capture_output=True, text=True)
        assert wrong.returncode != 0, f"{spec.file} must not verify against the {other} CA"
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert (ExtendedKeyUsageOID.SERVER_AUTH in eku) == ("server_auth" in spec.uses), spec.file
        assert (ExtendedKeyUsageOID.CLIENT_AUTH in eku) == ("client_auth" in spec.uses), spec.file
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        if spec.dns or spec.ips:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(san.get_values_for_type(x509.DNSName)) == set(spec.dns), spec.file
            wanted = {eip if ip == pki.MASTER_PUBLIC_IP else ip for ip in spec.ips}
            assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == wanted, spec.file


def test_apiserver_sans(dev: offline.Run) -> None:
    san = certs(dev)["apiserver"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {
        "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
    }
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address(a) for a in ("10.32.0.1", "10.240.0.10", "127.0.0.1", dev.outputs["masterPublicIp"])} <= ips


def test_kubelet_certificates_name_their_node(dev: offline.Run) -> None:
    issued = certs(dev)
    for i, ip in enumerate(dev.outputs["minionPrivateIps"]):
        cert = issued[f"kubelet-minion-{i}"]
        assert subject(cert) == {"CN": f"system:node:minion-{i}", "O": "system:nodes"}
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [f"minion-{i}"]
        assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [ip]


def test_validity_and_early_renewal_come_from_config() -> None:
    from tests.conftest import run_stack

    run = run_stack("unusual")
    for leaf in run.mocks.of_type(LEAF):
        assert leaf.inputs["validityPeriodHours"] == 720
        assert leaf.inputs["earlyRenewalHours"] == 60


def test_each_host_gets_only_its_files_and_keys_match(dev: offline.Run) -> None:
    master = bundle(dev, "master")
    assert set(master) == {
        "ca.crt", "etcd-ca.crt", "front-proxy-ca.crt", "service-account.key", "service-account.pub", "encryption.key",
        *(f"{base}.{ext}" for base in (
            "etcd-server", "etcd-peer", "apiserver-etcd-client", "flannel-etcd", "apiserver", "apiserver-kubelet-client",
            "controller-manager", "scheduler", "admin", "super-admin", "front-proxy-client",
        ) for ext in ("crt", "key")),
    }
    assert len(base64.b64decode(master["encryption.key"])) == 32
    minion = bundle(dev, "minion-1")
    assert set(minion) == {
        "ca.crt", "etcd-ca.crt", "kubelet.crt", "kubelet.key", "kube-proxy.crt", "kube-proxy.key", "flannel-etcd.crt", "flannel-etcd.key",
    }
    assert "system:node:minion-1" in x509.load_pem_x509_certificate(minion["kubelet.crt"].encode()).subject.rfc4514_string()
    for files in (master, minion):
        for name, text in files.items():
            if name.endswith(".key") and name != "encryption.key" and name != "service-account.key":
                key = serialization.load_pem_private_key(text.encode(), None)
                cert = x509.load_pem_x509_certificate(files[name.replace(".key", ".crt")].encode())
                assert key.public_key() == cert.public_key(), name
    ca_keys = {r.outputs["privateKeyPem"] for r in dev.mocks.of_type("tls:index/privateKey:PrivateKey") if "-ca-key" in r.name}
    for host in ["master", "minion-0", "minion-1", "minion-2"]:
        assert not ca_keys & set(bundle(dev, host).values()), "CA private keys never leave Pulumi state"


def test_bundle_is_deterministic() -> None:
    files = {"b.crt": "B", "a.key": "A"}
    assert pki.make_bundle(files) == pki.make_bundle(dict(reversed(list(files.items()))))


def test_admin_kubeconfig(dev: offline.Run) -> None:
    config = yaml.safe_load(dev.outputs["kubeconfig"])
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == f"https://{dev.outputs['masterPublicIp']}:6443"
    ca = x509.load_pem_x509_certificate(base64.b64decode(cluster["certificate-authority-data"]))
    assert ca == certs(dev)["cluster-ca"]
    user = config["users"][0]["user"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    assert subject(cert) == {"CN": "kubernetes-admin", "O": "kubeadm:cluster-admins"}  # kubeadm 1.29+; not system:masters
    key = serialization.load_pem_private_key(base64.b64decode(user["client-key-data"]), None)
    assert key.public_key() == cert.public_key()


@pytest.mark.parametrize("field", ["certPem"])
def test_certificates_are_public_and_keys_secret_outputs(dev: offline.Run, field: str) -> None:
    assert all(field in r.outputs for r in dev.mocks.of_type(LEAF))
    assert "kubeconfig" in dev.secret_outputs
