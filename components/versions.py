"""The pinned artifacts of versions.yaml: what each role downloads, from where, checked how."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VERSIONS_YAML = Path(__file__).resolve().parent.parent / "versions.yaml"

KUBERNETES_BINARIES = {
    "master": ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    "minion": ("kubelet", "kube-proxy"),
}
# Daemon binaries are staged by the host's preparation, one directory per component and version
# (/opt/kube-ec2/<component>/<version>/<binary>); each daemon's remote step swaps its own binary in
# (/usr/local/bin/<binary>), so a new version reaches a daemon only in the step graph's order
# (control plane before any kubelet), never when cloud-init re-runs the preparation. Tools
# (kubectl, etcdctl, CNI plugins) are installed in place.
STAGED = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "etcd", "flanneld", "cri-dockerd",
)
STAGE_DIR = "/opt/kube-ec2"
BIN_DIR = "/usr/local/bin"


def _install_path(component: str, version: str, dest: str) -> str:
    """Where the preparation puts one file: staged for a daemon binary, else `dest` itself."""
    binary = dest.rsplit("/", 1)[1]
    if binary in STAGED and dest == f"{BIN_DIR}/{binary}":
        return f"{STAGE_DIR}/{component}/{version}/{binary}"
    return dest


def staged_binaries(role: str, kubernetes_version: str) -> dict[str, str]:
    """Installed daemon binary -> the staged file of this version the daemon's step swaps in."""
    return {
        f"{BIN_DIR}/{dest.rsplit('/', 1)[1]}": dest
        for d in downloads(role, kubernetes_version)
        for _, dest in d.files
        if dest.startswith(f"{STAGE_DIR}/")
    }


# Archives and binaries from other projects, by role (order is download order).
OTHER_COMPONENTS = {
    "master": ("etcd", "flannel", "flannel_cni"),
    "minion": ("flannel", "flannel_cni", "cri_dockerd", "cni_plugins"),
}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Download:
    """One file fetched by cloud-init, verified, then installed."""

    name: str
    version: str
    url: str
    sha256: str | None
    """Pinned SHA-256, or None to check against `<url>.sha256` fetched over HTTPS."""
    files: tuple[tuple[str, str], ...]
    """(member inside the archive, installed path); for a plain binary the member is ''."""

    @property
    def is_archive(self) -> bool:
        return self.url.endswith((".tgz", ".tar.gz"))


@functools.cache
def load() -> dict[str, Any]:
    data = yaml.safe_load(VERSIONS_YAML.read_text())
    for name, entry in data.items():
        if name in ("images", "runtime"):
            continue
        hashes = entry["sha256"]
        flat = [h for per in hashes.values() for h in per.values()] if isinstance(hashes, dict) else [hashes]
        for value in flat:
            if value is not None and not _SHA256_RE.match(str(value)):
                raise ValueError(f"versions.yaml: {name}: {value!r} is not a lowercase hex SHA-256")
    return data


def pinned_kubernetes_versions() -> list[str]:
    return sorted(load()["kubernetes"]["sha256"], key=lambda v: tuple(int(p) for p in v.split(".")))


def has_pinned_hashes(version: str) -> bool:
    return version in load()["kubernetes"]["sha256"]


def images() -> dict[str, str]:
    return dict(load()["images"])


def runtime_minimums() -> dict[str, str]:
    """Ubuntu package -> the oldest upstream version the docker step accepts."""
    return {pkg: str(v) for pkg, v in load()["runtime"]["minimum"].items()}


def downloads(role: str, kubernetes_version: str) -> tuple[Download, ...]:
    """Everything one role downloads, with hashes. A Kubernetes binary without a pinned hash
    (only possible with allowUpstreamChecksums) is checked against upstream's .sha256 file."""
    data = load()
    k8s = data["kubernetes"]
    pinned = k8s["sha256"].get(kubernetes_version, {})
    result = [
        Download(
            name=binary,
            version=kubernetes_version,
            url=k8s["url"].format(version=kubernetes_version, file=binary),
            sha256=pinned.get(binary),
            files=(("", _install_path("kubernetes", kubernetes_version, f"{BIN_DIR}/{binary}")),),
        )
        for binary in KUBERNETES_BINARIES[role]
    ]
    for name in OTHER_COMPONENTS[role]:
        entry = data[name]
        version = str(entry["version"])
        result.append(
            Download(
                name=name,
                version=version,
                url=entry["url"].format(version=version),
                sha256=entry["sha256"],
                files=tuple(
                    (member.format(version=version), _install_path(name, version, dest)) for member, dest in entry["files"].items()
                ),
            )
        )
    return tuple(result)


def summary(kubernetes_version: str) -> list[dict[str, str]]:
    """Every artifact of every role, for the preview: name, version, URL, sha256."""
    seen: dict[str, dict[str, str]] = {}
    for role in ("master", "minion"):
        for item in downloads(role, kubernetes_version):
            seen[item.url] = {"name": item.name, "version": item.version, "url": item.url, "sha256": item.sha256 or "upstream .sha256"}
    for name, ref in images().items():
        seen[ref] = {"name": name, "version": ref.rsplit(":", 1)[-1], "url": ref, "sha256": "image tag"}
    return list(seen.values())
