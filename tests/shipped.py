"""What the program ships, read back from an offline run the way a host would receive it.

The semantic tests (tests/test_semantics.py, tests/test_certificates.py, tests/test_wiring.py)
parse these instead of calling the code that produced them: files from each instance's user data
(gzip, base64, cloud-config `write_files`), step scripts from each remote command's `create`,
certificates from each host's secret PKI bundle. Expected values live in the tests.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import shlex
import tarfile
from typing import Any

import yaml
from cryptography import x509

from components import offline
from components.offline import tls as offline_tls

INSTANCE = "aws:ec2/instance:Instance"
COMMAND = "command:remote:Command"
PKI = "/etc/kubernetes/pki"


def user_data_files(run: offline.Run, host: str) -> dict[str, str]:
    """path -> content of every file the host's cloud-config writes."""
    instance = run.mocks.named(f"{host}-instance")
    assert instance.typ == INSTANCE
    text = gzip.decompress(base64.b64decode(instance.inputs["userDataBase64"])).decode()
    return {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}


def unit_flags(unit: str) -> dict[str, str]:
    """--flag -> value of a systemd unit's ExecStart (continuation lines joined). A flag given
    twice is an error: which one wins depends on the daemon's flag library."""
    joined = unit.replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if line.startswith("ExecStart=")]
    flags: dict[str, str] = {}
    for word in shlex.split(line.removeprefix("ExecStart="))[1:]:
        assert word.startswith("--"), f"not a --flag: {word}"
        name, _, value = word[2:].partition("=")
        assert name not in flags, f"--{name} given twice"
        flags[name] = value
    return flags


def unit_section(unit: str, section: str) -> dict[str, list[str]]:
    """key -> values of one [section] of a unit file."""
    found: dict[str, list[str]] = {}
    current = None
    for line in unit.replace("\\\n", " ").splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def daemon(run: offline.Run, host: str, name: str) -> dict[str, str]:
    """The ExecStart flags of /etc/systemd/system/<name>.service on `host`."""
    return unit_flags(user_data_files(run, host)[f"/etc/systemd/system/{name}.service"])


def yaml_file(run: offline.Run, host: str, path: str) -> Any:
    return yaml.safe_load(user_data_files(run, host)[path])


def json_file(run: offline.Run, host: str, path: str) -> Any:
    return json.loads(user_data_files(run, host)[path])


def step_script(run: offline.Run, step: str, field: str = "create") -> str:
    """The bash script a remote command runs (`sudo -n bash -c '<script>'`)."""
    command = run.mocks.named(step).inputs[field]
    words = shlex.split(command)
    assert words[:4] == ["sudo", "-n", "bash", "-c"], command[:80]
    return words[4]


def heredoc(script: str, path: str) -> str:
    """The content a step script writes to `path` with `put_file PATH MODE <<'KUBE_EC2_EOF'`."""
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"put_file {path} "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].endswith("KUBE_EC2_EOF"))
    last = lines[end].removesuffix("KUBE_EC2_EOF")
    return "\n".join(lines[start + 1 : end] + ([last] if last else [])) + "\n"


def bundle(run: offline.Run, host: str) -> dict[str, str]:
    """The files of the host's secret PKI bundle (the `<host>-pki` step's standard input)."""
    value = offline_tls.plain(run.mocks.named(f"{host}-pki").inputs["stdin"])
    assert isinstance(value, str)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(value)))) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]


def certificate(run: offline.Run, host: str, path: str) -> x509.Certificate:
    """The certificate the host holds at `path` (a file under /etc/kubernetes/pki)."""
    assert path.startswith(f"{PKI}/"), path
    return x509.load_pem_x509_certificate(bundle(run, host)[path.removeprefix(f"{PKI}/")].encode())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def organizations(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]


def ip_sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def dns_sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))
