"""Pure rendering: cloudinit/*.j2 -> user data, unit files, config files and step scripts.

Every value a template needs is computed here, in `context()`; templates only substitute, loop
and branch. The `DAEMONS` table is the one place that says which unit, config files and PKI
files belong to which daemon: cloud-init writes them, and each daemon's remote step writes them
again (so a changed template reaches running hosts) and restarts the daemon when they changed.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from components import etcd_fence, versions
from components.settings import FLANNEL_SUBNET_LEN, HostPlan, Settings

TEMPLATES = Path(__file__).resolve().parent.parent / "cloudinit"
PKI_DIR = "/etc/kubernetes/pki"
STATE_DIR = "/var/lib/kube-ec2"
MARKER = f"{STATE_DIR}/cloud-init.done"
FLANNEL_PREFIX = "/coreos.com/network"
SSH_USER = "ubuntu"
# etcd's data lives on its own EBS volume, mounted here (etcd.conf.yml's data-dir).
ETCD_DATA_DIR = "/var/lib/etcd"
ETCD_VOLUME_DEVICE = "/dev/sdf"
"""The attachment's device name; Nitro instances show the volume as an NVMe disk named otherwise."""
ETCD_VOLUME_XEN_DEVICE = "/dev/xvdf"
"""Where Xen instances show a volume attached as /dev/sdf."""
ETCD_VOLUME_WAIT_SECONDS = 600
# Values known only once AWS has created them (the volume id, the snapshot bucket): cloud-init
# writes them on the master, the storage units read them.
STORAGE_ENV = "/etc/kube-ec2/etcd-storage.env"
SNAPSHOT_PREFIX = "snapshots"
"""Key prefix of etcd's snapshots in the bucket: the only place the master may write."""
SNAPSHOT_STAGE_DIR = f"{STATE_DIR}/etcd-snapshots"


@dataclass(frozen=True)
class File:
    """A non-secret file rendered from a template and placed on a host."""

    path: str
    template: str
    mode: str = "0644"


@dataclass(frozen=True)
class Daemon:
    """One systemd-managed daemon: its unit(s), config files, and the PKI files it reads."""

    units: tuple[str, ...]
    files: tuple[File, ...]
    pki: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()
    """Installed binaries whose change (a version upgrade) restarts the daemon."""
    packaged_units: tuple[str, ...] = ()
    """Units shipped by an OS package; restarted when this daemon's config files change."""
    required_units: tuple[str, ...] = ()
    """Units (among `files`) that run only through the daemon's unit (its Requires=, a timer): never
    started on their own, but their journal is shown when the step fails."""
    live_files: tuple[File, ...] = ()
    """Files written with the daemon's but read again by a running process itself: no restart input."""

    @property
    def all_files(self) -> tuple[File, ...]:
        # 0600 as CIS 4.1.1 asks of the kubelet's unit (and 1.1.1-1.1.8 of the control plane's specs).
        unit_files = tuple(File(f"/etc/systemd/system/{u}", f"units/{u}.j2", "0600") for u in self.units)
        return unit_files + self.files + self.live_files


DOCKER_DROP_IN = "/etc/systemd/system/docker.service.d/10-kube-ec2.conf"

DAEMONS: dict[str, Daemon] = {
    "etcd": Daemon(
        units=("etcd.service",),
        files=(
            File("/etc/etcd/etcd.conf.yml", "configs/etcd.conf.yml.j2"),
            File("/etc/systemd/system/etcd-data.service", "units/etcd-data.service.j2"),
            File("/usr/local/sbin/kube-ec2-etcd-data", "scripts/etcd-data.sh.j2", "0755"),
        ),
        required_units=("etcd-data.service",),
        pki=("etcd-ca.crt", "etcd-server.crt", "etcd-server.key", "etcd-peer.crt", "etcd-peer.key"),
        binaries=("/usr/local/bin/etcd",),
    ),
    "etcd-snapshot": Daemon(
        units=("etcd-snapshot.timer",),
        files=(
            File("/etc/systemd/system/etcd-snapshot.service", "units/etcd-snapshot.service.j2"),
            File("/usr/local/sbin/kube-ec2-etcd-snapshot", "scripts/etcd-snapshot.sh.j2", "0755"),
        ),
        pki=("etcd-ca.crt", "apiserver-etcd-client.crt", "apiserver-etcd-client.key"),
        required_units=("etcd-snapshot.service",),
    ),
    "kube-apiserver": Daemon(
        units=("kube-apiserver.service",),
        files=(
            File("/etc/kubernetes/audit-policy.yaml", "configs/audit-policy.yaml.j2"),
            File("/etc/kubernetes/encryption-config.yaml.tmpl", "configs/encryption-config.yaml.j2", "0600"),
        ),
        pki=(
            "ca.crt", "etcd-ca.crt", "apiserver.crt", "apiserver.key", "apiserver-etcd-client.crt",
            "apiserver-etcd-client.key", "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key",
            "service-account.key", "service-account.pub", "encryption-config.yaml",
            "front-proxy-ca.crt", "front-proxy-client.crt", "front-proxy-client.key",
        ),
        binaries=("/usr/local/bin/kube-apiserver",),
    ),
    "kube-controller-manager": Daemon(
        units=("kube-controller-manager.service",),
        files=(File("/etc/kubernetes/controller-manager.kubeconfig", "configs/kubeconfig.j2", "0600"),),
        pki=("ca.crt", "controller-manager.crt", "controller-manager.key", "service-account.key"),
        binaries=("/usr/local/bin/kube-controller-manager",),
    ),
    "kube-scheduler": Daemon(
        units=("kube-scheduler.service",),
        files=(
            File("/etc/kubernetes/kube-scheduler.yaml", "configs/kube-scheduler.yaml.j2"),
            File("/etc/kubernetes/scheduler.kubeconfig", "configs/kubeconfig.j2", "0600"),
        ),
        pki=("ca.crt", "scheduler.crt", "scheduler.key"),
        binaries=("/usr/local/bin/kube-scheduler",),
    ),
    "flanneld": Daemon(
        units=("flanneld.service",),
        files=(),
        pki=("etcd-ca.crt", "flannel-etcd.crt", "flannel-etcd.key"),
        binaries=("/usr/local/bin/flanneld",),
    ),
    "docker": Daemon(
        units=("cri-docker.socket", "cri-docker.service"),
        files=(
            File("/etc/docker/daemon.json", "configs/docker-daemon.json.j2"),
            File(DOCKER_DROP_IN, "configs/docker-service.conf.j2"),
        ),
        binaries=("/usr/local/bin/cri-dockerd",),
        packaged_units=("docker.service",),
        # cri-dockerd re-reads /etc/cni/net.d by itself (dockershim's network/cni/cni.go, which it
        # carries: a sync every 5 s), so a CNI change restarts neither Docker nor cri-dockerd (nor,
        # through Requires=, the kubelet).
        live_files=(File("/etc/cni/net.d/10-flannel.conflist", "configs/10-flannel.conflist.j2", "0600"),),
    ),
    "kubelet": Daemon(
        units=("kubelet.service",),
        files=(
            File("/var/lib/kubelet/config.yaml", "configs/kubelet-config.yaml.j2", "0600"),
            File("/etc/kubernetes/kubelet.kubeconfig", "configs/kubeconfig.j2", "0600"),
        ),
        pki=("ca.crt", "kubelet.crt", "kubelet.key"),
        binaries=("/usr/local/bin/kubelet",),
    ),
    "kube-proxy": Daemon(
        units=("kube-proxy.service",),
        files=(
            File("/var/lib/kube-proxy/config.yaml", "configs/kube-proxy-config.yaml.j2"),
            File("/etc/kubernetes/kube-proxy.kubeconfig", "configs/kubeconfig.j2", "0600"),
        ),
        pki=("ca.crt", "kube-proxy.crt", "kube-proxy.key"),
        binaries=("/usr/local/bin/kube-proxy",),
    ),
}

ROLE_DAEMONS = {
    "master": ("etcd", "etcd-snapshot", "flanneld", "kube-apiserver", "kube-controller-manager", "kube-scheduler"),
    "minion": ("flanneld", "docker", "kubelet", "kube-proxy"),
}
# Files the master needs that belong to no daemon: kubectl's admin kubeconfig (rewritten by the
# kube-apiserver step) and flannel's network config (written into etcd by the flannel-network step).
ADMIN_KUBECONFIG = File("/etc/kubernetes/admin.kubeconfig", "configs/kubeconfig.j2", "0600")
SUPER_ADMIN_KUBECONFIG = File("/etc/kubernetes/super-admin.kubeconfig", "configs/kubeconfig.j2", "0600")
FLANNEL_NET_CONF = File("/etc/kube-ec2/flannel-net-conf.json", "configs/flannel-net-conf.json.j2")
MASTER_EXTRA_FILES = (ADMIN_KUBECONFIG, SUPER_ADMIN_KUBECONFIG, FLANNEL_NET_CONF)

# Kubeconfig files: which identity (cert/key pair) each one uses and which server it talks to.
KUBECONFIG_USERS = {
    "/etc/kubernetes/admin.kubeconfig": "admin",
    "/etc/kubernetes/super-admin.kubeconfig": "super-admin",
    "/etc/kubernetes/controller-manager.kubeconfig": "controller-manager",
    "/etc/kubernetes/scheduler.kubeconfig": "scheduler",
    "/etc/kubernetes/kubelet.kubeconfig": "kubelet",
    "/etc/kubernetes/kube-proxy.kubeconfig": "kube-proxy",
}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    # YAML- and JSON-safe scalars: every value placed into YAML goes through one of these.
    env.filters["yaml"] = lambda v: yaml.safe_dump(v, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()
    env.filters["json"] = lambda v: json.dumps(v)
    env.filters["sh"] = lambda v: shlex.quote(str(v))
    env.filters["indent_block"] = lambda text, n: "\n".join((" " * n + line) if line else line for line in text.splitlines())
    return env


ENV = _env()


@functools.lru_cache(maxsize=512)
def context(settings: Settings, host: HostPlan) -> dict[str, Any]:
    """Every value any template may use, computed once per host (callers must not mutate it)."""
    imgs = versions.images()
    return {
        "host": host,
        "hosts": settings.hosts,
        "master": settings.master,
        "cluster_name": settings.cluster_name,
        "cluster_domain": settings.cluster_domain,
        "kubernetes_version": settings.kubernetes_version,
        "pod_cidr": settings.pod_cidr,
        "service_cidr": settings.service_cidr,
        "api_service_ip": settings.api_service_ip,
        "dns_service_ip": settings.dns_service_ip,
        "docker_bridge_ip": settings.docker_bridge_ip,
        "pod_mtu": settings.pod_mtu,
        "minion_count": settings.minion_count,
        "minion_names": [m.name for m in settings.minions],
        "flannel_subnet_len": FLANNEL_SUBNET_LEN,
        "flannel_prefix": FLANNEL_PREFIX,
        "flannel_grants": etcd_fence.flannel_grants(FLANNEL_PREFIX),
        "fence_probes": etcd_fence.probes(FLANNEL_PREFIX),
        "fence_watch_seconds": etcd_fence.WATCH_SECONDS,
        "etcd_endpoint": f"https://{settings.master.private_ip}:2379",
        "api_internal": f"https://{settings.master.private_ip}:6443",
        "api_local": "https://127.0.0.1:6443",
        "pki": PKI_DIR,
        "state_dir": STATE_DIR,
        "marker": MARKER,
        "etcd_data_dir": ETCD_DATA_DIR,
        "etcd_volume_xen_device": ETCD_VOLUME_XEN_DEVICE,
        "etcd_volume_wait_seconds": ETCD_VOLUME_WAIT_SECONDS,
        "storage_env": STORAGE_ENV,
        "region": settings.region,
        "snapshot_prefix": SNAPSHOT_PREFIX,
        "snapshot_stage_dir": SNAPSHOT_STAGE_DIR,
        "images": imgs,
        "runtime_minimums": versions.runtime_minimums(),
        "downloads": versions.downloads(host.role, settings.kubernetes_version),
    }


def render(template: str, ctx: dict[str, Any], **extra: Any) -> str:
    return ENV.get_template(template).render(**ctx, **extra)


def render_file(f: File, ctx: dict[str, Any]) -> str:
    """Render one File; kubeconfigs get their identity and the API address for the host's role."""
    user = KUBECONFIG_USERS.get(f.path)
    if user is None:
        return render(f.template, ctx)
    server = ctx["api_local"] if ctx["host"].role == "master" else ctx["api_internal"]
    return render(f.template, ctx, kube_user=user, server=server)


def daemon_files(settings: Settings, host: HostPlan, daemon: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, content) of every non-secret file of one daemon on one host."""
    ctx = context(settings, host)
    return {f.path: (f.mode, render_file(f, ctx)) for f in DAEMONS[daemon].all_files}


def host_files(settings: Settings, host: HostPlan) -> dict[str, tuple[str, str]]:
    """path -> (mode, content) of every non-secret file cloud-init writes for the host's daemons."""
    ctx = context(settings, host)
    files: dict[str, tuple[str, str]] = {}
    for daemon in ROLE_DAEMONS[host.role]:
        for f in DAEMONS[daemon].all_files:
            files[f.path] = (f.mode, render_file(f, ctx))
    if host.role == "master":
        for f in MASTER_EXTRA_FILES:
            files[f.path] = (f.mode, render_file(f, ctx))
    return files


def user_data(settings: Settings, host: HostPlan, storage: dict[str, str] | None = None) -> str:
    """The host's cloud-config (plain text, what `cloud-init schema` checks).

    `storage`: the master's deploy-time storage values (see `storage_env`), written to STORAGE_ENV.
    """
    ctx = context(settings, host)
    files = host_files(settings, host)
    if storage is not None:
        files = {**files, STORAGE_ENV: ("0644", storage_env(storage))}
    return render(
        f"{host.role}.yaml.j2",
        ctx,
        files=files,
        prepare=prepare_script(settings, host),
        hosts_file=hosts_file(settings),
    )


def storage_env(values: dict[str, str]) -> str:
    """A systemd EnvironmentFile: one NAME=value line each, values quoted for systemd and bash."""
    for name, value in values.items():
        if not name.isidentifier() or not value or any(c in value for c in "\"\\$`'\n"):
            raise ValueError(f"storage value {name}={value!r}: allowed: a name and a non-empty plain value")
    return "".join(f'{name}="{value}"\n' for name, value in sorted(values.items()))


def prepare_script(settings: Settings, host: HostPlan) -> str:
    """The host's one-time preparation script (kernel settings, verified downloads)."""
    return render("prepare.sh.j2", context(settings, host))


def kubeconfig_check_script() -> str:
    """The check the deployer's machine runs with the exported kubeconfig on standard input."""
    return render("steps/kubeconfig-check.sh.j2", {})


def hosts_file(settings: Settings) -> str:
    """/etc/hosts: every cluster member by name."""
    return render("hosts.j2", {"hosts": settings.hosts})


def compress(text: str) -> str:
    """gzip (fixed mtime, so identical input gives identical bytes) and base64 for user_data_base64."""
    return base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()


def digest(*parts: str) -> str:
    """Short content hash used as a remote step's trigger."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
