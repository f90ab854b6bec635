"""Engine events -> each resource operation with its start and end (Unix seconds, from the engine).

The engine emits a ResourcePreEvent when it starts a step and a ResOutputsEvent when the step
succeeds (for deletions too), or a ResOpFailedEvent when it fails: pulumi/pulumi
pkg/engine/update.go (`OnResourceStepPost`) at 90a827951d39463c480aa476a8beb575dfb0a398.
Event timestamps are whole seconds (pulumi.automation.events.EngineEvent.timestamp).
"""

from __future__ import annotations

from dataclasses import dataclass

from pulumi.automation.events import EngineEvent, StepEventMetadata

COMMAND_TYPE = "command:remote:Command"
LOCAL_COMMAND_TYPE = "command:local:Command"
STEP_TYPES = frozenset({COMMAND_TYPE, LOCAL_COMMAND_TYPE})
INSTANCE_TYPE = "aws:ec2/instance:Instance"
VOLUME_TYPE = "aws:ebs/volume:Volume"
# Ops that change nothing in the cloud.
UNCHANGED_OPS = frozenset({"same", "read"})
# Ops under which a remote step runs its create command again on the host.
RERUN_OPS = frozenset({"create", "update", "replace", "create-replacement"})


@dataclass
class ResourceOp:
    urn: str
    type: str
    op: str
    start: int
    end: int | None = None
    status: str = "unfinished"  # ok | failed | unfinished
    size_gb: int | None = None  # an EBS volume's size, for the cost estimate

    @property
    def name(self) -> str:
        """The resource's own name: what `pulumi up` prints (for example master-smoke-test)."""
        return self.urn.rsplit("::", 1)[-1]

    @property
    def seconds(self) -> int | None:
        return None if self.end is None else self.end - self.start

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "op": self.op, "start": self.start, "end": self.end,
                "seconds": self.seconds, "status": self.status, "urn": self.urn, "size_gb": self.size_gb}


class EventLog:
    """An on_event callback: collects one operation's resource steps in order."""

    def __init__(self) -> None:
        self.ops: list[ResourceOp] = []
        self._open: dict[tuple[str, str], ResourceOp] = {}

    def __call__(self, event: EngineEvent) -> None:
        if event.resource_pre_event and not event.resource_pre_event.planning:
            meta = event.resource_pre_event.metadata
            step = ResourceOp(meta.urn, meta.type, _op(meta), event.timestamp, size_gb=_volume_size(meta))
            self.ops.append(step)
            self._open[(step.urn, step.op)] = step
        elif event.res_outputs_event and not event.res_outputs_event.planning:
            self._finish(event.res_outputs_event.metadata, event.timestamp, "ok")
        elif event.res_op_failed_event:
            self._finish(event.res_op_failed_event.metadata, event.timestamp, "failed")

    def _finish(self, meta: StepEventMetadata, timestamp: int, status: str) -> None:
        step = self._open.pop((meta.urn, _op(meta)), None)
        if step is not None:
            step.end = timestamp
            step.status = status

    def changed(self) -> list[ResourceOp]:
        return [s for s in self.ops if s.op not in UNCHANGED_OPS]

    def of(self, name: str, ops: frozenset[str] | set[str]) -> list[ResourceOp]:
        return [s for s in self.ops if s.name == name and s.op in ops]

    def succeeded(self, name: str, ops: frozenset[str] | set[str]) -> bool:
        return any(s.status == "ok" for s in self.of(name, ops))


def _volume_size(meta: StepEventMetadata) -> int | None:
    if meta.type != VOLUME_TYPE or meta.new is None or not isinstance(meta.new.inputs, dict):
        return None
    size = meta.new.inputs.get("size")
    return int(size) if isinstance(size, (int, float)) else None


def _op(meta: StepEventMetadata) -> str:
    return meta.op.value if hasattr(meta.op, "value") else str(meta.op)
