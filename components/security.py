"""Security groups, least privilege: one rule per port and source, each with a description.

Nothing is reachable from outside the cluster except the master's SSH, the API and NodePorts,
and only from adminCidrs. Minions accept SSH only from the master (the steps reach them through
it). etcd, the kubelet and VXLAN accept cluster members only; etcd's peer port 2380 is not opened
at all (one etcd member).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.network import cluster_tags
from components.settings import Settings


@dataclass(frozen=True)
class Rule:
    """One ingress rule. `source` is a CIDR, or the group name `master` / `minion`."""

    group: str
    port: tuple[int, int]
    protocol: str
    source: str
    description: str


def ingress_rules(settings: Settings) -> list[Rule]:
    """Every ingress rule of the stack (pure, so tests and the preview read the same list)."""
    rules: list[Rule] = []
    for cidr in settings.admin_cidrs:
        rules += [
            Rule("master", (22, 22), "tcp", cidr, f"SSH from admin range {cidr}"),
            Rule("master", (6443, 6443), "tcp", cidr, f"Kubernetes API from admin range {cidr}"),
            Rule("minion", (30000, 32767), "tcp", cidr, f"NodePort Services from admin range {cidr}"),
        ]
    rules += [
        Rule("master", (6443, 6443), "tcp", "minion", "Kubernetes API from kubelets, kube-proxy and pods"),
        Rule("master", (2379, 2379), "tcp", "minion", "etcd client port for flanneld on minions"),
        Rule("master", (8472, 8472), "udp", "minion", "flannel VXLAN from minions"),
        Rule("minion", (22, 22), "tcp", "master", "SSH from the master, the only way in to minions"),
        Rule("minion", (10250, 10250), "tcp", "master", "kubelet API from the apiserver"),
        Rule("minion", (8472, 8472), "udp", "master", "flannel VXLAN from the master"),
        Rule("minion", (8472, 8472), "udp", "minion", "flannel VXLAN between minions"),
    ]
    return rules


class SecurityGroups(pulumi.ComponentResource):
    master: aws.ec2.SecurityGroup
    minion: aws.ec2.SecurityGroup

    def __init__(
        self, name: str, settings: Settings, vpc_id: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kube-ec2:index:SecurityGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        groups = {
            role: aws.ec2.SecurityGroup(
                f"{name}-{role}",
                vpc_id=vpc_id,
                description=f"kube-ec2 {settings.cluster_name} {role}",
                tags=cluster_tags(settings, role),
                opts=child,
            )
            for role in ("master", "minion")
        }
        self.master, self.minion = groups["master"], groups["minion"]
        for rule in ingress_rules(settings):
            source = groups.get(rule.source)
            low, high = rule.port
            slug = rule.source.replace("/", "-").replace(".", "-")
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{rule.group}-{rule.protocol}{low}-from-{slug}",
                security_group_id=groups[rule.group].id,
                ip_protocol=rule.protocol,
                from_port=low,
                to_port=high,
                cidr_ipv4=None if source else rule.source,
                referenced_security_group_id=source.id if source else None,
                description=rule.description,
                tags=cluster_tags(settings, f"{rule.group}-{rule.protocol}{low}"),
                opts=child,
            )
        # The SecurityGroup resource drops AWS's default allow-all egress, so say it explicitly:
        # hosts fetch packages, releases and images, and pods may call anything outside.
        for role, group in groups.items():
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-{role}-egress",
                security_group_id=group.id,
                ip_protocol="-1",
                cidr_ipv4="0.0.0.0/0",
                description="All outbound: packages, release downloads, image pulls, pod egress",
                tags=cluster_tags(settings, f"{role}-egress"),
                opts=child,
            )
        self.register_outputs({"masterId": self.master.id, "minionId": self.minion.id})
