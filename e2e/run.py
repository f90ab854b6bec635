"""`make e2e`: the whole lifecycle of a throwaway stack on AWS, timed and costed. See the README.

Usage: .venv/bin/python -m e2e.run [--region R] [--minions N] [--master-type T] [--minion-type T] ...
Needs AWS credentials and the Pulumi CLI (checked first); state goes to a local file backend.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pulumi import automation as auto

from e2e import checks, cost, preflight, report
from e2e.driver import Driver, Options

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "e2e" / ".state"
DEFAULT_MINIONS = 2
# Phase 4: one day more certificate lifetime re-issues every leaf certificate, so every step re-runs.
RERUN_EXTRA_HOURS = 24


def parse_args(argv: Sequence[str], schema: dict[str, dict]) -> argparse.Namespace:
    def default(key: str) -> object:
        return schema[key]["default"]

    parser = argparse.ArgumentParser(prog="make e2e E2E_ARGS=...", description=__doc__.splitlines()[0])
    parser.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    parser.add_argument("--minions", type=int, default=DEFAULT_MINIONS, help="minions of the first up, 1 to 99")
    parser.add_argument("--master-type", default=default("masterInstanceType"))
    parser.add_argument("--minion-type", default=default("minionInstanceType"))
    parser.add_argument("--root-volume-gb", type=int, default=default("rootVolumeGb"))
    parser.add_argument("--admin-cidr", help="who may reach SSH and the API; default: this machine's public /32, looked up once")
    parser.add_argument("--stack", help="stack name; default e2e-<UTC time>-<random>")
    parser.add_argument("--backend-url", default=f"file://{STATE}", help="Pulumi state backend; default a local directory")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "e2e")
    args = parser.parse_args(argv)
    if not 1 <= args.minions <= 99:
        parser.error(f"--minions {args.minions}: allowed 1 to 99 (the run scales to one more, and minionCount allows 100)")
    return args


def options_from(args: argparse.Namespace, schema: dict[str, dict], detect_admin_cidr: Callable[[], str]) -> Options:
    validity = int(schema["certValidityHours"]["default"])
    return Options(
        stack_name=args.stack or f"e2e-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}",
        region=args.region,
        minions=args.minions,
        master_type=args.master_type,
        minion_type=args.minion_type,
        root_volume_gb=args.root_volume_gb,
        admin_cidr=args.admin_cidr or detect_admin_cidr(),
        cert_validity_hours=validity,
        rerun_cert_validity_hours=validity + RERUN_EXTRA_HOURS,
    )


def passphrase_for(stack: str) -> tuple[str, Path | None]:
    """PULUMI_CONFIG_PASSPHRASE if set; otherwise a new one kept (0600) beside the state, to finish a failed destroy."""
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
        return os.environ["PULUMI_CONFIG_PASSPHRASE"], None
    path = STATE / f"{stack}.passphrase"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value, path


def stack_factory(backend_url: str, passphrase: str) -> Callable[[str], auto.Stack]:
    """A new stack of this repository's program in a local workspace: no Pulumi account needed."""
    if backend_url.startswith("file://"):
        Path(backend_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    env = {"PULUMI_BACKEND_URL": backend_url, "PULUMI_CONFIG_PASSPHRASE": passphrase, "PULUMI_SKIP_UPDATE_CHECK": "true"}

    def make(name: str) -> auto.Stack:
        options = auto.LocalWorkspaceOptions(env_vars=env, secrets_provider="passphrase")
        return auto.create_stack(name, work_dir=str(ROOT), opts=options)

    return make


def _command_output(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    from components.program import detect_admin_cidr
    from components.settings import ConfigError, load_schema

    schema = load_schema()
    args = parse_args(sys.argv[1:] if argv is None else argv, schema)
    found = preflight.problems(os.environ, Path.home(), shutil.which)
    if found:
        for problem in found:
            print(f"make e2e: {problem}", file=sys.stderr)
        print("make e2e: nothing was created.", file=sys.stderr)
        return 2
    try:
        options = options_from(args, schema, detect_admin_cidr)
    except ConfigError as err:
        print(f"make e2e: {err}\nmake e2e: pass --admin-cidr instead; nothing was created.", file=sys.stderr)
        return 2
    passphrase, passphrase_file = passphrase_for(options.stack_name)
    secret_env = f"PULUMI_CONFIG_PASSPHRASE_FILE={passphrase_file}" if passphrase_file else "PULUMI_CONFIG_PASSPHRASE=..."
    meta = {
        "commit": _command_output("git", "rev-parse", "HEAD"),
        "pulumi_cli": _command_output("pulumi", "version"),
        "backend": args.backend_url,
        "finish_command": f"export PULUMI_BACKEND_URL={args.backend_url} {secret_env}; pulumi destroy --yes --stack "
        f"{options.stack_name} --cwd {ROOT} && pulumi stack rm --yes {options.stack_name} --cwd {ROOT}",
    }
    print(f"make e2e: stack {options.stack_name} in {options.region}, state at {args.backend_url}")
    run = Driver(options, stack_factory(args.backend_url, passphrase), checks.fetch_nodes).run()
    if run.removed and passphrase_file:
        passphrase_file.unlink()
    data = report.write(run, args.report_dir, cost.load_prices(), meta)
    print(f"make e2e: {data['result'].upper()}; report: {args.report_dir / 'REPORT.md'}, {args.report_dir / 'report.json'}")
    print(f"make e2e: estimated cost ${data['cost_estimate']['total_usd']:.2f} (an estimate: see the report)")
    if run.left_behind:
        print("make e2e: DESTROY DID NOT FINISH; still in the state:", *run.left_behind, sep="\n  ", file=sys.stderr)
        print(f"make e2e: finish with: {meta['finish_command']}", file=sys.stderr)
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
