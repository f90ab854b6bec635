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
    contributing = (ROOT / "docs" / "contributing.md").read_text()
    assert "make preview" in README
    for target in ("preview", "test", "golden", "bench"):
        assert f"make {target}" in contributing and f"\n{target}:" in makefile, target
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


# --- the user's flow: every output, key, file and command the README names exists and works as written

FLOW_FLAGS = {
    # pulumi subcommand -> the flags the README may use with it, from the CLI reference
    # (https://www.pulumi.com/docs/iac/cli/commands/pulumi_<command>/).
    "login": {"--local"},
    "stack init": {"--secrets-provider"},
    "stack output": {"--show-secrets"},
    "stack rm": set(),
    "stack": {"--show-urns"},
    "config set": {"--path"},
    "preview": set(),
    "up": {"--replace"},
    "destroy": {"--continue-on-error"},
    "state delete": {"--yes"},
    "version": set(),
}


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.DOTALL)


def _pulumi_commands(text: str) -> list[list[str]]:
    """Every `pulumi ...` invocation in the README's shell blocks and inline code, as words."""
    found = []
    inline = [" ".join(code.split()) for code in re.findall(r"`(pulumi [^`]+)`", text)]
    for code in _shell_blocks(text) + inline:
        for match in re.finditer(r"(?<![\w./-])pulumi ([^\n|&;)<>`\"]*)", code):
            found.append(match.group(1).split())
    return found


def _subcommand(words: list[str]) -> tuple[str, list[str]]:
    for n in (2, 1):
        name = " ".join(w for w in words[:n])
        if name in FLOW_FLAGS and all(not w.startswith("-") for w in words[:n]):
            return name, words[n:]
    raise AssertionError(f"README uses `pulumi {' '.join(words)}`, a command this test does not know")


def _outputs() -> tuple[set[str], set[str]]:
    from components import offline

    run = offline.run("dev")
    return set(run.outputs), set(run.secret_outputs)


def test_every_pulumi_command_and_flag_in_the_readme_is_known() -> None:
    commands = _pulumi_commands(README)
    assert len(commands) >= 10
    for words in commands:
        name, rest = _subcommand(words)
        for flag in (w.split("=", 1)[0] for w in rest if w.startswith("--")):
            assert flag in FLOW_FLAGS[name], f"`pulumi {' '.join(words)}`: {flag}"


def test_every_stack_output_is_in_the_access_table_and_exists() -> None:
    outputs, secret = _outputs()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (yes|no) \|", README, re.MULTILINE)}
    assert set(rows) == outputs
    assert {name for name, s in rows.items() if s == "yes"} == secret == {"kubeconfig", "sshPrivateKey"}
    for words in _pulumi_commands(README):
        if words[:2] == ["stack", "output"] and len(words) > 2 and not words[2].startswith("-"):
            assert words[2] in outputs, words
            assert ("--show-secrets" in words) == (words[2] in secret), words


def test_secrets_are_written_private_ignored_by_git_and_after_the_passphrase() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    first_redirect = None
    for line in "\n".join(_shell_blocks(README)).splitlines():
        if "--show-secrets >" in line:
            first_redirect = first_redirect or README.index(line)
            target = line.split("--show-secrets >", 1)[1].split(")")[0].split()[0]
            assert "(umask 077 && pulumi stack output" in line, line
            assert f"/{target}" in ignored or target in ignored, target
    assert first_redirect is not None
    assert README.index("export PULUMI_CONFIG_PASSPHRASE=") < first_redirect


def test_every_config_key_the_readme_sets_exists() -> None:
    keys = set(load_schema())
    for words in _pulumi_commands(README):
        if words[:2] == ["config", "set"]:
            key = next(w for w in words[2:] if not w.startswith("-")).strip("'\"")
            key = re.split(r"[\[.]", key.removeprefix("kube-ec2:"))[0]
            assert key in keys or key.startswith("aws:"), words


def test_every_make_target_named_in_the_docs_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in set(re.findall(r"(?:`|^[ \t]*)make ([a-z][\w-]*)", doc.read_text(), re.MULTILINE)):
            assert f"\n{target}:" in makefile or makefile.startswith(f"{target}:"), f"{doc.name}: make {target}"


def test_the_minimum_pulumi_version_is_the_one_pulumi_yaml_requires() -> None:
    required = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["requiredPulumiVersion"].removeprefix(">=")
    assert f"Pulumi CLI {required} or newer" in README


def test_the_readme_follows_the_order_a_newcomer_needs() -> None:
    headings = re.findall(r"^## (.+)$", README, re.MULTILINE)
    expected = [
        "Quick start without AWS", "Prerequisites", "State backend and secrets", "Create a cluster", "Cost",
        "Access", "Operating the cluster", "Troubleshooting", "Limitations", "Configuration",
        "Verified / not verified", "More documentation",
    ]
    positions = [next(i for i, h in enumerate(headings) if h.startswith(e)) for e in expected]
    assert positions == sorted(positions), headings
    assert README.index("**Status: not yet run on AWS.**") < README.index("## Prerequisites")
    assert not (ROOT / "e2e" / "REPORT.md").exists(), "an e2e report exists: update the status line"


def test_the_quick_start_is_two_commands_the_makefile_has() -> None:
    section = README.split("## Quick start without AWS", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    assert commands == ["make preview", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^preview:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    # `.ci/run` runs the README's test command.
    assert "make test" in (ROOT / ".ci" / "run").read_text()
