"""The offline engine: run the real program without AWS or the Pulumi CLI (Pulumi mocks, `preview=False`).

The simulator lives in this package and the product never imports it (tests/test_layout.py):
    components/offline/__init__.py   the mocks and `run()`, shared by the tests and the preview
    components/offline/tls.py        pulumi-tls emulation: real keys and certificates
    components/offline/preview.py    `python -m components.offline.preview`: the plan as plain files
    components/offline/cli.py        the Pulumi CLI's rules for Pulumi.yaml and stack config, applied before the program runs
    components/offline/upstream/     Pulumi's project schema (project.json, Apache-2.0)
    components/offline/monitor.py    the resource monitor: dependencies, additionalSecretOutputs
    components/offline/ec2.py        EC2's answers to the zone lookups (zones, instance-type offerings)

The tests and the offline preview both use `run()`. Every resource the program registers is
recorded with its resolved inputs; pulumi-tls requests get real certificates (offline.tls), AWS
resources get deterministic ids and documentation-range public addresses (RFC 5737).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from components.offline import cli, ec2
from components.offline import tls as offline_tls
from components.offline.monitor import OfflineMonitor
from components.settings import ROOT

PROJECT = "kube-ec2"
FAKE_AMI = "ami-0123456789abcdef0"


@dataclass
class Recorded:
    """One resource as the program registered it."""

    typ: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


# Ids shaped like AWS's where a host reads them (the etcd volume's NVMe serial), derived from the name.
AWS_ID_PREFIXES = {"aws:ebs/volume:Volume": "vol-0"}


def resource_id(typ: str, name: str) -> str:
    prefix = AWS_ID_PREFIXES.get(typ)
    return f"{name}-id" if prefix is None else prefix + hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass
class OfflineMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)
    monitor: OfflineMonitor | None = None
    """The monitor of the run (dependencies, additionalSecretOutputs), set by `run()`."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs: dict[str, Any] = dict(args.inputs)
        typ = args.typ
        if typ.startswith("tls:"):
            outputs.update(offline_tls.issue(typ, args.inputs))
        elif typ == "random:index/randomBytes:RandomBytes":
            data = os.urandom(int(args.inputs.get("length", 32)))
            outputs.update({"base64": base64.b64encode(data).decode(), "hex": data.hex()})
        elif typ == "aws:ec2/instance:Instance":
            # Public addresses follow from the private ones, not from registration order (which
            # asyncio may vary), so every run, and the preview's golden files, see the same values.
            last_octet = str(args.inputs["privateIp"]).rsplit(".", 1)[1]
            outputs.update({"publicIp": f"198.51.100.{last_octet}", "arn": f"arn:aws:ec2:::instance/{args.name}"})
        elif typ == "aws:ec2/eip:Eip":
            outputs.update({"publicIp": "203.0.113.10"})  # the master's Elastic IP (there is one)
        elif typ == "aws:ec2/keyPair:KeyPair":
            outputs.update({"keyName": f"{args.name}-key"})
        elif typ == "command:remote:Command":
            outputs.update({"stdout": "", "stderr": ""})
        elif typ == "aws:s3/bucket:Bucket":
            outputs["arn"] = f"arn:aws:s3:::{resource_id(typ, args.name)}"  # a bucket's id is its name
        elif typ == "aws:ec2/subnet:Subnet" and not outputs.get("availabilityZone"):
            outputs["availabilityZone"] = f"{pulumi.Config('aws').get('region')}a"  # AWS's choice, when unset
        self.resources.append(Recorded(typ, args.name, dict(args.inputs), outputs))
        # Mark what the real providers mark secret (the mock monitor ignores additional_secret_outputs),
        # so secretness flows through the program here as it does in `pulumi up`.
        if typ.startswith("tls:"):
            return f"{args.name}-id", offline_tls.mark_secrets(typ, outputs)
        if typ == "random:index/randomBytes:RandomBytes":
            return f"{args.name}-id", {**outputs, **{k: offline_tls.secret(outputs[k]) for k in ("base64", "hex")}}
        return resource_id(typ, args.name), outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]] | dict[str, Any]:
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": FAKE_AMI, "imageId": FAKE_AMI, "architecture": "x86_64", "name": "ubuntu-noble-24.04-amd64-server"}
        region = str(args.args.get("region") or pulumi.runtime.get_config("aws:region"))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return ec2.availability_zones(region, args.args)
        if args.token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            return ec2.instance_type_offerings(region, args.args)
        return {}

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def named(self, name: str) -> Recorded:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"{name}: {len(matches)} resources"
        return matches[0]


def stack_config(stack: str, root: Path = ROOT) -> dict[str, cli.StackValue]:
    """Pulumi.<stack>.yaml's configuration as the CLI stores it (cli.load_stack)."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name}; stacks: {', '.join(list_stacks(root))}")
    return cli.load_stack(path, cli.load_project(root / "Pulumi.yaml"))


def list_stacks(root: Path = ROOT) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


@dataclass
class Run:
    """What one offline run of the program produced."""

    mocks: OfflineMocks
    cluster: Any
    outputs: dict[str, Any]
    secret_outputs: set[str]


def run(stack: str, config: Mapping[str, cli.StackValue] | None = None, mocks: OfflineMocks | None = None) -> Run:
    """Run the program for `stack` under mocks, as `pulumi up` would after `pulumi stack select <stack>`.

    `config` is the stack's configuration as the CLI stores it (Pulumi.<stack>.yaml unless given):
    text, or lists for objects. The CLI's rules apply first (cli.merge_config: project defaults,
    missing keys, types) and raise cli.CliError; the program's own checks raise pulumi.RunError,
    exactly as `pulumi up` would report them.
    """
    from components import program

    os.environ[program.OFFLINE_ENV] = "1"
    config = stack_config(stack) if config is None else config
    merged = cli.merge_config(stack, cli.load_project(ROOT / "Pulumi.yaml"), config)
    mocks = OfflineMocks() if mocks is None else mocks
    mocks.monitor = OfflineMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=mocks.monitor)
    pulumi.runtime.set_all_config(cli.program_config(merged))
    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def _evaluate() -> pulumi.Output[Any]:
        cluster = program.build()
        outputs = program.stack_outputs(cluster)
        result["cluster"] = cluster
        result["secret"] = {name: out.is_secret() for name, out in outputs.items()}
        return pulumi.Output.all(**outputs).apply(lambda values: result.update(outputs=values))

    _evaluate()
    secret = {name for name, flag in result["secret"].items() if _resolved(flag)}
    return Run(mocks, result["cluster"], result["outputs"], secret)


def _resolved(awaitable: Any) -> Any:
    from pulumi.runtime.sync_await import _sync_await

    return _sync_await(awaitable)
