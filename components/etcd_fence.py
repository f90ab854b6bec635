"""flannel's etcd permissions and the requests an attacker holding a host's flannel credential would try.

The grants follow what flanneld 0.27.4 does in etcd (flannel-io/flannel pkg/subnet/etcd/registry.go,
commit 20bdda0b): Get `<prefix>/config`; Get and Watch of `<prefix>/subnets` with WithPrefix (so the
range is [`<prefix>/subnets`, `<prefix>/subnett`), the key has no trailing slash); per subnet a
Txn comparing the key's version then Put with a lease, Put, Delete; lease Grant, Revoke, TimeToLive.

The probes are raw gRPC requests (protobuf encoded here, framed for gRPC over HTTP/2) that the
flannel-network step sends with curl: etcdctl cannot nest a transaction, watch from a key or raise
an alarm, and etcd's JSON gateway ignores the client certificate's CN (it would not act as flannel).
Field numbers: etcd-io/etcd api/etcdserverpb/rpc.proto.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

OUTSIDE = ("/registry/", "/registry0")
"""The apiserver's keys: the range flannel must never read."""
PROBE_KEY = "/registry/kube-ec2-fence-probe"
"""A key no Kubernetes resource uses, for the write probe."""
WATCH_SECONDS = 2
"""A watch stream stays open: read what arrives in this many seconds."""


@dataclass(frozen=True)
class Grant:
    """One etcd role permission: `etcdctl role grant-permission flannel [--prefix=true] PERM KEY`."""

    perm: str
    key: str
    prefix: bool


@dataclass(frozen=True)
class Probe:
    """One request flannel's identity must be refused."""

    name: str
    what: str
    """The attack, for the step's log."""
    advisory: str
    """The advisory whose bypass this request shows, or "" when it tests the grants alone."""
    method: str
    """gRPC path: service/method."""
    frame: str
    """base64 of the length-prefixed gRPC message."""
    streaming: bool = False


def flannel_grants(prefix: str) -> tuple[Grant, ...]:
    """Read the network config only; read-write only the subnet range flannel lists and watches."""
    return (Grant("read", f"{prefix}/config", False), Grant("readwrite", f"{prefix}/subnets", True))


# --- protobuf, just what the probes need (varint and length-delimited fields)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def message(*fields: tuple[int, int | bytes | str]) -> bytes:
    """A protobuf message; proto3 default values (0, empty) are left out as the encoder would."""
    return b"".join(_field(n, v) for n, v in fields if v not in (0, b"", ""))


def grpc_frame(msg: bytes) -> str:
    """base64 of a gRPC message: no compression flag, 4-byte big-endian length, the message."""
    return base64.b64encode(b"\0" + struct.pack(">I", len(msg)) + msg).decode()


def _range(key: str, end: str | bytes) -> bytes:  # RangeRequest{key=1, range_end=2}
    return message((1, key), (2, end))


def _txn(*ops: bytes) -> bytes:  # TxnRequest{success=2 (repeated RequestOp)}
    return b"".join(_field(2, op) for op in ops)


def _op_range(req: bytes) -> bytes:  # RequestOp{request_range=1}
    return message((1, req))


def _op_put(req: bytes) -> bytes:  # RequestOp{request_put=2}
    return message((2, req))


def _op_txn(req: bytes) -> bytes:  # RequestOp{request_txn=4}
    return message((4, req))


def probes(prefix: str) -> tuple[Probe, ...]:
    registry = _range(*OUTSIDE)
    put_prev_kv = message((1, PROBE_KEY), (2, "x"), (4, 1))  # PutRequest{key=1, value=2, prev_kv=4}
    watch_from_key = message((1, message((1, f"{prefix}/config"), (2, b"\0"))))  # WatchRequest{create_request=1}
    raise_alarm = message((1, 1), (2, 1), (3, 1))  # AlarmRequest{action=ACTIVATE, memberID=1, alarm=NOSPACE}
    return (
        Probe("get", "a plain get of /registry/", "", "etcdserverpb.KV/Range", grpc_frame(registry)),
        Probe(
            "nested-txn", "a get of /registry/ inside a nested transaction", "GHSA-rfx7-8w68-q57q",
            "etcdserverpb.KV/Txn", grpc_frame(_txn(_op_txn(_txn(_op_range(registry))))),
        ),
        Probe(
            "prev-kv", "a put with prev_kv under /registry/ in a transaction", "GHSA-x35m-3gp4-4fh5",
            "etcdserverpb.KV/Txn", grpc_frame(_txn(_op_put(put_prev_kv))),
        ),
        Probe(
            "watch-from-key", f"a watch from {prefix}/config to the end of the keyspace", "GHSA-xg4h-6gfc-h4m8",
            "etcdserverpb.Watch/Watch", grpc_frame(watch_from_key), streaming=True,
        ),
        Probe(
            "alarm", "raising a NOSPACE alarm (stops every write)", "GHSA-q8m4-xhhv-38mg",
            "etcdserverpb.Maintenance/Alarm", grpc_frame(raise_alarm),
        ),
    )
