"""Mutation run: does the suite catch realistic one-line bugs? (`make mutate`; not part of CI.)

Each mutation in tools/mutations.yaml replaces one exact piece of text in one file. For every
mutation, in a scratch copy of the repository (the working tree is never touched):

1. apply it; the text must occur exactly once (a missing or ambiguous text is an error: the
   catalogue is out of date and must be fixed, not skipped);
2. regenerate the golden files (UPDATE_GOLDEN=1 on the golden tests), so a golden diff, which
   catches any change right or wrong, cannot be what kills the mutant;
3. run the whole suite with -x, fastest and most telling files first: a failure kills the mutant,
   a green suite means it survived;
4. restore the file and the goldens.

The report (Markdown) lists every mutant with the first test that killed it, and every survivor
with the catalogue's note on why it is equivalent or which test is missing.

    python tools/mutate.py --check                  # catalogue in sync with the code? (seconds)
    python tools/mutate.py --only apiserver-anonymous-auth kubelet-read-only-port
    python tools/mutate.py --only docker-mtu-1500 --tests tests/test_semantics.py   # does this file see it?
    python tools/mutate.py --report docs/mutation-report.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "tools" / "mutations.yaml"
TARGET = 0.90
GOLDEN_TESTS = ("tests/test_render.py", "tests/test_preview.py")
# Cheap, telling tests first so most mutants die within seconds; the rest follow in name order.
FIRST = (
    "tests/test_semantics.py",
    "tests/test_certificates.py",
    "tests/test_wiring.py",
    "tests/test_settings.py",
    "tests/test_bootstrap.py",
    "tests/test_program.py",
    "tests/test_pki.py",
    "tests/test_render.py",
    "tests/test_prepare_downloads.py",
)
PYTEST = ("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider")
AREAS = (
    "security groups", "host flags", "PKI", "secrets", "settings", "step order", "step scripts", "daemon flags", "downloads",
)


@dataclass(frozen=True)
class Mutation:
    id: str
    area: str
    file: str
    find: str
    replace: str
    breaks: str
    survivor: str | None = None
    """Why a surviving mutant is equivalent, or which test is still missing."""


@dataclass
class Outcome:
    mutation: Mutation
    killed: bool
    by: str
    seconds: float


class CatalogueError(Exception):
    pass


def load(path: Path = CATALOGUE) -> list[Mutation]:
    entries = yaml.safe_load(path.read_text())
    mutations = [Mutation(**entry) for entry in entries]
    ids = [m.id for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CatalogueError(f"duplicate ids: {', '.join(duplicates)}")
    for m in mutations:
        if m.area not in AREAS:
            raise CatalogueError(f"{m.id}: area {m.area!r}; allowed: {', '.join(AREAS)}")
        if m.find == m.replace:
            raise CatalogueError(f"{m.id}: the replacement equals the original text")
    return mutations


def check(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """Every original text occurs exactly once in its file; returns the problems."""
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        count = path.read_text().count(m.find)
        if count != 1:
            what = "not found" if count == 0 else f"found {count} times (must be unique)"
            problems.append(f"{m.id}: original text {what} in {m.file}: {m.find!r}")
    return problems


def scratch_copy(root: Path) -> Path:
    """The tracked and untracked (not ignored) files of `root` in a temp dir, with its .venv linked."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    repo = Path(tempfile.mkdtemp(prefix="kube-ec2-mutate-")) / "repo"
    for name in filter(None, listed):
        source = root / name
        if source.is_file() and not source.is_symlink():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    (repo / ".venv").symlink_to((root / ".venv").resolve())
    return repo


def test_files(repo: Path) -> list[str]:
    everything = sorted(str(p.relative_to(repo)) for p in (repo / "tests").glob("test_*.py"))
    return [f for f in FIRST if f in everything] + [f for f in everything if f not in FIRST]


def pytest(repo: Path, args: list[str], timeout: float, golden: bool = False) -> tuple[int, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if golden:
        env["UPDATE_GOLDEN"] = "1"
    try:
        proc = subprocess.run(
            [str(repo / ".venv" / "bin" / "python"), *PYTEST, *args],
            cwd=repo, capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        return 124, f"TIMEOUT after {timeout:.0f}s"
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    if found:
        return found.group(1)
    if output.startswith("TIMEOUT"):
        return output
    return output.strip().splitlines()[-1] if output.strip() else "pytest failed without output"


def run_one(repo: Path, root: Path, m: Mutation, timeout: float, tests: list[str] | None = None) -> Outcome:
    started = time.monotonic()
    target = repo / m.file
    original = target.read_text()
    target.write_text(original.replace(m.find, m.replace, 1))
    try:
        rc, out = pytest(repo, ["-k", "golden", *GOLDEN_TESTS], timeout, golden=True)
        if rc not in (0, 5):  # 5: no golden test selected
            return Outcome(m, True, f"{first_failure(out)} (while regenerating goldens)", time.monotonic() - started)
        rc, out = pytest(repo, tests or test_files(repo), timeout)
        return Outcome(m, rc != 0, first_failure(out) if rc != 0 else "", time.monotonic() - started)
    finally:
        target.write_text(original)
        shutil.rmtree(repo / "tests" / "golden")
        shutil.copytree(root / "tests" / "golden", repo / "tests" / "golden")


def report(outcomes: list[Outcome], commit: str, total_seconds: float) -> str:
    killed = sum(o.killed for o in outcomes)
    score = killed / len(outcomes) if outcomes else 0.0
    lines = [
        "# Mutation report",
        "",
        f"Generated by `make mutate` (tools/mutate.py, catalogue tools/mutations.yaml) on {commit}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, in {total_seconds / 60:.0f} min.",
        "Each mutant: one exact text replaced in a scratch copy, goldens regenerated, then the whole suite with -x.",
        "",
        f"**{killed} of {len(outcomes)} killed ({score:.0%}); target {TARGET:.0%}.**",
        "",
    ]
    survivors = [o for o in outcomes if not o.killed]
    if survivors:
        lines += ["## Survivors", ""]
        for o in survivors:
            note = o.mutation.survivor or "NO NOTE: add the missing test, or explain why the mutant is equivalent"
            lines.append(f"- `{o.mutation.id}` ({o.mutation.file}): {o.mutation.breaks}. {note}")
        lines.append("")
    lines += ["## Every mutant", "", "| mutant | area | file | what it breaks | result | first failing test | s |"]
    lines.append("|---|---|---|---|---|---|---|")
    for o in outcomes:
        result = "killed" if o.killed else "**SURVIVED**"
        by = o.by.replace("|", "\\|")
        m = o.mutation
        lines.append(f"| `{m.id}` | {m.area} | {m.file} | {m.breaks} | {result} | {by} | {o.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE)
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutations")
    parser.add_argument("--check", action="store_true", help="only check that every original text is found once")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (a timeout kills the mutant)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run that must pass first")
    parser.add_argument("--tests", nargs="+", metavar="TEST", help="run only these tests (files or node ids), not the suite")
    args = parser.parse_args(argv)

    mutations = load(args.catalogue)
    problems = check(mutations)
    if problems:
        print("catalogue out of date:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutations})
        if unknown:
            print(f"unknown mutation ids: {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.id in args.only]
    print(f"{len(mutations)} mutations, catalogue in sync", flush=True)
    if args.check:
        return 0

    started = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip():
        commit += " with uncommitted changes"
    repo = scratch_copy(ROOT)
    try:
        if not args.no_baseline:
            rc, out = pytest(repo, args.tests or test_files(repo), args.timeout)
            if rc != 0:
                print(f"the unmutated suite fails in the scratch copy: {first_failure(out)}", file=sys.stderr)
                return 2
            print(f"baseline green in {time.monotonic() - started:.0f}s", flush=True)
        outcomes = []
        for i, m in enumerate(mutations, 1):
            outcome = run_one(repo, ROOT, m, args.timeout, args.tests)
            outcomes.append(outcome)
            verdict = f"killed by {outcome.by}" if outcome.killed else "SURVIVED"
            print(f"[{i}/{len(mutations)}] {m.id}: {verdict} ({outcome.seconds:.0f}s)", flush=True)
    finally:
        shutil.rmtree(repo.parent, ignore_errors=True)
    text = report(outcomes, commit, time.monotonic() - started)
    if args.report:
        args.report.write_text(text)
        print(f"report: {args.report}")
    killed = sum(o.killed for o in outcomes)
    print(f"{killed}/{len(outcomes)} killed ({killed / len(outcomes):.0%})")
    return 0 if killed >= TARGET * len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
