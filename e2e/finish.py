"""Finish what an interrupted run left: destroy and remove every e2e stack whose passphrase is still in the state.

A run deletes its stack's passphrase file only after the stack is removed, so a leftover file
names a stack that may still own resources (a run killed mid-way, a CI step that timed out).
CI runs this as its last step, whatever happened before; by hand: .venv/bin/python -m e2e.finish
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pulumi import automation as auto

from e2e.driver import Stack, destroy, left_behind
from e2e.events import EventLog
from e2e.run import ROOT, STATE


def finish_all(state: Path, make_stack: Callable[[str, str], Stack], output: Callable[[str], None] = print) -> dict[str, list[str]]:
    """{stack: what its state still holds} for every leftover stack; [] when it was destroyed and removed."""
    results: dict[str, list[str]] = {}
    for passphrase_file in sorted(state.glob("e2e-*.passphrase")):
        name = passphrase_file.name.removesuffix(".passphrase")
        output(f"e2e finish: destroying stack {name}")
        try:
            stack = make_stack(name, passphrase_file.read_text())
        except Exception as err:
            results[name] = [f"unknown: selecting the stack failed: {err}"]
            continue
        try:
            destroy(stack, EventLog(), output)
        except Exception as err:
            output(f"e2e finish: destroying {name} failed: {err}")
        results[name] = left_behind(stack)
        if not results[name]:
            stack.workspace.remove_stack(name)
            passphrase_file.unlink()
    return results


def select(backend_url: str) -> Callable[[str, str], Stack]:
    def make(name: str, passphrase: str) -> Stack:
        env = {"PULUMI_BACKEND_URL": backend_url, "PULUMI_CONFIG_PASSPHRASE": passphrase, "PULUMI_SKIP_UPDATE_CHECK": "true"}
        return auto.select_stack(name, work_dir=str(ROOT), opts=auto.LocalWorkspaceOptions(env_vars=env))

    return make


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.finish", description=__doc__.splitlines()[0])
    parser.add_argument("--backend-url", default=f"file://{STATE}")
    args = parser.parse_args(argv)
    results = finish_all(STATE, select(args.backend_url))
    for name, left in results.items():
        print(f"e2e finish: {name}: " + ("destroyed and removed" if not left else "STILL HOLDS " + "; ".join(left)))
    if not results:
        print("e2e finish: no stack left behind")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
