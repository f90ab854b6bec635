"""The host preparation's downloads, for real: curl against a local HTTP server, sha256sum, tar.

The rendered `prepare.sh.j2` runs in the step sandbox (tests/step_sandbox.py) with real curl,
its download list pointing at an HTTP server on the sandbox's own loopback. It proves: a file
whose hash matches is installed; a mismatch stops the preparation with a message that names the
URL and both hashes, installs nothing and leaves no marker; upstream `.sha256` files work; a
second run downloads nothing; a poisoned cache is never installed (its file is checked like a
download and fetched again); the cache is keyed by name and version, so a new version never
reuses an old version's file.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import render, versions
from components.render import MARKER
from components.versions import Download
from tests.conftest import dev_settings
from tests.step_sandbox import Sandbox, require_sandbox, sandbox

PORT = 8931
BASE = f"http://127.0.0.1:{PORT}"
SERVE_DIR = "/var/lib/kube-ec2-test-downloads"
TOOL = b"#!/bin/sh\necho fake tool\n"


def _tgz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


ARCHIVE = _tgz({"release-1/daemon": b"#!/bin/sh\necho daemon\n", "release-1/ctl": b"#!/bin/sh\necho ctl\n"})
UPSTREAM = b"#!/bin/sh\necho checked upstream\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def downloads(tool_sha: str, tool_version: str = "1") -> list[Download]:
    return [
        Download("tool", tool_version, f"{BASE}/tool", tool_sha, (("", "/usr/local/bin/faketool"),)),
        Download(
            "archive", "1", f"{BASE}/release-1.tar.gz", sha(ARCHIVE),
            (("release-1/daemon", "/usr/local/bin/fakedaemon"), ("release-1/ctl", "/opt/cni/bin/fakectl")),
        ),
        Download("upstream", "1", f"{BASE}/upstream-tool", None, (("", "/usr/local/bin/upstreamtool"),)),
    ]


def prepare_script(tool_sha: str, tool_version: str = "1") -> str:
    s = dev_settings()
    ctx = {**render.context(s, s.minions[0]), "downloads": downloads(tool_sha, tool_version)}
    return render.render("prepare.sh.j2", ctx)


def with_server(script: str) -> str:
    """Serve SERVE_DIR on the sandbox's loopback while the preparation runs, logging each request."""
    return f"""#!/bin/bash
set -euo pipefail
python3 -m http.server {PORT} --bind 127.0.0.1 --directory {SERVE_DIR} 2>>{SERVE_DIR}.log &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 50); do /usr/bin/curl -fs -o /dev/null {BASE}/tool && break; sleep 0.1; done
: >{SERVE_DIR}.log
bash /var/lib/kube-ec2-test-prepare.sh
"""


@pytest.fixture
def box() -> Iterator[Sandbox]:
    require_sandbox()
    with sandbox() as b:
        b.write("/usr/local/bin/curl", '#!/bin/sh\nexec /usr/bin/curl "$@"\n', 0o755)  # the real curl
        b.write("/etc/fstab", "LABEL=root / ext4 defaults 0 1\n")
        b.write(f"{SERVE_DIR}/tool", TOOL)
        b.write(f"{SERVE_DIR}/release-1.tar.gz", ARCHIVE)
        b.write(f"{SERVE_DIR}/upstream-tool", UPSTREAM)
        b.write(f"{SERVE_DIR}/upstream-tool.sha256", f"{sha(UPSTREAM)}  upstream-tool\n")
        yield b


def run(box: Sandbox, tool_sha: str, tool_version: str = "1"):  # type: ignore[no-untyped-def]
    box.write("/var/lib/kube-ec2-test-prepare.sh", prepare_script(tool_sha, tool_version), 0o755)
    return box.run(with_server(""), timeout=60)


def requests(box: Sandbox) -> list[str]:
    log = Path(box.path(f"{SERVE_DIR}.log"))
    return [line for line in log.read_text().splitlines() if "GET /" in line] if log.exists() else []


def assert_real_bytes_installed(box: Sandbox) -> None:
    """Every artifact installed is the one the server holds (the pinned hash's bytes)."""
    assert box.path("/usr/local/bin/faketool").read_bytes() == TOOL
    assert box.read("/usr/local/bin/fakedaemon") == "#!/bin/sh\necho daemon\n"
    assert box.read("/opt/cni/bin/fakectl") == "#!/bin/sh\necho ctl\n"
    assert box.path("/usr/local/bin/upstreamtool").read_bytes() == UPSTREAM


def test_verified_downloads_are_installed_and_marked(box: Sandbox) -> None:
    result = run(box, sha(TOOL))
    assert result.returncode == 0, result.explain()
    assert_real_bytes_installed(box)
    for path in ("/usr/local/bin/faketool", "/usr/local/bin/fakedaemon", "/opt/cni/bin/fakectl"):
        assert box.mode(path) == 0o755, path
    assert box.exists(MARKER)
    assert "prepared" in box.read("/var/log/kube-ec2-prepare.log")
    assert len(requests(box)) == 4  # tool, archive, upstream .sha256, upstream file

    again = run(box, sha(TOOL))
    assert again.returncode == 0, again.explain()
    assert [r for r in requests(box) if ".sha256" not in r] == [], "a verified cached download was fetched again"


def test_hash_mismatch_stops_with_a_clear_message(box: Sandbox) -> None:
    wrong = "0" * 64
    result = run(box, wrong)
    assert result.returncode != 0
    assert f"SHA-256 MISMATCH for {BASE}/tool: expected {wrong}, got {sha(TOOL)}" in result.output
    assert not box.exists("/usr/local/bin/faketool")
    assert not box.exists(MARKER), "a failed preparation must not leave the marker the steps wait for"
    assert [p.name for p in box.path("/var/cache/kube-ec2").rglob("*") if p.is_file()] == []


def test_tampered_upstream_checksum_is_caught(box: Sandbox) -> None:
    box.write(f"{SERVE_DIR}/upstream-tool.sha256", f"{'1' * 64}  upstream-tool\n")
    result = run(box, sha(TOOL))
    assert result.returncode != 0
    assert f"SHA-256 MISMATCH for {BASE}/upstream-tool" in result.output
    assert not box.exists("/usr/local/bin/upstreamtool")


CACHE = "/var/cache/kube-ec2"
EVIL = b"#!/bin/sh\necho poisoned\n"
TOOL_2 = b"#!/bin/sh\necho fake tool, version 2\n"


def test_cache_is_keyed_by_name_and_version(box: Sandbox) -> None:
    assert run(box, sha(TOOL)).returncode == 0
    assert box.path(f"{CACHE}/tool/1/tool").read_bytes() == TOOL
    assert box.path(f"{CACHE}/archive/1/release-1.tar.gz").read_bytes() == ARCHIVE
    assert box.path(f"{CACHE}/upstream/1/upstream-tool").read_bytes() == UPSTREAM


def test_poisoned_cache_is_checked_fetched_again_and_never_installed(box: Sandbox) -> None:
    """Someone wrote other bytes into the cache (or a download was cut short): the preparation
    checks the cached file like a fresh download, fetches the real one and installs only that."""
    for path in (f"{CACHE}/tool/1/tool", f"{CACHE}/upstream/1/upstream-tool"):
        box.write(path, EVIL, 0o755)
    box.write(f"{CACHE}/archive/1/release-1.tar.gz", _tgz({"release-1/daemon": EVIL, "release-1/ctl": EVIL}))
    result = run(box, sha(TOOL))
    assert result.returncode == 0, result.explain()
    assert_real_bytes_installed(box)
    fetched = [r for r in requests(box) if ".sha256" not in r]
    assert len(fetched) == 3, fetched
    assert box.path(f"{CACHE}/tool/1/tool").read_bytes() == TOOL, "the poisoned cache entry was not replaced"


def test_poisoned_cache_and_server_stop_the_preparation(box: Sandbox) -> None:
    box.write(f"{CACHE}/tool/1/tool", EVIL, 0o755)
    box.write(f"{SERVE_DIR}/tool", EVIL)
    result = run(box, sha(TOOL))
    assert result.returncode != 0
    assert f"SHA-256 MISMATCH for {BASE}/tool: expected {sha(TOOL)}, got {sha(EVIL)}" in result.output
    assert not box.exists("/usr/local/bin/faketool")
    assert not box.exists(MARKER)
    assert not box.exists(f"{CACHE}/tool/1/tool"), "a file that failed its check stays in the cache"


def test_a_new_version_never_reuses_the_old_versions_file(box: Sandbox) -> None:
    """Same URL, new version and hash (a re-tagged release, an upgrade): the new version is
    downloaded into its own cache entry, checked and installed; the old entry is untouched."""
    assert run(box, sha(TOOL)).returncode == 0
    box.write(f"{SERVE_DIR}/tool", TOOL_2)
    result = run(box, sha(TOOL_2), tool_version="2")
    assert result.returncode == 0, result.explain()
    assert box.path("/usr/local/bin/faketool").read_bytes() == TOOL_2
    assert box.path(f"{CACHE}/tool/2/tool").read_bytes() == TOOL_2
    assert box.path(f"{CACHE}/tool/1/tool").read_bytes() == TOOL
    assert [r for r in requests(box) if "GET /tool " in r], "version 2 was not downloaded"


# Every pinned hash, written a second time, from the same public sources versions.yaml names:
# a typo or a stray edit in one of the two copies fails here instead of on every host.
PUBLISHED = {
    # kubernetes-sigs/kubespray roles/kubespray_defaults/vars/main/checksums.yml (commit 005bdce7)
    ("kubelet", "1.35.1"): "e7343310e03ff0d424df4397bdfa4468947d6d1f0f93dac586c1e8d6e4086d5d",
    ("kubectl", "1.35.1"): "36e2f4ac66259232341dd7866952d64a958846470f6a9a6a813b9117bd965207",
    ("kubelet", "1.34.4"): "03b8fea715a7ef82eeaf518dee34c72670c57cc7bc40dc1320c04fbf4f15172f",
    ("kubectl", "1.34.4"): "d50c359d95e0841eaad08ddc27c7be37cba8fdccfba5c8e2ded65e121ff112db",
    ("cri_dockerd", "0.3.24"): "dd4b7f514c248a3aaca398f467430a4c58aae9a77ea8b96a2f5b5d6fba0948d1",
    ("cni_plugins", "1.8.0"): "ab3bda535f9d90766cccc90d3dddb5482003dd744d7f22bcf98186bf8eea8be6",
    # same checksums.yml (commit 46dbdd39), etcd_binary_checksums amd64 3.6.14 (the same value
    # appears in several independent public install scripts for etcd-v3.6.14-linux-amd64.tar.gz)
    ("etcd", "3.6.14"): "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5",
    # sysoperator/kubernetes-formula pillar/flannel.sls (commit 38808a7a)
    ("flannel", "0.27.4"): "fc1233aac3ad2707d14c9ae42016b5402753f755f0d07cc5c41dc4190e95d299",
}


def test_pinned_hashes_are_the_published_ones() -> None:
    pinned = {
        (d.name, d.version): d.sha256
        for version in versions.pinned_kubernetes_versions()
        for role in ("master", "minion")
        for d in versions.downloads(role, version)
        if d.sha256
    }
    assert pinned == PUBLISHED
