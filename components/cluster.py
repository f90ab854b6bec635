"""Cluster: network, security groups, hosts, PKI, and the remote steps that assemble them."""

from __future__ import annotations

import shlex

import pulumi
import pulumi_aws as aws
import pulumi_command as command
import pulumi_tls as tls

from components import bootstrap, render, zones
from components.host import Host, HostArgs
from components.network import Network, cluster_tags
from components.pki import Pki
from components.security import SecurityGroups
from components.settings import Settings
from components.storage import EtcdVolume, SnapshotBucket

# Canonical's AWS account; the image name pattern of Ubuntu 24.04 LTS (noble) amd64 server.
CANONICAL_OWNER = "099720109477"
UBUNTU_IMAGE_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
# A host that is still booting refuses SSH for a while: retry dials for up to ~10 minutes.
DIAL_ERROR_LIMIT = 60
PER_DIAL_TIMEOUT = 10
# What pulumi-command stores of a step's run (provider/pkg/provider/remote/baseOutputs.go, v1.2.1).
SECRET_STEP_OUTPUTS = ("stdout", "stderr")
# A drain hook runs on destroy, against a master that is up (or gone for good): a few dials only.
DRAIN_DIAL_ERROR_LIMIT = 3


def ssh_connection(
    host: pulumi.Input[str],
    private_key: pulumi.Input[str],
    via: pulumi.Input[str] | None = None,
    dial_error_limit: int = DIAL_ERROR_LIMIT,
) -> command.remote.ConnectionArgs:
    """SSH as the image's user to `host`; through `via` (the master's public address) when given."""
    proxy = None
    if via is not None:
        proxy = command.remote.ProxyConnectionArgs(
            host=via,
            user=render.SSH_USER,
            private_key=private_key,
            dial_error_limit=dial_error_limit,
            per_dial_timeout=PER_DIAL_TIMEOUT,
        )
    return command.remote.ConnectionArgs(
        host=host,
        user=render.SSH_USER,
        private_key=private_key,
        dial_error_limit=dial_error_limit,
        per_dial_timeout=PER_DIAL_TIMEOUT,
        proxy=proxy,
    )


def choose_availability_zone(settings: Settings, parent: pulumi.Resource) -> str:
    """`availabilityZone`, or the first standard zone of the region offering both instance types."""
    if settings.availability_zone:
        return settings.availability_zone
    opts = pulumi.InvokeOptions(parent=parent)
    types = sorted({settings.master_instance_type, settings.minion_instance_type})
    # Standard zones only: Local and Wavelength Zones are opt-in and offer few instance types.
    standard = aws.get_availability_zones(
        state="available",
        filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
        opts=opts,
    )
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=types)],
        opts=opts,
    )
    offered = zones.offered_in(offerings.instance_types, offerings.locations, types)
    try:
        return zones.choose_zone(settings.region, standard.names, offered)
    except zones.NoZoneError as err:
        raise pulumi.RunError(str(err)) from None


def remote_command(script: str) -> str:
    """Run a step script as root over the SSH session; standard input passes through."""
    return f"sudo -n bash -c {shlex.quote(script)}"


class Cluster(pulumi.ComponentResource):
    settings: Settings
    availability_zone: str
    """The subnet's zone, so every host's and the etcd volume's."""
    master: Host
    minions: list[Host]
    steps: tuple[bootstrap.Step, ...]
    commands: dict[str, command.remote.Command]
    ssh_private_key: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    kubeconfig_check: command.local.Command
    snapshot_bucket: pulumi.Output[str]
    """Name of the S3 bucket holding etcd's snapshots."""

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-ec2:index:Cluster", name, None, opts)
        self.settings = settings
        child = pulumi.ResourceOptions(parent=self)
        self.availability_zone = choose_availability_zone(settings, self)
        network = Network("network", settings, self.availability_zone, opts=child)
        groups = SecurityGroups("security", settings, network.vpc.id, opts=child)
        # Hosts and steps need the routes and every rule, not only the subnet and group ids: declared,
        # so `destroy` and scale-down delete them first whatever order the engine would guess.
        foundation: list[pulumi.Resource] = [network, groups]

        ssh_key = tls.PrivateKey("ssh-key", algorithm="ED25519", opts=child)
        key_pair = aws.ec2.KeyPair(
            "ssh-key", public_key=ssh_key.public_key_openssh, tags=cluster_tags(settings, "ssh-key"), opts=child
        )
        self.ssh_private_key = pulumi.Output.secret(ssh_key.private_key_openssh)

        ami_id: pulumi.Input[str]
        if settings.ami_id:
            ami_id = settings.ami_id
        else:
            ami_id = aws.ec2.get_ami_output(
                most_recent=True,
                owners=[CANONICAL_OWNER],
                filters=[
                    aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_IMAGE_NAME]),
                    aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
                    aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
                ],
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).id

        def host(
            plan, instance_type: str, group: aws.ec2.SecurityGroup, elastic_ip: bool, user_data: pulumi.Input[str],
            instance_profile: pulumi.Input[str] | None = None,
        ) -> Host:
            args = HostArgs(
                plan=plan,
                instance_type=instance_type,
                subnet_id=network.subnet.id,
                security_group_id=group.id,
                key_name=key_pair.key_name,
                ami_id=ami_id,
                ami_is_lookup=settings.ami_id is None,
                user_data_base64=user_data,
                elastic_ip=elastic_ip,
                after=tuple(foundation),
                instance_profile=instance_profile,
            )
            return Host(plan.name, settings, args, opts=child)

        def plain_user_data(plan) -> str:
            return render.compress(render.user_data(settings, plan))

        def master_user_data(ids: list[str]) -> str:
            storage = {"ETCD_VOLUME_ID": ids[0], "SNAPSHOT_BUCKET": ids[1]}
            return render.compress(render.user_data(settings, settings.master, storage))

        etcd_volume = EtcdVolume("etcd", settings, network.subnet.availability_zone, opts=child)
        snapshots = SnapshotBucket("etcd-snapshots", settings, opts=child)
        self.snapshot_bucket = snapshots.bucket.id
        master_data = pulumi.Output.all(etcd_volume.volume.id, snapshots.bucket.id).apply(master_user_data)
        self.master = host(
            settings.master, settings.master_instance_type, groups.master, True, master_data, snapshots.instance_profile.id
        )
        etcd_attachment = etcd_volume.attach(self.master.instance)
        self.minions = [host(p, settings.minion_instance_type, groups.minion, False, plain_user_data(p)) for p in settings.minions]
        hosts = {settings.master.name: self.master, **{p.name: h for p, h in zip(settings.minions, self.minions, strict=False)}}
        plans = {p.name: p for p in settings.hosts}

        pki = Pki("pki", settings, master_public_ip=self.master.public_ip, opts=child)
        self.steps = bootstrap.plan(settings)
        fingerprints = {name: pki.fingerprint(plan) for name, plan in plans.items()}
        self.commands = {}
        for step in self.steps:
            on = hosts[step.host]
            plan = plans[step.host]
            depends: list[pulumi.Resource] = [*foundation, *(self.commands[a] for a in step.after)]
            if step.name == bootstrap.ETCD_STEP:
                # etcd needs its volume; on destroy the volume (which stops the master) goes after every step.
                depends.append(etcd_attachment)
            if step.about_host:
                # Deleted before the minion's instance, so the drain runs while the node still exists.
                depends.append(hosts[step.about_host].instance)
            if on is self.master:
                limit = DRAIN_DIAL_ERROR_LIMIT if step.delete_script else DIAL_ERROR_LIMIT
                connection = ssh_connection(self.master.public_ip, self.ssh_private_key, dial_error_limit=limit)
            else:
                # Minions at their fixed private IPs through the master: their public IPs change on
                # any stop/start, and their SSH port is open only to the master's security group.
                connection = ssh_connection(plan.private_ip, self.ssh_private_key, via=self.master.public_ip)
            self.commands[step.name] = command.remote.Command(
                step.name,
                connection=connection,
                create=remote_command(step.script),
                delete=remote_command(step.delete_script) if step.delete_script else None,
                stdin=pki.bundle(plan) if step.wants_pki else None,
                # Re-run when the host is replaced or its certificates are renewed; a drain hook must
                # never be replaced (replacement would drain a live node), so it has no triggers.
                triggers=None if step.delete_script else [on.instance.id, fingerprints[step.host]],
                add_previous_output_in_env=False,
                # A step fed secrets streams nothing to the console, and its captured stdout/stderr
                # (kept in the state) are stored as secrets (pulumi-command remote.Command `logging`).
                logging=command.remote.Logging.NONE if step.wants_pki else None,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=depends,
                    additional_secret_outputs=list(SECRET_STEP_OUTPUTS) if step.wants_pki else None,
                ),
            )
        self.kubeconfig = pki.admin_kubeconfig(self.master.public_ip.apply(lambda ip: f"https://{ip}:6443"))
        # The exported kubeconfig, used from the deployer's machine (after the smoke test, and again
        # whenever the smoke test re-runs or the kubeconfig changes); it goes in on standard input.
        self.kubeconfig_check = command.local.Command(
            "kubeconfig-check",
            create=render.kubeconfig_check_script(),
            interpreter=["/bin/bash", "-c"],
            stdin=self.kubeconfig,
            triggers=[self.master.instance.id, fingerprints[settings.master.name]],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.commands["master-smoke-test"]]),
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})
