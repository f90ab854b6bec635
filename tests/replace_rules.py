"""Which input changes make each provider replace a resource instead of updating it in place.

Read from the providers' own schemas (Terraform's `ForceNew: true` / `RequiresReplace()` plan
modifiers, which pulumi-aws, pulumi-tls and pulumi-random bridge unchanged; pulumi-command's
`provider:"replaceOnChanges"` tags). Property names are the Pulumi (camelCase) input names; a dotted
name is a field of a nested block (`rootBlockDevice.encrypted`). `ALL` means every input replaces
except those listed in `EXCEPT`. Only the fields this program sets, or could set, are listed.
"""

from __future__ import annotations

ALL = "*"

# hashicorp/terraform-provider-aws, internal/service/...: "read at <commit>" where the file was read
# for this table; "not re-read" where the rule is taken from the provider's documented schema and
# should be checked against the file the next time it is touched.
TF_AWS = "hashicorp/terraform-provider-aws"
FORCE_NEW: dict[str, frozenset[str]] = {
    # ec2/vpc_.go (not re-read): cidr_block ForceNew; tags, enable_dns_* update in place.
    "aws:ec2/vpc:Vpc": frozenset({"cidrBlock", "ipv4IpamPoolId", "ipv4NetmaskLength"}),
    # ec2/vpc_subnet.go (read at 00cda125): availability_zone(_id), cidr_block, vpc_id, outpost_arn ForceNew.
    "aws:ec2/subnet:Subnet": frozenset({"availabilityZone", "availabilityZoneId", "cidrBlock", "vpcId", "outpostArn"}),
    # ec2/vpc_internet_gateway.go (read at 08923b68): vpc_id is detached/attached in place (no ForceNew);
    # network.py asks for replacement instead (replace_on_changes).
    "aws:ec2/internetGateway:InternetGateway": frozenset(),
    # ec2/vpc_route_table.go (not re-read): vpc_id ForceNew; routes update in place.
    "aws:ec2/routeTable:RouteTable": frozenset({"vpcId"}),
    # ec2/vpc_route_table_association.go (not re-read): subnet_id, gateway_id ForceNew; route_table_id replaced in place.
    "aws:ec2/routeTableAssociation:RouteTableAssociation": frozenset({"subnetId", "gatewayId"}),
    # ec2/vpc_default_security_group.go (not re-read): vpc_id ForceNew; rules and tags update in place.
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": frozenset({"vpcId"}),
    # ec2/vpc_security_group.go (not re-read): name, name_prefix, description, vpc_id ForceNew.
    "aws:ec2/securityGroup:SecurityGroup": frozenset({"name", "namePrefix", "description", "vpcId"}),
    # ec2/vpc_security_group_ingress_rule.go / ..._egress_rule.go (framework, not re-read):
    # security_group_id RequiresReplace; ports, protocol and sources are modified in place.
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": frozenset({"securityGroupId"}),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": frozenset({"securityGroupId"}),
    # ec2/ec2_key_pair.go (not re-read): key_name, key_name_prefix, public_key ForceNew.
    "aws:ec2/keyPair:KeyPair": frozenset({"keyName", "keyNamePrefix", "publicKey"}),
    # ec2/ec2_instance.go (read at 0015dfcd): ami, availability_zone, subnet_id, private_ip, key_name,
    # associate_public_ip_address, ebs_optimized, tenancy, placement_group, security_groups and
    # root_block_device.encrypted/kms_key_id ForceNew; instance_type, vpc_security_group_ids,
    # iam_instance_profile, metadata_options, root volume size/type, tags and (without
    # user_data_replace_on_change) user data are changed in place.
    "aws:ec2/instance:Instance": frozenset({
        "ami", "availabilityZone", "subnetId", "privateIp", "keyName", "associatePublicIpAddress", "ebsOptimized",
        "tenancy", "placementGroup", "securityGroups", "hostId", "ipv6Addresses", "launchTemplate",
        "rootBlockDevice.encrypted", "rootBlockDevice.kmsKeyId",
    }),
    # ec2/ec2_eip.go (not re-read): domain, address, public_ipv4_pool ForceNew; instance is (re)associated in place.
    "aws:ec2/eip:Eip": frozenset({"domain", "vpc", "address", "publicIpv4Pool", "customerOwnedIpv4Pool"}),
    # ec2/ebs_volume.go (read at 0073593e): availability_zone, encrypted, kms_key_id, snapshot_id,
    # outpost_arn, multi_attach_enabled ForceNew; size, type, iops, throughput modified in place.
    "aws:ebs/volume:Volume": frozenset(
        {"availabilityZone", "encrypted", "kmsKeyId", "snapshotId", "outpostArn", "multiAttachEnabled"}
    ),
    # ec2/ec2_volume_attachment.go (not re-read): device_name, instance_id, volume_id ForceNew.
    "aws:ec2/volumeAttachment:VolumeAttachment": frozenset({"deviceName", "instanceId", "volumeId"}),
    # s3/bucket.go (not re-read): bucket, bucket_prefix, object_lock_enabled ForceNew; force_destroy, tags in place.
    "aws:s3/bucket:Bucket": frozenset({"bucket", "bucketPrefix", "objectLockEnabled"}),
    # s3/bucket_public_access_block.go, bucket_server_side_encryption_configuration.go,
    # bucket_versioning.go, bucket_lifecycle_configuration.go (not re-read): bucket and
    # expected_bucket_owner ForceNew / RequiresReplace; the configuration itself changes in place.
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": frozenset({"bucket"}),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": frozenset(
        {"bucket", "expectedBucketOwner"}
    ),
    "aws:s3/bucketVersioning:BucketVersioning": frozenset({"bucket", "expectedBucketOwner"}),
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": frozenset({"bucket", "expectedBucketOwner"}),
    # iam/role.go (not re-read): name, name_prefix, path ForceNew; assume_role_policy, description in place.
    "aws:iam/role:Role": frozenset({"name", "namePrefix", "path"}),
    # iam/role_policy.go (not re-read): name, name_prefix, role ForceNew; policy in place.
    "aws:iam/rolePolicy:RolePolicy": frozenset({"name", "namePrefix", "role"}),
    # iam/instance_profile.go (not re-read): name, name_prefix, path ForceNew; role in place.
    "aws:iam/instanceProfile:InstanceProfile": frozenset({"name", "namePrefix", "path"}),
    # hashicorp/terraform-provider-tls internal/provider/resource_*.go (d72d90e1): every attribute
    # RequiresReplace (PEM inputs through requireReplaceIfStateContainsPEMString), except
    # early_renewal_hours, which changes in place.
    "tls:index/privateKey:PrivateKey": frozenset({ALL}),
    "tls:index/selfSignedCert:SelfSignedCert": frozenset({ALL}),
    "tls:index/certRequest:CertRequest": frozenset({ALL}),
    "tls:index/locallySignedCert:LocallySignedCert": frozenset({ALL}),
    # hashicorp/terraform-provider-random internal/provider/resource_bytes.go: length and keepers
    # RequiresReplace (its only inputs).
    "random:index/randomBytes:RandomBytes": frozenset({ALL}),
    # pulumi/pulumi-command provider/pkg/provider/common/inputs.go (010bd8e0): only `triggers`
    # carries provider:"replaceOnChanges"; any other change is an update, which runs `update`, or
    # `create` again when there is none (provider/pkg/provider/remote/commandController.go Update).
    "command:remote:Command": frozenset({"triggers"}),
    "command:local:Command": frozenset({"triggers"}),
}
EXCEPT: dict[str, frozenset[str]] = {
    "tls:index/selfSignedCert:SelfSignedCert": frozenset({"earlyRenewalHours"}),
    "tls:index/locallySignedCert:LocallySignedCert": frozenset({"earlyRenewalHours"}),
}


def forces_replacement(typ: str, path: str) -> bool:
    """True when a change of input `path` (dotted for nested fields) replaces a `typ` resource."""
    if typ not in FORCE_NEW:
        raise KeyError(f"{typ}: no replacement rules; look them up in its provider's schema and add them")
    rules = FORCE_NEW[typ]
    top = path.split(".", 1)[0]
    if ALL in rules:
        return top not in EXCEPT.get(typ, frozenset())
    return any(path == rule or path.startswith(rule + ".") or rule.startswith(path + ".") for rule in rules)
