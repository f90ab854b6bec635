"""Rendered user data, units, step scripts and manifests, checked by the real tools.

Golden files: tests/golden/. Regenerate after an intended change with
    UPDATE_GOLDEN=1 python -m pytest tests/test_render.py
and review the diff like code.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from components import bootstrap, render, versions
from components.settings import Settings
from tests.conftest import ROOT, dev_settings, require_tool

GOLDEN = Path(__file__).parent / "golden"
EC2_USER_DATA_LIMIT = 16 * 1024


def stacks() -> dict[str, Settings]:
    return {
        "dev": dev_settings(),
        "prod": dev_settings(minionCount="5", vpcCidr="10.64.0.0/20", podCidr="10.96.0.0/16", serviceCidr="10.97.0.0/22"),
        "upstream": dev_settings(kubernetesVersion="1.36.0", allowUpstreamChecksums="true", minionCount="1"),
    }


def roles(s: Settings):
    return (s.master, s.minions[0])


@pytest.mark.parametrize("name", ["dev", "prod", "upstream"])
def test_user_data_passes_cloud_init_schema(name: str, tmp_path: Path) -> None:
    tool = require_tool("cloud-init")
    for host in roles(stacks()[name]):
        path = tmp_path / f"{host.role}.yaml"
        path.write_text(render.user_data(stacks()[name], host))
        result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Valid" in result.stdout


def test_user_data_writes_exactly_the_rendered_files() -> None:
    s = dev_settings()
    for host in roles(s):
        doc = yaml.safe_load(render.user_data(s, host))
        written = {f["path"]: (f["permissions"], f["content"]) for f in doc["write_files"]}
        for path, (mode, content) in render.host_files(s, host).items():
            assert written[path] == (mode, content), path
        assert written["/usr/local/sbin/kube-ec2-prepare"][1] == render.prepare_script(s, host)
        assert doc["hostname"] == host.name
        assert doc["runcmd"] == [["/usr/local/sbin/kube-ec2-prepare"]]
        hosts_lines = written["/etc/hosts"][1].splitlines()
        for h in s.hosts:
            assert f"{h.private_ip} {h.name}" in hosts_lines


def test_no_secret_in_templates() -> None:
    for path in (ROOT / "cloudinit").rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(), path


def test_user_data_size_leaves_half_of_ec2_limit() -> None:
    """The largest role at the largest size (100 minions) stays under 8 KB gzip."""
    s = dev_settings(minionCount="100")
    for host in roles(s):
        raw = render.user_data(s, host)
        packed = gzip.compress(raw.encode(), mtime=0)
        assert len(packed) < EC2_USER_DATA_LIMIT // 2, (host.role, len(packed))


def test_every_download_is_verified() -> None:
    s = dev_settings()
    for host in roles(s):
        script = render.prepare_script(s, host)
        for d in versions.downloads(host.role, s.kubernetes_version):
            line = next(line for line in script.splitlines() if d.url in line)
            assert (d.sha256 or "upstream") in line
        assert "sha256sum --check" in script


def test_unknown_version_is_checked_upstream_only_when_allowed() -> None:
    s = stacks()["upstream"]
    script = render.prepare_script(s, s.minions[0])
    url = "https://dl.k8s.io/release/v1.36.0/bin/linux/amd64/kubelet"
    assert f"install_binary kubelet 1.36.0 {url} upstream /opt/kube-ec2/kubernetes/1.36.0/kubelet" in script


def test_strict_undefined() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render.render("units/kube-apiserver.service.j2", {})


def test_yaml_values_are_escaped() -> None:
    nasty = 'a: b # c\n- "d"'
    assert yaml.safe_load(f"key: {render.ENV.filters['yaml'](nasty)}") == {"key": nasty}


def _scripts(s: Settings) -> dict[str, str]:
    scripts = {f"{h.role}-prepare": render.prepare_script(s, h) for h in roles(s)}
    for h in roles(s):  # scripts cloud-init installs for units to run (etcd's volume, its snapshots)
        for path, (_mode, content) in render.host_files(s, h).items():
            if path.startswith("/usr/local/sbin/"):
                scripts[path.rsplit("/", 1)[1]] = content
    for step in bootstrap.plan(s):
        scripts[step.name] = step.script
        if step.delete_script:
            scripts[f"{step.name}-delete"] = step.delete_script
    return scripts


def test_every_script_passes_shellcheck(tmp_path: Path) -> None:
    tool = require_tool("shellcheck")
    files = []
    for name, text in _scripts(stacks()["dev"]).items():
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        files.append(str(path))
        assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text, name
    result = subprocess.run([tool, "--shell=bash", "--severity=style", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


UNITS = {
    "master": sorted(["etcd.service", "etcd-data.service", "etcd-snapshot.service", "etcd-snapshot.timer",
                      "flanneld.service", "kube-apiserver.service",
                      "kube-controller-manager.service", "kube-scheduler.service"]),
    "minion": sorted(["cri-docker.service", "cri-docker.socket", "flanneld.service", "kubelet.service", "kube-proxy.service"]),
}


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Binaries are stubbed (they are downloaded on the host); docker.service comes from docker.io."""
    tool = require_tool("systemd-analyze")
    s = dev_settings()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for host in roles(s):
        unit_dir = tmp_path / host.role
        unit_dir.mkdir()
        units = []
        drop_in_units = []
        for path, (_, content) in render.host_files(s, host).items():
            relative = path.removeprefix("/etc/systemd/system/")
            if relative != path and "/" in relative:
                # A drop-in (docker.service.d/...): verified with the unit it changes, below.
                (unit_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                (unit_dir / relative).write_text(content)
                drop_in_units.append(str(unit_dir / relative.split(".d/", 1)[0]))
            elif relative != path:
                unit = unit_dir / Path(path).name
                unit.write_text(content.replace("/usr/local/bin/", f"{bin_dir}/").replace("/usr/local/sbin/", f"{bin_dir}/"))
                units.append(str(unit))
                for binary in re.findall(rf"{bin_dir}/([\w-]+)", unit.read_text()):
                    stub = bin_dir / binary
                    stub.write_text("#!/bin/sh\n")
                    stub.chmod(0o755)
        (unit_dir / "docker.service").write_text("[Service]\nExecStart=/bin/true\n")
        assert sorted(Path(u).name for u in units) == UNITS[host.role]
        result = subprocess.run([tool, "verify", *units, *drop_in_units], capture_output=True, text=True, cwd=unit_dir)
        output = "\n".join(
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line and "Failed to read $container" not in line and "PR_SET_MM" not in line
        )
        assert result.returncode == 0 and output == "", output


def test_flags_one_per_line_alphabetical() -> None:
    s = dev_settings()
    for host in roles(s):
        for path, (_, content) in render.host_files(s, host).items():
            if path.endswith(".service") and "\\\n" in content:
                flags = re.findall(r"^  (--[\w-]+)", content, flags=re.M)
                assert flags == sorted(flags), path
                assert len(flags) == len(set(flags)), path


@pytest.mark.parametrize("manifest", ["coredns", "smoke-test", "cluster-rbac"])
def test_manifests_pass_kubernetes_validate(manifest: str, tmp_path: Path) -> None:
    tool = require_tool("kubernetes-validate")
    s = dev_settings()
    path = tmp_path / f"{manifest}.yaml"
    path.write_text(render.render(f"manifests/{manifest}.yaml.j2", render.context(s, s.master)))
    version = s.kubernetes_version
    result = subprocess.run([tool, "--strict", "-k", version, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INFO" in result.stdout and "ERROR" not in result.stdout


@pytest.mark.parametrize("role", ["master", "minion"])
def test_user_data_golden(role: str) -> None:
    s = dev_settings()
    host = s.master if role == "master" else s.minions[0]
    text = render.user_data(s, host)
    golden = GOLDEN / f"user-data-{role}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs: UPDATE_GOLDEN=1 python -m pytest tests/test_render.py"


def test_every_value_in_yaml_templates_is_escaped() -> None:
    """Outside comments, each {{ }} in a YAML template goes through `yaml` (or is a whole block/number)."""
    allowed = ("| yaml", "| indent_block", "minion_count }}", "cluster_domain }} in-addr.arpa")
    templates = [*(ROOT / "cloudinit").glob("*.yaml.j2"), *(ROOT / "cloudinit").glob("configs/*.y*ml.j2")]
    templates += [ROOT / "cloudinit/configs/kubeconfig.j2", *(ROOT / "cloudinit").glob("manifests/*.j2")]
    for path in templates:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "{{" in line and not line.lstrip().startswith("#"):
                assert any(a in line for a in allowed), f"{path.name}:{number}: {line.strip()}"
