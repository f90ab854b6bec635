"""The resource monitor the offline engine runs the program against: Pulumi's mock monitor, plus
two things the real engine does with a registration that the mock monitor drops.

- Dependencies: the engine stores each resource's `dependencies` (explicit `depends_on`, expanded
  from components to their children, and every resource an input came from) and deletes a resource
  only after everything that depends on it. Recorded here so tests can assert the edges.
- additionalSecretOutputs: the engine makes those outputs secret in the state it stores and hands
  back (pulumi/pulumi pkg/resource/deploy/step_executor.go, `continueExecuteStep`, at commit
  00d0cf130903ec56bface1a67dc5e9e4d02cbc86: every listed key but `id` present in the outputs
  and not yet secret becomes `resource.MakeSecret`). The mock monitor ignores the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor


@dataclass(frozen=True)
class Registration:
    """What the engine keeps of one RegisterResource call besides inputs and outputs."""

    urn: str
    dependencies: tuple[str, ...]
    """URNs this resource depends on."""
    additional_secret_outputs: tuple[str, ...]


def urn_name(urn: str) -> str:
    """A URN's resource name (its last `::` part)."""
    return urn.rsplit("::", 1)[1]


def _is_secret(value: struct_pb2.Value) -> bool:
    fields = value.struct_value.fields if value.HasField("struct_value") else {}
    return rpc._special_sig_key in fields and fields[rpc._special_sig_key].string_value == rpc._special_secret_sig


def _make_secret(value: struct_pb2.Value) -> None:
    """Wrap `value` in place in Pulumi's secret envelope."""
    inner = struct_pb2.Value()
    inner.CopyFrom(value)
    envelope = struct_pb2.Struct()
    envelope.fields[rpc._special_sig_key].string_value = rpc._special_secret_sig
    envelope.fields["value"].CopyFrom(inner)
    value.struct_value.CopyFrom(envelope)


class OfflineMonitor(MockMonitor):
    """MockMonitor that records dependencies and honours additionalSecretOutputs, as the engine does."""

    def __init__(self, mocks: Any) -> None:
        super().__init__(mocks)
        self.registrations: dict[str, Registration] = {}
        """resource name -> its registration (names are unique in this program)."""

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        secret = tuple(request.additionalSecretOutputs)
        for key in secret:
            if key != "id" and key in response.object.fields and not _is_secret(response.object.fields[key]):
                _make_secret(response.object.fields[key])
        self.registrations[request.name] = Registration(response.urn, tuple(request.dependencies), secret)
        return response

    def dependencies(self, name: str) -> set[str]:
        """Names of the resources `name` depends on."""
        return {urn_name(u) for u in self.registrations[name].dependencies}
