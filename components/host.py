"""Host: one EC2 instance (and, for the master, its Elastic IP)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.network import cluster_tags
from components.settings import HostPlan, Settings


@dataclass(frozen=True)
class HostArgs:
    plan: HostPlan
    """Name, role and fixed private IP."""
    instance_type: str
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    key_name: pulumi.Input[str]
    ami_id: pulumi.Input[str]
    ami_is_lookup: bool
    """True when the AMI is looked up (newest Ubuntu): a newer image must not replace running hosts."""
    user_data_base64: pulumi.Input[str]
    """gzip+base64 cloud-config; non-secret by construction."""
    elastic_ip: bool = False
    after: tuple[pulumi.Resource, ...] = ()
    """What the instance and its Elastic IP need first and must be deleted before (network, security groups)."""
    instance_profile: pulumi.Input[str] | None = None
    """IAM instance profile (the master's: write etcd snapshots); minions get none."""


class Host(pulumi.ComponentResource):
    instance: aws.ec2.Instance
    public_ip: pulumi.Output[str]
    """The address SSH and (for the master) the API use: the Elastic IP when there is one."""
    private_ip: str

    def __init__(self, name: str, settings: Settings, args: HostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-ec2:index:Host", name, None, opts)
        tags = {**cluster_tags(settings, name), "Role": args.plan.role}
        # User data only runs at first boot; later template changes reach running hosts through the
        # remote steps, so a change must not stop/start (or replace) the instance.
        # ebsOptimized replaces an instance when it changes (the provider's ForceNew), and hosts made
        # before it was set read back false although t3 is EBS-optimized anyway: set on new hosts only.
        ignored = ["userData", "userDataBase64", "ebsOptimized"] + (["ami"] if args.ami_is_lookup else [])
        self.instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami_id,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            private_ip=args.plan.private_ip,
            vpc_security_group_ids=[args.security_group_id],
            key_name=args.key_name,
            iam_instance_profile=args.instance_profile,
            # Explicit, as the AWS baselines ask (t3 and newer are EBS-optimized by default anyway).
            ebs_optimized=True,
            user_data_base64=args.user_data_base64,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", volume_size=settings.root_volume_gb, encrypted=True, delete_on_termination=True
            ),
            tags=tags,
            volume_tags=tags,
            # The fixed private IP can exist once in the subnet: a replacement (new AMI, type family,
            # subnet) must wait until the old instance is gone, not be created next to it.
            opts=pulumi.ResourceOptions(
                parent=self, ignore_changes=ignored, delete_before_replace=True, depends_on=list(args.after)
            ),
        )
        self.private_ip = args.plan.private_ip
        if args.elastic_ip:
            eip = aws.ec2.Eip(
                f"{name}-eip",
                domain="vpc",
                instance=self.instance.id,
                tags=tags,
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
            )
            self.public_ip = eip.public_ip
        else:
            self.public_ip = self.instance.public_ip
        self.register_outputs({"publicIp": self.public_ip, "privateIp": self.private_ip})
