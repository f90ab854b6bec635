"""The cost estimate of a run: each instance's lifetime (from engine events) x on-demand list prices.

An estimate: EC2 bills Linux on-demand per second with a 60-second minimum; gp3 per GB-month
(730 hours); each public IPv4 address per hour. Every host is counted with its root volume and
one public IPv4 address (the master's Elastic IP, a minion's auto-assigned address); other EBS
volumes (etcd's data) by the size their create step asked for, priced as gp3. Taxes, data transfer,
S3 requests and storage (etcd snapshots) and anything not in prices.json are not counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.events import INSTANCE_TYPE, VOLUME_TYPE, ResourceOp

PRICES = Path(__file__).with_name("prices.json")
HOURS_PER_MONTH = 730
MINIMUM_BILLED_SECONDS = 60
CREATE_OPS = frozenset({"create", "create-replacement"})
DELETE_OPS = frozenset({"delete", "delete-replaced"})


@dataclass(frozen=True)
class Lifetime:
    name: str
    kind: str  # the instance type of an instance, "volume" for an EBS volume
    seconds: int
    deleted: bool
    size_gb: int = 0


def lifetimes(ops: Iterable[ResourceOp], run_end: int, type_of: Callable[[str], str]) -> list[Lifetime]:
    """Instances and EBS volumes, each from its create step to its successful delete; never deleted: to run_end."""
    open_since: dict[str, list[ResourceOp]] = {}
    found: list[Lifetime] = []

    def lifetime(created: ResourceOp, end: int, deleted: bool) -> Lifetime:
        kind = type_of(created.name) if created.type == INSTANCE_TYPE else "volume"
        return Lifetime(created.name, kind, end - created.start, deleted, created.size_gb or 0)

    for step in ops:
        if step.type not in (INSTANCE_TYPE, VOLUME_TYPE):
            continue
        if step.op in CREATE_OPS:
            open_since.setdefault(step.urn, []).append(step)
        elif step.op in DELETE_OPS and step.status == "ok" and open_since.get(step.urn):
            found.append(lifetime(open_since[step.urn].pop(0), step.end or run_end, True))
    for created in (c for pending in open_since.values() for c in pending):
        found.append(lifetime(created, run_end, False))
    return found


def load_prices(path: Path = PRICES) -> dict[str, Any]:
    return json.loads(path.read_text())


def _price(table: dict[str, Any], *keys: str) -> float | None:
    node: Any = table
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node["usd"])


def estimate(lifetimes: list[Lifetime], root_volume_gb: int, region: str, prices: dict[str, Any]) -> dict[str, Any]:
    """Lines (item, quantity, unit, unit price, USD) and the total; items without a price are named, not guessed."""
    table = prices.get("regions", {}).get(region, {})
    hosts = [life for life in lifetimes if life.kind != "volume"]
    volumes = [life for life in lifetimes if life.kind == "volume"]
    lines: list[dict[str, Any]] = []
    for instance_type in sorted({life.kind for life in hosts}):
        billed = sum(max(MINIMUM_BILLED_SECONDS, life.seconds) for life in hosts if life.kind == instance_type)
        lines.append(_line(f"EC2 {instance_type}", billed / 3600, "instance-hours",
                           _price(table, "instance_hour", instance_type)))
    seconds = sum(life.seconds for life in hosts)
    gp3 = _price(table, "gp3_gb_month")
    gp3_hour = None if gp3 is None else gp3 / HOURS_PER_MONTH
    lines.append(_line(f"EBS gp3 root volumes ({root_volume_gb} GiB each)", root_volume_gb * seconds / 3600, "GiB-hours", gp3_hour))
    if volumes:
        gib_hours = sum(life.size_gb * life.seconds for life in volumes) / 3600
        lines.append(_line("EBS volumes of the stack (priced as gp3)", gib_hours, "GiB-hours", gp3_hour))
    lines.append(_line("public IPv4 addresses (one per host)", seconds / 3600, "address-hours",
                       _price(table, "public_ipv4_hour")))
    priced = [line["usd"] for line in lines if line["usd"] is not None]
    return {
        "region": region,
        "lines": lines,
        "total_usd": round(sum(priced), 4),
        "unpriced": [line["item"] for line in lines if line["usd"] is None],
        "prices_read_on": prices.get("read_on"),
    }


def _line(item: str, quantity: float, unit: str, unit_usd: float | None) -> dict[str, Any]:
    return {
        "item": item,
        "quantity": round(quantity, 4),
        "unit": unit,
        "unit_usd": unit_usd,
        "usd": None if unit_usd is None else round(quantity * unit_usd, 4),
    }
