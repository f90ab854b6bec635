"""The remote-step graph: which script runs on which host, after which other steps.

Pure: `plan()` returns the steps in an order that respects every edge; the Cluster component
turns each into a pulumi-command `remote.Command` named after it (`minion-2-kubelet`). The chain
is the same length for 1 or 100 minions: minions depend on master steps, never on each other.

    master:  cloud-init -> pki -> etcd -> flannel-network -> flanneld -> kube-apiserver
             -> kube-controller-manager | kube-scheduler | cluster-rbac
    minion:  cloud-init -> pki -> flanneld [+ master-flannel-network] -> docker
             -> kubelet [+ master-kube-apiserver, master-cluster-rbac] -> ready
    master:  coredns [+ every minion ready] -> smoke-test
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components import render, versions
from components.render import DAEMONS, PKI_DIR, File
from components.settings import HostPlan, Settings

ETCD_STEP = "master-etcd"
"""The step that starts etcd: it runs only once etcd's volume is attached."""


@dataclass(frozen=True)
class Step:
    """One remote command."""

    name: str
    """Resource name, `<host>-<step>`."""
    host: str
    """Host whose SSH connection runs it."""
    after: tuple[str, ...]
    """Steps that must have succeeded first."""
    script: str
    """Bash script, run as root; non-secret."""
    wants_pki: bool = False
    """True when the host's secret PKI bundle is its standard input."""
    delete_script: str | None = None
    """Bash script run when the step is deleted (minion removal)."""
    about_host: str | None = None
    """For steps on the master about a minion (drain): that minion, whose instance it must outlive."""


CONTROL_PLANE_BINARY = "/usr/local/bin/kube-apiserver"
"""Whose `--version` is the running control plane's version (the skew check reads it)."""
CONTROL_PLANE = ("master-kube-apiserver", "master-kube-controller-manager", "master-kube-scheduler", "master-cluster-rbac")
"""Upgraded and healthy before any minion is cordoned for a new kubelet."""
UPGRADE_SLOTS = 1
"""Minions out (cordoned) at once during an upgrade."""
NODE_UPGRADE_BUDGET = 1200
"""Seconds one minion may hold its upgrade slot before the others waiting for one give up."""


def _script(template: str, settings: Settings, host: HostPlan, step: str, units: tuple[str, ...], **extra: Any) -> str:
    ctx = render.context(settings, host)
    return render.render(template, ctx, step=step, units=units, **extra)


def _daemon_step(
    settings: Settings,
    host: HostPlan,
    step: str,
    template: str,
    daemons: tuple[str, ...],
    after: tuple[str, ...],
    extra_files: tuple[File, ...] = (),
    **extra: Any,
) -> Step:
    """A step that (re)writes the daemons' files, starts them, and checks their health."""
    files: dict[str, tuple[str, str]] = {}
    starts: list[tuple[str, list[str]]] = []
    units: list[str] = []
    swaps: list[tuple[str, str]] = []
    staged = versions.staged_binaries(host.role, settings.kubernetes_version)
    for name in daemons:
        daemon = DAEMONS[name]
        own = render.daemon_files(settings, host, name)
        files.update(own)
        swaps += [(staged[b], b) for b in daemon.binaries]
        configs = [f.path for f in daemon.files]
        live = {f.path for f in daemon.live_files}
        inputs = [p for p in own if p not in live] + [f"{PKI_DIR}/{p}" for p in daemon.pki] + list(daemon.binaries)
        for unit in daemon.packaged_units:
            starts.append((unit, configs))
            units.append(unit)
        units.extend(daemon.required_units)
        for unit in daemon.units:
            units.append(unit)
            # A socket-activated service pulls its socket in (Requires=); restarting the socket
            # while the service runs is refused by systemd, so only services are (re)started.
            if not unit.endswith(".socket"):
                starts.append((unit, inputs))
    ctx = render.context(settings, host)
    for f in extra_files:
        files[f.path] = (f.mode, render.render_file(f, ctx))
    script = _script(
        template, settings, host, step, tuple(units), daemons=daemons, files=files, swaps=swaps, starts=starts, **extra
    )
    return Step(step, host.name, after, script)


def _first_steps(settings: Settings, host: HostPlan) -> list[Step]:
    """Every host starts the same way: wait for cloud-init (and sync what changed), then its keys."""
    n = host.name
    is_master = host.role == "master"
    wait = _script(
        "steps/wait-cloud-init.sh.j2", settings, host, f"{n}-cloud-init", ("cloud-final.service",),
        hosts_file=render.hosts_file(settings), prepare=render.prepare_script(settings, host),
        control_plane_binary=CONTROL_PLANE_BINARY if is_master else "",
    )
    keys = _script("steps/pki.sh.j2", settings, host, f"{n}-pki", ())
    # The master's cloud-init step checks the version skew before any host changes.
    first = () if is_master else (f"{settings.master.name}-cloud-init",)
    return [Step(f"{n}-cloud-init", n, first, wait), Step(f"{n}-pki", n, (f"{n}-cloud-init",), keys, wants_pki=True)]


def _upgrade_step(settings: Settings, step: str, template: str, node: str, after: tuple[str, ...]) -> Step:
    """A step on the master around one minion's kubelet step: cordon and drain, or uncordon."""
    script = _script(
        template, settings, settings.master, step, ("kube-apiserver.service",), node=node,
        slots=UPGRADE_SLOTS, budget=NODE_UPGRADE_BUDGET,
    )
    return Step(step, settings.master.name, after, script)


def plan(settings: Settings) -> tuple[Step, ...]:
    """Every remote step of the stack, in an order that respects every dependency."""
    m = settings.master
    steps: list[Step] = [
        *_first_steps(settings, m),
        _daemon_step(settings, m, ETCD_STEP, "steps/etcd.sh.j2", ("etcd", "etcd-snapshot"), ("master-pki",)),
        Step(
            "master-flannel-network",
            m.name,
            ("master-etcd",),
            _script("steps/flannel-network.sh.j2", settings, m, "master-flannel-network", ("etcd.service",),
                    flannel_net_conf=render.render_file(render.FLANNEL_NET_CONF, render.context(settings, m))),
        ),
        _daemon_step(settings, m, "master-flanneld", "steps/flanneld.sh.j2", ("flanneld",), ("master-flannel-network",)),
        _daemon_step(
            settings, m, "master-kube-apiserver", "steps/kube-apiserver.sh.j2", ("kube-apiserver",), ("master-flanneld",),
            extra_files=(render.ADMIN_KUBECONFIG, render.SUPER_ADMIN_KUBECONFIG),
        ),
        _daemon_step(
            settings, m, "master-kube-controller-manager", "steps/control-plane.sh.j2", ("kube-controller-manager",),
            ("master-kube-apiserver",), health_port=10257,
        ),
        _daemon_step(
            settings, m, "master-kube-scheduler", "steps/control-plane.sh.j2", ("kube-scheduler",),
            ("master-kube-apiserver",), health_port=10259,
        ),
        Step(
            "master-cluster-rbac",
            m.name,
            ("master-kube-apiserver",),
            _script("steps/cluster-rbac.sh.j2", settings, m, "master-cluster-rbac", ("kube-apiserver.service",),
                    manifest=render.render("manifests/cluster-rbac.yaml.j2", render.context(settings, m))),
        ),
    ]
    ready: list[str] = []
    for h in settings.minions:
        n = h.name
        steps += [
            *_first_steps(settings, h),
            _daemon_step(settings, h, f"{n}-flanneld", "steps/flanneld.sh.j2", ("flanneld",), (f"{n}-pki", "master-flannel-network")),
            _daemon_step(settings, h, f"{n}-docker", "steps/docker.sh.j2", ("docker",), (f"{n}-flanneld",)),
            _upgrade_step(settings, f"{n}-cordon", "steps/cordon.sh.j2", n, CONTROL_PLANE),
            _daemon_step(
                settings, h, f"{n}-kubelet", "steps/kubelet.sh.j2", ("kubelet", "kube-proxy"), (f"{n}-docker", f"{n}-cordon"),
            ),
            Step(
                f"{n}-ready",
                n,
                (f"{n}-kubelet",),
                _script("steps/node-ready.sh.j2", settings, h, f"{n}-ready",
                        ("kubelet.service", "kube-proxy.service", "cri-docker.service", "docker.service", "flanneld.service")),
            ),
            _upgrade_step(settings, f"{n}-uncordon", "steps/uncordon.sh.j2", n, (f"{n}-ready",)),
            Step(
                f"{n}-drain",
                m.name,
                (f"{n}-ready",),
                _script("steps/lib.sh.j2", settings, m, f"{n}-drain", ()) + f'log "drain hook for {n} registered"\n',
                delete_script=_script("steps/drain.sh.j2", settings, m, f"{n}-drain", ("kube-apiserver.service",), node=n),
                about_host=n,
            ),
        ]
        ready.append(f"{n}-uncordon")
    ctx = render.context(settings, m)
    steps += [
        Step(
            "master-coredns",
            m.name,
            ("master-cluster-rbac", "master-kube-controller-manager", "master-kube-scheduler", *ready),
            _script("steps/coredns.sh.j2", settings, m, "master-coredns", ("kube-apiserver.service",),
                    manifest=render.render("manifests/coredns.yaml.j2", ctx)),
        ),
        Step(
            "master-smoke-test",
            m.name,
            ("master-coredns",),
            _script("steps/smoke-test.sh.j2", settings, m, "master-smoke-test",
                    ("kube-apiserver.service", "kube-controller-manager.service", "kube-scheduler.service"),
                    manifest=render.render("manifests/smoke-test.yaml.j2", ctx)),
        ),
    ]
    return tuple(steps)


def longest_chain(steps: tuple[Step, ...]) -> list[str]:
    """The longest path through the step graph (what bounds `pulumi up`'s wall time)."""
    by_name = {s.name: s for s in steps}
    best: dict[str, list[str]] = {}
    for step in steps:  # plan() order is topological
        longest = max((best[a] for a in step.after), key=len, default=[])
        best[step.name] = [*longest, step.name]
        assert all(a in by_name for a in step.after), step.name
    return max(best.values(), key=len)
