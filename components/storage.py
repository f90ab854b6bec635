"""State that must outlive the master: etcd's own EBS volume (and where it is attached).

The volume is its own resource, in the subnet's zone, and never a child of an instance: replacing
the master (a new AMI, say) detaches it from the old instance and attaches it to the new one, data
intact. It is neither `protect`ed (that would make `pulumi destroy` fail) nor retained on delete
(destroy would leave it behind, billed): destroy removes it like everything else, and the
snapshots in S3 are what survives a mistake.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components import render
from components.network import cluster_tags
from components.settings import Settings

ETCD_VOLUME_GB = 10
"""etcd's default backend quota is 2 GiB (8 GiB is its recommended maximum); gp3 gives the same
3000 IOPS and 125 MiB/s at any size, so a bigger volume buys nothing."""


class EtcdVolume(pulumi.ComponentResource):
    volume: aws.ebs.Volume

    def __init__(
        self, name: str, settings: Settings, availability_zone: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kube-ec2:index:EtcdVolume", name, None, opts)
        self._name = name
        self.volume = aws.ebs.Volume(
            f"{name}-volume",
            availability_zone=availability_zone,
            size=ETCD_VOLUME_GB,
            type="gp3",
            encrypted=True,
            tags={**cluster_tags(settings, "etcd-data"), "Role": "etcd-data"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"volumeId": self.volume.id})

    def attach(self, instance: aws.ec2.Instance) -> aws.ec2.VolumeAttachment:
        """Attach the volume to the master. Deleted before replaced (a volume attaches to one
        instance at a time); the instance is stopped before the volume leaves it, so etcd shuts
        down cleanly instead of losing its disk while running."""
        return aws.ec2.VolumeAttachment(
            f"{self._name}-attachment",
            device_name=render.ETCD_VOLUME_DEVICE,
            instance_id=instance.id,
            volume_id=self.volume.id,
            stop_instance_before_detaching=True,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
