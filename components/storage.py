"""State that must outlive the master: etcd's own EBS volume (and where it is attached).

The volume is its own resource, in the subnet's zone, and never a child of an instance: replacing
the master (a new AMI, say) detaches it from the old instance and attaches it to the new one, data
intact. It is neither `protect`ed (that would make `pulumi destroy` fail) nor retained on delete
(destroy would leave it behind, billed): destroy removes it like everything else, and the
snapshots in S3 are what survives a mistake.
"""

from __future__ import annotations

import json

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


class SnapshotBucket(pulumi.ComponentResource):
    """A per-stack S3 bucket for etcd snapshots, and the instance profile that may write into it.

    Encrypted (SSE-S3), every kind of public access blocked, versioned (a snapshot overwritten or
    deleted stays recoverable) with a lifecycle rule so it does not grow for ever. `force_destroy`:
    `pulumi destroy` deletes it with its snapshots; keep a copy first if you want one. The role may
    only PutObject under the snapshot prefix of this bucket: not read, list or delete anything.
    """

    bucket: aws.s3.Bucket
    instance_profile: aws.iam.InstanceProfile

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-ec2:index:SnapshotBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = cluster_tags(settings, name)
        self.bucket = aws.s3.Bucket(f"{name}-bucket", force_destroy=True, tags=tags, opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=self.bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="AES256"
                    ),
                )
            ],
            opts=child,
        )
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=self.bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=self.bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-snapshots",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=f"{render.SNAPSHOT_PREFIX}/"),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=SNAPSHOT_DAYS),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=NONCURRENT_DAYS
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=1
                    ),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        role = aws.iam.Role(
            f"{name}-writer",
            assume_role_policy=json.dumps(ASSUME_ROLE_EC2),
            description=f"kube-ec2 {settings.cluster_name} master: write etcd snapshots",
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-put-only",
            role=role.id,
            policy=self.bucket.arn.apply(put_only_policy),
            opts=child,
        )
        self.instance_profile = aws.iam.InstanceProfile(f"{name}-writer", role=role.id, tags=tags, opts=child)
        self.register_outputs({"bucket": self.bucket.id})


SNAPSHOT_DAYS = 30
"""Snapshots are kept this long; a version overwritten or deleted, NONCURRENT_DAYS more."""
NONCURRENT_DAYS = 7
ASSUME_ROLE_EC2 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def put_only_policy(bucket_arn: str) -> str:
    """The master's only permission: put objects under the snapshot prefix of its own bucket."""
    statement = {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket_arn}/{render.SNAPSHOT_PREFIX}/*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})
