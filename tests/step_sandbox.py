"""Run a rendered remote step script as root, for real, without touching the host.

`sandbox()` yields a `Sandbox`; each `Sandbox.run(script)` starts a fresh
`unshare --mount --propagation private --net` (loopback up, nothing else) and, inside it:

- mounts an overlay over /etc, /var, /usr/local, /run and /opt (upper and work directories under the
  sandbox's temp root), so anything a script writes there lands in the sandbox, never on the
  host; /etc/hosts in particular can be replaced the way `install` does it (unlink + create);
- bind-mounts fresh temp directories over the paths the steps write (`BIND_DIRS`) so tests can
  read and prepare them directly, and a fresh one over /tmp (mktemp) last;
- puts stub commands in the sandbox's /usr/local/bin, which the scripts put first on PATH:
  `systemctl` (every call logged; `is-active` answers from the state directory, `restart` and
  `start` mark the unit active), `journalctl` (prints `JOURNAL-STUB <args>`), and `curl`,
  `cloud-init`, `docker`, `kubectl`, `etcdctl`, `modprobe`, `sysctl`, `swapoff`, `timedatectl`
  (exit 0 unless a rule says otherwise). Real tools (bash, install, cmp, stat, sha256sum, base64,
  tar, awk, openssl, mktemp, timeout, python3, ...) still resolve from /usr/bin.

State persists between runs of the same sandbox (the temp directories and overlay uppers are
reused; each run's namespace is gone when its script exits), which is what idempotency tests
need. Stub behaviour is set with `rule(tool, glob, rc=..., stdout=..., delay=..., once=...)`: the first
rule whose glob matches the call's arguments (joined by spaces) decides; `calls` of a `Result`
are the stub calls of that run only, each a list `[tool, arg, ...]`.

`run(..., virtual_clock=True)` makes `sleep` inside the step script (not in the tools it calls)
a shell function, defined through BASH_ENV so the script's text is unchanged, that returns at
once and moves bash's $SECONDS on by its argument: lib.sh's `wait_until` then runs through its
whole bound (every attempt, every pause) in milliseconds.

Needs root, util-linux (unshare, mount), iproute2 and overlayfs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

OVERLAY_ROOTS = ("/etc", "/var", "/usr/local", "/run", "/opt")
"""Catch-all: every write under these goes to the sandbox's overlay upper directory."""

BIND_DIRS = (
    "/etc/kubernetes",
    "/etc/kube-ec2",
    "/etc/systemd/system",
    "/etc/docker",
    "/etc/cni",
    "/etc/etcd",
    "/var/lib/kube-ec2",
    "/var/lib/kubelet",
    "/var/lib/kube-proxy",
    "/var/lib/etcd",
    "/var/log",
    "/var/cache/kube-ec2",
    "/usr/local/bin",
    "/usr/local/sbin",
)
"""Fresh temp directories mounted over these paths (all below an overlay root)."""

CTL = "/run/kube-ec2-sandbox"
"""Where the stubs find their rules and write their call log, inside the namespace."""

STUBBED = (
    "systemctl", "journalctl", "curl", "cloud-init", "docker", "kubectl", "etcdctl", "apt-mark", "dpkg-query",
    "modprobe", "sysctl", "swapoff", "timedatectl",
)
REAL_TOOLS = (
    "bash", "install", "cmp", "stat", "sha256sum", "base64", "tar", "awk", "openssl", "mktemp",
    "timeout", "python3", "date", "cut", "tr", "tail", "tee", "sed", "sleep",
)
HOST_TOOLS = ("unshare", "mount", "ip")
JOURNAL_MARKER = "JOURNAL-STUB"

_STUB = r"""#!/bin/bash
# kube-ec2 sandbox stub: log the call, then obey the first matching rule, else a built-in default.
name=${0##*/}
ctl=__CTL__
{ printf '%q' "$name"; printf ' %q' "$@"; printf '\n'; } >>"$ctl/calls.log"
args="$*"
if [[ -f $ctl/rules/$name ]]; then
  while IFS=$'\t' read -r glob rc delay id; do
    # shellcheck disable=SC2053
    if [[ $args == $glob ]]; then
      if [[ -f $ctl/rules/$name.$id.once ]]; then
        [[ -f $ctl/rules/$name.$id.spent ]] && continue
        touch "$ctl/rules/$name.$id.spent"
      fi
      [[ $delay != 0 ]] && sleep "$delay"
      [[ -f $ctl/rules/$name.$id.out ]] && cat "$ctl/rules/$name.$id.out"
      [[ -f $ctl/rules/$name.$id.err ]] && cat "$ctl/rules/$name.$id.err" >&2
      exit "$rc"
    fi
  done <"$ctl/rules/$name"
fi
case $name in
  systemctl)
    unit=${*: -1}
    case $1 in
      is-active) [[ -f $ctl/active/$unit ]] && exit 0; exit 3 ;;
      restart | start) touch "$ctl/active/$unit" ;;
      stop) rm -f "$ctl/active/$unit" ;;
    esac
    ;;
  journalctl) echo "__MARKER__ journalctl $*" ;;
  cloud-init) [[ $* == *--long* ]] && echo "status: done (cloud-init sandbox stub)" ;;
  curl) echo "ok" ;;
esac
exit 0
"""

_CLOCK = r"""# Sourced (BASH_ENV) by the step script only: `sleep N` takes no time but moves bash's $SECONDS
# on by N, so a bounded wait runs through its whole bound, attempt by attempt, in milliseconds.
[[ ${0##*/} == step.sh ]] || return 0
sleep() {
  printf 'sleep %q\n' "$1" >>__CTL__/calls.log
  SECONDS=$((SECONDS + ${1%%.*}))
}
"""

_LAUNCHER = r"""
set -euo pipefail
script=$1 net=$2 clock=$3
shift 3
if [[ $net == 1 ]]; then ip link set lo up; fi
while (($#)); do
  case $1 in
    overlay) mount -t overlay kube-ec2-sandbox -o "lowerdir=$2,upperdir=$3,workdir=$4" "$2"; shift 4 ;;
    bind) mkdir -p "$3"; mount --bind "$2" "$3"; shift 3 ;;
    *) echo "sandbox launcher: bad argument $1" >&2; exit 99 ;;
  esac
done
# What lib.sh exports too: the stubs in /usr/local/bin shadow the host's tools.
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
if [[ $clock == 1 ]]; then export BASH_ENV=${script%/*}/clock.sh; fi
exec bash "$script"
"""


@dataclass
class Result:
    """One script run."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    """Stub calls of this run, in order: [tool, arg, ...]."""
    elapsed: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def called(self, tool: str, *prefix: str) -> list[list[str]]:
        """Calls of `tool` whose first arguments are `prefix`."""
        n = len(prefix)
        return [c for c in self.calls if c[0] == tool and tuple(c[1 : 1 + n]) == prefix]

    def restarted(self) -> list[str]:
        """Units passed to `systemctl restart`, in order."""
        return [c[-1] for c in self.called("systemctl", "restart")]

    def wrote(self) -> list[str]:
        """Paths put_file reported as (re)written."""
        return [line.split(": wrote ", 1)[1] for line in self.stderr.splitlines() if ": wrote " in line]

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-5000:]}"


@dataclass
class Sandbox:
    root: Path
    net: bool = True
    binds: dict[str, Path] = field(default_factory=dict)
    overlays: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctl = self.root / "ctl"
        self.tmp = self.root / "tmp"
        for d in (self.ctl, self.ctl / "rules", self.ctl / "active", self.tmp):
            d.mkdir(parents=True)
        for inside in OVERLAY_ROOTS:
            base = self.root / "overlay" / inside.strip("/").replace("/", "_")
            upper, work = base / "upper", base / "work"
            upper.mkdir(parents=True)
            work.mkdir()
            self.overlays[inside] = (upper, work)
        for inside in BIND_DIRS:
            if not any(inside.startswith(r + "/") for r in OVERLAY_ROOTS):
                raise ValueError(f"{inside} is not below an overlay root: its mount point would be made on the host")
            outside = self.root / "bind" / inside.strip("/").replace("/", "_")
            outside.mkdir(parents=True)
            self.binds[inside] = outside
        stub = _STUB.replace("__CTL__", CTL).replace("__MARKER__", JOURNAL_MARKER)
        for tool in STUBBED:
            self.write(f"/usr/local/bin/{tool}", stub, 0o755)

    # --- files

    def path(self, inside: str) -> Path:
        """Where the file the scripts see at `inside` lives on the host (a bind dir or an overlay upper)."""
        for mounted in sorted(self.binds, key=len, reverse=True):
            if inside == mounted or inside.startswith(mounted + "/"):
                return self.binds[mounted] / inside[len(mounted) :].lstrip("/")
        for mounted, (upper, _) in self.overlays.items():
            if inside.startswith(mounted + "/"):
                return upper / inside[len(mounted) :].lstrip("/")
        raise ValueError(f"{inside} is outside the sandbox")

    def write(self, inside: str, content: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Path:
        p = self.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        p.write_bytes(content)
        p.chmod(mode)
        os.chown(p, uid, gid)
        return p

    def read(self, inside: str) -> str:
        return self.path(inside).read_text()

    def exists(self, inside: str) -> bool:
        return self.path(inside).exists()

    def mode(self, inside: str) -> int:
        return stat.S_IMODE(self.path(inside).stat().st_mode)

    def tmp_leftovers(self) -> list[str]:
        """What scripts left in /tmp."""
        return sorted(p.name for p in self.tmp.iterdir())

    # --- stubs

    def rule(
        self, tool: str, glob: str, rc: int = 0, stdout: str = "", stderr: str = "", delay: float = 0, once: bool = False
    ) -> None:
        """Make `tool` (a stub) exit `rc` with this output when its arguments match `glob` (bash pattern).

        once: the rule decides only the first matching call of the sandbox's life; later calls
        fall through to the next rules (a node that is there, then gone).
        """
        if tool not in STUBBED:
            raise ValueError(f"{tool} is not stubbed")
        if "\t" in glob or "\n" in glob:
            raise ValueError("glob must not contain tabs or newlines")
        rules = self.ctl / "rules" / tool
        existing = rules.read_text().splitlines() if rules.exists() else []
        rid = len(existing)
        if stdout:
            (self.ctl / "rules" / f"{tool}.{rid}.out").write_text(stdout)
        if stderr:
            (self.ctl / "rules" / f"{tool}.{rid}.err").write_text(stderr)
        if once:
            (self.ctl / "rules" / f"{tool}.{rid}.once").touch()
        with rules.open("a") as f:
            f.write(f"{glob}\t{rc}\t{delay:g}\t{rid}\n")

    def clear_rules(self, tool: str | None = None) -> None:
        for p in (self.ctl / "rules").iterdir():
            if tool is None or p.name == tool or p.name.startswith(tool + "."):
                p.unlink()

    def set_active(self, unit: str, active: bool = True) -> None:
        p = self.ctl / "active" / unit
        if active:
            p.touch()
        else:
            p.unlink(missing_ok=True)

    def active(self) -> set[str]:
        return {p.name for p in (self.ctl / "active").iterdir()}

    def fake_binary(self, name: str, version: str = "v1") -> None:
        """A placeholder for an installed daemon binary (only its bytes matter: restart inputs)."""
        self.write(f"/usr/local/bin/{name}", f"#!/bin/sh\n# fake {name} {version}\nexit 0\n", 0o755)

    # --- running

    def mount_args(self) -> list[str]:
        args: list[str] = []
        for inside, (upper, work) in self.overlays.items():
            args += ["overlay", inside, str(upper), str(work)]
        for inside, outside in self.binds.items():
            args += ["bind", str(outside), inside]
        args += ["bind", str(self.ctl), CTL]
        args += ["bind", str(self.tmp), "/tmp"]  # last: the sources above live under /tmp
        return args

    def run(self, script: str, stdin: str | None = None, timeout: float = 30, virtual_clock: bool = False) -> Result:
        """Run `script` with bash as root inside a fresh mount (and network) namespace.

        virtual_clock: `sleep` in the script itself is a shell function (from BASH_ENV, the
        script's text is unchanged) that returns at once and advances $SECONDS, which is the
        clock lib.sh's `wait_until` reads; stubs and real commands are unaffected.
        """
        (self.ctl / "step.sh").write_text(script)
        (self.ctl / "clock.sh").write_text(_CLOCK.replace("__CTL__", CTL))
        log = self.ctl / "calls.log"
        log.write_text("")
        argv = ["unshare", "--mount", "--propagation", "private"]
        if self.net:
            argv.append("--net")
        argv += ["bash", "-c", _LAUNCHER, "kube-ec2-sandbox", f"{CTL}/step.sh"]
        argv += ["1" if self.net else "0", "1" if virtual_clock else "0"]
        argv += self.mount_args()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        started = time.monotonic()
        proc = subprocess.run(
            argv,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
        )
        elapsed = time.monotonic() - started
        calls = [shlex.split(line) for line in log.read_text().splitlines() if line.strip()]
        if proc.returncode == 99 and "sandbox launcher" in proc.stderr:
            raise RuntimeError(proc.stderr)
        return Result(proc.returncode, proc.stdout, proc.stderr, calls, elapsed)


def missing_tools() -> list[str]:
    return [t for t in (*HOST_TOOLS, *REAL_TOOLS) if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]


def require_sandbox() -> None:
    """Skip when not root on a developer machine; fail in CI (CI set) or when a tool is missing."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the step-script sandbox needs root (mount and network namespaces); CI must run it as root")
        pytest.skip("needs root (mount and network namespaces)")
    missing = missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)} for the step-script sandbox")


@contextlib.contextmanager
def sandbox(net: bool = True) -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="kube-ec2-steps-"))
    try:
        yield Sandbox(root, net=net)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def probe(box: Sandbox) -> Result:
    """A trivial run proving the sandbox works here (overlay, binds, stubs, loopback)."""
    return box.run("set -e\nsystemctl is-active --quiet nothing || echo inactive\ntest -d /etc/kubernetes\nip -o link show lo\n")


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def unit_journal_markers(result: Result, units: Sequence[str]) -> dict[str, bool]:
    """Whether stderr shows the journal stub's output for each unit."""
    return {u: f"{JOURNAL_MARKER} journalctl -u {u} -n 80 --no-pager" in result.stderr for u in units}
