"""The offline preview (components/offline/preview.py): golden output, config errors, no secrets, every stack.

The CLI runs in a subprocess (`python -m components.offline.preview`), so each run has its own Pulumi
runtime. Golden files of the dev stack live in tests/golden/preview-dev/: SUMMARY.md and, for the
master and minion-0 (the other minions differ only by name and address), user-data.yaml and
steps/*.sh (the files with no certificate material). After an intended change,
regenerate them and review the diff:

    UPDATE_GOLDEN=1 python -m pytest tests/test_preview.py
"""

from __future__ import annotations

import base64
import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components import offline
from components.offline import preview
from components.offline import tls as offline_tls
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "preview-dev"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
GOLDEN_HOSTS = ("master", "minion-0")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components.offline.preview", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def dev_preview(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preview") / "dev"
    result = run_cli("--stack", "dev", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "longest chain" in result.stdout
    return out


def golden_texts(root: Path) -> dict[str, str]:
    """The compared files: SUMMARY.md, <host>/user-data.yaml and <host>/steps/*.sh of GOLDEN_HOSTS."""
    paths = [root / "SUMMARY.md"]
    for host in GOLDEN_HOSTS:
        paths += [root / host / "user-data.yaml", *(root / host).glob("steps/*.sh")]
    return {p.relative_to(root).as_posix(): normalise(p.read_text()) for p in sorted(paths)}


def normalise(text: str) -> str:
    """Nothing random reaches these files today (keys and certificates stay out of them); if
    something ever does, replace it here rather than dropping the file from the comparison."""
    return text


def test_dev_matches_golden(dev_preview: Path) -> None:
    actual = golden_texts(dev_preview)
    if UPDATE:
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for rel, text in actual.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(text)
    expected = golden_texts(GOLDEN)
    hint = "regenerate: UPDATE_GOLDEN=1 python -m pytest tests/test_preview.py"
    assert sorted(actual) == sorted(expected), f"file sets differ; {hint}"
    for rel, text in expected.items():
        if actual[rel] != text:
            diff = "".join(difflib.unified_diff(text.splitlines(True), actual[rel].splitlines(True), f"golden/{rel}", rel))
            pytest.fail(f"{rel} differs from the golden file ({hint}):\n{diff[:4000]}")


def test_dev_layout(dev_preview: Path) -> None:
    assert sorted(p.name for p in dev_preview.iterdir() if p.is_dir()) == ["master", "minion-0", "minion-1", "minion-2"]
    master_steps = sorted(p.name for p in (dev_preview / "master" / "steps").iterdir())
    assert master_steps[0] == "01-master-cloud-init.sh" and "12-minion-0-drain.delete.sh" in master_steps
    assert (dev_preview / "minion-0" / "files" / "etc" / "systemd" / "system" / "kubelet.service").is_file()
    assert (dev_preview / "master" / "files" / "etc" / "hosts").read_text().count("10.240.0.") == 4
    summary = (dev_preview / "SUMMARY.md").read_text()
    for needle in ("```mermaid", "flowchart", "Longest chain (13 steps)", "`sshPrivateKey` | [secret]", "`kubeconfig` | [secret]"):
        assert needle in summary


def test_bad_config_exits_nonzero_naming_the_key(tmp_path: Path) -> None:
    result = run_cli("--stack", "dev", "--set", "kube-ec2:podCidr=10.240.0.0/16", "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "podCidr" in result.stderr and "overlaps vpcCidr" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_clis_own_rules_come_first(tmp_path: Path) -> None:
    """`pulumi config set kube-ec2:minionCount three` is refused by the CLI before the program runs."""
    result = run_cli("--stack", "dev", "--set", "kube-ec2:minionCount=three", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Stack 'dev' with configuration key 'minionCount' must be of type 'integer'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_set_json_stores_an_array_and_set_stores_text(tmp_path: Path) -> None:
    """As `pulumi config set --json` and plain `pulumi config set`: only the first makes an array the CLI accepts."""
    value = 'kube-ec2:adminCidrs=["81.2.69.160/28"]'
    ok = run_cli("--stack", "dev", "--set-json", value, "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    assert "`81.2.69.160/28` (config:" in (tmp_path / "ok" / "SUMMARY.md").read_text()
    text = run_cli("--stack", "dev", "--set", value, "--out", str(tmp_path / "text"))
    assert text.returncode == 2
    assert "Stack 'dev' with configuration key 'adminCidrs' must be of type 'array<string>'" in text.stderr
    bad = run_cli("--stack", "dev", "--set-json", "kube-ec2:adminCidrs=[oops", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "is not JSON" in bad.stderr


def test_unknown_stack_lists_the_stacks(tmp_path: Path) -> None:
    result = run_cli("--stack", "staging", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "staging" in result.stderr and "dev, prod" in result.stderr


def test_refuses_to_wipe_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(preview.PreviewError, match="refusing"):
        preview.prepare_out_dir(tmp_path)
    assert (tmp_path / "keep.txt").exists()


def test_writes_no_secret_and_the_scan_catches_one(tmp_path: Path) -> None:
    run = offline.run("dev")
    settings = run.cluster.settings
    out = tmp_path / "dev"
    preview.write_preview(run, settings, out)
    secrets = preview.secret_values(run)
    # The scan looks for every kind of secret the run holds.
    keys = [str(offline_tls.plain(r.outputs)[k]) for r in run.mocks.of_type("tls:index/privateKey:PrivateKey") for k in ("privateKeyPem",)]
    bundles = [str(offline_tls.plain(r.inputs["stdin"])) for r in run.mocks.of_type(preview.COMMAND) if "stdin" in r.inputs]
    assert len(keys) == 3 + 12 + 3 + 3 + 2 and len(bundles) == 4  # CAs, leaves, kubelets, minions' flannel-etcd, SA + SSH keys
    for value in [*keys, *bundles, run.outputs["sshPrivateKey"].strip(), run.outputs["kubeconfig"].strip()]:
        assert value.strip() in secrets
    # Checked here independently of the preview's own scan.
    for path in (p for p in out.rglob("*") if p.is_file()):
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        assert not any(value in text for value in secrets), path
    # A planted leak (here base64 of the SSH key, as a kubeconfig would embed it) fails loudly.
    (out / "master" / "leak.txt").write_text(base64.b64encode(run.outputs["sshPrivateKey"].strip().encode()).decode())
    with pytest.raises(preview.PreviewError, match="SECRET LEAK"):
        preview.scan_for_secrets(out, secrets)


def test_prod_runs(tmp_path: Path) -> None:
    out = tmp_path / "prod"
    result = run_cli("--stack", "prod", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["master", *(f"minion-{i}" for i in range(5))]
    summary = (out / "SUMMARY.md").read_text()
    assert "`eu-west-1`" in summary and "`m6i.xlarge`" in summary
    assert "`192.0.2.1/32` (placeholder:" in summary  # prod leaves adminCidrs unset
