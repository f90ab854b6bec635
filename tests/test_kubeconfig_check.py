"""The kubeconfig-check: the exported kubeconfig used from the deployer's machine after the smoke test.

Under mocks: the program runs it locally after master-smoke-test with the kubeconfig as a secret
standard input and nothing secret anywhere else. For real: the rendered script against a local
HTTPS server that demands a client certificate (Python's ssl), with real curl and openssl-issued
certificates: it passes with the right kubeconfig and fails, saying so, on a server certificate
without the kubeconfig's address, a server from another CA, a client certificate the server does
not trust, a closed port; it leaves no file behind and never prints the key.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import offline, render
from components.pki import kubeconfig
from tests.conftest import require_tool
from tests.engine_options import recording
from tests.etcd_real import BOTH_USES, CLIENT_USES, issue_ca, issue_leaf
from tests.test_program import unwrap

LOCAL = "command:local:Command"
TOOLS = ("bash", "curl", "sed", "head", "base64", "mktemp", "rm", "cat", "sleep")


# --- under mocks


@pytest.fixture(scope="module")
def recorded() -> tuple[offline.Run, dict]:
    with recording() as seen:
        run = offline.run("dev")
    return run, dict(seen)


def test_check_runs_locally_after_the_smoke_test_with_the_kubeconfig_on_stdin(recorded: tuple[offline.Run, dict]) -> None:
    run, options = recorded
    checks = run.mocks.of_type(LOCAL)
    assert [c.name for c in checks] == ["kubeconfig-check"]
    check = checks[0]
    assert "master-smoke-test" in options[(LOCAL, "kubeconfig-check")].dependencies
    assert check.inputs["create"] == render.kubeconfig_check_script()
    assert check.inputs["interpreter"] == ["/bin/bash", "-c"]
    stdin, secret = unwrap(check.inputs["stdin"])
    assert secret, "the kubeconfig went in as a plain value"
    exported, _ = unwrap(run.outputs["kubeconfig"])
    assert stdin == exported
    assert "server: https://203.0.113.10:6443" in str(stdin)  # the mocks' Elastic IP
    plain = " ".join(str(check.inputs.get(f, "")) for f in ("create", "triggers", "environment"))
    key_data = next(line.split(": ", 1)[1] for line in str(stdin).splitlines() if "client-key-data:" in line)
    assert "PRIVATE KEY" not in plain and key_data not in plain
    assert check.inputs.get("addPreviousOutputInEnv") is False


# --- the script for real


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    ca = issue_ca("kube-ec2 test CA")
    other = issue_ca("another CA")
    return {
        "ca": ca,
        "server": issue_leaf(ca, "kube-apiserver", BOTH_USES, ips=["127.0.0.1"]),
        "wrong-name": issue_leaf(ca, "kube-apiserver", BOTH_USES, ips=["198.51.100.7"]),
        "other-server": issue_leaf(other, "kube-apiserver", BOTH_USES, ips=["127.0.0.1"]),
        "admin": issue_leaf(ca, "kubernetes-admin", CLIENT_USES),
        "stranger": issue_leaf(other, "kubernetes-admin", CLIENT_USES),
    }


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/api/v1/namespaces/kube-system"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b'{"kind":"Namespace"}' if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def api_server(tmp: Path, server: tuple[str, str], client_ca: tuple[str, str]) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 that requires a client certificate from client_ca."""
    for name, text in (("s.crt", server[0]), ("s.key", server[1]), ("client-ca.crt", client_ca[0])):
        (tmp / name).write_text(text)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "s.crt", tmp / "s.key")
    context.load_verify_locations(tmp / "client-ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_check(tmp: Path, config: str) -> subprocess.CompletedProcess[str]:
    """The rendered script with one attempt, kubectl out of reach (the curl path), its own TMPDIR."""
    bin_dir, scratch = tmp / "bin", tmp / "scratch"
    bin_dir.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool, path="/usr/bin:/bin")
        assert found, tool
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "TMPDIR": str(scratch), "KUBE_EC2_CHECK_ATTEMPTS": "1", "LANG": "C.UTF-8"}
    script = render.kubeconfig_check_script()
    return subprocess.run(["bash", "-c", script], input=config, capture_output=True, text=True, env=env, timeout=60)


def config_for(port: int, pki: dict[str, tuple[str, str]], user: str = "admin", host: str = "127.0.0.1") -> str:
    cert, key = pki[user]
    return kubeconfig("kube-ec2-dev", f"https://{host}:{port}", pki["ca"][0], cert, key)


@pytest.fixture
def tools() -> None:
    require_tool("curl")


def assert_failed(result: subprocess.CompletedProcess[str], *said: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "kubeconfig-check: FAILED: the exported kubeconfig does not reach https://127.0.0.1:" in result.stderr
    assert "adminCidrs" in result.stderr
    for words in said:
        assert words in result.stderr, result.stderr


@pytest.mark.usefixtures("tools")
def test_the_right_kubeconfig_passes_and_leaves_nothing(tmp_path: Path, pki: dict) -> None:
    with api_server(tmp_path, pki["server"], pki["ca"]) as port:
        result = run_check(tmp_path, config_for(port, pki))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kubeconfig-check: https://127.0.0.1:{port} answers the exported kubeconfig from this machine (curl)\n"
    assert list((tmp_path / "scratch").iterdir()) == []
    assert pki["admin"][1].splitlines()[1] not in result.stdout + result.stderr


@pytest.mark.usefixtures("tools")
def test_a_server_certificate_without_the_address_fails(tmp_path: Path, pki: dict) -> None:
    with api_server(tmp_path, pki["wrong-name"], pki["ca"]) as port:
        result = run_check(tmp_path, config_for(port, pki))
    assert_failed(result, "curl said: curl: (60)")
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.usefixtures("tools")
def test_a_server_from_another_ca_fails(tmp_path: Path, pki: dict) -> None:
    with api_server(tmp_path, pki["other-server"], pki["ca"]) as port:
        result = run_check(tmp_path, config_for(port, pki))
    assert_failed(result, "curl said: curl: (60)")


@pytest.mark.usefixtures("tools")
def test_a_client_certificate_the_server_does_not_trust_fails(tmp_path: Path, pki: dict) -> None:
    with api_server(tmp_path, pki["server"], pki["ca"]) as port:
        result = run_check(tmp_path, config_for(port, pki, user="stranger"))
    assert_failed(result, "curl said: curl: (")
    assert pki["stranger"][1].splitlines()[1] not in result.stdout + result.stderr


@pytest.mark.usefixtures("tools")
def test_a_closed_port_fails(tmp_path: Path, pki: dict) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_check(tmp_path, config_for(port, pki))
    assert_failed(result, "curl said: curl: (7)")
    assert list((tmp_path / "scratch").iterdir()) == []


def test_the_script_passes_shellcheck(tmp_path: Path) -> None:
    tool = require_tool("shellcheck")
    path = tmp_path / "kubeconfig-check.sh"
    path.write_text(render.kubeconfig_check_script())
    result = subprocess.run([tool, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert os.access(path, os.R_OK)
