"""The README stays true to the code: every config key and every pinned version is in it."""

from __future__ import annotations

import re

import yaml

from components import versions
from components.settings import load_schema
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_config_key_is_documented_with_its_default() -> None:
    for key, spec in load_schema().items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row, f"README's configuration table lacks {key}"
        shown = '""' if spec["default"] == "" else str(spec["default"])
        assert shown.lower() in row.lower(), (key, spec["default"], row)


def test_every_pinned_version_is_named() -> None:
    data = versions.load()
    for name, entry in data.items():
        if name in ("kubernetes", "images", "runtime"):
            continue
        assert str(entry["version"]) in README, name
    for package, minimum in versions.runtime_minimums().items():
        assert f"`{package}` ≥ {minimum}" in README, package
    for ref in versions.images().values():
        assert ref.rsplit(":", 1)[1].lstrip("v") in README, ref
    assert load_schema()["kubernetesVersion"]["default"] in README


def test_quick_start_commands_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("preview", "test", "golden", "bench"):
        assert f"make {target}" in README and f"\n{target}:" in makefile, target
    assert "make setup\nmake test" in (ROOT / ".ci/run").read_text()


def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text


def test_required_pulumi_version_is_a_range_the_cli_parses() -> None:
    """Pulumi.yaml's requiredPulumiVersion (read by the CLI since v3.219.0 with blang/semver's
    ParseRange): a plain lower bound here, written X.Y.Z."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    found = re.fullmatch(r">=(\d+)\.(\d+)\.(\d+)", project["requiredPulumiVersion"])
    assert found, project["requiredPulumiVersion"]
    assert tuple(int(p) for p in found.groups()) >= (3, 219, 0), "older CLIs ignore the field"


def test_every_linked_local_file_exists() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"
