"""Network: one VPC per stack with a public subnet, an internet gateway and a default route."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.settings import Settings


def cluster_tags(settings: Settings, name: str) -> dict[str, str]:
    """Tags every kube-ec2 resource carries: a readable Name and the cluster ownership tag."""
    return {"Name": f"{settings.cluster_name}-{name}", f"kubernetes.io/cluster/{settings.cluster_name}": "owned"}


class Network(pulumi.ComponentResource):
    vpc: aws.ec2.Vpc
    subnet: aws.ec2.Subnet

    def __init__(
        self, name: str, settings: Settings, availability_zone: str, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kube-ec2:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=settings.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=cluster_tags(settings, "vpc"),
            opts=child,
        )
        # Every VPC comes with a default security group that lets its members reach each other;
        # taking it under management removes all of its rules (none are declared), so a resource
        # launched in this VPC without a group of ours is reachable by nothing.
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg", vpc_id=self.vpc.id, tags=cluster_tags(settings, "default-sg-no-rules"), opts=child
        )
        # A new VPC gets a new gateway: moving one in place detaches it from the old VPC while the old
        # hosts still hold public addresses there, which AWS refuses.
        gateway = aws.ec2.InternetGateway(
            f"{name}-igw",
            vpc_id=self.vpc.id,
            tags=cluster_tags(settings, "igw"),
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["vpcId"]),
        )
        # Hosts get public addresses: they download packages and releases without a NAT gateway,
        # and pulumi-command reaches the master over SSH and minions through it (see security.py).
        self.subnet = aws.ec2.Subnet(
            f"{name}-subnet",
            vpc_id=self.vpc.id,
            cidr_block=settings.subnet_cidr,
            availability_zone=availability_zone,
            map_public_ip_on_launch=True,
            tags=cluster_tags(settings, "subnet"),
            # Its CIDR can exist once in the VPC: a replacement (another availabilityZone) is created
            # only after the old subnet, and the hosts in it, are gone.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        routes = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=self.vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=cluster_tags(settings, "routes"),
            opts=child,
        )
        aws.ec2.RouteTableAssociation(f"{name}-routes-subnet", subnet_id=self.subnet.id, route_table_id=routes.id, opts=child)
        self.register_outputs({"vpcId": self.vpc.id, "subnetId": self.subnet.id})
