"""Real keys, CSRs and certificates for pulumi-tls resources under Pulumi mocks.

`issue(typ, inputs)` does what the terraform tls provider (which pulumi-tls wraps) does for the
same inputs: the same PEM formats, defaults (ECDSA P224, RSA 2048), allowedUses -> KeyUsage /
ExtendedKeyUsage mapping, subject attribute order and RFC 3339 validity times. So what the mocked
program produces can be checked with openssl and fed to a real etcd.

Inputs arrive the way the mock monitor hands them over: camelCase keys, numbers as floats, secret
values wrapped in Pulumi's secret envelope. They are echoed back unchanged (keeping their
secretness); computed outputs are plain. The mock monitor ignores a resource's
additionalSecretOutputs, so `mark_secrets` is there to wrap the ones the real SDK marks secret.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from pulumi.runtime.rpc import _special_secret_sig as _SECRET_SIG
from pulumi.runtime.rpc import _special_sig_key as _SIG_KEY

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"

# Outputs the pulumi-tls SDK registers as additionalSecretOutputs.
SECRET_OUTPUTS: dict[str, tuple[str, ...]] = {
    PRIVATE_KEY: ("privateKeyOpenssh", "privateKeyPem", "privateKeyPemPkcs8"),
    SELF_SIGNED_CERT: ("privateKeyPem", "privateKeyPemWo"),
    CERT_REQUEST: ("privateKeyPem", "privateKeyPemWo"),
    LOCALLY_SIGNED_CERT: ("caPrivateKeyPem", "caPrivateKeyPemWo"),
}

# allowedUses name -> x509.KeyUsage argument (the provider's `keyUsages` table).
KEY_USAGES: dict[str, str] = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}

# allowedUses name -> ExtendedKeyUsage OID (the provider's `extendedKeyUsages` table).
EXTENDED_KEY_USAGES: dict[str, ObjectIdentifier] = {
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec_end_system": ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec_tunnel": ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec_user": ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft_server_gated_crypto": ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape_server_gated_crypto": ObjectIdentifier("2.16.840.1.113730.4.1"),
    "microsoft_commercial_code_signing": ObjectIdentifier("1.3.6.1.4.1.311.2.1.22"),
    "microsoft_kernel_code_signing": ObjectIdentifier("1.3.6.1.4.1.311.61.1.1"),
}

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P224": ec.SECP224R1,
    "P256": ec.SECP256R1,
    "P384": ec.SECP384R1,
    "P521": ec.SECP521R1,
}
_DEFAULT_CURVE = "P224"  # the provider's default for ecdsa_curve
_DEFAULT_RSA_BITS = 2048

# Subject attributes in the order Go's pkix.Name writes them; streetAddresses is a list.
_SUBJECT_FIELDS: tuple[tuple[str, ObjectIdentifier], ...] = (
    ("country", NameOID.COUNTRY_NAME),
    ("province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("streetAddresses", NameOID.STREET_ADDRESS),
    ("postalCode", NameOID.POSTAL_CODE),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("commonName", NameOID.COMMON_NAME),
    ("serialNumber", NameOID.SERIAL_NUMBER),
    ("emailAddress", NameOID.EMAIL_ADDRESS),
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


# --- Pulumi's secret envelope


def plain(value: Any) -> Any:
    """`value` with every Pulumi secret envelope removed."""
    if isinstance(value, Mapping):
        if value.get(_SIG_KEY) == _SECRET_SIG:
            return plain(value.get("value"))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def secret(value: Any) -> dict[str, Any]:
    """`value` in Pulumi's secret envelope (what a mock returns for a secret output)."""
    return {_SIG_KEY: _SECRET_SIG, "value": value}


def mark_secrets(typ: str, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Outputs with the ones the real SDK marks secret wrapped as secrets."""
    marked = dict(outputs)
    for key in SECRET_OUTPUTS.get(typ, ()):
        value = marked.get(key)
        if value is not None and plain(value) == value:
            marked[key] = secret(value)
    return marked


# --- allowedUses -> extensions


def usage_extensions(allowed_uses: Iterable[str] | None) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs for allowedUses, mapped the way the terraform tls provider does.

    KeyUsage (critical, as Go writes it) when any key usage is named; ExtendedKeyUsage (not
    critical) in the order named when any extended usage is. Unknown names raise ValueError.
    """
    flags = dict.fromkeys(KEY_USAGES.values(), False)
    extended: list[ObjectIdentifier] = []
    for use in allowed_uses or ():
        if use in KEY_USAGES:
            flags[KEY_USAGES[use]] = True
        elif use in EXTENDED_KEY_USAGES:
            if EXTENDED_KEY_USAGES[use] not in extended:
                extended.append(EXTENDED_KEY_USAGES[use])
        else:
            allowed = ", ".join(sorted([*KEY_USAGES, *EXTENDED_KEY_USAGES]))
            raise ValueError(f"allowedUses: {use!r} is not a key usage; allowed: {allowed}")
    result: list[tuple[x509.ExtensionType, bool]] = []
    if any(flags.values()):
        result.append((x509.KeyUsage(**flags), True))
    if extended:
        result.append((x509.ExtendedKeyUsage(extended), False))
    return result


# --- keys


def _generate_key(inputs: Mapping[str, Any]) -> PrivateKey:
    algorithm = inputs.get("algorithm")
    if algorithm == "ECDSA":
        curve = inputs.get("ecdsaCurve") or _DEFAULT_CURVE
        if curve not in _CURVES:
            raise ValueError(f"ecdsaCurve: {curve!r} is not supported; allowed: {', '.join(_CURVES)}")
        return ec.generate_private_key(_CURVES[curve]())
    if algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits") or _DEFAULT_RSA_BITS))
    if algorithm == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"algorithm: {algorithm!r} is not supported; allowed: RSA, ECDSA, ED25519")


def key_algorithm(key: PrivateKey | PublicKey) -> str:
    """The provider's name for a key's algorithm: RSA, ECDSA or ED25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ECDSA"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ED25519"
    raise ValueError(f"unsupported key type {type(key).__name__}; allowed: RSA, ECDSA, ED25519")


def _load_key(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    key_algorithm(key)
    return key


def _private_pem(key: PrivateKey) -> str:
    """Traditional OpenSSL PEM for RSA and ECDSA (like Go's PKCS1 / SEC 1), PKCS#8 for ED25519."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL
    if isinstance(key, ed25519.Ed25519PrivateKey):
        fmt = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def _openssh(key: PrivateKey) -> tuple[str, str]:
    """(private key, authorized_keys line); empty for curves OpenSSH lacks (P224), like the provider."""
    try:
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, UnsupportedAlgorithm):
        return "", ""
    return private.decode(), public.decode() + "\n"


def _fingerprints(public_openssh: str) -> tuple[str, str]:
    """(MD5 aa:bb:..., SHA256:base64) of an OpenSSH public key, as ssh-keygen -l prints them."""
    if not public_openssh:
        return "", ""
    blob = base64.b64decode(public_openssh.split()[1])
    md5 = hashlib.md5(blob).hexdigest()  # ssh-keygen's legacy fingerprint, not a security use
    sha256 = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return ":".join(md5[i : i + 2] for i in range(0, len(md5), 2)), f"SHA256:{sha256}"


def _private_key(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _generate_key(inputs)
    private_openssh, public_openssh = _openssh(key)
    md5, sha256 = _fingerprints(public_openssh)
    return {
        "algorithm": key_algorithm(key),
        "privateKeyPem": _private_pem(key),
        "privateKeyPemPkcs8": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "privateKeyOpenssh": private_openssh,
        "publicKeyPem": key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        "publicKeyOpenssh": public_openssh,
        "publicKeyFingerprintMd5": md5,
        "publicKeyFingerprintSha256": sha256,
    }


# --- names and certificates


def subject_name(subject: Mapping[str, Any] | list[Any] | None) -> x509.Name:
    """x509 Name for a pulumi-tls subject block (camelCase keys), in Go's attribute order."""
    if isinstance(subject, list):
        subject = subject[0] if subject else None
    attrs: list[x509.NameAttribute] = []
    for key, oid in _SUBJECT_FIELDS:
        value = (subject or {}).get(key)
        for item in value if isinstance(value, list) else [value]:
            if item:
                attrs.append(x509.NameAttribute(oid, str(item)))
    return x509.Name(attrs)


def _sans(inputs: Mapping[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in inputs.get("dnsNames") or ()]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in inputs.get("ipAddresses") or ()]
    names += [x509.UniformResourceIdentifier(u) for u in inputs.get("uris") or ()]
    return names


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """The hash Go's x509 picks for a signing key (none for ED25519)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA512() if key.curve.key_size > 384 else hashes.SHA384()
    return hashes.SHA256()


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validity(inputs: Mapping[str, Any]) -> tuple[datetime.datetime, datetime.datetime]:
    hours = inputs.get("validityPeriodHours")
    if hours is None:
        raise ValueError("validityPeriodHours: unset; allowed: a whole number of hours")
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return start, start + datetime.timedelta(hours=int(hours))


def _basic_constraints(inputs: Mapping[str, Any]) -> x509.BasicConstraints:
    is_ca = bool(inputs.get("isCaCertificate"))
    max_path = int(inputs.get("maxPathLength") or 0)
    return x509.BasicConstraints(ca=is_ca, path_length=max_path if is_ca and max_path > 0 else None)


def _build(
    inputs: Mapping[str, Any],
    subject: x509.Name,
    public_key: PublicKey,
    sans: list[x509.GeneralName],
    issuer: x509.Name,
) -> tuple[x509.CertificateBuilder, datetime.datetime, datetime.datetime]:
    """Builder with everything but the key identifiers: validity, serial, constraints, usages, SANs."""
    start, end = _validity(inputs)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_basic_constraints(inputs), critical=True)
    )
    for extension, critical in usage_extensions(inputs.get("allowedUses")):
        builder = builder.add_extension(extension, critical=critical)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
    return builder, start, end


def _cert_outputs(cert: x509.Certificate, start: datetime.datetime, end: datetime.datetime) -> dict[str, Any]:
    return {
        "certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": _rfc3339(start),
        "validityEndTime": _rfc3339(end),
        "readyForRenewal": False,
    }


def _key_pem(inputs: Mapping[str, Any], name: str) -> str:
    pem = inputs.get(name) or inputs.get(f"{name}Wo")
    if not pem:
        raise ValueError(f"{name}: unset; allowed: a PEM private key")
    return str(pem)


def _self_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _load_key(_key_pem(inputs, "privateKeyPem"))
    subject = subject_name(inputs.get("subject"))
    if inputs.get("isCaCertificate") and len(subject) == 0:
        raise ValueError("subject: empty; allowed: at least one name when isCaCertificate is true")
    builder, start, end = _build(inputs, subject, key.public_key(), _sans(inputs), subject)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    if inputs.get("isCaCertificate") or inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(ski, critical=False)
        if inputs.get("setAuthorityKeyId"):
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
            builder = builder.add_extension(aki, critical=False)
    cert = builder.sign(key, _signature_hash(key))
    return {**_cert_outputs(cert, start, end), "keyAlgorithm": key_algorithm(key)}


def _cert_request(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _load_key(_key_pem(inputs, "privateKeyPem"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject_name(inputs.get("subject")))
    sans = _sans(inputs)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, _signature_hash(key))
    return {"certRequestPem": csr.public_bytes(serialization.Encoding.PEM).decode(), "keyAlgorithm": key_algorithm(key)}


def _csr_sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        return list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _authority_key_id(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _locally_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    csr = x509.load_pem_x509_csr(str(inputs.get("certRequestPem") or "").encode())
    if not csr.is_signature_valid:
        raise ValueError("certRequestPem: the request's signature does not verify")
    ca_key = _load_key(_key_pem(inputs, "caPrivateKeyPem"))
    ca = x509.load_pem_x509_certificate(str(inputs.get("caCertPem") or "").encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if ca.public_key().public_bytes(serialization.Encoding.DER, spki) != ca_key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ValueError("caPrivateKeyPem: does not match caCertPem's public key")
    public_key = csr.public_key()
    builder, start, end = _build(inputs, csr.subject, public_key, _csr_sans(csr), ca.subject)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    builder = builder.add_extension(_authority_key_id(ca), critical=False)
    cert = builder.sign(ca_key, _signature_hash(ca_key))
    return {**_cert_outputs(cert, start, end), "caKeyAlgorithm": key_algorithm(ca_key)}


_ISSUERS = {
    PRIVATE_KEY: _private_key,
    SELF_SIGNED_CERT: _self_signed_cert,
    CERT_REQUEST: _cert_request,
    LOCALLY_SIGNED_CERT: _locally_signed_cert,
}


def handles(typ: str) -> bool:
    """True for the pulumi-tls tokens `issue` knows."""
    return typ in _ISSUERS


def issue(typ: str, inputs: dict) -> dict:
    """Outputs for a pulumi-tls resource of token `typ` given its mock inputs (camelCase keys)."""
    issuer = _ISSUERS.get(typ)
    if issuer is None:
        raise ValueError(f"offline_tls: no issuer for {typ!r}; allowed: {', '.join(_ISSUERS)}")
    return {**inputs, **issuer(plain(inputs))}
