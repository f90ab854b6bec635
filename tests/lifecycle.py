"""What `pulumi up` would do to a running stack when its configuration changes, offline.

`up(old_config, new_config)` runs the program for the old configuration (the stack's state), then
for the new one, and classifies every resource the way the engine and providers would: create,
delete, same, update or replace. A resource whose inputs are unchanged is `same` and gets its old
outputs back, as the engine reads them from its state (so random keys and certificates stay the
same); a replaced resource gets a new id, so everything that reads it sees the change, and the
new run is repeated until no further replacement appears (the engine's cascade). Which changed
inputs replace is `replace_rules`; `ignoreChanges` and `deleteBeforeReplace` are read from the
registration requests (engine_options).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components import offline
from components.offline import tls as offline_tls
from tests.engine_options import Options, recording
from tests.replace_rules import forces_replacement

Key = tuple[str, str]
"""(type, name) of a resource."""
COMPONENT_PREFIX = "kube-ec2:"


@dataclass(frozen=True)
class State:
    """One resource after a run: inputs as registered, id and outputs as the provider returned them."""

    inputs: dict[str, Any]
    id: str
    outputs: dict[str, Any]


@dataclass
class StatefulMocks(offline.OfflineMocks):
    """The offline engine plus the previous run's state: unchanged resources keep their outputs."""

    previous: Mapping[Key, State] = field(default_factory=dict)
    replaced: frozenset[Key] = frozenset()
    states: dict[Key, State] = field(default_factory=dict)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        key = (args.typ, args.name)
        old = self.previous.get(key)
        if old is not None and key not in self.replaced and _canonical(old.inputs) == _canonical(args.inputs):
            self.resources.append(offline.Recorded(args.typ, args.name, dict(args.inputs), old.outputs))
            self.states[key] = old
            return old.id, old.outputs
        resource_id, outputs = super().new_resource(args)
        if old is not None:
            # An update keeps the id; a replacement is a new resource with a new id.
            resource_id = f"{old.id}+" if key in self.replaced else old.id
        self.states[key] = State(dict(args.inputs), resource_id, outputs)
        return resource_id, outputs


def _canonical(value: Any) -> str:
    return json.dumps(offline_tls.plain(value), sort_keys=True, default=str)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted paths; any other value (lists included) as its canonical JSON."""
    value = offline_tls.plain(value)
    if isinstance(value, dict) and value:
        flat: dict[str, str] = {}
        for k, v in value.items():
            flat.update(flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix.rstrip("."): _canonical(value)}


@dataclass(frozen=True)
class Change:
    action: str
    """create, delete, same, update or replace."""
    paths: tuple[str, ...] = ()
    """The inputs that differ (after ignoreChanges)."""


@dataclass(frozen=True)
class Plan:
    changes: dict[Key, Change]
    old_options: dict[Key, Options]
    new_options: dict[Key, Options]

    def named(self, action: str) -> set[str]:
        return {name for (_typ, name), change in self.changes.items() if change.action == action}


def classify(typ: str, old: State, new: State, options: Options) -> Change:
    old_flat, new_flat = flatten(old.inputs), flatten(new.inputs)
    paths = sorted(p for p in set(old_flat) | set(new_flat) if old_flat.get(p) != new_flat.get(p))
    paths = [p for p in paths if p.split(".", 1)[0] not in options.ignore_changes]
    if not paths:
        return Change("same")
    replace = any(forces_replacement(typ, p) or p.split(".", 1)[0] in options.replace_on_changes for p in paths)
    return Change("replace" if replace else "update", tuple(paths))


def run(stack: str, config: dict[str, str], previous: Mapping[Key, State], replaced: frozenset[Key]):  # type: ignore[no-untyped-def]
    mocks = StatefulMocks(previous=previous, replaced=replaced)
    with recording() as options:
        offline.run(stack, config, mocks=mocks)
    states = {k: v for k, v in mocks.states.items() if not k[0].startswith(COMPONENT_PREFIX)}
    return states, {k: v for k, v in options.items() if not k[0].startswith(COMPONENT_PREFIX)}


def up(stack: str, old_config: dict[str, str], new_config: dict[str, str]) -> Plan:
    """The plan `pulumi up` would carry out on a stack built with old_config, given new_config."""
    old_states, old_options = run(stack, old_config, {}, frozenset())
    replaced: frozenset[Key] = frozenset()
    while True:
        new_states, new_options = run(stack, new_config, old_states, replaced)
        changes: dict[Key, Change] = {}
        for key in old_states.keys() | new_states.keys():
            if key not in new_states:
                changes[key] = Change("delete")
            elif key not in old_states:
                changes[key] = Change("create")
            else:
                changes[key] = classify(key[0], old_states[key], new_states[key], new_options[key])
        now = frozenset(k for k, c in changes.items() if c.action == "replace")
        if now <= replaced:
            return Plan(changes, old_options, new_options)
        replaced |= now
