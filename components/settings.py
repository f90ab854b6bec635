"""Stack configuration: parsed once, validated once, frozen.

Pulumi.yaml's `config:` block is the schema (type, description, default); this module reads it so
defaults exist in one place. Everything derived from the configuration (the IP plan, the first
service IP, the DNS service IP, the cluster name, certificate renewal) is computed here, before any
resource exists, so a bad value stops `pulumi up` with nothing created.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components import versions

PROJECT = "kube-ec2"
ROOT = Path(__file__).resolve().parent.parent
PULUMI_YAML = ROOT / "Pulumi.yaml"

CLUSTER_DOMAIN = "cluster.local"
# Docker's own bridge (docker0). Pods never use it (cri-dockerd hands pods to CNI), but it
# must not shadow a cluster range, so it is fixed here and checked against them.
DOCKER_BRIDGE_CIDR = "172.17.0.0/16"
# flannel hands each host one /24 of podCidr.
FLANNEL_SUBNET_LEN = 24
# EC2 interfaces inside a VPC use jumbo frames; VXLAN adds 50 bytes of headers.
VPC_MTU = 9001
VXLAN_OVERHEAD = 50
# The master takes this offset inside the hosts' subnet, minion i the next ones (AWS keeps .0-.3).
FIRST_HOST_OFFSET = 10
# Documented placeholder (TEST-NET-1, RFC 5737) for runs that cannot look up the deployer's
# public address: tests and the offline preview. It is never reachable from anywhere, so it is
# refused as user input like every documentation range.
PLACEHOLDER_ADMIN_CIDR = "192.0.2.1/32"
# RFC 5737 section 3: TEST-NET-1, -2 and -3, for documentation only; nobody connects from them.
DOCUMENTATION_RANGES = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
CHECKIP_URL = "https://checkip.amazonaws.com"

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
# Graviton families carry a "g" after the generation digit: t4g, m6gd, c7gn, is4gen, x2gd.
_ARM_FAMILY_RE = re.compile(r"^(a1|[a-z]+\d+[a-z]*g[a-z]*)\.")
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")


class ConfigError(ValueError):
    """One or more configuration values are wrong; each line names key, value and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid kube-ec2 configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class HostPlan:
    """One EC2 host and everything about it that is known before anything is created."""

    name: str
    """Host name, node name and resource-name prefix: `master`, `minion-0`, ..."""
    role: str
    """`master` or `minion`."""
    private_ip: str
    """Fixed private address inside the subnet."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one stack plus every value derived from it."""

    stack: str
    region: str
    minion_count: int
    master_instance_type: str
    minion_instance_type: str
    kubernetes_version: str
    vpc_cidr: str
    subnet_cidr: str
    pod_cidr: str
    service_cidr: str
    admin_cidrs: tuple[str, ...]
    admin_cidrs_source: str
    """`config` (written by the user), `detected` (deployer's public /32) or `placeholder`."""
    ami_id: str | None
    """None: unset, the newest Canonical Ubuntu 24.04 amd64 image."""
    availability_zone: str | None
    """None: unset; the cluster takes the first zone offering both instance types (cluster.choose_availability_zone)."""
    root_volume_gb: int
    cert_validity_hours: int
    allow_upstream_checksums: bool

    @property
    def cluster_name(self) -> str:
        return f"{PROJECT}-{self.stack}"

    @property
    def cert_early_renewal_hours(self) -> int:
        """Certificates count as expired in the last twelfth of their life (a month for a year)."""
        return self.cert_validity_hours // 12

    @property
    def api_service_ip(self) -> str:
        """First address of serviceCidr: the `kubernetes` Service."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def dns_service_ip(self) -> str:
        """Tenth address of serviceCidr: the `kube-dns` Service (kubeadm's convention)."""
        return str(ipaddress.ip_network(self.service_cidr)[10])

    @property
    def cluster_domain(self) -> str:
        return CLUSTER_DOMAIN

    @property
    def pod_mtu(self) -> int:
        return VPC_MTU - VXLAN_OVERHEAD

    @property
    def docker_bridge_ip(self) -> str:
        """docker0's own address with prefix, as daemon.json's `bip` wants it."""
        net = ipaddress.ip_network(DOCKER_BRIDGE_CIDR)
        return f"{net[1]}/{net.prefixlen}"

    @functools.cached_property
    def master(self) -> HostPlan:
        return HostPlan("master", "master", _host_ip(self.subnet_cidr, 0))

    @functools.cached_property
    def minions(self) -> tuple[HostPlan, ...]:
        return tuple(
            HostPlan(f"minion-{i}", "minion", _host_ip(self.subnet_cidr, 1 + i))
            for i in range(self.minion_count)
        )

    @functools.cached_property
    def hosts(self) -> tuple[HostPlan, ...]:
        return (self.master, *self.minions)


def _host_ip(subnet_cidr: str, index: int) -> str:
    return str(ipaddress.ip_network(subnet_cidr)[FIRST_HOST_OFFSET + index])


def load_schema(path: Path = PULUMI_YAML) -> dict[str, dict[str, Any]]:
    """The typed `config:` block of Pulumi.yaml, keyed by bare key name."""
    return dict(yaml.safe_load(path.read_text())["config"])


# --- parsing: Pulumi hands every value over as a string (arrays as JSON); stack files as YAML.
# An empty value ("" or []) is unset: Pulumi.yaml's default applies. The CLI itself hands the
# program every default it lacks (an optional key's default is "" or []), so "unset" must be
# reachable through an empty value; for amiId, availabilityZone and adminCidrs it stays None.


def _value(key: str, spec: Mapping[str, Any], raw: Mapping[str, Any], problems: list[str]) -> Any:
    """The key's value: the stack's, else the default; None when both are empty or the stack's is wrong."""
    for candidate in (raw.get(key), spec.get("default")):
        if candidate is None or (isinstance(candidate, str) and not candidate.strip()):
            continue
        value = _coerce(key, spec, candidate, problems)
        if value != ():
            return value
    return None


def _coerce(key: str, spec: Mapping[str, Any], value: Any, problems: list[str]) -> Any:
    kind = spec["type"]
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        problems.append(f"{PROJECT}:{key}: {value!r} is not an integer; allowed: a whole number")
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        problems.append(f"{PROJECT}:{key}: {value!r} is not a boolean; allowed: true or false")
    elif kind == "array":
        parsed = value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = None
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return tuple(v.strip() for v in parsed)
        problems.append(f"{PROJECT}:{key}: {value!r} is not a list of strings; allowed: a YAML list such as [10.20.0.0/16]")
    elif isinstance(value, str):
        return value.strip()
    else:
        problems.append(f"{PROJECT}:{key}: {value!r} is not a string")
    return None


def _cidr(key: str, value: str, problems: list[str]) -> ipaddress.IPv4Network | None:
    try:
        if "/" not in value:
            raise ValueError("no prefix length")
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        reason = "has host bits set" if "host bits" in str(err) else "is not a CIDR"
        problems.append(f"{PROJECT}:{key}: {value!r} {reason}; allowed: an IPv4 network such as 10.0.0.0/16")
        return None
    if not isinstance(net, ipaddress.IPv4Network):
        problems.append(f"{PROJECT}:{key}: {value} is IPv6; allowed: an IPv4 network")
        return None
    return net


def _in_range(key: str, value: int, low: int, high: int, problems: list[str]) -> None:
    if not low <= value <= high:
        problems.append(f"{PROJECT}:{key}: {value} is out of range; allowed: {low} to {high}")


def _instance_type(key: str, value: str, problems: list[str]) -> None:
    if not _INSTANCE_TYPE_RE.match(value):
        problems.append(f"{PROJECT}:{key}: {value!r} is not an EC2 instance type; allowed: family.size such as t3.medium")
    elif _ARM_FAMILY_RE.match(value):
        problems.append(
            f"{PROJECT}:{key}: {value} is an arm64 (Graviton) type; allowed: an x86_64 type such as t3.medium "
            "(kube-ec2 installs amd64 binaries)"
        )


def parse_settings(
    raw: Mapping[str, Any],
    *,
    stack: str,
    region: str | None,
    detect_admin_cidr: Callable[[], str],
    schema: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Validate raw stack configuration (bare keys) and derive the plan. Raises ConfigError.

    `detect_admin_cidr` is called only when adminCidrs is unset; it returns the deployer's
    public address as a /32 (or the documented placeholder offline).
    """
    schema = schema if schema is not None else load_schema()
    problems: list[str] = []

    unknown = sorted(set(raw) - set(schema))
    for key in unknown:
        near = difflib.get_close_matches(key.lower(), [k.lower() for k in schema], n=1)
        hint = next((f" (did you mean {k}?)" for k in schema if near and k.lower() == near[0]), "")
        problems.append(f"{PROJECT}:{key}: {raw[key]!r} is set on an unknown key{hint}; allowed keys: {', '.join(sorted(schema))}")

    values = {key: _value(key, spec, raw, problems) for key, spec in schema.items()}

    if not region:
        problems.append("aws:region: unset; allowed: an AWS region such as us-east-1 (pulumi config set aws:region us-east-1)")
    elif not _REGION_RE.match(region):
        problems.append(f"aws:region: {region!r} is not an AWS region; allowed: a region such as us-east-1")

    count = values["minionCount"]
    if isinstance(count, int):
        _in_range("minionCount", count, 1, 100, problems)
    for key in ("masterInstanceType", "minionInstanceType"):
        if isinstance(values[key], str):
            _instance_type(key, values[key], problems)
    for key, low, high in (("rootVolumeGb", 20, 16384), ("certValidityHours", 24, 87600)):
        if isinstance(values[key], int):
            _in_range(key, values[key], low, high, problems)

    version = values["kubernetesVersion"]
    if isinstance(version, str):
        if not _VERSION_RE.match(version):
            problems.append(f"{PROJECT}:kubernetesVersion: {version!r} is not X.Y.Z; allowed: a release such as 1.34.1")
        elif not values["allowUpstreamChecksums"] and not versions.has_pinned_hashes(version):
            problems.append(
                f"{PROJECT}:kubernetesVersion: {version} has no pinned hashes in versions.yaml; allowed: "
                f"{', '.join(versions.pinned_kubernetes_versions())}, or set {PROJECT}:allowUpstreamChecksums true "
                "to check it against upstream's .sha256 files"
            )

    ami = values["amiId"]
    if isinstance(ami, str) and not _AMI_RE.match(ami):
        problems.append(f"{PROJECT}:amiId: {ami!r} is not an AMI id; allowed: ami- and 8 or 17 hex digits, or unset")
    zone = values["availabilityZone"]
    if isinstance(zone, str) and region and not (zone.startswith(region) and len(zone) > len(region)):
        problems.append(f"{PROJECT}:availabilityZone: {zone!r} is not in aws:region {region}; allowed: a zone such as {region}a, or unset")

    nets = {key: _cidr(key, values[key], problems) for key in ("vpcCidr", "podCidr", "serviceCidr") if isinstance(values[key], str)}
    vpc, pod, svc = nets.get("vpcCidr"), nets.get("podCidr"), nets.get("serviceCidr")
    subnet = _check_ranges(vpc, pod, svc, count if isinstance(count, int) else 1, problems)

    admin_source = "config"
    admin = values["adminCidrs"]
    if admin is None and not problems:
        admin, admin_source = (detect_admin_cidr(),), "detected"
        if admin[0] == PLACEHOLDER_ADMIN_CIDR:
            admin_source = "placeholder"
    elif isinstance(admin, tuple):
        _check_admin_cidrs(admin, problems)

    if problems:
        raise ConfigError(problems)
    assert subnet is not None and region
    return Settings(
        stack=stack,
        region=region,
        minion_count=count,
        master_instance_type=values["masterInstanceType"],
        minion_instance_type=values["minionInstanceType"],
        kubernetes_version=version,
        vpc_cidr=str(vpc),
        subnet_cidr=str(subnet),
        pod_cidr=str(pod),
        service_cidr=str(svc),
        admin_cidrs=admin,
        admin_cidrs_source=admin_source,
        ami_id=ami,
        availability_zone=zone,
        root_volume_gb=values["rootVolumeGb"],
        cert_validity_hours=values["certValidityHours"],
        allow_upstream_checksums=values["allowUpstreamChecksums"],
    )


def _check_admin_cidrs(cidrs: tuple[str, ...], problems: list[str]) -> None:
    """Each range a network, listed once (its rules are named by it), and one somebody can connect from."""
    seen: set[ipaddress.IPv4Network] = set()
    for item in cidrs:
        net = _cidr("adminCidrs", item, problems)
        if net is None:
            continue
        if net in seen:
            problems.append(
                f"{PROJECT}:adminCidrs: {item} is listed twice; allowed: each range once (its security-group rules are named by the range)"
            )
        seen.add(net)
        doc = next((d for d in DOCUMENTATION_RANGES if net.subnet_of(d)), None)
        if doc is not None:
            problems.append(
                f"{PROJECT}:adminCidrs: {item} is inside {doc}, a documentation range (RFC 5737) nobody connects from; "
                f"allowed: the public ranges your administrators connect from (this machine's: curl {CHECKIP_URL}, as a /32), "
                "or unset for this machine's /32"
            )


def _check_ranges(
    vpc: ipaddress.IPv4Network | None,
    pod: ipaddress.IPv4Network | None,
    svc: ipaddress.IPv4Network | None,
    minion_count: int,
    problems: list[str],
) -> ipaddress.IPv4Network | None:
    """Sizes and overlaps of the three ranges; returns the hosts' subnet (first /24 of the VPC)."""
    hosts = minion_count + 1
    subnet = None
    if vpc is not None:
        if not 16 <= vpc.prefixlen <= 28:
            problems.append(f"{PROJECT}:vpcCidr: {vpc} is /{vpc.prefixlen}; allowed: /16 to /28 (AWS VPC sizes)")
        else:
            subnet = next(vpc.subnets(new_prefix=24)) if vpc.prefixlen <= 24 else vpc
            room = subnet.num_addresses - 1 - FIRST_HOST_OFFSET  # AWS reserves the last address
            if hosts > room:
                problems.append(
                    f"{PROJECT}:vpcCidr: {vpc} holds {room} hosts in subnet {subnet} but minionCount {minion_count} needs {hosts}; "
                    "allowed: a larger range or fewer minions"
                )
    if pod is not None:
        # flannel never hands out a range's first subnet, and wants room for at least four
        # (flannel-io/flannel pkg/subnet/config.go, CheckNetworkConfig, commit 0f89b8d5).
        subnets = (2 ** (FLANNEL_SUBNET_LEN - pod.prefixlen) - 1) if pod.prefixlen < FLANNEL_SUBNET_LEN else 0
        largest = FLANNEL_SUBNET_LEN - max(2, hosts.bit_length())
        if subnets < hosts or pod.prefixlen > FLANNEL_SUBNET_LEN - 2:
            problems.append(
                f"{PROJECT}:podCidr: {pod} gives flannel {subnets} /24 subnets (it never uses the first) "
                f"but {hosts} hosts need one each; allowed: /{largest} or larger"
            )
    if svc is not None and not 12 <= svc.prefixlen <= 28:
        problems.append(
            f"{PROJECT}:serviceCidr: {svc} is /{svc.prefixlen}; allowed: /12 to /28 "
            "(the DNS Service takes the tenth address; kube-apiserver refuses ranges larger than /12)"
        )
    named = [("vpcCidr", vpc), ("podCidr", pod), ("serviceCidr", svc)]
    for i, (key_a, a) in enumerate(named):
        for key_b, b in named[i + 1 :]:
            if a is not None and b is not None and a.overlaps(b):
                problems.append(f"{PROJECT}:{key_b}: {b} overlaps {key_a} {a}; allowed: a range disjoint from {key_a}")
        if a is not None and a.overlaps(ipaddress.ip_network(DOCKER_BRIDGE_CIDR)):
            problems.append(
                f"{PROJECT}:{key_a}: {a} overlaps Docker's bridge {DOCKER_BRIDGE_CIDR}; allowed: a range outside {DOCKER_BRIDGE_CIDR}"
            )
    return subnet
