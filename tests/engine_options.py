"""What the program asks the Pulumi engine for, besides inputs: each resource's options.

The mock monitor hands `Mocks.new_resource` only the type, name and inputs. The options that decide
how the engine orders a replacement (deleteBeforeReplace, ignoreChanges, replaceOnChanges, protect,
retainOnDelete) and the dependencies it orders deletes by travel in the same RegisterResourceRequest
(pulumi/pulumi proto/pulumi/resource.proto), so `recording()` reads them there while the program
runs under the offline engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pulumi.runtime import mocks as pulumi_mocks


@dataclass(frozen=True)
class Options:
    """The resource options one resource was registered with."""

    typ: str
    name: str
    delete_before_replace: bool
    ignore_changes: tuple[str, ...]
    replace_on_changes: tuple[str, ...]
    protect: bool
    retain_on_delete: bool
    dependencies: tuple[str, ...]
    """Names of every resource it depends on (depends_on and inputs)."""
    property_dependencies: dict[str, tuple[str, ...]]
    """Input property -> names of the resources its value came from."""


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _options(request: Any) -> Options:
    return Options(
        typ=request.type,
        name=request.name,
        delete_before_replace=bool(request.deleteBeforeReplace),
        ignore_changes=tuple(request.ignoreChanges),
        replace_on_changes=tuple(request.replaceOnChanges),
        protect=bool(request.protect),
        retain_on_delete=bool(request.retainOnDelete),
        dependencies=tuple(sorted({_name(u) for u in request.dependencies})),
        property_dependencies={
            key: tuple(sorted({_name(u) for u in deps.urns})) for key, deps in request.propertyDependencies.items()
        },
    )


@contextlib.contextmanager
def recording() -> Iterator[dict[tuple[str, str], Options]]:
    """(type, name) -> Options of every resource registered while the block runs."""
    seen: dict[tuple[str, str], Options] = {}
    original = pulumi_mocks.MockMonitor.RegisterResource

    def register(self: Any, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack":
            seen[(request.type, request.name)] = _options(request)
        return original(self, request)

    pulumi_mocks.MockMonitor.RegisterResource = register  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        pulumi_mocks.MockMonitor.RegisterResource = original  # type: ignore[method-assign]
