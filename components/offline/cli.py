"""What the Pulumi CLI does with Pulumi.yaml and a stack's configuration before the program runs.

`pulumi up` loads the project and the stack file, merges the project's defaults into the stack's
configuration and type-checks it; only then does it start the program with that merged
configuration. A stack the CLI refuses never reaches the program, so the offline engine applies the
same rules, from the upstream source at pulumi/pulumi commit UPSTREAM_COMMIT:

    sdk/go/common/workspace/loaders.go   LoadProjectBytes (the order below), LoadProjectStackBytes
    sdk/go/common/workspace/project.go   ValidateProject (name, then the JSON schema project.json),
                                         RewriteConfigPathIntoStackConfigDir, RewriteShorthandConfigValues,
                                         Project.Validate, ValidateConfigValue, InferFullTypeName
    sdk/go/common/workspace/project.json the schema itself, copied in upstream/ (Apache-2.0)
    pkg/workspace/config.go              mergeConfig (project defaults, missing keys),
                                         validateStackConfigValues (type check of typed keys)
    sdk/go/common/resource/config/object.go  MarshalString: how a stack file value becomes text

Messages are upstream's, word for word, except the JSON-schema ones (python-jsonschema words them).
Files are read as YAML 1.2 reads booleans (only true/false; `yes` and `on` are strings), as the
CLI's reader does, where PyYAML alone would follow YAML 1.1. Not emulated (this project uses none
of them, and load_project refuses the first if it appears): `secret: true` config keys, ESC
environments merged into the configuration, and YAML 1.1 number spellings such as `1_000` or `1:20`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

UPSTREAM_COMMIT = "1b5949891b3cefcb9974752b24a5ecef0acc86c8"
SCHEMA_PATH = Path(__file__).resolve().parent / "upstream" / "project.json"

StackValue = str | list[Any] | dict[str, Any]
"""A stack's configuration value as the CLI stores it: plain text, or an object (a YAML list or
map in the stack file, `pulumi config set --path` or `--json`), which reaches the program as JSON."""

_INT64 = (-(2**63), 2**63 - 1)
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's booleans: true/false only (the CLI reads files with a YAML 1.2 parser)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Yaml12Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _read_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Yaml12Loader)  # a SafeLoader: no arbitrary objects


class CliError(Exception):
    """The Pulumi CLI refuses the project or the stack: the program never starts."""


@dataclass(frozen=True)
class ConfigType:
    """One entry of Pulumi.yaml's `config:` block after RewriteShorthandConfigValues (ProjectConfigType)."""

    type: str | None = None
    description: str = ""
    items: Mapping[str, Any] | None = None
    default: Any = None
    value: Any = None
    secret: bool = False

    @property
    def explicitly_typed(self) -> bool:
        return self.type is not None

    @property
    def full_type_name(self) -> str:
        """InferFullTypeName: `array<string>` for an array of strings."""
        return _full_type_name(self.type or "", self.items)


@dataclass(frozen=True)
class Project:
    name: str
    config: dict[str, ConfigType]


# --- loading the project (LoadProjectBytes)


def load_project(path: Path) -> Project:
    """Pulumi.yaml as the CLI loads it; raises CliError where the CLI stops."""
    raw = _read_yaml(path)
    _validate_project(raw, path.name)
    project = _rewrite_shorthand_config_values(_rewrite_config_path(dict(raw)))
    config = project.get("config") or {}
    parsed = Project(str(project["name"]), {key: ConfigType(**spec) for key, spec in config.items()})
    _validate(parsed, path.name)
    return parsed


def _validate_project(raw: Any, filename: str) -> None:
    """ValidateProject: keys must be strings, a non-empty string name, then the JSON schema."""
    if not isinstance(raw, dict):
        raise CliError(f"expected project to be an object, was '{type(raw).__name__}'")
    _only_string_keys(raw)
    if "name" not in raw:
        raise CliError(f"could not validate '{filename}': project is missing a 'name' attribute")
    if not isinstance(raw["name"], str) or raw["name"] == "":
        raise CliError(f"could not validate '{filename}': project is missing a non-empty string 'name' attribute")
    errors = sorted(_schema_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"#/{'/'.join(str(p) for p in err.absolute_path)}: {err.message}" for err in errors]
        raise CliError(f"could not validate '{filename}': " + "; ".join(lines))


def _only_string_keys(value: Any) -> None:
    """SimplifyMarshalledValue: every mapping key must be a string."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise CliError(f"expected only string keys, got '{key}'")
            _only_string_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            _only_string_keys(inner)


def _schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _rewrite_config_path(project: dict[str, Any]) -> dict[str, Any]:
    """RewriteConfigPathIntoStackConfigDir: `config: <dir>` is the old spelling of stackConfigDir."""
    config = project.get("config")
    if isinstance(config, str):
        if "stackConfigDir" in project:
            raise CliError("Should not use both config and stackConfigDir to define the stack directory. Use only stackConfigDir instead.")
        project["stackConfigDir"], project["config"] = config, None
    return project


def _rewrite_shorthand_config_values(project: dict[str, Any]) -> dict[str, Any]:
    """RewriteShorthandConfigValues: `key: 3` becomes {default: 3}; `aws:region: x` becomes {value: x}."""
    config = project.get("config")
    if not isinstance(config, dict):
        return project
    rewritten: dict[str, Any] = {}
    for key, spec in config.items():
        if _is_primitive(spec) or isinstance(spec, list):
            field = "default" if _namespaced_by_project(project["name"], key) else "value"
            spec = {field: spec}
        rewritten[key] = spec
    return {**project, "config": rewritten}


def _validate(project: Project, filename: str) -> None:
    """Project.Validate, with its messages."""
    for key, spec in project.config.items():
        problem = _config_type_problem(project.name, key, spec)
        if problem:
            raise CliError(f"could not unmarshal '{filename}': {problem}")


def _config_type_problem(project_name: str, key: str, spec: ConfigType) -> str | None:
    if spec.default is not None and spec.value is not None:
        return f"project config '{key}' cannot have both a 'default' and 'value' attribute"
    if spec.secret:
        return f"project config '{key}' is secret: not emulated offline (components/offline/cli.py)"
    if not _namespaced_by_project(project_name, key):
        if spec.explicitly_typed:
            return f"Configuration key '{key}' is not namespaced by the project and should not define a type"
        if spec.default is not None:
            return (
                f"Configuration key '{key}' is not namespaced by the project and should not define a default value. "
                "Did you mean to use the 'value' attribute instead of 'default'?"
            )
        if spec.value is None:
            return f"Configuration key '{key}' is namespaced and must provide an attribute 'value'"
        return None
    if spec.type == "array" and spec.items is None:
        return (
            f"The configuration key '{key}' declares an array but does not specify the underlying type via the 'items' attribute"
        )
    if spec.explicitly_typed and spec.default is not None and not _valid_value(spec.type or "", spec.items, spec.default):
        return f"The default value specified for configuration key '{key}' is not of the expected type '{spec.full_type_name}'"
    return None


# --- loading a stack file (LoadProjectStackBytes)


def load_stack(path: Path, project: Project) -> dict[str, StackValue]:
    """Pulumi.<stack>.yaml's `config:` as the CLI holds it: bare keys take the project's namespace,
    scalars become their text (object.MarshalString), lists and maps stay objects."""
    raw = _read_yaml(path) or {}
    _only_string_keys(raw)
    config = raw.get("config") or {}
    stored: dict[str, StackValue] = {}
    for key, value in config.items():
        full_key = key if ":" in key else f"{project.name}:{key}"
        stored[full_key] = stored_value(value)
    return stored


def stored_value(value: Any) -> StackValue:
    """A YAML or JSON value as the CLI stores it: a list or map stays an object, a scalar becomes text."""
    return value if isinstance(value, (list, dict)) else _scalar_text(value)


def _scalar_text(value: Any) -> str:
    """object.MarshalString: a string as is; a bool, int or float as Go's JSON (3.0 is `3`).

    A key with no value is read as "" (the CLI warns that it "is currently treated as an empty string").
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value)


# --- merging and checking (mergeConfig with validate=true)


def merge_config(stack: str, project: Project, stack_config: Mapping[str, StackValue]) -> dict[str, StackValue]:
    """The configuration the program receives: the stack's values plus the project's defaults.

    Raises CliError with the CLI's own message for missing keys or a value of the wrong type.
    """
    merged = dict(stack_config)
    missing: list[str] = []
    for key in sorted(project.config):
        spec = project.config[key]
        full_key = _full_key(project.name, key)
        if full_key in merged:
            continue
        if spec.default is None and spec.value is None:
            if full_key.split(":", 1)[0] == project.name:
                missing.append(key)
            continue
        merged[full_key] = _config_value(spec.default if spec.default is not None else spec.value)
    if missing:
        noun = "value" if len(missing) == 1 else "values"
        raise CliError(f"Stack '{stack}' is missing configuration {noun} {_format_missing(missing)}")
    _validate_stack_config_values(stack, project, merged)
    return merged


def program_config(merged: Mapping[str, StackValue]) -> dict[str, str]:
    """What the language host hands the program: every value as text, objects as compact JSON."""
    return {key: value if isinstance(value, str) else _json(value) for key, value in merged.items()}


def _validate_stack_config_values(stack: str, project: Project, merged: Mapping[str, StackValue]) -> None:
    """validateStackConfigValues: each explicitly typed key's value must be of its type (first failure)."""
    for key in sorted(project.config):
        spec = project.config[key]
        if not spec.explicitly_typed:
            continue
        value = merged.get(_full_key(project.name, key))
        content: Any = "" if value is None else value
        if isinstance(content, (list, dict)):
            content = json.loads(_json(content))  # json.Unmarshal of the stored object
        if not _valid_value(spec.type or "", spec.items, content):
            raise CliError(f"Stack '{stack}' with configuration key '{key}' must be of type '{spec.full_type_name}'")


def _valid_value(type_name: str, items: Mapping[str, Any] | None, value: Any) -> bool:
    """ValidateConfigValue."""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return True
        if isinstance(value, float):
            return math.isfinite(value) and value == math.trunc(value)
        return isinstance(value, str) and _atoi_accepts(value)
    if type_name == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if type_name == "object":
        return isinstance(value, dict)
    if not isinstance(value, list) or items is None:
        return False
    return all(_valid_value(items.get("type", ""), items.get("items"), item) for item in value)


def _atoi_accepts(text: str) -> bool:
    """Go's strconv.Atoi: optional sign, decimal digits only, within int64."""
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None and _INT64[0] <= int(text) <= _INT64[1]


def _full_type_name(type_name: str, items: Mapping[str, Any] | None) -> str:
    if items is not None:
        return f"array<{_full_type_name(items.get('type', ''), items.get('items'))}>"
    return type_name


def _config_value(value: Any) -> StackValue:
    """createConfigValue: a string, int or bool becomes its text (Go's %v); anything else an object."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_primitive(value):
        return str(value)
    return json.loads(_json(value))


def _format_missing(keys: list[str]) -> str:
    """formatMissingKeys: 'a', 'b' and 'c'."""
    quoted = [f"'{k}'" for k in sorted(keys)]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" and {quoted[-1]}"


def _full_key(project_name: str, key: str) -> str:
    """parseConfigKey: a bare key takes the project's namespace."""
    return key if ":" in key else f"{project_name}:{key}"


def _namespaced_by_project(project_name: str, key: str) -> bool:
    return ":" not in key or key.startswith(project_name + ":")


def _is_primitive(value: Any) -> bool:
    """isPrimitiveValue: Go's string, int and bool (a YAML float is not one)."""
    return isinstance(value, (str, int, bool))


def _json(value: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
