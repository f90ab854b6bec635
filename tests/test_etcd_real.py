"""A real etcd with the rendered settings and certificates, and the real flannel-network step against it.

Rung 4 of the verification ladder: Debian's etcd (3.4) in a network namespace holding the dev
master's address. Needs root; skipped only when not root on a developer machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import bootstrap
from components.render import FLANNEL_PREFIX
from tests.conftest import dev_settings
from tests.etcd_real import (
    CLIENT_USES,
    RELEASES,
    EtcdRelease,
    RealEtcd,
    etcd_pki_files,
    issue_ca,
    issue_leaf,
    real_etcd,
    require_real_etcd,
)

APISERVER = "apiserver-etcd-client"
FLANNEL = "flannel-etcd"
STRANGER = "stranger"
"""A client certificate from another CA, with the same CA name and the apiserver's CN."""


def step_script(name: str) -> str:
    return {s.name: s for s in bootstrap.plan(dev_settings())}[name].script


@pytest.fixture(scope="module", params=RELEASES, ids=[r.name for r in RELEASES])
def etcd(request: pytest.FixtureRequest) -> Iterator[RealEtcd]:
    release: EtcdRelease = request.param
    require_real_etcd(release)
    files = etcd_pki_files()
    s = dev_settings()
    files[f"{STRANGER}.crt"], files[f"{STRANGER}.key"] = issue_leaf(
        issue_ca(f"{s.cluster_name} etcd CA"), "kube-apiserver", CLIENT_USES
    )
    with real_etcd(files, s, release=release) as running:
        yield running


@pytest.fixture(scope="module")
def flannel_network(etcd: RealEtcd) -> subprocess.CompletedProcess[str]:
    """The rendered master-flannel-network step, run once against the running etcd."""
    return etcd.run_script(step_script("master-flannel-network"))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{shlex.join(result.args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0, f"{shlex.join(result.args)} succeeded:\n{result.stdout}"
    assert reason in result.stderr, result.stderr


def rejections(etcd: RealEtcd) -> list[str]:
    # 3.4 logs "rejected connection from ..."; 3.5 logs JSON with "msg":"rejected connection".
    return [line for line in etcd.log().splitlines() if "rejected connection" in line]


# --- etcd as rendered


def test_etcd_runs_the_rendered_command_and_listens_only_in_its_namespace(etcd: RealEtcd) -> None:
    cmdline = Path(f"/proc/{etcd.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert [arg.decode() for arg in cmdline] == etcd.rendered.command
    assert os.readlink(f"/proc/{etcd.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    config = etcd.rendered.config
    wanted = {
        url.removeprefix("https://").removeprefix("http://")
        for key in ("listen-client-urls", "listen-peer-urls", "listen-metrics-urls")
        for url in str(config[key]).split(",")
    }
    listening = ok(etcd.run(["ss", "-Hltn"]))
    assert {line.split()[3] for line in listening.splitlines()} == wanted
    assert wanted == {"10.240.0.10:2379", "127.0.0.1:2379", "10.240.0.10:2380", "127.0.0.1:2381"}


def test_apiserver_identity_writes_and_reads_on_both_client_urls(etcd: RealEtcd) -> None:
    ok(etcd.etcdctl("put", "/registry/kube-ec2-test", "hello", identity=APISERVER))
    for endpoint in ("https://10.240.0.10:2379", "https://127.0.0.1:2379"):
        got = etcd.etcdctl("get", "/registry/kube-ec2-test", "--print-value-only", endpoint=endpoint)
        assert ok(got).strip() == "hello"


def test_client_without_certificate_is_refused(etcd: RealEtcd) -> None:
    before = len(rejections(etcd))
    result = etcd.etcdctl("get", "/registry/kube-ec2-test", identity=None, command_timeout=2)
    refused(result, "context deadline exceeded")  # the handshake never completes
    new = rejections(etcd)[before:]
    assert new and all("client didn't provide a certificate" in line for line in new), new


def test_client_certificate_from_another_ca_is_refused(etcd: RealEtcd) -> None:
    before = len(rejections(etcd))
    result = etcd.etcdctl("get", "/registry/kube-ec2-test", identity=STRANGER, command_timeout=2)
    refused(result, "context deadline exceeded")
    new = rejections(etcd)[before:]
    assert new and all("certificate signed by unknown authority" in line for line in new), new


# --- the flannel-network step


def test_flannel_network_step_writes_config_and_fences_flannel(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    ok(flannel_network)
    assert "etcd RBAC checked" in flannel_network.stderr
    local = json.loads(etcd.host_path("/etc/kube-ec2/flannel-net-conf.json").read_text())
    stored = json.loads(ok(etcd.etcdctl("get", f"{FLANNEL_PREFIX}/config", "--print-value-only", identity=FLANNEL)))
    assert stored == local
    assert stored["Network"] == "10.200.0.0/16" and stored["Backend"]["Type"] == "vxlan"

    # What flanneld does under its prefix: a lease, and its subnet written with it.
    lease = ok(etcd.etcdctl("lease", "grant", "60", identity=FLANNEL)).split()[1]
    subnet = f"{FLANNEL_PREFIX}/subnets/10.200.7.0-24"
    ok(etcd.etcdctl("put", f"--lease={lease}", subnet, '{"PublicIP":"10.240.0.11"}', identity=FLANNEL))
    ok(etcd.etcdctl("lease", "revoke", lease, identity=FLANNEL))

    # Everything outside the prefix (including look-alike keys) and all auth admin is denied.
    for args in (
        ("put", "/registry/x", "1"),
        ("get", "/registry/kube-ec2-test"),
        ("get", "/registry", "--prefix", "--keys-only"),
        ("put", f"{FLANNEL_PREFIX}x", "1"),
        ("auth", "disable"),
        ("user", "add", "intruder", "--no-password"),
        ("role", "grant-permission", "flannel", "readwrite", "/registry/"),
    ):
        refused(etcd.etcdctl(*args, identity=FLANNEL), "permission denied")

    # The apiserver identity (root role) keeps full access once auth is on.
    ok(etcd.etcdctl("put", "/registry/x", "1", identity=APISERVER))
    assert ok(etcd.etcdctl("get", "/registry/x", "--print-value-only", identity=APISERVER)).strip() == "1"
    assert "flannel" in ok(etcd.etcdctl("user", "list", identity=APISERVER)).split()


def test_flannel_network_step_runs_again_cleanly(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    ok(flannel_network)
    again = etcd.run_script(step_script("master-flannel-network"))
    ok(again)
    assert "wrote /etc/kube-ec2/flannel-net-conf.json" not in again.stderr  # unchanged file left alone
    assert "etcd RBAC checked" in again.stderr
    refused(etcd.etcdctl("get", "/registry/x", identity=FLANNEL), "permission denied")
    roles = ok(etcd.etcdctl("user", "get", "flannel", identity=APISERVER))
    assert roles.split("Roles:")[1].split() == ["flannel"]


def test_etcd_steps_health_check_passes_with_auth_on(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    """Re-running master-etcd after auth is enabled must not hang on its health wait."""
    ok(flannel_network)
    if shutil.which("curl") is None:
        pytest.fail("curl is missing (the etcd step's health check uses it)")
    found = re.search(r'^wait_until \d+ "etcd health" (.+)$', step_script("master-etcd"), re.MULTILINE)
    assert found, "master-etcd has no etcd health wait"
    ok(etcd.run(shlex.split(found.group(1)), timeout=15))


# --- kubeadm's etcd 3.5 settings


def test_config_carries_kubeadms_etcd_settings_as_etcd_parses_them(etcd: RealEtcd) -> None:
    config = etcd.rendered.config
    assert config["experimental-initial-corrupt-check"] is True
    # embed.Config decodes the YAML file through JSON into time.Duration: integer nanoseconds.
    assert config["experimental-watch-progress-notify-interval"] == 5_000_000_000
    if etcd.release.name == "debian-3.4":
        return  # 3.4 logs neither setting and its etcdctl has no --progress-notify; it started with them
    assert '"initial-corrupt-check":true' in etcd.log()
    # The default interval is 10 minutes: a progress notification within 7 s shows 5 s is in force.
    watch = etcd.run(
        ["timeout", "7", etcd.release.etcdctl, f"--endpoints={etcd.rendered.client_url}",
         f"--cacert={etcd.pki_dir}/etcd-ca.crt", f"--cert={etcd.pki_dir}/{APISERVER}.crt",
         f"--key={etcd.pki_dir}/{APISERVER}.key", "watch", "--progress-notify", "/kube-ec2-progress"],
        env={"PATH": "/usr/bin:/bin", "ETCDCTL_API": "3"},
    )
    assert watch.returncode == 124 and watch.stdout.startswith("progress notify:"), (watch.stdout, watch.stderr)


@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_a_duration_written_as_text_stops_etcd(release: EtcdRelease, tmp_path: Path) -> None:
    """The broken input: "5s" instead of nanoseconds is refused at start, so the encoding matters."""
    require_real_etcd(release)
    config = tmp_path / "etcd.conf.yml"
    config.write_text(f"name: broken\ndata-dir: {tmp_path}/data\nexperimental-watch-progress-notify-interval: 5s\n")
    result = subprocess.run([release.etcd, f"--config-file={config}"], capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    assert "cannot unmarshal string into Go struct field" in result.stderr + result.stdout, result.stderr
