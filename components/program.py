"""The program `pulumi up` runs (via __main__.py) and the offline preview runs under mocks."""

from __future__ import annotations

import ipaddress
import os
import urllib.request
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components.cluster import Cluster
from components.render import SSH_USER
from components.settings import CHECKIP_URL, PLACEHOLDER_ADMIN_CIDR, PROJECT, ConfigError, Settings, load_schema, parse_settings

OFFLINE_ENV = "KUBE_EC2_OFFLINE"


def detect_admin_cidr() -> str:
    """The deployer's public address as a /32; the documented placeholder when offline."""
    if os.environ.get(OFFLINE_ENV) == "1":
        return PLACEHOLDER_ADMIN_CIDR
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=10) as response:
            address = ipaddress.IPv4Address(response.read().decode().strip())
    except (OSError, ValueError) as err:
        raise ConfigError(
            [
                f"{PROJECT}:adminCidrs: unset, and looking up this machine's public address at {CHECKIP_URL} failed "
                f"({err}); allowed: set the ranges that may connect, e.g. pulumi config set --path 'adminCidrs[0]' <your-public-ip>/32"
            ]
        ) from err
    return f"{address}/32"


def read_settings() -> Settings:
    """Pulumi config -> validated Settings (raises ConfigError, before any resource exists)."""
    schema = load_schema()
    prefix = f"{PROJECT}:"
    every_key = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    raw: dict[str, object] = {}
    for full_key in every_key:
        if full_key.startswith(prefix):
            value = runtime_config.get_config(full_key)
            if value is not None:
                raw[full_key.removeprefix(prefix)] = value
    return parse_settings(
        raw,
        stack=pulumi.get_stack(),
        region=pulumi.Config("aws").get("region"),
        detect_admin_cidr=detect_admin_cidr,
        schema=schema,
    )


def build() -> Cluster:
    """Validate the configuration, build the cluster, export the outputs."""
    try:
        settings = read_settings()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    if settings.admin_cidrs_source == "detected":
        pulumi.log.warn(
            f"{PROJECT}:adminCidrs is unset: SSH, the API and NodePorts are open only to this machine's public "
            f"address {settings.admin_cidrs[0]}. Set {PROJECT}:adminCidrs to choose who may connect."
        )
    cluster = Cluster(PROJECT, settings)
    for name, value in stack_outputs(cluster).items():
        pulumi.export(name, value)
    return cluster


def stack_outputs(cluster: Cluster) -> dict[str, pulumi.Output[Any]]:
    """The stack's outputs; sshPrivateKey and kubeconfig are secrets."""
    return {
        "masterPublicIp": cluster.master.public_ip,
        "masterPrivateIp": pulumi.Output.from_input(cluster.master.private_ip),
        "minionPublicIps": pulumi.Output.all(*[m.public_ip for m in cluster.minions]),
        "minionPrivateIps": pulumi.Output.from_input([m.private_ip for m in cluster.minions]),
        "sshUser": pulumi.Output.from_input(SSH_USER),
        "sshPrivateKey": cluster.ssh_private_key,
        "kubeconfig": cluster.kubeconfig,
        "etcdSnapshotBucket": cluster.snapshot_bucket,
    }
