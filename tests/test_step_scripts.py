"""The rendered remote step scripts, run for real (as root, in a throw-away mount namespace).

Every script here is exactly what `bootstrap.plan(dev_settings())` hands pulumi-command; nothing
in its text is changed. The sandbox (tests/step_sandbox.py) mounts temp directories over the
paths the scripts write and stubs systemctl, journalctl, curl, cloud-init, kubectl, ... in
/usr/local/bin, so the scripts' own logic runs: put_file, ensure_started, wait_until, the EXIT
trap, the cloud-init exit-code policy, the drain hook. What this proves: the steps are
idempotent (a second run rewrites and restarts nothing), a changed input restarts exactly the
daemons that read it, every wait is bounded, a failure prints FAILED and each unit's journal,
secrets land 0600 root and are never printed.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components import bootstrap, render, versions
from components.pki import make_bundle
from components.render import MARKER, PKI_DIR
from tests.conftest import dev_settings
from tests.etcd_real import CLIENT_USES, issue_ca, issue_leaf
from tests.step_sandbox import JOURNAL_MARKER, Result, Sandbox, probe, require_sandbox, sandbox

SETTINGS = dev_settings()
MINION = SETTINGS.minions[0]
PREPARE = "/usr/local/sbin/kube-ec2-prepare"
PREPARE_LOG = "/var/log/kube-ec2-prepare.log"


@functools.cache
def steps() -> dict[str, bootstrap.Step]:
    return {s.name: s for s in bootstrap.plan(SETTINGS)}


def step(name: str) -> bootstrap.Step:
    return steps()[name]


def units_of(script: str) -> list[str]:
    """The UNITS array of a rendered script (what its EXIT trap prints the journal of)."""
    line = next(line for line in script.splitlines() if line.startswith("UNITS=("))
    return shlex.split(line[len("UNITS=(") : -1])


def journal_shown(result: Result, unit: str) -> bool:
    return (
        f"----- journalctl -u {unit} -n 80 -----" in result.stderr
        and f"{JOURNAL_MARKER} journalctl -u {unit} -n 80 --no-pager" in result.stderr
    )


def assert_failed_with_journals(result: Result, units: list[str]) -> None:
    assert result.returncode != 0, result.explain()
    assert re.search(r": FAILED \(exit \d+\)", result.stderr), result.explain()
    assert units, "a step that manages units must name them"
    for unit in units:
        assert journal_shown(result, unit), f"no journal of {unit}\n{result.explain()}"


def inode(box: Sandbox, inside: str) -> tuple[int, int]:
    st = box.path(inside).stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def sandbox_works() -> None:
    require_sandbox()
    with sandbox() as box:
        result = probe(box)
        assert result.returncode == 0, f"the sandbox does not work here:\n{result.explain()}"
        assert result.calls == [["systemctl", "is-active", "--quiet", "nothing"]], result.calls


@pytest.fixture
def box(sandbox_works: None) -> Iterator[Sandbox]:
    with sandbox() as b:
        yield b


# --- certificates: real ones, so the pki step's `openssl x509` log line has something to read


@functools.cache
def _minion_pki() -> tuple[tuple[str, str], ...]:
    ca = issue_ca(f"{SETTINGS.cluster_name} CA")
    kubelet = issue_leaf(ca, f"system:node:{MINION.name}", CLIENT_USES)
    proxy = issue_leaf(ca, "system:kube-proxy", CLIENT_USES)
    files = {
        "ca.crt": ca[0],
        "kubelet.crt": kubelet[0],
        "kubelet.key": kubelet[1],
        "kube-proxy.crt": proxy[0],
        "kube-proxy.key": proxy[1],
    }
    return tuple(files.items())


def minion_pki() -> dict[str, str]:
    return dict(_minion_pki())


@functools.cache
def _other_leaf() -> tuple[str, str]:
    return issue_leaf(issue_ca("another CA"), f"system:node:{MINION.name}", CLIENT_USES)


# --- 1. pki


def test_pki_installs_every_file_0600_root_and_prints_no_key(box: Sandbox) -> None:
    files = minion_pki()
    result = box.run(step(f"{MINION.name}-pki").script, stdin=make_bundle(files))
    assert result.returncode == 0, result.explain()
    assert stat.S_IMODE(box.path(PKI_DIR).stat().st_mode) == 0o700
    for name, content in files.items():
        path = box.path(f"{PKI_DIR}/{name}")
        st = path.stat()
        assert path.read_text() == content, name
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), name
    assert sorted(result.wrote()) == sorted(f"{PKI_DIR}/{name}" for name in files)
    assert "PRIVATE KEY" not in result.output
    for name, content in files.items():
        if name.endswith(".key"):
            body = content.splitlines()[1]
            assert body not in result.output, f"{name} material in the output"
    for name in ("ca.crt", "kubelet.crt", "kube-proxy.crt"):
        assert re.search(rf": {re.escape(name)}: subject=.*notAfter=", result.stderr), result.explain()
    assert box.tmp_leftovers() == [], "the unpacked bundle or a put_file temp file was left in /tmp"


def test_pki_second_run_rewrites_nothing_and_a_changed_file_is_rewritten(box: Sandbox) -> None:
    files = minion_pki()
    script = step(f"{MINION.name}-pki").script
    assert box.run(script, stdin=make_bundle(files)).returncode == 0
    before = {name: inode(box, f"{PKI_DIR}/{name}") for name in files}

    again = box.run(script, stdin=make_bundle(files))
    assert again.returncode == 0, again.explain()
    assert again.wrote() == [], again.explain()
    assert {name: inode(box, f"{PKI_DIR}/{name}") for name in files} == before

    cert, key = _other_leaf()
    changed = {**files, "kubelet.crt": cert, "kubelet.key": key}
    third = box.run(script, stdin=make_bundle(changed))
    assert third.returncode == 0, third.explain()
    assert sorted(third.wrote()) == [f"{PKI_DIR}/kubelet.crt", f"{PKI_DIR}/kubelet.key"]
    assert box.read(f"{PKI_DIR}/kubelet.crt") == cert
    assert box.mode(f"{PKI_DIR}/kubelet.key") == 0o600
    for name in files.keys() - {"kubelet.crt", "kubelet.key"}:
        assert inode(box, f"{PKI_DIR}/{name}") == before[name], name
    assert "PRIVATE KEY" not in third.output


def test_pki_tightens_a_key_whose_mode_was_loosened(box: Sandbox) -> None:
    files = minion_pki()
    script = step(f"{MINION.name}-pki").script
    assert box.run(script, stdin=make_bundle(files)).returncode == 0
    box.path(f"{PKI_DIR}/kubelet.key").chmod(0o644)
    result = box.run(script, stdin=make_bundle(files))
    assert result.returncode == 0, result.explain()
    assert result.wrote() == [f"{PKI_DIR}/kubelet.key"]
    assert box.mode(f"{PKI_DIR}/kubelet.key") == 0o600


def test_pki_gives_a_key_back_to_root(box: Sandbox) -> None:
    files = minion_pki()
    script = step(f"{MINION.name}-pki").script
    assert box.run(script, stdin=make_bundle(files)).returncode == 0
    os.chown(box.path(f"{PKI_DIR}/kubelet.key"), 65534, 65534)
    result = box.run(script, stdin=make_bundle(files))
    assert result.returncode == 0, result.explain()
    st = box.path(f"{PKI_DIR}/kubelet.key").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)


# --- 2. a daemon step: minion-0-kubelet (kubelet + kube-proxy)

KUBELET_STEP = f"{MINION.name}-kubelet"
KUBELET_UNITS = ["kubelet.service", "kube-proxy.service"]


def kubelet_files() -> dict[str, tuple[str, str]]:
    return {**render.daemon_files(SETTINGS, MINION, "kubelet"), **render.daemon_files(SETTINGS, MINION, "kube-proxy")}


def stage_binary(box: Sandbox, name: str, version: str = "v1", role: str = "minion") -> str:
    """A placeholder daemon binary where the host's preparation stages it (the daemon step swaps it in)."""
    path = versions.staged_binaries(role, SETTINGS.kubernetes_version)[f"/usr/local/bin/{name}"]
    box.write(path, f"#!/bin/sh\n# fake {name} {version}\nexit 0\n", 0o755)
    return path


def prepare_minion(box: Sandbox) -> None:
    """What the host holds before the kubelet step: the PKI files and the downloaded binaries."""
    for name, content in minion_pki().items():
        box.write(f"{PKI_DIR}/{name}", content, 0o600)
    stage_binary(box, "kubelet")
    stage_binary(box, "kube-proxy")


def test_daemon_step_writes_files_starts_units_and_a_second_run_changes_nothing(box: Sandbox) -> None:
    prepare_minion(box)
    script = step(KUBELET_STEP).script
    assert units_of(script) == KUBELET_UNITS

    first = box.run(script)
    assert first.returncode == 0, first.explain()
    files = kubelet_files()
    assert first.wrote() == list(files)
    for path, (mode, content) in files.items():
        st = box.path(path).stat()
        assert box.read(path) == content, path
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (int(mode, 8), 0, 0), path
    assert first.restarted() == KUBELET_UNITS
    assert [c[-1] for c in first.called("systemctl", "enable")] == KUBELET_UNITS
    assert first.called("systemctl", "daemon-reload")
    assert "kubelet healthz: ok" in first.stderr and "kube-proxy healthz: ok" in first.stderr
    urls = [c[-1] for c in first.called("curl")]
    assert urls == ["http://127.0.0.1:10248/healthz", "http://127.0.0.1:10256/healthz"]
    for unit in KUBELET_UNITS:
        assert box.exists(f"{render.STATE_DIR}/{unit}.inputs")
    assert box.active() == set(KUBELET_UNITS)
    stamps = {p: inode(box, p) for p in files}

    second = box.run(script)
    assert second.returncode == 0, second.explain()
    assert second.wrote() == []
    assert second.restarted() == []
    for unit in KUBELET_UNITS:
        assert f"{unit}: unchanged and running" in second.stderr
    assert "kubelet healthz: ok" in second.stderr and "kube-proxy healthz: ok" in second.stderr
    assert {p: inode(box, p) for p in files} == stamps
    assert "FAILED" not in second.stderr
    assert box.tmp_leftovers() == []


def test_daemon_step_restarts_exactly_the_units_whose_inputs_changed(box: Sandbox) -> None:
    prepare_minion(box)
    script = step(KUBELET_STEP).script
    assert box.run(script).restarted() == KUBELET_UNITS

    # A renewed kubelet certificate (what a new pki bundle delivers): kubelet only.
    cert, key = _other_leaf()
    box.write(f"{PKI_DIR}/kubelet.crt", cert, 0o600)
    box.write(f"{PKI_DIR}/kubelet.key", key, 0o600)
    result = box.run(script)
    assert result.returncode == 0, result.explain()
    assert (result.restarted(), result.wrote()) == (["kubelet.service"], [])
    assert "kube-proxy.service: unchanged and running" in result.stderr

    # A new kube-proxy binary staged (what a re-run preparation leaves): swapped in, kube-proxy only.
    stage_binary(box, "kube-proxy", "v2")
    result = box.run(script)
    assert result.returncode == 0, result.explain()
    assert result.restarted() == ["kube-proxy.service"]
    assert "# fake kube-proxy v2" in box.read("/usr/local/bin/kube-proxy")

    # A changed template (new rendered content in the script): the file is rewritten and only
    # the daemon reading it restarts.
    head = "put_file /var/lib/kube-proxy/config.yaml 0644 <<'KUBE_EC2_EOF'\n"
    assert script.count(head) == 1
    changed_script = script.replace(head, head + "# a changed template\n")
    result = box.run(changed_script)
    assert result.returncode == 0, result.explain()
    assert result.wrote() == ["/var/lib/kube-proxy/config.yaml"]
    assert result.restarted() == ["kube-proxy.service"]
    assert box.read("/var/lib/kube-proxy/config.yaml").startswith("# a changed template\n")

    # Back to the rendered script: rewritten and restarted again; then quiet.
    result = box.run(script)
    assert (result.wrote(), result.restarted()) == (["/var/lib/kube-proxy/config.yaml"], ["kube-proxy.service"])
    assert box.run(script).restarted() == []

    # A file edited by hand on the host is put back. The daemon was started with exactly the
    # restored content, so it is not restarted.
    box.path("/var/lib/kubelet/config.yaml").write_text("tampered: true\n")
    result = box.run(script)
    assert (result.wrote(), result.restarted()) == (["/var/lib/kubelet/config.yaml"], [])

    # A daemon that died (not active) is started again, even with nothing changed.
    box.set_active("kube-proxy.service", False)
    result = box.run(script)
    assert (result.wrote(), result.restarted()) == ([], ["kube-proxy.service"])


def test_daemon_step_failed_restart_prints_journals_and_is_retried_next_run(box: Sandbox) -> None:
    prepare_minion(box)
    script = step(KUBELET_STEP).script
    box.rule("systemctl", "restart kube-proxy.service", rc=1, stderr="Job for kube-proxy.service failed.\n")
    failed = box.run(script)
    assert_failed_with_journals(failed, KUBELET_UNITS)
    assert "Job for kube-proxy.service failed." in failed.stderr
    assert failed.called("curl") == [], "health checked although a unit did not start"
    assert not box.exists(f"{render.STATE_DIR}/kube-proxy.service.inputs"), "a failed start was recorded as done"

    box.clear_rules()
    retried = box.run(script)
    assert retried.returncode == 0, retried.explain()
    assert retried.restarted() == ["kube-proxy.service"]


def test_daemon_step_fails_when_an_input_is_missing(box: Sandbox) -> None:
    prepare_minion(box)
    staged = stage_binary(box, "kube-proxy")
    box.path(staged).unlink()
    result = box.run(step(KUBELET_STEP).script)
    assert f"{staged} is missing" in result.stderr
    assert_failed_with_journals(result, KUBELET_UNITS)
    assert "kube-proxy.service" not in result.restarted()


def test_apiserver_step_writes_the_encryption_config_0600_with_the_key_and_never_prints_it(box: Sandbox) -> None:
    master = SETTINGS.master
    key = base64.b64encode(b"K" * 31 + b"1").decode()
    for name in render.DAEMONS["kube-apiserver"].pki:
        if name != "encryption-config.yaml":
            box.write(f"{PKI_DIR}/{name}", f"dummy {name}\n", 0o600)
    box.write(f"{PKI_DIR}/encryption.key", key + "\n", 0o600)
    stage_binary(box, "kube-apiserver", role="master")
    script = step("master-kube-apiserver").script

    first = box.run(script)
    assert first.returncode == 0, first.explain()
    config = f"{PKI_DIR}/encryption-config.yaml"
    st = box.path(config).stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    parsed = yaml.safe_load(box.read(config))
    assert parsed["resources"][0]["providers"][0]["secretbox"]["keys"][0]["secret"] == key
    assert "__ENCRYPTION_KEY__" not in box.read(config).split("apiVersion:", 1)[1]
    kubeconfigs = ("/etc/kubernetes/admin.kubeconfig", "/etc/kubernetes/super-admin.kubeconfig")
    for path in ("/etc/kubernetes/encryption-config.yaml.tmpl", *kubeconfigs):
        assert box.mode(path) == 0o600, path
    assert box.mode("/var/log/kubernetes") == 0o700
    assert key not in first.output
    assert first.restarted() == ["kube-apiserver.service"]
    files = render.daemon_files(SETTINGS, master, "kube-apiserver")
    assert first.wrote() == [*files, "/etc/kubernetes/admin.kubeconfig", "/etc/kubernetes/super-admin.kubeconfig", config]

    again = box.run(script)
    assert again.returncode == 0, again.explain()
    assert (again.wrote(), again.restarted()) == ([], [])

    rotated = base64.b64encode(b"R" * 32).decode()
    box.write(f"{PKI_DIR}/encryption.key", rotated + "\n", 0o600)
    third = box.run(script)
    assert (third.wrote(), third.restarted()) == ([config], ["kube-apiserver.service"])
    assert rotated in box.read(config) and rotated not in third.output
    assert box.mode(config) == 0o600


def test_docker_step_restarts_services_never_the_socket(box: Sandbox) -> None:
    docker_host(box)
    script = step(f"{MINION.name}-docker").script
    assert units_of(script) == ["docker.service", "cri-docker.socket", "cri-docker.service"]
    first = box.run(script)
    assert first.returncode == 0, first.explain()
    assert first.restarted() == ["docker.service", "cri-docker.service"]
    assert {"docker: ok", "cri-dockerd socket: ok", "cri-dockerd: ok"} <= {
        line.split(": ", 1)[1] for line in first.stderr.splitlines() if ": " in line
    }
    again = box.run(script)
    assert again.returncode == 0, again.explain()
    assert (again.wrote(), again.restarted()) == ([], [])


# --- 3. bounded waits and the journal on failure


def test_daemon_health_wait_gives_up_at_its_bound_and_prints_every_journal(box: Sandbox) -> None:
    """The real kubelet step with kubelet's healthz refusing, on a virtual clock (see Sandbox.run)."""
    prepare_minion(box)
    box.rule("curl", "*127.0.0.1:10248*", rc=7, stderr="curl: (7) Failed to connect (sandbox stub)\n")
    result = box.run(step(KUBELET_STEP).script, virtual_clock=True, timeout=60)
    assert_failed_with_journals(result, KUBELET_UNITS)
    assert "kubelet healthz: not ready after 120s" in result.stderr
    sleeps = [float(c[1]) for c in result.calls if c[0] == "sleep"]
    attempts = result.called("curl")
    assert 118 <= sum(sleeps) <= 122, sleeps
    assert len(attempts) == len(sleeps) + 1, "one attempt after each 2 s pause, plus the first"
    assert all(c[-1] == "http://127.0.0.1:10248/healthz" for c in attempts), "went on after a failed wait"
    assert all("--max-time" in c for c in attempts), "an attempt without its own time limit"


def lib_script(units: tuple[str, ...], body: str) -> str:
    ctx = render.context(SETTINGS, MINION)
    return render.render("steps/lib.sh.j2", ctx, step="lib-test", units=units) + body


def test_wait_until_is_bounded_in_real_time_and_failure_prints_journals(box: Sandbox) -> None:
    box.rule("curl", "*", rc=7)
    units = ("a.service", "b.service")
    result = box.run(lib_script(units, 'wait_until 3 "thing" curl -fsS --max-time 1 http://127.0.0.1:1/\necho after\n'))
    assert_failed_with_journals(result, list(units))
    assert "thing: not ready after 3s" in result.stderr
    assert "after" not in result.stdout, "the script went on after a failed wait"
    assert 1.9 <= result.elapsed <= 12, result.elapsed  # bash's SECONDS ticks in whole wall-clock seconds
    assert len(result.called("curl")) >= 2, "never retried"


def test_wait_until_succeeds_once_the_command_does(box: Sandbox) -> None:
    body = 'touch_later() { [[ -e /tmp/ready ]] || { : >/tmp/ready; return 1; }; }\nwait_until 10 "thing" touch_later\n'
    result = box.run(lib_script(("a.service",), body))
    assert result.returncode == 0, result.explain()
    assert "thing: ok" in result.stderr
    assert 1.5 <= result.elapsed <= 10, result.elapsed
    assert JOURNAL_MARKER not in result.output


def _waits() -> list[tuple[str, str, str]]:
    """(step, wait_until line, script) for every wait in the master's and minion-0's steps."""
    found = []
    for s in steps().values():
        if s.host not in ("master", MINION.name) or s.name.startswith(tuple(f"{m.name}-" for m in SETTINGS.minions[1:])):
            continue
        for script in (s.script, s.delete_script or ""):
            for line in script.splitlines():
                stripped = line.strip()
                if stripped.startswith("wait_until ") and "()" not in stripped:
                    found.append((s.name, stripped, script))
    return found


LOCAL = {"test", "ip", "systemctl", "true", "false", "python3", "grep"}
"""Commands that do not wait on a remote peer (or read only their stdin)."""


def _pipeline_bounded(tokens: list[str], script: str) -> bool:
    segments: list[list[str]] = [[]]
    for t in tokens:
        if t in ("|", "||", "&&"):
            segments.append([])
        else:
            segments[-1].append(t)
    return all(_command_bounded(seg, script) for seg in segments if seg)


def _command_bounded(cmd: list[str], script: str) -> bool:
    head = cmd[0]
    if head in LOCAL or head == "timeout":
        return True
    if head == "curl":
        return "--max-time" in cmd or "-m" in cmd
    if head == "kubectl":
        own = cmd[: cmd.index("--")] if "--" in cmd else cmd
        return any(t.startswith("--request-timeout") for t in own)
    if head == "bash" and cmd[1] == "-c":
        return _pipeline_bounded(shlex.split(cmd[2]), script)
    # A shell function of the script: `name() { ...; }` on one line, or its body up to a `}` line.
    name = re.escape(head)
    body = re.search(rf"^{name}\(\) {{ (.*); }}$", script, re.MULTILINE) or re.search(
        rf"^{name}\(\) {{\n(.*?)\n}}$", script, re.MULTILINE | re.DOTALL
    )
    if body:
        return _pipeline_bounded(shlex.split(body.group(1).replace("\\\n", " "), comments=True), script)
    return False


_PROBE = "probe's `kubectl exec` has no time limit of its own"
@pytest.mark.parametrize(
    ("name", "line"),
    [pytest.param(name, line, id=f"{name}:{shlex.split(line)[2]}") for name, line, _ in _waits()],
)
def test_every_wait_has_a_literal_bound_and_bounded_attempts(name: str, line: str) -> None:
    """wait_until checks its deadline between attempts, so each attempt must end by itself."""
    script = next(s for n, ln, s in _waits() if (n, ln) == (name, line))
    tokens = shlex.split(line)
    assert tokens[1].isdigit() and 0 < int(tokens[1]) <= 300, line
    assert _command_bounded(tokens[3:], script), f"{name}: an attempt can hang past the bound: {line}"


def test_server_side_waits_have_timeouts() -> None:
    for s in steps().values():
        for script in (s.script, s.delete_script or ""):
            for line in script.splitlines():
                if line.lstrip().startswith("#"):
                    continue
                if re.search(r"kubectl .*(rollout status|drain |delete .*--wait=true)", line):
                    assert "--timeout=" in line, f"{s.name}: {line}"
                if "cloud-init status --wait" in line:
                    assert line.lstrip().startswith("timeout "), f"{s.name}: {line}"


# --- 4. wait-cloud-init

CLOUD_INIT_STEP = f"{MINION.name}-cloud-init"


def prepared_host(box: Sandbox, prepare: str | None = None, marker: bool = True) -> None:
    """A host whose first boot ran `prepare` (default: the one the step embeds)."""
    if marker:
        box.write(MARKER, "2025-01-01T00:00:00Z\n")
    box.write(PREPARE, prepare if prepare is not None else render.prepare_script(SETTINGS, MINION), 0o755)
    box.write(PREPARE_LOG, "2025-01-01T00:00:00Z kube-ec2: PREPARE-LOG-TAIL\n", 0o644)


def test_wait_cloud_init_done_writes_hosts_once(box: Sandbox) -> None:
    prepared_host(box)
    script = step(CLOUD_INIT_STEP).script
    result = box.run(script)
    assert result.returncode == 0, result.explain()
    assert "cloud-init finished" in result.stderr
    assert "host prepared at 2025-01-01T00:00:00Z" in result.stderr
    assert result.called("cloud-init", "status", "--wait")
    hosts = box.read("/etc/hosts")
    assert hosts == render.hosts_file(SETTINGS)
    for h in SETTINGS.hosts:
        assert f"{h.private_ip} {h.name}" in hosts.splitlines(), h.name
    assert box.mode("/etc/hosts") == 0o644
    assert result.wrote() == ["/etc/hosts"]
    assert "running the preparation again" not in result.stderr
    assert result.called("modprobe") == [] and result.called("curl") == []
    assert box.tmp_leftovers() == []

    before = {p: inode(box, p) for p in ("/etc/hosts", PREPARE)}
    again = box.run(script)
    assert again.returncode == 0, again.explain()
    assert again.wrote() == []
    assert {p: inode(box, p) for p in before} == before
    assert again.called("modprobe") == [] and again.called("curl") == []


def test_wait_cloud_init_recoverable_errors_with_marker_pass_with_a_warning(box: Sandbox) -> None:
    prepared_host(box)
    box.rule("cloud-init", "status --wait", rc=2)
    box.rule("cloud-init", "status --long", rc=2, stdout="status: done\nrecoverable_errors:\n  WARNING: STUB-DEPRECATED-KEY\n")
    result = box.run(step(CLOUD_INIT_STEP).script)
    assert result.returncode == 0, result.explain()
    assert "cloud-init finished with recoverable errors:" in result.stderr
    assert "STUB-DEPRECATED-KEY" in result.stderr
    assert "FAILED" not in result.stderr


def test_wait_cloud_init_failed_module_with_marker_reinstalls_packages_once(box: Sandbox) -> None:
    """Exit 1 with our marker: a module other than ours failed (apt, say); cloud-init's package
    module runs again, once, and the host goes on. Before, this failed every pulumi up for ever."""
    prepared_host(box)
    box.rule("cloud-init", "status --wait", rc=1)
    box.rule("cloud-init", "status --long", rc=1, stdout="status: error (STUB-APT-FAILED)\n")
    script = step(CLOUD_INIT_STEP).script
    first = box.run(script)
    assert first.returncode == 0, first.explain()
    assert "cloud-init finished, a module failed:" in first.stderr and "STUB-APT-FAILED" in first.stderr
    assert first.called("cloud-init", "single") == [
        ["cloud-init", "single", "--name", "package_update_upgrade_install", "--frequency", "always"]
    ]
    assert "running the preparation again" not in first.stderr
    again = box.run(script)
    assert again.returncode == 0, again.explain()
    assert again.called("cloud-init", "single") == []


def test_wait_cloud_init_package_repair_failure_fails_and_is_retried(box: Sandbox) -> None:
    prepared_host(box)
    box.rule("cloud-init", "status --wait", rc=1)
    box.rule("cloud-init", "single *", rc=1, stderr="E: Unable to locate package STUB\n")
    script = step(CLOUD_INIT_STEP).script
    failed = box.run(script)
    assert_failed_with_journals(failed, ["cloud-final.service"])
    assert "Unable to locate package STUB" in failed.stderr
    box.clear_rules("cloud-init")
    box.rule("cloud-init", "status --wait", rc=1)
    retried = box.run(script)
    assert retried.returncode == 0, retried.explain()
    assert len(retried.called("cloud-init", "single")) == 1


@pytest.mark.parametrize(
    ("rc", "message"),
    [(124, "cloud-init still running after 1500s"), (3, "cloud-init failed (exit 3)")],
    ids=["timed-out", "unknown-exit"],
)
def test_wait_cloud_init_failures_show_status_and_prepare_log(box: Sandbox, rc: int, message: str) -> None:
    prepared_host(box, marker=False)
    box.rule("cloud-init", "status --wait", rc=rc)
    box.rule("cloud-init", "status --long", rc=rc, stdout="status: error (STUB-LONG-STATUS)\n")
    result = box.run(step(CLOUD_INIT_STEP).script)
    assert_failed_with_journals(result, ["cloud-final.service"])
    assert message in result.stderr
    assert "----- cloud-init status --long -----" in result.stderr and "STUB-LONG-STATUS" in result.stderr
    assert "----- tail /var/log/kube-ec2-prepare.log -----" in result.stderr
    assert "PREPARE-LOG-TAIL" in result.stderr
    assert "running the preparation again" not in result.stderr, "prepared while cloud-init was not done"
    assert not box.exists("/etc/hosts"), "went on to write /etc/hosts on a host that is not prepared"


# A stand-in for the embedded preparation (the real one downloads; tests/test_prepare_downloads.py
# runs that against a local server): it fails, as a download or a hash would, until the cause is
# fixed (here: a file appears), and then writes the marker as the real one does.
FAKE_PREPARE = f"""#!/bin/bash
set -euo pipefail
exec > >(tee -a {PREPARE_LOG}) 2>&1
echo "kube-ec2: preparing (fake)"
if [[ ! -f /etc/kube-ec2/cause-fixed ]]; then
  echo "kube-ec2: SHA-256 MISMATCH for STUB-URL" >&2
  exit 1
fi
date -u +%FT%TZ > {MARKER}
"""


def recovery_script() -> str:
    """The real minion-0-cloud-init step with FAKE_PREPARE in place of the embedded preparation."""
    script = step(CLOUD_INIT_STEP).script
    real = render.prepare_script(SETTINGS, MINION)
    assert script.count(real) == 1
    return script.replace(real, FAKE_PREPARE)


def failed_first_boot(box: Sandbox, rc: int) -> None:
    """cloud-init ran FAKE_PREPARE at first boot, it failed: no marker, cloud-init says error."""
    box.write(PREPARE, FAKE_PREPARE, 0o755)
    box.write(PREPARE_LOG, "kube-ec2: SHA-256 MISMATCH at first boot (PREPARE-LOG-TAIL)\n")
    box.rule("cloud-init", "status --wait", rc=rc)
    box.rule("cloud-init", "status --long", rc=rc, stdout="status: error (STUB-LONG-STATUS)\n")


@pytest.mark.parametrize("rc", [1, 2, 0], ids=["runcmd-failed", "recoverable-errors", "done"])
def test_wait_cloud_init_recovers_a_failed_first_boot_once_the_cause_is_fixed(box: Sandbox, rc: int) -> None:
    failed_first_boot(box, rc)
    script = recovery_script()

    # The cause is not fixed yet: the preparation runs again, fails, and its log is printed.
    still = box.run(script)
    assert_failed_with_journals(still, ["cloud-final.service"])
    assert f"{MARKER} is missing: the first boot's preparation did not finish: running the preparation again" in still.stderr
    assert "the preparation failed or ran past 1200s" in still.stderr
    assert "----- tail /var/log/kube-ec2-prepare.log -----" in still.stderr
    assert "SHA-256 MISMATCH for STUB-URL" in still.stderr, "the failed preparation's log was not printed"
    assert not box.exists(MARKER) and not box.exists("/etc/hosts")
    packages = still.called("cloud-init", "single")
    if rc == 1:
        assert packages == [["cloud-init", "single", "--name", "package_update_upgrade_install", "--frequency", "always"]]
    else:
        assert packages == [], "the package module ran again although no module failed"

    # Fixed: the next pulumi up recovers the host.
    box.write("/etc/kube-ec2/cause-fixed", "")
    recovered = box.run(script)
    assert recovered.returncode == 0, recovered.explain()
    assert box.exists(MARKER)
    assert "running the preparation again" in recovered.stderr
    assert re.search(r"host prepared at \d{4}-\d\d-\d\dT", recovered.stderr), recovered.explain()
    assert box.read("/etc/hosts") == render.hosts_file(SETTINGS)
    assert recovered.called("cloud-init", "single") == [], "the package module ran more than once"

    # And from then on nothing runs again, although cloud-init's own verdict never changes.
    quiet = box.run(script)
    assert quiet.returncode == 0, quiet.explain()
    assert "running the preparation again" not in quiet.stderr
    assert (quiet.wrote(), quiet.called("cloud-init", "single")) == ([], [])


def test_wait_cloud_init_preparation_is_bounded(box: Sandbox) -> None:
    failed_first_boot(box, 1)
    script = recovery_script()
    assert "timeout 1200 bash \"$wanted\"" in script
    assert "timeout 900 cloud-init single" in script
    hang = FAKE_PREPARE.replace('echo "kube-ec2: preparing (fake)"', 'echo "kube-ec2: preparing (fake)"\nsleep 30')
    result = box.run(script.replace("timeout 1200 bash", "timeout 1 bash").replace(FAKE_PREPARE, hang), timeout=20)
    assert_failed_with_journals(result, ["cloud-final.service"])
    assert "the preparation failed or ran past 1200s" in result.stderr
    assert result.elapsed < 10, result.elapsed


def _changed_preparation_run(box: Sandbox) -> Result:
    prepared_host(box, prepare="#!/bin/bash\necho 'the first boot preparation'\n")
    box.write("/etc/fstab", "LABEL=root / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n")
    box.rule("curl", "*", rc=22, stderr="curl: (22) STUB-DOWNLOAD-FAILED\n")
    return box.run(step(CLOUD_INIT_STEP).script)


def test_wait_cloud_init_runs_a_changed_preparation(box: Sandbox) -> None:
    """A changed prepare script is run, and installed only once it succeeded: here its first download
    fails, so the step fails and the old script stays, and the next run tries again."""
    result = _changed_preparation_run(box)
    assert "preparation changed since first boot: running the preparation again" in result.stderr
    assert box.read(PREPARE) == "#!/bin/bash\necho 'the first boot preparation'\n"
    # It ran the new script (the stubs shield the host's kernel and swap).
    assert result.called("modprobe") == [["modprobe", "overlay"], ["modprobe", "br_netfilter"]]
    assert result.called("sysctl", "--system") and result.called("swapoff", "-a")
    assert "#/swapfile none swap sw 0 0" in box.read("/etc/fstab")
    first_download = render.context(SETTINGS, MINION)["downloads"][0].url
    assert any(first_download in " ".join(c) for c in result.called("curl")), result.calls
    assert_failed_with_journals(result, ["cloud-final.service"])
    assert "STUB-DOWNLOAD-FAILED" in result.output
    assert f"kube-ec2: preparing {MINION.name}" in box.read(PREPARE_LOG)


def test_wait_cloud_init_retries_a_preparation_that_failed(box: Sandbox) -> None:
    assert _changed_preparation_run(box).returncode != 0
    retry = box.run(step(CLOUD_INIT_STEP).script)
    assert retry.returncode != 0 or retry.called("curl"), "a failed preparation was skipped on the retry"


# --- 5. smoke test, CoreDNS, drain


def _all_scripts() -> list[tuple[str, str]]:
    out = []
    for s in steps().values():
        out.append((s.name, s.script))
        if s.delete_script:
            out.append((f"{s.name}-delete", s.delete_script))
    return out


@pytest.mark.parametrize(("name", "script"), _all_scripts(), ids=[n for n, _ in _all_scripts()])
def test_every_step_script_parses(name: str, script: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


DRAIN = f"{MINION.name}-drain"
NOT_FOUND = f'Error from server (NotFound): nodes "{MINION.name}" not found\n'
REFUSED = "The connection to the server 10.240.0.10:6443 was refused - did you specify the right host or port?\n"


def kubectl_verbs(result: Result) -> list[str]:
    """Each kubectl call as its first two arguments (`get --raw`, `get node`, `drain minion-0`, ...)."""
    return [" ".join(c[1:3]) for c in result.called("kubectl")]


def drain(box: Sandbox) -> Result:
    return box.run(step(DRAIN).delete_script or "", virtual_clock=True, timeout=60)


def test_drain_every_kubectl_call_has_a_request_timeout() -> None:
    """A hook on destroy must not wait for ever on an API that accepts and never answers."""
    script = step(DRAIN).delete_script or ""
    calls = [line.strip() for line in script.splitlines() if re.search(r"(^|\$\(|\s)kubectl ", line) and not line.strip().startswith("#")]
    assert len(calls) == 4, calls  # the readiness probe, get node, drain, delete
    for line in calls:
        assert re.search(r"--request-timeout=\d+s", line), line


def test_drain_normal_drains_then_deletes_with_time_limits(box: Sandbox) -> None:
    result = drain(box)
    assert result.returncode == 0, result.explain()
    assert kubectl_verbs(result) == ["get --raw", "get node", f"drain {MINION.name}", "delete node"]
    for call in result.called("kubectl"):
        assert any(a.startswith("--request-timeout=") for a in call), call
    assert "--timeout=180s" in result.called("kubectl", "drain")[0]
    delete = result.called("kubectl", "delete")[0]
    assert delete[2:4] == ["node", MINION.name] and "--ignore-not-found" in delete and "--timeout=60s" in delete
    assert f"node {MINION.name} drained and deleted" in result.stderr


def test_drain_of_an_unregistered_node_does_nothing(box: Sandbox) -> None:
    box.rule("kubectl", f"get node {MINION.name} *", rc=1, stderr=NOT_FOUND)
    result = drain(box)
    assert result.returncode == 0, result.explain()
    assert f"node {MINION.name} is not registered; nothing to drain" in result.stderr
    assert kubectl_verbs(result) == ["get --raw", "get node"]


def test_drain_with_the_api_unreachable_succeeds_after_a_bounded_wait(box: Sandbox) -> None:
    box.rule("kubectl", "get --raw /readyz *", rc=1, stderr=REFUSED)
    result = drain(box)
    assert result.returncode == 0, result.explain()
    assert f"warning: the API does not answer; leaving node {MINION.name} to go with its instance" in result.stderr
    assert "kube-apiserver: not ready after 60s" in result.stderr
    probes = kubectl_verbs(result)
    assert set(probes) == {"get --raw"} and 20 <= len(probes) <= 31, probes  # every 2 s for 60 s
    assert not result.called("kubectl", "drain") and not result.called("kubectl", "delete")


def test_drain_when_the_api_stops_answering_before_the_node_lookup(box: Sandbox) -> None:
    box.rule("kubectl", f"get node {MINION.name} *", rc=1, stderr="Unable to connect to the server: i/o timeout\n")
    result = drain(box)
    assert result.returncode == 0, result.explain()
    assert f"warning: the API stopped answering; leaving node {MINION.name}" in result.stderr
    assert kubectl_verbs(result) == ["get --raw", "get node"]


def test_drain_that_does_not_finish_still_deletes_the_node(box: Sandbox) -> None:
    box.rule("kubectl", f"drain {MINION.name} *", rc=1, stderr="error: unable to drain node (sandbox stub)\n")
    result = drain(box)
    assert result.returncode == 0, result.explain()
    assert f"warning: drain of {MINION.name} did not finish; deleting the node anyway" in result.stderr
    assert kubectl_verbs(result) == ["get --raw", "get node", f"drain {MINION.name}", "delete node"]
    assert f"node {MINION.name} drained and deleted" in result.stderr


@pytest.mark.parametrize(("stderr", "state"), [(NOT_FOUND, "absent"), (REFUSED, "unreachable")], ids=["node-gone", "api-gone"])
def test_drain_whose_delete_fails_on_a_node_or_api_gone_succeeds(box: Sandbox, stderr: str, state: str) -> None:
    box.rule("kubectl", f"get node {MINION.name} *", once=True)  # there at first
    box.rule("kubectl", f"get node {MINION.name} *", rc=1, stderr=stderr)  # then gone, or the API is
    box.rule("kubectl", "delete node *", rc=1, stderr="error: timed out waiting for the condition\n")
    result = drain(box)
    assert result.returncode == 0, result.explain()
    assert f"warning: node {MINION.name} is {state} after a failed delete; nothing left to do" in result.stderr
    assert kubectl_verbs(result) == ["get --raw", "get node", f"drain {MINION.name}", "delete node", "get node"]


def test_drain_whose_delete_is_refused_fails_with_the_apiserver_journal(box: Sandbox) -> None:
    box.rule("kubectl", "delete node *", rc=1, stderr="Error from server (Forbidden): sandbox stub\n")
    script = step(DRAIN).delete_script or ""
    result = drain(box)
    assert_failed_with_journals(result, units_of(script))
    assert f"the API refused to delete node {MINION.name}" in result.stderr
    assert units_of(script) == ["kube-apiserver.service"]


def test_drain_create_script_only_registers(box: Sandbox) -> None:
    result = box.run(step(DRAIN).script)
    assert result.returncode == 0, result.explain()
    assert f"drain hook for {MINION.name} registered" in result.stderr
    assert result.calls == []


def test_coredns_applies_its_manifest_and_waits_bounded(box: Sandbox) -> None:
    script = step("master-coredns").script
    manifest = render.render("manifests/coredns.yaml.j2", render.context(SETTINGS, SETTINGS.master))
    result = box.run(script)
    assert result.returncode == 0, result.explain()
    assert box.read("/etc/kube-ec2/coredns.yaml") == manifest
    assert result.called("kubectl", "--request-timeout=30s", "apply") == [
        ["kubectl", "--request-timeout=30s", "apply", "-f", "/etc/kube-ec2/coredns.yaml"]
    ]
    rollout = result.called("kubectl", "-n", "kube-system", "rollout", "status")
    assert len(rollout) == 1 and "--timeout=300s" in rollout[0]
    again = box.run(script)
    assert again.returncode == 0 and again.wrote() == [], again.explain()


def test_coredns_rollout_failure_prints_pods_events_and_journal(box: Sandbox) -> None:
    box.rule("kubectl", "-n kube-system rollout status *", rc=1, stderr="error: timed out waiting (sandbox stub)\n")
    box.rule("kubectl", "--request-timeout=30s -n kube-system get pods *", stdout="coredns-abc 0/1 CrashLoopBackOff STUB-PODS\n")
    script = step("master-coredns").script
    result = box.run(script)
    assert_failed_with_journals(result, units_of(script))
    assert "STUB-PODS" in result.stderr


SMOKE_NS = "kube-ec2-smoke"
SMOKE_PAYLOAD = "".join(f"kube-ec2-smoke-{i:06d}." for i in range(1, 561))  # what smoke-lib sends
SMOKE_DNS_URL = f"http://echo.{SMOKE_NS}.svc.{SETTINGS.cluster_domain}:80"
SMOKE_NODES = "".join(f"{m.name},,True\n" for m in SETTINGS.minions)


def smoke_pods(nodes: list[str]) -> str:
    return "".join(f"echo-{i} 10.200.{i + 1}.5 {node}\n" for i, node in enumerate(nodes))


def smoke_rules(box: Sandbox, nodes: str = SMOKE_NODES, pods: str | None = None) -> None:
    ready = [line.split(",")[0] for line in nodes.splitlines() if line.endswith(",True") and ",true," not in line]
    box.rule("kubectl", "--request-timeout=30s get nodes -o jsonpath=*unschedulable*", stdout=nodes)
    box.rule("kubectl", "--request-timeout=30s get nodes -o jsonpath=*conditions*",
             stdout="minion-1\n  Ready=False KubeletNotReady: STUB-CONDITION\n")
    box.rule("kubectl", f"--request-timeout=30s -n {SMOKE_NS} get pods -l app=echo *", stdout=pods or smoke_pods(ready))
    box.rule("kubectl", f"--request-timeout=30s -n {SMOKE_NS} get endpointslices *",
             stdout="".join(f"10.200.{i + 1}.5\n" for i in range(len(ready))))
    box.rule("kubectl", f"--request-timeout=30s -n {SMOKE_NS} get service echo *", stdout="10.32.0.99")
    box.rule("kubectl", f"--request-timeout=30s -n {SMOKE_NS} exec -i *", stdout=SMOKE_PAYLOAD + "\n")
    box.rule("curl", "*", stdout=SMOKE_PAYLOAD + "\n")


def probes(result: Result) -> list[tuple[str, str]]:
    """(where the probe ran: a pod or the master, URL) of every probe, in order."""
    found = []
    for c in result.calls:
        if c[0] == "kubectl" and "exec" in c:
            found.append((c[c.index("-i") + 1], c[-1]))
        elif c[0] == "curl" and "msg@-" in c:
            found.append(("master", c[-1]))
    return found


def test_smoke_test_probes_every_pair_the_master_the_service_and_dns(box: Sandbox) -> None:
    smoke_rules(box)
    result = box.run(step("master-smoke-test").script)
    assert result.returncode == 0, result.explain()
    n = SETTINGS.minion_count
    assert result.called("kubectl", "--request-timeout=30s", "-n", SMOKE_NS, "scale") == [
        ["kubectl", "--request-timeout=30s", "-n", SMOKE_NS, "scale", "deployment/echo", f"--replicas={n}"]
    ]
    pairs = [(f"echo-{i}", f"http://10.200.{j + 1}.5:8080/echo") for i in range(n) for j in range(n) if i != j]
    per_pod = []
    for i in range(n):
        per_pod += [("master", f"http://10.200.{i + 1}.5:8080/echo"), (f"echo-{i}", "http://10.32.0.99:80/echo"),
                    (f"echo-{i}", f"{SMOKE_DNS_URL}/echo")]
    assert probes(result) == pairs + per_pod
    for c in result.calls:
        if "msg@-" in c:
            assert c[c.index("--max-time") + 1] == "10", c
    assert f"all {n * (n - 1) + 3 * n} probes passed over {n} nodes" in result.stderr
    assert "smoke test passed" in result.stderr
    deletes = [c for c in result.calls if c[0] == "kubectl" and "delete" in c and "namespace" in c]
    assert len(deletes) == 2 and any(a.startswith("--timeout=") for a in deletes[0])


def test_smoke_test_leaves_out_a_cordoned_and_a_not_ready_node(box: Sandbox) -> None:
    nodes = "minion-0,,True\nminion-1,true,True\nminion-2,,False\n"
    smoke_rules(box, nodes)
    result = box.run(step("master-smoke-test").script)
    assert result.returncode == 0, result.explain()
    assert result.called("kubectl", "--request-timeout=30s", "-n", SMOKE_NS, "scale")[0][-1] == "--replicas=1"
    assert "node minion-1 is cordoned: not probed" in result.stderr
    assert "node minion-2 is not Ready (False): not probed" in result.stderr
    assert "warning: minion-1 is not tested (cordoned, not Ready or not registered)" in result.stderr
    assert {p for p, _ in probes(result)} == {"echo-0", "master"}
    assert "all 3 probes passed over 1 nodes" in result.stderr


def test_smoke_test_with_no_ready_node_fails_with_node_conditions(box: Sandbox) -> None:
    smoke_rules(box, "minion-0,true,True\n")
    script = step("master-smoke-test").script
    result = box.run(script)
    assert_failed_with_journals(result, units_of(script))
    assert "no Ready, schedulable node to run the smoke test on" in result.stderr
    assert "STUB-CONDITION" in result.stderr
    assert [c for c in result.calls if c[0] == "kubectl" and "apply" in c] == []


def test_smoke_test_fails_when_pods_do_not_spread(box: Sandbox) -> None:
    crowded = "".join(f"echo-{i} 10.200.1.{i} {MINION.name}\n" for i in range(SETTINGS.minion_count))
    smoke_rules(box, pods=crowded)
    script = step("master-smoke-test").script
    result = box.run(script)
    assert_failed_with_journals(result, units_of(script))
    assert f"node {MINION.name} runs {SETTINGS.minion_count} echo pods, expected 1" in result.stderr
    assert f"node {SETTINGS.minions[1].name} runs 0 echo pods, expected 1" in result.stderr
    assert probes(result) == []
    assert "kube-ec2-smoke get pods,svc,endpointslices" in " ".join(" ".join(c) for c in result.calls)


def test_smoke_test_failure_names_the_path_with_the_probes_output_and_node_conditions(box: Sandbox) -> None:
    smoke_rules(box)
    box.clear_rules("curl")
    box.rule("curl", "*10.200.2.5:8080/echo", rc=28, stderr="curl: (28) STUB-TIMED-OUT after 10001 milliseconds\n")
    box.rule("curl", "*", stdout=SMOKE_PAYLOAD + "\n")
    script = step("master-smoke-test").script
    result = box.run(script, virtual_clock=True)
    assert_failed_with_journals(result, units_of(script))
    assert (
        "FAILED master -> pod: minion-1 (10.200.2.5): exit 28 after 3 attempt(s), 0 of 12320 bytes back; "
        "probe said: curl: (28) STUB-TIMED-OUT after 10001 milliseconds"
    ) in result.stderr
    total = SETTINGS.minion_count * (SETTINGS.minion_count + 2)
    assert f"smoke test FAILED: 1 of {total} probes failed, 0 not run after that" in result.stderr
    assert "----- node conditions -----" in result.stderr and "STUB-CONDITION" in result.stderr
    assert len([p for p in probes(result) if p == ("master", "http://10.200.2.5:8080/echo")]) == 3
    assert "smoke test passed" not in result.stderr
    assert box.tmp_leftovers() == []


def test_smoke_test_stops_probing_after_twelve_failures(box: Sandbox) -> None:
    """A network broken everywhere: 12 failed probes decide, the rest are counted as not run."""
    smoke_rules(box)
    box.clear_rules("kubectl")
    box.rule("kubectl", f"--request-timeout=30s -n {SMOKE_NS} exec -i *", rc=28, stderr="curl: (28) STUB\n")
    box.clear_rules("curl")
    box.rule("curl", "*", rc=7, stderr="curl: (7) STUB\n")
    smoke_rules(box)
    result = box.run(step("master-smoke-test").script, virtual_clock=True)
    total = SETTINGS.minion_count * (SETTINGS.minion_count + 2)
    assert result.returncode != 0
    assert len(probes(result)) == 12 * 3, "each failed probe tries 3 times, then no more probes"
    assert f"smoke test FAILED: 12 of {total} probes failed, {total - 12} not run after that" in result.stderr


def test_smoke_test_a_truncated_answer_fails(box: Sandbox) -> None:
    """A path that carries the handshake and small packets but loses the large ones."""
    smoke_rules(box)
    box.clear_rules("curl")
    box.rule("curl", "*", stdout=SMOKE_PAYLOAD[:1400])
    result = box.run(step("master-smoke-test").script, virtual_clock=True)
    assert result.returncode != 0
    assert "FAILED master -> pod: minion-0 (10.200.1.5): exit 0 after 3 attempt(s), 1400 of 12320 bytes back" in result.stderr


KUBECTL_COMMAND = re.compile(r'(^\s*|[;|&(!]\s*|\b(if|then|do|until|while|timeout \S+|wait_until \d+ "[^"]*")\s+)kubectl\s')
"""kubectl in command position (not an argument such as a download's name)."""


def _kubectl_bounded(code: str) -> bool:
    """A request timeout, a client-side `timeout N`, or a waiting command's own --timeout."""
    return (
        "--request-timeout" in code
        or re.search(r"timeout (\d+|\$\(\([^)]*\)\)) kubectl ", code) is not None
        or (re.search(r"kubectl .*\b(rollout status|drain|wait)\b", code) is not None and "--timeout=" in code)
    )


@pytest.mark.parametrize(("name", "script"), _all_scripts(), ids=[n for n, _ in _all_scripts()])
def test_every_kubectl_call_of_every_step_is_bounded(name: str, script: str) -> None:
    """A kubectl call against an API that stopped answering must end by itself (issue 10)."""
    assert not _kubectl_bounded("kubectl -n kube-system get pods"), "the check itself must be able to fail"
    for line in script.splitlines():
        code = line.split(" #", 1)[0]
        if code.lstrip().startswith("#") or KUBECTL_COMMAND.search(code) is None:
            continue
        assert _kubectl_bounded(code), f"{name}: kubectl without a time limit: {line.strip()}"


def test_every_kubectl_call_of_the_smoke_test_is_bounded() -> None:
    script = step("master-smoke-test").script
    for line in script.splitlines():
        code = line.split("#", 1)[0]
        if re.search(r"\bkubectl\b", code) is None:
            continue
        assert re.search(r"timeout (\d+|\$\(\([^)]*\)\)) kubectl ", code), f"kubectl without a client-side bound: {line}"


# --- 6. gates: flanneld is this run and ready, pods' MTU, the container runtime

FLANNELD_STEP = f"{MINION.name}-flanneld"
STARTED = "Tue 2026-12-01 03:00:00 UTC"
STARTED_EPOCH = 1796094000  # date -d "$STARTED" +%s, written out
FLANNEL_DEVICE = "ip link add name flannel.1 mtu {mtu} type veth peer name flannel-peer\n"
"""The host's flannel.1, made in the sandbox's own network namespace before the step runs."""


def flanneld_host(box: Sandbox, mtu: int = 8951, written: int = STARTED_EPOCH + 2, state: str = "active") -> None:
    """A minion whose flanneld (per systemd) started at STARTED and wrote its subnet file at `written`."""
    for name in render.DAEMONS["flanneld"].pki:
        box.write(f"{PKI_DIR}/{name}", f"dummy {name}\n", 0o600)
    stage_binary(box, "flanneld")
    env = f"FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=10.200.1.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    subnet = box.write("/run/flannel/subnet.env", env)
    os.utime(subnet, (written, written))
    flanneld_state(box, state)


def flanneld_state(box: Sandbox, state: str) -> None:
    """What `systemctl show` says about flanneld."""
    box.clear_rules("systemctl")
    box.rule("systemctl", "show -P ActiveState flanneld.service", stdout=f"{state}\n")
    box.rule("systemctl", "show -P InvocationID flanneld.service", stdout="0123456789abcdef\n")
    box.rule("systemctl", "show -P ExecMainStartTimestamp flanneld.service", stdout=f"{STARTED}\n")
    box.rule("systemctl", "show -P NRestarts flanneld.service", stdout="7\n")


def flanneld_run(box: Sandbox, device_mtu: int = 8951) -> Result:
    return box.run(FLANNEL_DEVICE.format(mtu=device_mtu) + step(FLANNELD_STEP).script, virtual_clock=True, timeout=60)


def test_flanneld_unit_is_notify_and_always_restarted() -> None:
    unit = render.daemon_files(SETTINGS, MINION, "flanneld")["/etc/systemd/system/flanneld.service"][1]
    service = unit.split("[Service]", 1)[1]
    assert "\nType=notify\n" in service and "\nRestart=always\n" in service and "\nTimeoutStartSec=120\n" in service


def test_flanneld_gate_passes_on_this_run_with_a_fresh_subnet_file(box: Sandbox) -> None:
    flanneld_host(box)
    result = flanneld_run(box)
    assert result.returncode == 0, result.explain()
    assert "flanneld active (READY=1): ok" in result.stderr
    assert "subnet file written by this flanneld run (started 03:00:00): ok" in result.stderr
    assert "subnet 10.200.1.1/24, flannel MTU 8951, flannel.1 MTU 8951" in result.stderr


def test_flanneld_gate_fails_on_a_crash_loop_although_an_old_subnet_file_is_there(box: Sandbox) -> None:
    """A re-run: flanneld keeps dying (activating, auto-restart), its last subnet file survives."""
    flanneld_host(box)
    assert flanneld_run(box).returncode == 0
    flanneld_state(box, "activating")  # `is-active` (the stub's own state) still says it runs
    result = flanneld_run(box)
    assert_failed_with_journals(result, ["flanneld.service"])
    assert "flanneld active (READY=1): not ready after 150s" in result.stderr
    assert result.restarted() == [], "a re-run with nothing changed: the gate must not rely on a restart"


def test_flanneld_gate_fails_when_the_subnet_file_is_older_than_this_run(box: Sandbox) -> None:
    """flanneld says READY=1 even when writing the subnet file failed (main.go only warns)."""
    flanneld_host(box, written=STARTED_EPOCH - 3600)
    result = flanneld_run(box)
    assert_failed_with_journals(result, ["flanneld.service"])
    assert "subnet file written by this flanneld run (started 03:00:00): not ready after 30s" in result.stderr


def test_flanneld_gate_fails_when_flanneld_restarts_during_the_check(box: Sandbox) -> None:
    flanneld_host(box)
    stub = box.read("/usr/local/bin/systemctl")
    box.write("/usr/local/bin/stubs/systemctl", stub, 0o755)
    box.write("/usr/local/bin/systemctl", (
        "#!/bin/bash\n"
        "# Each InvocationID query sees a new run of flanneld; everything else goes to the stub.\n"
        'if [[ $* == "show -P InvocationID flanneld.service" ]]; then\n'
        "  n=$(cat /tmp/invocations 2>/dev/null || echo 0); echo $((n + 1)) >/tmp/invocations; echo \"run-$n\"; exit 0\n"
        "fi\n"
        'exec /usr/local/bin/stubs/systemctl "$@"\n'
    ), 0o755)
    result = flanneld_run(box)
    assert_failed_with_journals(result, ["flanneld.service"])
    assert "flanneld did not stay up: it restarted or stopped during the check (7 restarts so far)" in result.stderr


@pytest.mark.parametrize(("subnet_mtu", "device_mtu"), [(1450, 1450), (8951, 1450)], ids=["flannel", "device"])
def test_flanneld_gate_fails_on_an_mtu_other_than_the_planned_one(box: Sandbox, subnet_mtu: int, device_mtu: int) -> None:
    """Pods take flannel's MTU: on an instance without jumbo frames it would be 1450, not 8951."""
    flanneld_host(box, mtu=subnet_mtu)
    result = flanneld_run(box, device_mtu=device_mtu)
    assert_failed_with_journals(result, ["flanneld.service"])
    assert f"MTU mismatch: flannel chose {subnet_mtu} (flannel.1: {device_mtu}), the cluster is planned for 8951" in result.stderr


def test_pod_mtu_comes_from_flannel_not_the_cni_config() -> None:
    conflist = json.loads(render.daemon_files(SETTINGS, MINION, "docker")["/etc/cni/net.d/10-flannel.conflist"][1])
    delegate = conflist["plugins"][0]["delegate"]
    assert "mtu" not in delegate, "a fixed MTU overrides flannel's FLANNEL_MTU (flannel-io/cni-plugin flannel_linux.go)"


RUNTIME = {"docker.io": "29.1.3-0ubuntu3~24.04.2", "containerd": "2.2.1-0ubuntu1~24.04.3", "runc": "1.3.3-0ubuntu1~24.04.3"}


def docker_host(box: Sandbox, runtime: dict[str, str] = RUNTIME) -> None:
    stage_binary(box, "cri-dockerd")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(box.path("/run/cri-dockerd.sock")))
    for pkg, version in runtime.items():
        box.rule("dpkg-query", f"-W -f=${{Version}} {pkg}", stdout=version)
    box.rule("dpkg-query", "*", rc=1, stderr="dpkg-query: no packages found matching (sandbox stub)\n")


def test_docker_step_holds_the_runtime_and_prints_its_versions(box: Sandbox) -> None:
    docker_host(box)
    result = box.run(step(f"{MINION.name}-docker").script)
    assert result.returncode == 0, result.explain()
    assert result.called("apt-mark") == [["apt-mark", "hold", "docker.io", "containerd", "runc"]]
    for line in (
        "runtime: docker.io 29.1.3-0ubuntu3~24.04.2 (minimum 29.1.3, held)",
        "runtime: containerd 2.2.1-0ubuntu1~24.04.3 (minimum 2.2.1, held)",
        "runtime: runc 1.3.3-0ubuntu1~24.04.3 (minimum 1.1.12, held)",
    ):
        assert line in result.stderr, result.explain()
    assert result.restarted() == ["docker.service", "cri-docker.service"]
    dropin = box.read(render.DOCKER_DROP_IN)
    assert "[Service]\nTimeoutStartSec=120\n" in dropin


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({**RUNTIME, "runc": "1.1.11-0ubuntu1"}, "runtime: runc 1.1.11-0ubuntu1 is older than the minimum 1.1.12"),
        ({**RUNTIME, "docker.io": "28.2.2-0ubuntu1~24.04.1"},
         "runtime: docker.io 28.2.2-0ubuntu1~24.04.1 is older than the minimum 29.1.3"),
        ({k: v for k, v in RUNTIME.items() if k != "containerd"}, "runtime: containerd is not installed"),
    ],
    ids=["old-runc", "old-docker", "no-containerd"],
)
def test_docker_step_refuses_an_outdated_runtime_before_starting_it(box: Sandbox, runtime: dict[str, str], message: str) -> None:
    docker_host(box, runtime)
    script = step(f"{MINION.name}-docker").script
    result = box.run(script)
    assert_failed_with_journals(result, units_of(script))
    assert message in result.stderr
    assert "refusing to start an outdated or missing container runtime" in result.stderr
    assert result.restarted() == []


def test_docker_restart_past_its_bound_fails_with_the_journal(box: Sandbox) -> None:
    """systemd ends a start that passes the drop-in's TimeoutStartSec and fails the job, as here."""
    docker_host(box)
    box.rule("systemctl", "restart docker.service", rc=1,
             stderr="Job for docker.service failed because a timeout was exceeded.\n")
    script = step(f"{MINION.name}-docker").script
    result = box.run(script)
    assert_failed_with_journals(result, units_of(script))
    assert "Job for docker.service failed because a timeout was exceeded." in result.stderr
    assert "cri-docker.service" not in result.restarted()


def test_a_cni_config_change_restarts_nothing(box: Sandbox) -> None:
    """cri-dockerd re-reads /etc/cni/net.d itself; Docker, cri-dockerd and the kubelet keep running."""
    docker_host(box)
    script = step(f"{MINION.name}-docker").script
    assert box.run(script).restarted() == ["docker.service", "cri-docker.service"]
    head = "put_file /etc/cni/net.d/10-flannel.conflist 0600 <<'KUBE_EC2_EOF'\n"
    assert script.count(head) == 1
    result = box.run(script.replace(head, head + '{"changed": true,\n'))
    assert result.returncode == 0, result.explain()
    assert result.wrote() == ["/etc/cni/net.d/10-flannel.conflist"]
    assert result.restarted() == []
    json_head = "put_file /etc/docker/daemon.json 0644 <<'KUBE_EC2_EOF'\n"
    changed_daemon_json = script.replace(json_head, json_head + '{"changed": 1,\n')
    assert box.run(changed_daemon_json).restarted() == ["docker.service", "cri-docker.service"]


def test_every_start_and_restart_has_a_bound() -> None:
    """systemd fails a start past TimeoutStartSec (default 90 s); 0 or infinity would wait for ever.
    docker.io's own unit says 0, so the docker daemon's files carry a drop-in that bounds it."""
    for host in (SETTINGS.master, MINION):
        for path, (_, content) in render.host_files(SETTINGS, host).items():
            if path.startswith("/etc/systemd/system/"):
                for line in content.splitlines():
                    if line.startswith(("TimeoutStartSec=", "TimeoutSec=")):
                        value = line.split("=", 1)[1].strip()
                        assert value not in ("0", "infinity", ""), f"{host.name} {path}: {line}"
    docker = render.daemon_files(SETTINGS, MINION, "docker")
    assert "\nTimeoutStartSec=120\n" in docker[render.DOCKER_DROP_IN][1]
    assert render.DAEMONS["docker"].packaged_units == ("docker.service",)
    assert render.DOCKER_DROP_IN.startswith("/etc/systemd/system/docker.service.d/")
