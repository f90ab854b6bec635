"""Offline preview: what `pulumi up` would create, written as plain files to read and diff.

It runs the real program (components.program.build) under Pulumi mocks through
`components.offline.run`, the same code path `pulumi up` runs, and writes what that run recorded:

    preview/<stack>/SUMMARY.md                 stack, IP plan, resources, step graph, firewall,
                                               artifact versions, user-data sizes, outputs
    preview/<stack>/<host>/user-data.yaml      the cloud-config the instance receives (decoded)
    preview/<stack>/<host>/steps/NN-<step>.sh  each remote step on that host's SSH connection, in order
    preview/<stack>/<host>/files/<path>        every file cloud-init writes on that host

Secrets (private keys, the PKI bundles, the SSH key, the kubeconfig) are never written; a last
scan of every written file fails the run if one was.

    python -m components.offline.preview [--stack dev] [--out DIR] [--set kube-ec2:minionCount=30 ...]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pulumi
import yaml

from components import bootstrap, offline, versions
from components.bootstrap import Step
from components.offline import cli
from components.offline import tls as offline_tls
from components.settings import PROJECT, ROOT, Settings

USER_DATA_LIMIT = 16 * 1024
"""EC2's limit on user data, counted before base64 (here: the gzip bytes)."""
MARKER = ".kube-ec2-preview"
"""Written into every preview folder: only a folder holding it is ever wiped."""
INSTANCE = "aws:ec2/instance:Instance"
COMMAND = "command:remote:Command"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PRIVATE_KEY_OUTPUTS = ("privateKeyPem", "privateKeyOpenssh", "privateKeyPemPkcs8")
SECRET = "[secret]"
SUDO_BASH = ["sudo", "-n", "bash", "-c"]
"""How cluster.remote_command() runs a step script as root."""


class PreviewError(RuntimeError):
    """The recorded run disagrees with itself, or a secret reached a written file."""


@dataclass(frozen=True)
class HostView:
    """One host as the run recorded it."""

    name: str
    role: str
    private_ip: str
    instance_type: str
    user_data: str
    gzip_bytes: int


@dataclass(frozen=True)
class Written:
    """What one preview wrote, for the closing summary line."""

    out: Path
    hosts: int
    files: int
    resources: int
    chain: list[str]


# --- reading the recorded run


def decode_user_data(user_data_base64: str) -> tuple[str, int]:
    """(cloud-config text, gzip size in bytes) of an instance's `userDataBase64`."""
    packed = base64.b64decode(user_data_base64)
    return gzip.decompress(packed).decode(), len(packed)


def recorded_hosts(run: offline.Run, settings: Settings) -> list[HostView]:
    """Every host in plan order (master, minion-0, ...), from its recorded Instance inputs."""
    views = []
    for plan in settings.hosts:
        inputs = offline_tls.plain(run.mocks.named(f"{plan.name}-instance").inputs)
        text, packed = decode_user_data(inputs["userDataBase64"])
        role = inputs.get("tags", {}).get("Role", plan.role)
        views.append(HostView(plan.name, role, inputs["privateIp"], inputs["instanceType"], text, packed))
    return views


def quoted_script(command_line: str, step: str) -> str:
    """The script inside a recorded `sudo -n bash -c '<script>'`."""
    words = shlex.split(command_line)
    if words[:4] != SUDO_BASH or len(words) != 5:
        raise PreviewError(f"{step}: recorded command is not `sudo -n bash -c <script>`: {command_line[:80]!r}")
    return words[4]


def runs_exactly(command_line: str, script: str, step: str) -> bool:
    """True when the recorded command line quotes exactly `script`.

    shlex.split() of a long script is slow (pure Python, char by char), so compare against the
    quoted form first: shlex.split(prefix + shlex.quote(s)) is always [..., s]. Parse only to fail.
    """
    if command_line == shlex.join(SUDO_BASH) + " " + shlex.quote(script):
        return True
    return quoted_script(command_line, step) == script


def recorded_commands(run: offline.Run, steps: Sequence[Step]) -> dict[str, dict[str, Any]]:
    """name -> recorded inputs of every remote Command; exactly one per planned step."""
    commands = {r.name: r.inputs for r in run.mocks.of_type(COMMAND)}
    planned = [s.name for s in steps]
    if sorted(commands) != sorted(planned) or len(planned) != len(run.mocks.of_type(COMMAND)):
        raise PreviewError(f"recorded Commands differ from the planned steps: {sorted(set(commands) ^ set(planned))}")
    return commands


def check_step(step: Step, inputs: dict[str, Any]) -> None:
    """The recorded Command runs exactly the step's scripts and gets stdin only when it should."""
    if not runs_exactly(inputs["create"], step.script, step.name):
        raise PreviewError(f"{step.name}: recorded create differs from the planned script")
    recorded_delete = inputs.get("delete")
    if (recorded_delete is None) != (step.delete_script is None):
        raise PreviewError(f"{step.name}: delete script recorded={recorded_delete is not None}, planned={step.delete_script is not None}")
    if recorded_delete is not None and step.delete_script is not None and not runs_exactly(recorded_delete, step.delete_script, step.name):
        raise PreviewError(f"{step.name}: recorded delete differs from the planned script")
    if ("stdin" in inputs) != step.wants_pki:
        raise PreviewError(f"{step.name}: stdin recorded={'stdin' in inputs}, wants_pki={step.wants_pki}")


def secret_values(run: offline.Run) -> list[str]:
    """Every recorded secret: private keys, random bytes, the PKI bundles, secret stack outputs."""
    found: set[str] = set()
    for res in run.mocks.resources:
        outputs = offline_tls.plain(res.outputs)
        found.update(str(outputs[k]) for k in PRIVATE_KEY_OUTPUTS if outputs.get(k))
        if res.typ == "random:index/randomBytes:RandomBytes":
            found.update(str(outputs[k]) for k in ("base64", "hex") if outputs.get(k))
        if res.typ == COMMAND and res.inputs.get("stdin"):
            found.add(str(offline_tls.plain(res.inputs["stdin"])))
    found.update(str(run.outputs[name]) for name in run.secret_outputs if run.outputs.get(name))
    return sorted(v.strip() for v in found if v.strip())


# --- writing


def prepare_out_dir(out: Path) -> None:
    """Empty `out` for a fresh preview; refuse to wipe a folder a preview did not write."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise PreviewError(f"{out} is not empty and holds no {MARKER}: not a preview folder, refusing to wipe it")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("Written by python -m components.offline.preview; wiped and rewritten on every run.\n")


def step_file_names(steps: Sequence[Step]) -> list[str]:
    """`NN-<step>` for a host's steps: NN is the position in execution order on that host."""
    width = max(2, len(str(len(steps))))
    return [f"{i:0{width}d}-{step.name}" for i, step in enumerate(steps, start=1)]


def write_steps(commands: dict[str, dict[str, Any]], steps: Sequence[Step], folder: Path) -> int:
    """Each step's script exactly as the recorded Command runs it; drain hooks also their delete."""
    folder.mkdir(parents=True)
    count = 0
    for stem, step in zip(step_file_names(steps), steps, strict=True):
        check_step(step, commands[step.name])
        (folder / f"{stem}.sh").write_text(step.script)
        count += 1
        if step.delete_script is not None:
            (folder / f"{stem}.delete.sh").write_text(step.delete_script)
            count += 1
    return count


def write_cloud_init_files(user_data: str, folder: Path) -> int:
    """Every `write_files` entry of the cloud-config, at files/<its absolute path>."""
    entries = (yaml.load(user_data, Loader=YAML_LOADER) or {}).get("write_files") or []
    for entry in entries:
        path = PurePosixPath(entry["path"])
        if not path.is_absolute() or ".." in path.parts:
            raise PreviewError(f"write_files path {entry['path']!r} is not a plain absolute path")
        target = folder.joinpath(*path.parts[1:])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry.get("content", ""))
    return len(entries)


def write_host(commands: dict[str, dict[str, Any]], host: HostView, steps: Sequence[Step], out: Path) -> int:
    folder = out / host.name
    folder.mkdir()
    (folder / "user-data.yaml").write_text(host.user_data)
    return 1 + write_steps(commands, steps, folder / "steps") + write_cloud_init_files(host.user_data, folder / "files")


def scan_for_secrets(out: Path, secrets: Iterable[str]) -> None:
    """Fail loudly if any written file holds a PEM private key or any recorded secret value."""
    needles = ["PRIVATE KEY"]
    for value in secrets:
        needles += [value, base64.b64encode(value.encode()).decode()]
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for needle in needles:
            if needle in text:
                shown = needle if needle == "PRIVATE KEY" else "a recorded secret value"
                raise PreviewError(f"SECRET LEAK: {path} contains {shown}")


# --- SUMMARY.md


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def admin_source_note(settings: Settings) -> str:
    """Where the admin CIDRs came from (settings.admin_cidrs_source), in words."""
    return {
        "config": f"config: from `{PROJECT}:adminCidrs`",
        "detected": "detected: adminCidrs is unset, so this machine's public address as a /32",
        "placeholder": (
            "placeholder: adminCidrs is unset and offline runs do not look up this machine's address, so "
            "TEST-NET-1 (RFC 5737) stands in; `pulumi up` would use your public address as a /32"
        ),
    }.get(settings.admin_cidrs_source, settings.admin_cidrs_source)


def section_stack(settings: Settings) -> str:
    cidrs = ", ".join(f"`{c}`" for c in settings.admin_cidrs)
    return "\n".join(
        [
            f"# Offline preview of stack `{settings.stack}`",
            "",
            "Generated by `python -m components.offline.preview`: the program run under Pulumi mocks, nothing created.",
            "",
            md_table(
                ["setting", "value"],
                [
                    ["stack", f"`{settings.stack}`"],
                    ["region", f"`{settings.region}`"],
                    ["cluster name", f"`{settings.cluster_name}`"],
                    ["minions", settings.minion_count],
                    ["Kubernetes", f"`{settings.kubernetes_version}`"],
                    ["admin CIDRs", f"{cidrs} ({admin_source_note(settings)})"],
                    ["VPC / pods / services", f"`{settings.vpc_cidr}` / `{settings.pod_cidr}` / `{settings.service_cidr}`"],
                ],
            ),
        ]
    )


def section_ip_plan(hosts: Sequence[HostView]) -> str:
    rows = [[f"`{h.name}`", h.role, f"`{h.private_ip}`", f"`{h.instance_type}`"] for h in hosts]
    return "## IP plan\n\n" + md_table(["host", "role", "private IP", "instance type"], rows)


def section_resources(run: offline.Run) -> str:
    counts = Counter(r.typ for r in run.mocks.resources)
    rows = [[f"`{typ}`", n] for typ, n in sorted(counts.items())]
    rows.append(["**total**", f"**{len(run.mocks.resources)}**"])
    return "## Resources by type\n\n" + md_table(["type", "count"], rows)


def mermaid_flowchart(steps: Sequence[Step]) -> str:
    """One node per step (grouped by the host whose SSH connection runs it), edges from `.after`."""
    ids = {step.name: f"s{i}" for i, step in enumerate(steps)}
    lines = ["```mermaid", "flowchart TD"]
    for host in dict.fromkeys(step.host for step in steps):
        lines.append(f'  subgraph host_{host.replace("-", "_")}["{host}"]')
        lines += [f'    {ids[s.name]}["{s.name}"]' for s in steps if s.host == host]
        lines.append("  end")
    lines += [f"  {ids[before]} --> {ids[step.name]}" for step in steps for before in step.after]
    lines.append("```")
    return "\n".join(lines)


def section_steps(steps: Sequence[Step]) -> str:
    chain = bootstrap.longest_chain(tuple(steps))
    return "\n".join(
        [
            "## Remote steps",
            "",
            f"{len(steps)} steps; each runs as root over SSH on the host it is grouped under. "
            "Steps marked `-pki` receive that host's secret certificate bundle on standard input (not shown here).",
            "",
            mermaid_flowchart(steps),
            "",
            f"Longest chain ({len(chain)} steps): " + " → ".join(f"`{name}`" for name in chain),
        ]
    )


def _port_range(inputs: dict[str, Any]) -> str:
    if inputs.get("ipProtocol") == "-1":
        return "all"
    low, high = int(inputs["fromPort"]), int(inputs["toPort"])
    return str(low) if low == high else f"{low}-{high}"


def firewall_row(direction: str, rule: dict[str, Any], groups: dict[str, str]) -> list[str]:
    """One recorded ingress/egress rule as a table row; groups are shown by resource name."""
    ref = rule.get("referencedSecurityGroupId", "")
    peer = f"`{rule['cidrIpv4']}`" if rule.get("cidrIpv4") else f"group `{groups.get(ref, ref)}`"
    protocol = "all" if rule["ipProtocol"] == "-1" else rule["ipProtocol"]
    group = groups.get(rule["securityGroupId"], rule["securityGroupId"])
    return [f"`{group}`", direction, protocol, _port_range(rule), peer, rule.get("description", "")]


def section_firewall(run: offline.Run) -> str:
    groups = {f"{r.name}-id": r.name for r in run.mocks.of_type(SECURITY_GROUP)}  # OfflineMocks ids: "<name>-id"
    rows: list[list[str]] = []
    for direction, typ in (("in", INGRESS), ("out", EGRESS)):
        mine = [firewall_row(direction, offline_tls.plain(r.inputs), groups) for r in run.mocks.of_type(typ)]
        # Registration order is asynchronous: sort (group, protocol, port, peer) for a stable table.
        rows += sorted(mine, key=_firewall_order)
    header = ["group", "direction", "protocol", "ports", "source / destination", "description"]
    return "## Security-group rules\n\n" + md_table(header, rows)


def _firewall_order(row: list[str]) -> tuple[str, str, int, str]:
    first_port = row[3].split("-")[0]
    return row[0], row[2], int(first_port) if first_port.isdigit() else -1, row[4]


def section_versions(settings: Settings) -> str:
    rows = [[a["name"], f"`{a['version']}`", a["url"], f"`{a['sha256']}`"] for a in versions.summary(settings.kubernetes_version)]
    note = "`upstream .sha256`: no pinned hash; cloud-init checks the download against upstream's published .sha256 file."
    return "## Artifacts\n\n" + md_table(["name", "version", "source", "sha256"], rows) + "\n\n" + note


def section_user_data(hosts: Sequence[HostView]) -> str:
    rows = []
    for role in dict.fromkeys(h.role for h in hosts):
        mine = [h for h in hosts if h.role == role]
        raw = max(len(h.user_data.encode()) for h in mine)
        packed = max(h.gzip_bytes for h in mine)
        rows.append([role, len(mine), raw, packed, f"{100 * packed / USER_DATA_LIMIT:.0f}%"])
    header = ["role", "hosts", "cloud-config bytes", "gzip bytes (sent)", f"of the {USER_DATA_LIMIT}-byte EC2 limit"]
    return "## User data (largest per role)\n\n" + md_table(header, rows)


def _output_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def section_outputs(run: offline.Run) -> str:
    rows = [[f"`{name}`", SECRET if name in run.secret_outputs else _output_text(value)] for name, value in run.outputs.items()]
    note = "Addresses are the offline engine's documentation-range stand-ins (RFC 5737); AWS assigns the real ones."
    return "## Stack outputs\n\n" + md_table(["output", "value"], rows) + "\n\n" + note


def summary_markdown(run: offline.Run, settings: Settings, hosts: Sequence[HostView]) -> str:
    sections = [
        section_stack(settings),
        section_ip_plan(hosts),
        section_resources(run),
        section_steps(run.cluster.steps),
        section_firewall(run),
        section_versions(settings),
        section_user_data(hosts),
        section_outputs(run),
    ]
    return "\n\n".join(sections) + "\n"


# --- the whole preview


def write_preview(run: offline.Run, settings: Settings, out: Path) -> Written:
    """Write the preview of one recorded run into `out` (wiped first); scan it for secrets."""
    prepare_out_dir(out)
    hosts = recorded_hosts(run, settings)
    steps: tuple[Step, ...] = run.cluster.steps
    commands = recorded_commands(run, steps)
    files = sum(write_host(commands, h, [s for s in steps if s.host == h.name], out) for h in hosts)
    (out / "SUMMARY.md").write_text(summary_markdown(run, settings, hosts))
    try:
        scan_for_secrets(out, secret_values(run))
    except PreviewError:
        shutil.rmtree(out)  # never leave a leaked secret on disk
        raise
    return Written(out, len(hosts), files + 1, len(run.mocks.resources), bootstrap.longest_chain(steps))


def apply_overrides(config: dict[str, cli.StackValue], sets: Sequence[str], json_sets: Sequence[str] = ()) -> dict[str, cli.StackValue]:
    """`key=value` pairs over the stack's config, stored as `pulumi config set key value` stores them
    (text), or for --set-json as `pulumi config set --json` does (a list is an object); a bare key
    means `kube-ec2:<key>`."""
    result = dict(config)
    for flag, items in (("--set", sets), ("--set-json", json_sets)):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{flag} {item!r}: expected key=value, e.g. {PROJECT}:minionCount=30")
            if flag == "--set-json":
                try:
                    value = cli.stored_value(json.loads(value))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{flag} {item!r}: {value!r} is not JSON ({err})") from None
            key = key.strip()
            result[key if ":" in key else f"{PROJECT}:{key}"] = value
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m components.offline.preview",
        description="Run the kube-ec2 program offline (Pulumi mocks) and write what it would create.",
    )
    parser.add_argument("--stack", default="dev", help="stack name: Pulumi.<stack>.yaml (default: dev)")
    parser.add_argument("--out", type=Path, help="output folder, wiped first (default: preview/<stack>/)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config key, e.g. {PROJECT}:minionCount=30 (repeatable)",
    )
    parser.add_argument(
        "--set-json",
        dest="json_sets",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help=f"override one config key with a JSON value, like pulumi config set --json, e.g. '{PROJECT}:adminCidrs=[\"10.0.0.0/8\"]'",
    )
    args = parser.parse_args(argv)
    stacks = offline.list_stacks()
    if args.stack not in stacks:
        parser.error(f"unknown stack {args.stack!r}: no Pulumi.{args.stack}.yaml; stacks: {', '.join(stacks)}")
    try:
        args.config = apply_overrides(offline.stack_config(args.stack), args.sets, args.json_sets)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or ROOT / "preview" / args.stack
    try:
        run = offline.run(args.stack, args.config)
    except (cli.CliError, pulumi.RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = run.cluster.settings
    try:
        written = write_preview(run, settings, out)
    except PreviewError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"preview of stack {args.stack} written to {written.out}: {written.hosts} hosts, {written.files} files, "
        f"{written.resources} resources\nlongest chain ({len(written.chain)} steps): {' -> '.join(written.chain)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
