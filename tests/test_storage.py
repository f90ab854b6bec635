"""State that outlives the master, as the program declares it (under mocks, preview=False)."""

from __future__ import annotations

from components import offline
from components.offline.preview import decode_user_data
from tests.conftest import UNUSUAL
from tests.test_lifecycle import options

VOLUME = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"


def test_etcd_volume_is_encrypted_gp3_in_the_subnets_zone(stack: offline.Run) -> None:
    (volume,) = stack.mocks.of_type(VOLUME)
    (subnet,) = stack.mocks.of_type("aws:ec2/subnet:Subnet")
    assert volume.inputs["encrypted"] is True and volume.inputs["type"] == "gp3"
    assert volume.inputs["size"] == 10
    assert volume.inputs["availabilityZone"] == subnet.outputs["availabilityZone"]
    assert volume.inputs["tags"]["Role"] == "etcd-data"


def test_zone_follows_the_configured_zone() -> None:
    run = offline.run("unusual", UNUSUAL)
    assert run.mocks.of_type(VOLUME)[0].inputs["availabilityZone"] == "ap-southeast-2b"


def test_attachment_joins_that_volume_to_the_master_and_stops_it_before_detaching(dev: offline.Run) -> None:
    (volume,) = dev.mocks.of_type(VOLUME)
    (attachment,) = dev.mocks.of_type(ATTACHMENT)
    assert attachment.inputs["instanceId"] == "master-instance-id"
    assert attachment.inputs["volumeId"].startswith("vol-0")
    assert attachment.inputs["deviceName"] == "/dev/sdf"
    assert attachment.inputs["stopInstanceBeforeDetaching"] is True
    assert volume.name == "etcd-volume"


def test_master_user_data_names_the_volume_and_minions_know_nothing_of_it(dev: offline.Run) -> None:
    volume_id = dev.mocks.of_type(ATTACHMENT)[0].inputs["volumeId"]
    texts = {r.name: decode_user_data(r.inputs["userDataBase64"])[0] for r in dev.mocks.of_type("aws:ec2/instance:Instance")}
    master = texts.pop("master-instance")
    minions = list(texts.values())
    assert len(minions) == 3
    assert f'ETCD_VOLUME_ID="{volume_id}"' in master and "path: /etc/kube-ec2/etcd-storage.env" in master
    assert all("ETCD_VOLUME_ID" not in m for m in minions)


def test_volume_is_neither_protected_nor_retained_so_destroy_removes_it() -> None:
    """`protect` would make `pulumi destroy` fail; `retain_on_delete` would leave a billed volume behind."""
    opts = options()
    volume = opts[(VOLUME, "etcd-volume")]
    assert not volume.protect and not volume.retain_on_delete
    assert not any(o.protect or o.retain_on_delete for o in opts.values())
    # Not tied to any instance: replacing the master cannot replace the volume.
    assert not any(dep.endswith("-instance") for dep in volume.dependencies)


def test_etcd_step_waits_for_the_attachment() -> None:
    """etcd starts on its volume; on destroy the attachment (which stops the master) goes after every step."""
    assert "etcd-attachment" in options()[("command:remote:Command", "master-etcd")].dependencies


def _only(run: offline.Run, typ: str) -> dict:
    (resource,) = run.mocks.of_type(typ)
    return resource.inputs


def test_snapshot_bucket_is_encrypted_private_versioned_expiring_and_destroyable(dev: offline.Run) -> None:
    bucket = dev.mocks.named("etcd-snapshots-bucket")
    assert bucket.inputs["forceDestroy"] is True  # destroy deletes it with its snapshots (README says so)
    bucket_id = "etcd-snapshots-bucket-id"
    block = _only(dev, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert block == {"bucket": bucket_id, "blockPublicAcls": True, "blockPublicPolicy": True,
                     "ignorePublicAcls": True, "restrictPublicBuckets": True}
    sse = _only(dev, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse["bucket"] == bucket_id
    assert sse["rules"] == [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]
    versioning = _only(dev, "aws:s3/bucketVersioning:BucketVersioning")
    assert versioning == {"bucket": bucket_id, "versioningConfiguration": {"status": "Enabled"}}
    (rule,) = _only(dev, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"]
    assert rule["status"] == "Enabled" and rule["filter"] == {"prefix": "snapshots/"}
    assert rule["expiration"] == {"days": 30} and rule["noncurrentVersionExpiration"] == {"noncurrentDays": 7}


def test_master_may_only_put_snapshots_into_its_bucket_and_minions_get_no_role(dev: offline.Run) -> None:
    import json

    policy = json.loads(_only(dev, "aws:iam/rolePolicy:RolePolicy")["policy"])
    assert policy == {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::etcd-snapshots-bucket-id/snapshots/*"}],
    }
    assume = json.loads(_only(dev, "aws:iam/role:Role")["assumeRolePolicy"])
    assert assume["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    assert len(dev.mocks.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")) == 0
    assert len(dev.mocks.of_type("aws:iam/rolePolicy:RolePolicy")) == 1
    assert _only(dev, "aws:iam/instanceProfile:InstanceProfile") == {
        "role": "etcd-snapshots-writer-id", "tags": dev.mocks.named("etcd-snapshots-bucket").inputs["tags"]
    }
    profiles = {r.name: r.inputs.get("iamInstanceProfile") for r in dev.mocks.of_type("aws:ec2/instance:Instance")}
    assert profiles.pop("master-instance") == "etcd-snapshots-writer-id"
    assert set(profiles.values()) == {None}


def test_master_user_data_names_the_bucket(dev: offline.Run) -> None:
    text = decode_user_data(dev.mocks.named("master-instance").inputs["userDataBase64"])[0]
    assert 'SNAPSHOT_BUCKET="etcd-snapshots-bucket-id"' in text
    assert "path: /usr/local/sbin/kube-ec2-etcd-snapshot" in text and "path: /etc/systemd/system/etcd-snapshot.timer" in text
