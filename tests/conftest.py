"""Shared fixtures: the whole program run offline (Pulumi mocks, preview=False) per stack."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components import offline  # noqa: E402
from components.settings import PLACEHOLDER_ADMIN_CIDR, Settings, parse_settings  # noqa: E402

# An unusual but valid stack: one minion, small ranges, the world allowed in on purpose, a fixed
# AMI, and a Kubernetes version with no pinned hashes (checked against upstream .sha256 files).
# Values as the CLI stores them: text, and a list for the object `pulumi config set --path` makes.
UNUSUAL: dict[str, offline.cli.StackValue] = {
    "aws:region": "ap-southeast-2",
    "kube-ec2:minionCount": "1",
    "kube-ec2:vpcCidr": "192.168.50.0/26",
    "kube-ec2:podCidr": "10.8.0.0/22",
    "kube-ec2:serviceCidr": "10.9.0.0/28",
    "kube-ec2:adminCidrs": ["0.0.0.0/0"],
    "kube-ec2:amiId": "ami-0abcdef1234567890",
    "kube-ec2:availabilityZone": "ap-southeast-2b",
    "kube-ec2:kubernetesVersion": "1.36.0",
    "kube-ec2:allowUpstreamChecksums": "true",
    "kube-ec2:certValidityHours": "720",
}


@functools.cache
def run_stack(name: str) -> offline.Run:
    """Cached: each stack is evaluated once per test session."""
    if name == "unusual":
        return offline.run("unusual", UNUSUAL)
    return offline.run(name)


@pytest.fixture(scope="session", params=["dev", "prod", "unusual"])
def stack(request: pytest.FixtureRequest) -> offline.Run:
    return run_stack(request.param)


@pytest.fixture(scope="session")
def dev() -> offline.Run:
    return run_stack("dev")


def dev_settings(**raw: object) -> Settings:
    return parse_settings(raw, stack="dev", region="us-east-1", detect_admin_cidr=lambda: PLACEHOLDER_ADMIN_CIDR)


def require_tool(name: str) -> str:
    """Path of a validator. Missing: a failure in CI (CI=true), a skip on a developer machine."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed (bash .ci/run installs it)")
    return path
