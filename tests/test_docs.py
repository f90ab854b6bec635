"""The README stays true to the code: every config key and every pinned version is in it."""

from __future__ import annotations

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
        if name in ("kubernetes", "images"):
            continue
        assert str(entry["version"]) in README, name
    for ref in versions.images().values():
        assert ref.rsplit(":", 1)[1].lstrip("v") in README, ref
    assert load_schema()["kubernetesVersion"]["default"] in README


def test_quick_start_commands_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("preview", "test", "golden", "bench"):
        assert f"make {target}" in README and f"\n{target}:" in makefile, target
    assert "make setup\nmake test" in (ROOT / ".ci/run").read_text()
