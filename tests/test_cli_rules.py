"""The Pulumi CLI's own rules (components/offline/cli.py) accept every stack, and each rule can fail.

Before the program runs, `pulumi up` validates Pulumi.yaml against Pulumi's project schema, rewrites
shorthand config, runs Project.Validate, refuses a stack that lacks a typed key without a default
(mergeConfig) and type-checks every typed key (validateStackConfigValues). Expected messages here
are upstream's words (pulumi/pulumi pkg/workspace/config.go, sdk/go/common/workspace/project.go).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from components import offline
from components.offline import cli
from tests.conftest import ROOT, run_stack

PULUMI_YAML = ROOT / "Pulumi.yaml"
REPO_STACKS = sorted(p.name for p in ROOT.glob("Pulumi.*.yaml"))


def project_from(tmp_path: Path, text: str) -> cli.Project:
    path = tmp_path / "Pulumi.yaml"
    path.write_text(text)
    return cli.load_project(path)


def edited_project(tmp_path: Path, edit: Any) -> Path:
    """Pulumi.yaml with `edit(raw)` applied, written to tmp_path."""
    raw = yaml.safe_load(PULUMI_YAML.read_text())
    edit(raw)
    path = tmp_path / "Pulumi.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def readme_stack(tmp_path: Path) -> Path:
    """What `pulumi stack init x` then `pulumi config set aws:region eu-central-1` leave behind (the README's way)."""
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("config:\n  aws:region: eu-central-1\n")
    return path


# --- every stack passes


def test_the_stack_files_are_found() -> None:
    assert {"Pulumi.dev.yaml", "Pulumi.prod.yaml"} <= set(REPO_STACKS)


@pytest.mark.parametrize("stack_file", REPO_STACKS)
def test_every_stack_file_passes_the_cli_rules(stack_file: str) -> None:
    project = cli.load_project(PULUMI_YAML)
    stack = stack_file.removeprefix("Pulumi.").removesuffix(".yaml")
    merged = cli.merge_config(stack, project, cli.load_stack(ROOT / stack_file, project))
    # every declared key reaches the program, the defaults included, and the program accepts the stack
    assert {f"kube-ec2:{key}" for key in project.config} <= set(merged)
    assert run_stack(stack).cluster.settings.stack == stack


def test_a_new_stack_made_the_readme_way_passes_and_the_program_runs(tmp_path: Path) -> None:
    project = cli.load_project(PULUMI_YAML)
    stored = cli.load_stack(readme_stack(tmp_path), project)
    assert stored == {"aws:region": "eu-central-1"}
    handed = cli.program_config(cli.merge_config("x", project, stored))
    # what the program receives for the keys nobody set: Pulumi.yaml's defaults, as text
    assert handed["kube-ec2:adminCidrs"] == "[]"
    assert handed["kube-ec2:amiId"] == "" and handed["kube-ec2:availabilityZone"] == ""
    assert handed["kube-ec2:minionCount"] == "3" and handed["kube-ec2:allowUpstreamChecksums"] == "false"
    run = offline.run("x", stored)
    settings = run.cluster.settings
    assert (settings.ami_id, settings.availability_zone, settings.admin_cidrs_source) == (None, None, "placeholder")
    assert settings.region == "eu-central-1" and settings.minion_count == 3


def test_stack_values_are_stored_as_the_cli_stores_them(tmp_path: Path) -> None:
    """object.MarshalString: scalars as text (a YAML 3.0 is `3`), lists as objects; bare keys get the project's namespace."""
    project = cli.load_project(PULUMI_YAML)
    path = tmp_path / "Pulumi.s.yaml"
    path.write_text(
        "config:\n  aws:region: us-east-1\n  minionCount: 3.0\n  kube-ec2:allowUpstreamChecksums: true\n  adminCidrs: [81.2.69.7/32]\n"
    )
    stored = cli.load_stack(path, project)
    assert stored == {
        "aws:region": "us-east-1",
        "kube-ec2:minionCount": "3",
        "kube-ec2:allowUpstreamChecksums": "true",
        "kube-ec2:adminCidrs": ["81.2.69.7/32"],
    }
    assert cli.program_config(stored)["kube-ec2:adminCidrs"] == '["81.2.69.7/32"]'


def test_yes_is_a_string_as_in_yaml_1_2(tmp_path: Path) -> None:
    """The CLI's YAML 1.2 reader keeps `yes` a string, so a boolean key given `yes` is refused; `true` passes."""
    project = cli.load_project(PULUMI_YAML)
    path = tmp_path / "Pulumi.s.yaml"
    path.write_text("config:\n  aws:region: us-east-1\n  kube-ec2:allowUpstreamChecksums: yes\n")
    assert cli.load_stack(path, project)["kube-ec2:allowUpstreamChecksums"] == "yes"
    with pytest.raises(cli.CliError, match="'allowUpstreamChecksums' must be of type 'boolean'"):
        cli.merge_config("s", project, cli.load_stack(path, project))
    path.write_text("config:\n  aws:region: us-east-1\n  kube-ec2:allowUpstreamChecksums: True\n")
    assert cli.merge_config("s", project, cli.load_stack(path, project))["kube-ec2:allowUpstreamChecksums"] == "true"


# --- mergeConfig: a typed key without a default


def test_todays_failure_is_reproduced_without_the_defaults(tmp_path: Path) -> None:
    """The issue's exact message, for dev, when the three optional keys had a type and no default."""

    def drop_defaults(raw: dict[str, Any]) -> None:
        for key in ("adminCidrs", "amiId", "availabilityZone"):
            del raw["config"][key]["default"]

    project = cli.load_project(edited_project(tmp_path, drop_defaults))
    dev = cli.load_stack(ROOT / "Pulumi.dev.yaml", project)
    with pytest.raises(cli.CliError) as err:
        cli.merge_config("dev", project, dev)
    assert str(err.value) == "Stack 'dev' is missing configuration values 'adminCidrs', 'amiId' and 'availabilityZone'"
    with pytest.raises(cli.CliError, match=r"^Stack 'x' is missing configuration values 'adminCidrs', 'amiId' and 'availabilityZone'$"):
        cli.merge_config("x", project, cli.load_stack(readme_stack(tmp_path), project))


def test_one_missing_key_and_a_stack_value_that_fills_it(tmp_path: Path) -> None:
    project = cli.load_project(edited_project(tmp_path, lambda raw: raw["config"]["amiId"].pop("default")))
    with pytest.raises(cli.CliError, match=r"^Stack 'dev' is missing configuration value 'amiId'$"):
        cli.merge_config("dev", project, {"aws:region": "us-east-1"})
    merged = cli.merge_config("dev", project, {"aws:region": "us-east-1", "kube-ec2:amiId": "ami-0abcdef1234567890"})
    assert merged["kube-ec2:amiId"] == "ami-0abcdef1234567890"


def test_the_offline_engine_applies_the_rules_before_the_program(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """offline.run refuses, as `pulumi up` does, and registers nothing."""
    broken = edited_project(tmp_path, lambda raw: raw["config"]["amiId"].pop("default"))
    real_load = cli.load_project
    monkeypatch.setattr(cli, "load_project", lambda path: real_load(broken))
    mocks = offline.OfflineMocks()
    with pytest.raises(cli.CliError, match="missing configuration value 'amiId'"):
        offline.run("dev", mocks=mocks)
    assert mocks.resources == []


# --- validateStackConfigValues: the type of every typed key

WRONG_TYPES = [
    ("kube-ec2:minionCount", "three", "minionCount", "integer"),
    ("kube-ec2:minionCount", "3.5", "minionCount", "integer"),
    ("kube-ec2:minionCount", " 3", "minionCount", "integer"),
    ("kube-ec2:rootVolumeGb", "", "rootVolumeGb", "integer"),
    ("kube-ec2:allowUpstreamChecksums", "yes", "allowUpstreamChecksums", "boolean"),
    ("kube-ec2:allowUpstreamChecksums", "True", "allowUpstreamChecksums", "boolean"),
    ("kube-ec2:adminCidrs", '["81.2.69.7/32"]', "adminCidrs", "array<string>"),  # `config set` without --json: text
    ("kube-ec2:adminCidrs", [5], "adminCidrs", "array<string>"),
    ("kube-ec2:amiId", ["ami-0abcdef1234567890"], "amiId", "string"),
]


@pytest.mark.parametrize(("full_key", "value", "key", "type_name"), WRONG_TYPES, ids=[f"{k}={v!r}" for k, v, _, _ in WRONG_TYPES])
def test_a_value_of_the_wrong_type_is_refused_by_the_cli(full_key: str, value: Any, key: str, type_name: str) -> None:
    project = cli.load_project(PULUMI_YAML)
    stack = {"aws:region": "us-east-1", full_key: value}
    with pytest.raises(cli.CliError) as err:
        cli.merge_config("dev", project, stack)
    assert str(err.value) == f"Stack 'dev' with configuration key '{key}' must be of type '{type_name}'"


RIGHT_TYPES = [
    ("kube-ec2:minionCount", "3"),
    ("kube-ec2:minionCount", "+3"),
    ("kube-ec2:minionCount", "-3"),  # a type check only: the program refuses it by range
    ("kube-ec2:allowUpstreamChecksums", "true"),
    ("kube-ec2:adminCidrs", []),
    ("kube-ec2:adminCidrs", ["81.2.69.7/32", "not a cidr"]),  # the program checks the contents
    ("kube-ec2:amiId", ""),
]


@pytest.mark.parametrize(("full_key", "value"), RIGHT_TYPES, ids=[f"{k}={v!r}" for k, v in RIGHT_TYPES])
def test_a_value_of_the_right_type_passes(full_key: str, value: Any) -> None:
    merged = cli.merge_config("dev", cli.load_project(PULUMI_YAML), {"aws:region": "us-east-1", full_key: value})
    assert merged[full_key] == value


def test_untyped_and_foreign_keys_are_not_type_checked() -> None:
    """Only keys Pulumi.yaml declares with a type are checked; unknown ones reach the program, which refuses them."""
    merged = cli.merge_config("dev", cli.load_project(PULUMI_YAML), {"aws:region": "us-east-1", "kube-ec2:minioncount": "three"})
    assert merged["kube-ec2:minioncount"] == "three"


# --- the project file: ValidateProject (name, JSON schema), RewriteShorthandConfigValues, Project.Validate


def test_the_project_schema_is_upstreams_2020_12_schema() -> None:
    schema = json.loads(cli.SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://github.com/pulumi/pulumi/blob/master/sdk/go/common/workspace/project.json"
    jsonschema.Draft202012Validator.check_schema(schema)
    notice = (cli.SCHEMA_PATH.parent / "README.md").read_text()
    assert cli.UPSTREAM_COMMIT in notice and "Apache License" in (cli.SCHEMA_PATH.parent / "LICENSE").read_text()


BROKEN_PROJECTS = [
    # (what is wrong, Pulumi.yaml text, a fragment of the CLI's refusal)
    ("no name", "runtime: python\n", "project is missing a 'name' attribute"),
    ("empty name", "name: ''\nruntime: python\n", "project is missing a non-empty string 'name' attribute"),
    ("a typo in a config declaration", "name: p\nruntime: python\nconfig:\n  size:\n    type: integer\n    defualt: 3\n", "#/config/size"),
    ("an unknown config type", "name: p\nruntime: python\nconfig:\n  size:\n    type: number\n", "#/config/size"),
    ("an unknown runtime attribute", "name: p\nruntime:\n  name: python\n  toolchain: pip\n", "#/runtime"),
    ("a description that is a list", "name: p\nruntime: python\ndescription: [a]\n", "#/description"),
    (
        "an array without items",
        "name: p\nruntime: python\nconfig:\n  cidrs:\n    type: array\n",
        "The configuration key 'cidrs' declares an array but does not specify the underlying type via the 'items' attribute",
    ),
    (
        "a default of the wrong type",
        "name: p\nruntime: python\nconfig:\n  size:\n    type: integer\n    default: three\n",
        "The default value specified for configuration key 'size' is not of the expected type 'integer'",
    ),
    (
        "a default and a value",
        "name: p\nruntime: python\nconfig:\n  size:\n    default: 3\n    value: 4\n",
        "project config 'size' cannot have both a 'default' and 'value' attribute",
    ),
    (
        "a typed key of another namespace",
        "name: p\nruntime: python\nconfig:\n  aws:region:\n    type: string\n    value: us-east-1\n",
        "Configuration key 'aws:region' is not namespaced by the project and should not define a type",
    ),
    (
        "another namespace's key without a value",
        "name: p\nruntime: python\nconfig:\n  aws:region:\n    description: x\n",
        "Configuration key 'aws:region' is namespaced and must provide an attribute 'value'",
    ),
]


@pytest.mark.parametrize(("why", "text", "refusal"), BROKEN_PROJECTS, ids=[b[0] for b in BROKEN_PROJECTS])
def test_a_broken_project_file_is_refused(tmp_path: Path, why: str, text: str, refusal: str) -> None:
    with pytest.raises(cli.CliError) as err:
        project_from(tmp_path, text)
    assert refusal in str(err.value), why


def test_our_project_file_passes_and_an_unknown_top_level_field_is_allowed(tmp_path: Path) -> None:
    """The schema allows extra top-level fields (additionalProperties: true); only declarations are closed."""
    project = cli.load_project(PULUMI_YAML)
    assert project.name == "kube-ec2" and all(spec.explicitly_typed for spec in project.config.values())
    assert project_from(tmp_path, "name: p\nruntime: python\nmaintainer: ops\n").name == "p"


def test_shorthand_config_is_rewritten_and_merged(tmp_path: Path) -> None:
    """RewriteShorthandConfigValues: a bare key's value is its default, another namespace's is its value."""
    project = project_from(tmp_path, "name: p\nruntime: python\nconfig:\n  size: 3\n  tags: [a]\n  aws:region: us-west-2\n")
    assert project.config["size"] == cli.ConfigType(default=3)
    assert project.config["tags"] == cli.ConfigType(default=["a"])
    assert project.config["aws:region"] == cli.ConfigType(value="us-west-2")
    merged = cli.merge_config("s", project, {"p:size": "5"})
    assert merged == {"p:size": "5", "p:tags": ["a"], "aws:region": "us-west-2"}
    assert cli.program_config(merged) == {"p:size": "5", "p:tags": '["a"]', "aws:region": "us-west-2"}


def test_defaults_reach_the_program_as_text(tmp_path: Path) -> None:
    """createConfigValue: a string, int or bool default is text (Go's %v), anything else JSON."""
    text = (
        "name: p\nruntime: python\nconfig:\n"
        "  n:\n    type: integer\n    default: 3\n"
        "  b:\n    type: boolean\n    default: false\n"
        "  s:\n    type: string\n    default: ''\n"
        "  a:\n    type: array\n    items:\n      type: string\n    default: []\n"
    )
    merged = cli.merge_config("s", project_from(tmp_path, text), {})
    assert cli.program_config(merged) == {"p:a": "[]", "p:b": "false", "p:n": "3", "p:s": ""}
