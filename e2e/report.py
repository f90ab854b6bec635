"""e2e/REPORT.md and e2e/report.json from a Run: phases, remote steps, hosts, cost estimate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from e2e import cost
from e2e.driver import PROJECT, Run
from e2e.events import INSTANCE_TYPE, STEP_TYPES, UNCHANGED_OPS


def _utc(stamp: int | None) -> str:
    return "" if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def to_data(run: Run, prices: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
    """Everything the report says, as plain data (the JSON file)."""
    options = run.options
    every_op = [op for phase in run.phases for op in phase.log.ops]
    lifetimes = cost.lifetimes(every_op, run.ended or run.started, options.instance_type)
    return {
        "result": "passed" if run.passed else "failed",
        "stack": options.stack_name,
        "started": _utc(run.started),
        "ended": _utc(run.ended),
        "seconds": None if run.ended is None else run.ended - run.started,
        "region": options.region,
        "minions": options.minions,
        "master_instance_type": options.master_type,
        "minion_instance_type": options.minion_type,
        "root_volume_gb": options.root_volume_gb,
        **meta,
        "phases": [
            {
                "name": phase.name,
                "what": phase.what,
                "status": phase.status,
                "started": _utc(phase.started),
                "seconds": phase.seconds,
                "message": phase.message,
                "changes": phase.changes,
                "operations": [op.as_dict() for op in phase.log.ops if op.op not in UNCHANGED_OPS],
            }
            for phase in run.phases
        ],
        "billed_resources": [{"name": life.name, "kind": life.kind, "size_gb": life.size_gb, "seconds": life.seconds,
                              "deleted": life.deleted} for life in lifetimes],
        "cost_estimate": cost.estimate(lifetimes, options.root_volume_gb, options.region, prices),
        "stack_removed": run.removed,
        "owner_tag": f"kubernetes.io/cluster/{PROJECT}-{options.stack_name}=owned",
        "left_behind": run.left_behind,
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# `make e2e` report",
        "",
        f"**Result: {data['result'].upper()}** on stack `{data['stack']}`, region `{data['region']}`, "
        f"{data['minions']} minions; master `{data['master_instance_type']}`, minions `{data['minion_instance_type']}`, "
        f"{data['root_volume_gb']} GiB root volumes. Started {data['started']}, {data['seconds']} s in all.",
        "",
        *[f"- {key}: {data[key]}" for key in ("commit", "pulumi_cli", "backend") if data.get(key)],
        "",
        "## Phases",
        "",
        *_table(["phase", "what it checks", "result", "seconds", "resource changes", "message"],
                [[p["name"], p["what"], p["status"], p["seconds"], _changes(p["changes"]), p["message"]]
                 for p in data["phases"]]),
        "",
        "## Steps, remote and local (wall clock from the engine's events, whole seconds)",
        "",
        *_table(["phase", "step", "op", "seconds", "result"], _ops(data, STEP_TYPES)),
        "",
        "## Hosts",
        "",
        *_table(["phase", "resource", "op", "seconds", "result"], _ops(data, {INSTANCE_TYPE})),
        "",
        *_cost_lines(data["cost_estimate"]),
    ]
    if data["left_behind"]:
        lines += ["", "## LEFT BEHIND (destroy did not finish)", "",
                  *[f"- {item}" for item in data["left_behind"]],
                  "", f"Every resource carries the tag `{data['owner_tag']}`.",
                  *([f"To finish: `{data['finish_command']}`"] if data.get("finish_command") else [])]
    elif not data["stack_removed"]:
        lines += ["", "The stack was not removed (see the destroy phase)."]
    return "\n".join(lines) + "\n"


def _changes(changes: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(changes.items())) or "-"


def _ops(data: dict[str, Any], types: set[str] | frozenset[str]) -> list[list[Any]]:
    return [[p["name"], op["name"], op["op"], "" if op["seconds"] is None else op["seconds"], op["status"]]
            for p in data["phases"] for op in p["operations"] if op["type"] in types]


def _cost_lines(estimate: dict[str, Any]) -> list[str]:
    rows = [[line["item"], line["quantity"], line["unit"], line["unit_usd"] if line["unit_usd"] is not None else "no price",
             "" if line["usd"] is None else f"{line['usd']:.4f}"] for line in estimate["lines"]]
    lines = [
        "## Cost estimate (an estimate, not a bill)",
        "",
        *_table(["item", "quantity", "unit", "unit price USD", "USD"], rows),
        "",
        f"**About ${estimate['total_usd']:.2f}** at on-demand list prices read on {estimate['prices_read_on']} "
        "(`e2e/prices.json`, each with its source). Not counted: taxes, data transfer, S3, CloudWatch.",
    ]
    if estimate["unpriced"]:
        lines.append(f"No price in `e2e/prices.json` for {estimate['region']}: {', '.join(estimate['unpriced'])}.")
    return lines


def write(run: Run, directory: Path, prices: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
    data = to_data(run, prices, meta)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    (directory / "REPORT.md").write_text(markdown(data))
    return data
