"""components.offline.tls: what the mocks hand the program is real key material that real tools accept."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components.offline import tls
from tests.conftest import require_tool

CA_USES = ["cert_signing", "crl_signing", "digital_signature", "key_encipherment"]
SERVER_USES = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]


def new_key(**inputs: Any) -> dict[str, Any]:
    return tls.issue(tls.PRIVATE_KEY, {"algorithm": "ECDSA", "ecdsaCurve": "P256", **inputs})


def new_ca(cn: str = "test CA") -> tuple[str, str]:
    """(cert PEM, key PEM) of a self-signed CA, requested the way pki.py requests it."""
    key = new_key()["privateKeyPem"]
    out = tls.issue(
        tls.SELF_SIGNED_CERT,
        {
            "privateKeyPem": tls.secret(key),
            "subject": {"commonName": cn, "organization": "kube-ec2"},
            "validityPeriodHours": 87600.0,
            "earlyRenewalHours": 8760.0,
            "allowedUses": CA_USES,
            "isCaCertificate": True,
        },
    )
    return out["certPem"], key


def new_leaf(ca: tuple[str, str], subject: dict[str, Any], uses: list[str], **names: Any) -> dict[str, Any]:
    key = new_key()["privateKeyPem"]
    csr = tls.issue(tls.CERT_REQUEST, {"privateKeyPem": tls.secret(key), "subject": subject, **names})
    out = tls.issue(
        tls.LOCALLY_SIGNED_CERT,
        {
            "certRequestPem": csr["certRequestPem"],
            "caCertPem": ca[0],
            "caPrivateKeyPem": tls.secret(ca[1]),
            "validityPeriodHours": 8760.0,
            "earlyRenewalHours": 730.0,
            "allowedUses": uses,
        },
    )
    return {**out, "keyPem": key, "csrPem": csr["certRequestPem"]}


@pytest.fixture(scope="module")
def ca() -> tuple[str, str]:
    return new_ca()


@pytest.fixture(scope="module")
def server(ca: tuple[str, str]) -> dict[str, Any]:
    return new_leaf(
        ca,
        {"commonName": "master", "organization": "kube-ec2", "organizationalUnit": "etcd"},
        SERVER_USES,
        dnsNames=["master", "localhost"],
        ipAddresses=["10.240.0.10", "127.0.0.1"],
    )


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def ext(c: x509.Certificate | x509.CertificateSigningRequest, kind: type) -> x509.Extension:
    return c.extensions.get_extension_for_class(kind)


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


# --- private keys


@pytest.mark.parametrize(
    ("inputs", "pem_type", "ssh_type"),
    [
        ({"algorithm": "ECDSA", "ecdsaCurve": "P256"}, "EC PRIVATE KEY", "ecdsa-sha2-nistp256"),
        ({"algorithm": "ECDSA", "ecdsaCurve": "P384"}, "EC PRIVATE KEY", "ecdsa-sha2-nistp384"),
        ({"algorithm": "RSA", "rsaBits": 2048.0}, "RSA PRIVATE KEY", "ssh-rsa"),
        ({"algorithm": "ED25519"}, "PRIVATE KEY", "ssh-ed25519"),
    ],
)
def test_private_key_formats_match_the_provider(inputs: dict, pem_type: str, ssh_type: str, tmp_path: Path) -> None:
    out = tls.issue(tls.PRIVATE_KEY, inputs)
    assert out["algorithm"] == inputs["algorithm"] and {k: out[k] for k in inputs} == inputs
    assert out["privateKeyPem"].startswith(f"-----BEGIN {pem_type}-----\n")
    assert out["privateKeyPemPkcs8"].startswith("-----BEGIN PRIVATE KEY-----\n")
    assert out["privateKeyOpenssh"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert out["publicKeyPem"].startswith("-----BEGIN PUBLIC KEY-----\n")
    key = serialization.load_pem_private_key(out["privateKeyPem"].encode(), None)
    pkcs8 = serialization.load_pem_private_key(out["privateKeyPemPkcs8"].encode(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == pkcs8.public_key().public_bytes(*spki)
    public = serialization.load_pem_public_key(out["publicKeyPem"].encode())
    assert public.public_bytes(*spki) == key.public_key().public_bytes(*spki)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert key.curve.name == {"P256": "secp256r1", "P384": "secp384r1"}[inputs["ecdsaCurve"]]
    if inputs["algorithm"] == "RSA":
        assert key.key_size == 2048

    line = out["publicKeyOpenssh"]
    assert line.endswith("\n") and line.count("\n") == 1 and line.split()[0] == ssh_type
    ssh_pub = serialization.load_ssh_public_key(line.encode())
    assert ssh_pub.public_bytes(*spki) == key.public_key().public_bytes(*spki)

    # ssh-keygen agrees on the fingerprint and derives the same public key from the OpenSSH private key.
    keygen = require_tool("ssh-keygen")
    pub = write(tmp_path, "id.pub", line)
    fingerprint = subprocess.run([keygen, "-l", "-E", "sha256", "-f", pub], capture_output=True, text=True, check=True)
    assert fingerprint.stdout.split()[1] == out["publicKeyFingerprintSha256"]
    legacy = subprocess.run([keygen, "-l", "-E", "md5", "-f", pub], capture_output=True, text=True, check=True)
    assert legacy.stdout.split()[1] == "MD5:" + out["publicKeyFingerprintMd5"]
    private = Path(write(tmp_path, "id", out["privateKeyOpenssh"]))
    private.chmod(0o600)
    derived = subprocess.run([keygen, "-y", "-f", str(private)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == line.split()[:2]


def test_default_curve_is_p224_without_openssh_forms_like_the_provider() -> None:
    out = tls.issue(tls.PRIVATE_KEY, {"algorithm": "ECDSA"})
    key = serialization.load_pem_private_key(out["privateKeyPem"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp224r1"
    assert out["publicKeyOpenssh"] == out["privateKeyOpenssh"] == out["publicKeyFingerprintSha256"] == ""


def test_bad_key_inputs_say_key_value_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"algorithm: 'DSA' is not supported; allowed: RSA, ECDSA, ED25519"):
        tls.issue(tls.PRIVATE_KEY, {"algorithm": "DSA"})
    with pytest.raises(ValueError, match=r"ecdsaCurve: 'P999'.*allowed: P224, P256, P384, P521"):
        tls.issue(tls.PRIVATE_KEY, {"algorithm": "ECDSA", "ecdsaCurve": "P999"})
    with pytest.raises(ValueError, match=r"no issuer for 'tls:index/pemToPfx"):
        tls.issue("tls:index/pemToPfx:PemToPfx", {})


# --- certificates


def test_ca_is_self_signed_with_ca_constraints(ca: tuple[str, str]) -> None:
    c = cert(ca[0])
    c.verify_directly_issued_by(c)
    assert c.subject == c.issuer
    assert c.subject.rfc4514_string() == "CN=test CA,O=kube-ec2"
    basic = ext(c, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length is None
    usage = ext(c, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and usage.value.digital_signature
    assert usage.value.key_encipherment and not usage.value.content_commitment
    ski = ext(c, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(c.public_key())
    with pytest.raises(x509.ExtensionNotFound):
        ext(c, x509.AuthorityKeyIdentifier)  # Go adds it only when issuer != subject
    with pytest.raises(x509.ExtensionNotFound):
        ext(c, x509.ExtendedKeyUsage)
    assert (c.not_valid_after_utc - c.not_valid_before_utc) == datetime.timedelta(hours=87600)


def test_csr_is_signed_by_its_key_and_carries_subject_and_sans(server: dict[str, Any], tmp_path: Path) -> None:
    csr = x509.load_pem_x509_csr(server["csrPem"].encode())
    assert csr.is_signature_valid
    key = serialization.load_pem_private_key(server["keyPem"].encode(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert csr.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert csr.subject.rfc4514_string() == "CN=master,OU=etcd,O=kube-ec2"
    sans = ext(csr, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["master", "localhost"]
    openssl = require_tool("openssl")
    verified = subprocess.run(
        [openssl, "req", "-verify", "-noout", "-in", write(tmp_path, "req.csr", server["csrPem"])],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stderr
    assert "verify OK" in verified.stdout + verified.stderr


def test_leaf_has_csr_names_ca_issuer_and_mapped_usages(ca: tuple[str, str], server: dict[str, Any]) -> None:
    leaf, issuer = cert(server["certPem"]), cert(ca[0])
    leaf.verify_directly_issued_by(issuer)
    assert leaf.issuer == issuer.subject
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "master"
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "etcd"
    sans = ext(leaf, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["master", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("10.240.0.10", "127.0.0.1")]
    basic = ext(leaf, x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    eku = ext(leaf, x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(issuer, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    start = datetime.datetime.fromisoformat(server["validityStartTime"].replace("Z", "+00:00"))
    end = datetime.datetime.fromisoformat(server["validityEndTime"].replace("Z", "+00:00"))
    assert server["validityStartTime"].endswith("Z")
    assert (start, end) == (leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    assert end - start == datetime.timedelta(hours=8760)
    assert server["readyForRenewal"] is False and server["caKeyAlgorithm"] == "ECDSA"


def test_chain_verifies_with_openssl_for_its_purposes(
    ca: tuple[str, str], server: dict[str, Any], tmp_path: Path
) -> None:
    openssl = require_tool("openssl")
    client = new_leaf(ca, {"commonName": "kube-apiserver"}, ["digital_signature", "key_encipherment", "client_auth"])
    stranger = new_leaf(new_ca("other CA"), {"commonName": "kube-apiserver"}, ["client_auth"])
    ca_file = write(tmp_path, "ca.crt", ca[0])

    def verify(pem: str, purpose: str) -> subprocess.CompletedProcess[str]:
        leaf = write(tmp_path, "leaf.crt", pem)
        command = [openssl, "verify", "-purpose", purpose, "-CAfile", ca_file, leaf]
        return subprocess.run(command, capture_output=True, text=True)

    wanted = ((server["certPem"], "sslserver"), (server["certPem"], "sslclient"), (client["certPem"], "sslclient"))
    for pem, purpose in wanted:
        result = verify(pem, purpose)
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + result.stderr
    assert verify(client["certPem"], "sslserver").returncode != 0  # client_auth only
    assert verify(stranger["certPem"], "sslclient").returncode != 0  # another CA


def test_locally_signed_refuses_a_ca_key_that_does_not_match(ca: tuple[str, str], server: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="caPrivateKeyPem: does not match caCertPem"):
        tls.issue(
            tls.LOCALLY_SIGNED_CERT,
            {
                "certRequestPem": server["csrPem"],
                "caCertPem": ca[0],
                "caPrivateKeyPem": new_key()["privateKeyPem"],
                "validityPeriodHours": 1,
                "allowedUses": [],
            },
        )


# --- allowedUses mapping and Pulumi plumbing


def test_usage_table_is_the_providers() -> None:
    provider_names = {
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
        "cert_signing", "crl_signing", "encipher_only", "decipher_only", "any_extended", "server_auth",
        "client_auth", "code_signing", "email_protection", "ipsec_end_system", "ipsec_tunnel", "ipsec_user",
        "timestamping", "ocsp_signing", "microsoft_server_gated_crypto", "netscape_server_gated_crypto",
        "microsoft_commercial_code_signing", "microsoft_kernel_code_signing",
    }
    assert set(tls.KEY_USAGES) | set(tls.EXTENDED_KEY_USAGES) == provider_names
    assert not set(tls.KEY_USAGES) & set(tls.EXTENDED_KEY_USAGES)


def test_usage_extensions() -> None:
    assert tls.usage_extensions(None) == [] and tls.usage_extensions([]) == []
    (key_usage, critical), = tls.usage_extensions(["cert_signing", "crl_signing"])
    assert critical and key_usage == x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )
    (eku, critical), = tls.usage_extensions(["client_auth", "server_auth", "client_auth", "ipsec_tunnel"])
    assert not critical and list(eku) == [
        ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH, x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6")
    ]
    with pytest.raises(ValueError, match=r"allowedUses: 'server' is not a key usage; allowed: any_extended, "):
        tls.usage_extensions(["server"])


def test_inputs_are_echoed_and_secret_envelopes_are_understood(ca: tuple[str, str]) -> None:
    wrapped = tls.secret(new_key()["privateKeyPem"])
    out = tls.issue(tls.CERT_REQUEST, {"privateKeyPem": wrapped, "subject": {"commonName": "flannel"}})
    assert out["privateKeyPem"] == wrapped and out["subject"] == {"commonName": "flannel"}
    assert out["keyAlgorithm"] == "ECDSA"
    key = new_key()
    marked = tls.mark_secrets(tls.PRIVATE_KEY, key)
    assert marked["privateKeyPem"] == tls.secret(key["privateKeyPem"]) and marked["publicKeyPem"] == key["publicKeyPem"]
    assert tls.plain(marked) == key and tls.mark_secrets(tls.PRIVATE_KEY, marked) == marked
    assert tls.handles(tls.LOCALLY_SIGNED_CERT) and not tls.handles("tls:index/pemToPfx:PemToPfx")
