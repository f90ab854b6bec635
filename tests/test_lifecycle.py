"""How `pulumi up` replaces what the program declares: replacements must never conflict.

The Pulumi engine creates a replacement before deleting the old resource unless the provider or
the program asks for delete-before-replace (pulumi/pulumi pkg/resource/deploy/step_generator.go
at 1a16857a44f16e46a9dce29f184c511062a70f80: `deleteBeforeReplace := diff.DeleteBeforeReplace`,
overridden by the resource option; for a delete-before-replace it first deletes the dependents that
would be replaced too, `calculateDependentReplacements`). The AWS provider asks for it only for
resources whose explicit name is fixed, which none of the identities below is.
"""

from __future__ import annotations

import functools

from components import offline
from tests.engine_options import Options, recording

# Identities AWS allows once, and the input that pins each: creating the replacement next to the
# old resource fails (the address, the CIDR or the volume is in use).
IDENTITY_PINNING = {
    "aws:ec2/instance:Instance": "privateIp",
    "aws:ec2/subnet:Subnet": "cidrBlock",
    "aws:ec2/volumeAttachment:VolumeAttachment": "volumeId",  # a volume attaches to one instance at a time
}


@functools.cache
def options(stack: str = "dev") -> dict[tuple[str, str], Options]:
    with recording() as seen:
        offline.run(stack)
    return dict(seen)


def test_identity_pinning_resources_are_deleted_before_replaced() -> None:
    found = {typ: 0 for typ in IDENTITY_PINNING}
    for (typ, name), opts in options().items():
        if typ in IDENTITY_PINNING:
            found[typ] += 1
            assert opts.delete_before_replace, f"{name} pins {IDENTITY_PINNING[typ]} but is created before the old one goes"
    assert found == {"aws:ec2/instance:Instance": 4, "aws:ec2/subnet:Subnet": 1, "aws:ec2/volumeAttachment:VolumeAttachment": 1}


def test_options_recorder_sees_what_the_program_declared() -> None:
    """The recorder reads the real request: ignore_changes and dependencies as cluster.py sets them."""
    master = options()[("aws:ec2/instance:Instance", "master-instance")]
    assert master.ignore_changes == ("userData", "userDataBase64", "ami")
    assert master.property_dependencies["subnetId"] == ("network-subnet",)
    etcd = options()[("command:remote:Command", "master-etcd")]
    assert "master-pki" in etcd.dependencies and not etcd.delete_before_replace
