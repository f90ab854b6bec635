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


# The previous design's etcd state: one identity `flannel` shared by every host, with read-write on
# the whole prefix; and the user of a minion since removed. The step must take both away.
LEGACY = (
    ("role", "add", "flannel"),
    ("role", "grant-permission", "flannel", "--prefix=true", "readwrite", f"{FLANNEL_PREFIX}/"),
    ("user", "add", "flannel", "--no-password"),
    ("user", "grant-role", "flannel", "flannel"),
    ("user", "add", "flannel-minion-99", "--no-password"),
    ("user", "grant-role", "flannel-minion-99", "flannel"),
)
# What each test etcd lets flannel's identity do that a fixed one refuses (the probe's names).
# Both predate the nested-txn, Watch-from-key and maintenance-auth fixes.
BYPASSES = {
    "debian-3.4": ["nested-txn", "watch-from-key", "alarm"],
    "upstream-3.5": ["nested-txn", "watch-from-key", "alarm"],
}


@pytest.fixture(scope="module")
def flannel_network(etcd: RealEtcd) -> subprocess.CompletedProcess[str]:
    """The rendered master-flannel-network step, run once against the running etcd (legacy state first)."""
    for args in LEGACY:
        ok(etcd.etcdctl(*args))
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


def fence_report(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The probe names the step said went through, in order."""
    return re.findall(r"^\S+ master-flannel-network: fence broken: .*$", result.stderr, re.MULTILINE)


def test_fence_probe_reports_each_bypass_of_this_etcd(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    """Both test etcds predate the fixes: the step must fail and name what went through."""
    assert flannel_network.returncode == 1, flannel_network.stderr
    broken = fence_report(flannel_network)
    expected = BYPASSES[etcd.release.name]
    assert len(broken) == len(expected), broken
    advisories = {"nested-txn": "GHSA-rfx7-8w68-q57q", "watch-from-key": "GHSA-xg4h-6gfc-h4m8", "alarm": "GHSA-q8m4-xhhv-38mg"}
    for line, name in zip(broken, expected, strict=True):
        assert advisories[name] in line, line
    assert "nested transaction (GHSA-rfx7-8w68-q57q): grpc-status '0'" in flannel_network.stderr
    assert f"{' '.join(expected)} went through; move to a release past these advisories" in flannel_network.stderr
    # What the fixes are not needed for is refused here already: the plain get and the prev_kv put.
    assert "plain get" not in "\n".join(broken) and "prev_kv" not in "\n".join(broken)
    # The probe's NOSPACE alarm was cleared again, and nothing was written under /registry.
    assert ok(etcd.etcdctl("alarm", "list")).strip() == ""
    assert ok(etcd.etcdctl("get", "/registry/kube-ec2-fence-probe", "--print-value-only")).strip() == ""
    assert "etcd RBAC checked" not in flannel_network.stderr


def test_flannel_network_step_writes_config_and_each_host_gets_only_its_grants(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    assert "wrote /coreos.com/network/config" in flannel_network.stderr
    local = json.loads(etcd.host_path("/etc/kube-ec2/flannel-net-conf.json").read_text())
    stored = json.loads(ok(etcd.etcdctl("get", f"{FLANNEL_PREFIX}/config", "--print-value-only", identity=FLANNEL)))
    assert stored == local
    assert stored["Network"] == "10.200.0.0/16" and stored["Backend"]["Type"] == "vxlan"

    for host in (FLANNEL, "flannel-etcd-minion-0"):
        # What flanneld 0.27 does (registry.go): create its lease with a txn, renew by put, list and
        # watch the subnets range [<prefix>/subnets, <prefix>/subnett), read the config.
        subnet = f"{FLANNEL_PREFIX}/subnets/10.200.{7 if host == FLANNEL else 8}.0-24"
        lease = ok(etcd.etcdctl("lease", "grant", "60", identity=host)).split()[1]
        ok(etcd.etcdctl("put", f"--lease={lease}", subnet, '{"PublicIP":"10.240.0.11"}', identity=host))
        renewed = ok(etcd.etcdctl("lease", "grant", "60", identity=host)).split()[1]
        ok(etcd.etcdctl("put", f"--lease={renewed}", subnet, '{"PublicIP":"10.240.0.11"}', identity=host))
        listed = ok(etcd.etcdctl("get", f"{FLANNEL_PREFIX}/subnets", "--prefix", "--keys-only", identity=host))
        assert subnet in listed.split()
        ok(etcd.etcdctl("lease", "timetolive", renewed, identity=host))
        ok(etcd.etcdctl("lease", "revoke", lease, identity=host))
        ok(etcd.etcdctl("lease", "revoke", renewed, identity=host))
        # No host may rewrite the network config or touch anything else.
        for args in (
            ("put", f"{FLANNEL_PREFIX}/config", "{}"),
            ("put", "/registry/x", "1"),
            ("get", "/registry/kube-ec2-test"),
            ("get", "/registry", "--prefix", "--keys-only"),
            ("get", f"{FLANNEL_PREFIX}/", "--prefix", "--keys-only"),
            ("put", f"{FLANNEL_PREFIX}/other", "1"),
            ("auth", "disable"),
            ("user", "add", "intruder", "--no-password"),
            ("role", "grant-permission", "flanneld", "readwrite", "/registry/"),
        ):
            refused(etcd.etcdctl(*args, identity=host), "permission denied")

    # The apiserver identity (root role) keeps full access once auth is on.
    ok(etcd.etcdctl("put", "/registry/x", "1", identity=APISERVER))
    assert ok(etcd.etcdctl("get", "/registry/x", "--print-value-only", identity=APISERVER)).strip() == "1"


def test_watch_of_the_subnets_range_is_allowed_as_flanneld_makes_it(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    """Watch(<prefix>/subnets, WithPrefix): the grant's range must cover it, or flanneld never sees peers."""
    assert flannel_network.returncode == 1  # the fence report; the grants are in place before it
    watch = etcd.run(
        ["timeout", "3", etcd.release.etcdctl, f"--endpoints={etcd.rendered.client_url}",
         f"--cacert={etcd.pki_dir}/etcd-ca.crt", f"--cert={etcd.pki_dir}/{FLANNEL}.crt",
         f"--key={etcd.pki_dir}/{FLANNEL}.key", "watch", "--prefix", f"{FLANNEL_PREFIX}/subnets"],
        env={"PATH": "/usr/bin:/bin", "ETCDCTL_API": "3"},
    )
    assert watch.returncode == 124 and "permission denied" not in watch.stdout + watch.stderr, watch.stderr


def test_identities_no_host_presents_are_gone(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    assert "removed etcd user flannel-minion-99" in flannel_network.stderr
    users = ok(etcd.etcdctl("user", "list", identity=APISERVER)).split()
    assert sorted(users) == ["flannel-master", "flannel-minion-0", "flannel-minion-1", "flannel-minion-2", "kube-apiserver", "root"]
    assert ok(etcd.etcdctl("role", "list", identity=APISERVER)).split() == ["flanneld", "root"]
    for stale in ("flannel-etcd-shared", "flannel-etcd-gone"):
        refused(etcd.etcdctl("get", f"{FLANNEL_PREFIX}/config", identity=stale), "permission denied")


def test_flannel_network_step_runs_again_the_same_way(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    again = etcd.run_script(step_script("master-flannel-network"))
    assert again.returncode == 1 and len(fence_report(again)) == len(BYPASSES[etcd.release.name]), again.stderr
    assert "wrote /etc/kube-ec2/flannel-net-conf.json" not in again.stderr  # unchanged file left alone
    assert "removed etcd user" not in again.stderr
    refused(etcd.etcdctl("get", "/registry/x", identity=FLANNEL), "permission denied")
    roles = ok(etcd.etcdctl("user", "get", "flannel-master", identity=APISERVER))
    assert roles.split("Roles:")[1].split() == ["flanneld"]


def test_etcd_steps_health_check_passes_with_auth_on(
    etcd: RealEtcd, flannel_network: subprocess.CompletedProcess[str]
) -> None:
    """Re-running master-etcd after auth is enabled must not hang on its health wait."""
    assert "etcd auth enabled" in flannel_network.stderr
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
