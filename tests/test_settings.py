"""Settings: defaults from Pulumi.yaml, derived values, and every bad value rejected by name."""

from __future__ import annotations

import pulumi
import pytest

from components import offline
from components.offline import cli
from components.settings import ConfigError, load_schema
from tests.conftest import dev_settings


def test_every_schema_key_has_type_and_description() -> None:
    for key, spec in load_schema().items():
        assert spec.get("type") in {"string", "integer", "boolean", "array"}, key
        assert spec.get("description"), key


def test_defaults_and_derived_values() -> None:
    s = dev_settings()
    assert (s.minion_count, s.master_instance_type, s.minion_instance_type) == (3, "t3.medium", "t3.medium")
    assert (s.vpc_cidr, s.pod_cidr, s.service_cidr, s.subnet_cidr) == ("10.240.0.0/16", "10.200.0.0/16", "10.32.0.0/24", "10.240.0.0/24")
    assert (s.api_service_ip, s.dns_service_ip) == ("10.32.0.1", "10.32.0.10")
    assert s.cluster_name == "kube-ec2-dev"
    assert s.admin_cidrs == ("192.0.2.1/32",) and s.admin_cidrs_source == "placeholder"
    assert [h.private_ip for h in s.hosts] == ["10.240.0.10", "10.240.0.11", "10.240.0.12", "10.240.0.13"]
    assert [h.name for h in s.hosts] == ["master", "minion-0", "minion-1", "minion-2"]
    assert s.cert_early_renewal_hours == 730
    assert s.pod_mtu == 8951


def test_values_arrive_as_strings_like_the_cli_sends_them() -> None:
    s = dev_settings(minionCount="5", adminCidrs='["81.2.69.160/28","151.101.1.7/32"]', allowUpstreamChecksums="false")
    assert s.minion_count == 5 and s.admin_cidrs == ("81.2.69.160/28", "151.101.1.7/32") and s.admin_cidrs_source == "config"
    assert dev_settings(minionCount="+4").minion_count == 4  # Go's strconv.Atoi, which the CLI checks with, takes a sign


# What the CLI hands the program for an optional key left alone: its Pulumi.yaml default, "" or [].
EMPTY = {"adminCidrs": "[]", "amiId": "", "availabilityZone": ""}


def test_empty_values_are_unset() -> None:
    """"" and [] mean unset for every key: the optional ones stay unset, the others take their default."""
    s = dev_settings(**EMPTY)
    assert (s.ami_id, s.availability_zone) == (None, None)
    assert s.admin_cidrs == ("192.0.2.1/32",) and s.admin_cidrs_source == "placeholder"
    assert dev_settings(adminCidrs=[], amiId="  ").ami_id is None
    t = dev_settings(masterInstanceType="", minionCount="", vpcCidr=" ")
    assert (t.master_instance_type, t.minion_count, t.vpc_cidr) == ("t3.medium", 3, "10.240.0.0/16")
    set_ = dev_settings(amiId="ami-0abcdef1234567890", availabilityZone="us-east-1b")
    assert (set_.ami_id, set_.availability_zone) == ("ami-0abcdef1234567890", "us-east-1b")


def test_optional_keys_default_to_empty_in_pulumi_yaml() -> None:
    schema = load_schema()
    assert {key: schema[key]["default"] for key in EMPTY} == {"adminCidrs": [], "amiId": "", "availabilityZone": ""}
    assert all("default" in spec for spec in schema.values())


# (raw config, key that must be named, a fragment of what is allowed)
BAD_VALUES = [
    ({"minionCount": "0"}, "minionCount", "1 to 100"),
    ({"minionCount": "101"}, "minionCount", "1 to 100"),
    ({"minionCount": "three"}, "minionCount", "whole number"),
    ({"minionInstanceType": "t4g.large"}, "minionInstanceType", "x86_64"),
    ({"minionInstanceType": "big"}, "minionInstanceType", "family.size"),
    ({"kubernetesVersion": "1.35"}, "kubernetesVersion", "X.Y.Z"),
    ({"kubernetesVersion": "v1.35.1"}, "kubernetesVersion", "X.Y.Z"),
    ({"kubernetesVersion": "1.99.0"}, "kubernetesVersion", "allowUpstreamChecksums"),
    ({"vpcCidr": "10.240.0.0/33"}, "vpcCidr", "IPv4 network"),
    ({"vpcCidr": "10.240.0.1/16"}, "vpcCidr", "host bits"),
    ({"vpcCidr": "10.0.0.0/8"}, "vpcCidr", "/16 to /28"),
    ({"vpcCidr": "fd00::/64"}, "vpcCidr", "IPv4"),
    ({"podCidr": "10.240.0.0/16"}, "podCidr", "overlaps vpcCidr 10.240.0.0/16"),
    ({"serviceCidr": "10.200.0.0/24"}, "serviceCidr", "overlaps podCidr"),
    ({"serviceCidr": "10.32.0.0/29"}, "serviceCidr", "/12 to /28"),
    ({"serviceCidr": "10.0.0.0/11"}, "serviceCidr", "/12 to /28"),
    ({"podCidr": "10.200.0.0/24"}, "podCidr", "/21 or larger"),
    ({"podCidr": "172.17.0.0/16"}, "podCidr", "Docker"),
    ({"vpcCidr": "10.240.0.0/28", "minionCount": "5"}, "vpcCidr", "larger range"),
    ({"adminCidrs": ["81.2.69.7"]}, "adminCidrs", "IPv4 network"),
    ({"adminCidrs": ["not-a-cidr"]}, "adminCidrs", "IPv4 network"),
    ({"adminCidrs": "81.2.69.7/32"}, "adminCidrs", "list of strings"),
    ({"adminCidrs": ["81.2.69.160/28", " 81.2.69.160/28"]}, "adminCidrs", "each range once"),
    ({"adminCidrs": ["203.0.113.0/28"]}, "adminCidrs", "documentation range (RFC 5737)"),
    ({"adminCidrs": ["198.51.100.64/27"]}, "adminCidrs", "documentation range (RFC 5737)"),
    ({"adminCidrs": ["192.0.2.1/32"]}, "adminCidrs", "documentation range (RFC 5737)"),  # the placeholder, typed in
    ({"amiId": "ubuntu"}, "amiId", "ami-"),
    ({"availabilityZone": "eu-west-1a"}, "availabilityZone", "us-east-1a"),
    ({"rootVolumeGb": "8"}, "rootVolumeGb", "20 to 16384"),
    ({"certValidityHours": "1"}, "certValidityHours", "24 to 87600"),
    ({"allowUpstreamChecksums": "yes"}, "allowUpstreamChecksums", "true or false"),
    ({"minioncount": "3"}, "minioncount", "allowed keys"),
]


@pytest.mark.parametrize(("raw", "key", "allowed"), BAD_VALUES, ids=[f"{k}={next(iter(r.values()))}" for r, k, _ in BAD_VALUES])
def test_bad_value_is_rejected_by_name(raw: dict[str, str], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        dev_settings(**raw)
    message = str(err.value)
    assert f"kube-ec2:{key}:" in message
    for value in raw.values():
        for shown in value if isinstance(value, list) else [value]:
            assert shown in message, (shown, message)
    assert allowed in message


def test_overlap_message_reads_naturally() -> None:
    with pytest.raises(ConfigError, match=r"kube-ec2:podCidr: 10\.240\.0\.0/16 overlaps vpcCidr 10\.240\.0\.0/16"):
        dev_settings(podCidr="10.240.0.0/16")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        dev_settings(minionCount="0", podCidr="nope", masterInstanceType="big")
    assert len(err.value.problems) == 3


def test_region_is_required() -> None:
    with pytest.raises(pulumi.RunError, match="aws:region: unset"):
        offline.run("dev", {"kube-ec2:minionCount": "3"})


# Values of the wrong type, which the CLI refuses itself (validateStackConfigValues) before the program runs.
REFUSED_BY_CLI = {("minionCount", "three"), ("allowUpstreamChecksums", "yes"), ("adminCidrs", "81.2.69.7/32")}


@pytest.mark.parametrize(("raw", "key", "allowed"), BAD_VALUES, ids=[f"{k}={next(iter(r.values()))}" for r, k, _ in BAD_VALUES])
def test_bad_value_creates_nothing(raw: dict[str, str], key: str, allowed: str) -> None:
    """Through the CLI's rules and the whole program: `pulumi up` stops with the message and no resource exists."""
    config = {**offline.stack_config("dev"), **{f"kube-ec2:{k}": v for k, v in raw.items()}}
    mocks = offline.OfflineMocks()
    if isinstance(raw[key], str) and (key, raw[key]) in REFUSED_BY_CLI:
        with pytest.raises(cli.CliError, match=f"Stack 'dev' with configuration key '{key}' must be of type"):
            offline.run("dev", config, mocks)
    else:
        with pytest.raises(pulumi.RunError, match=f"kube-ec2:{key}:"):
            offline.run("dev", config, mocks)
    assert mocks.resources == []


def test_unset_admin_cidrs_use_the_deployers_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from components import program

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *args: object) -> None:
            return None

        def read(self) -> bytes:
            return b"203.0.113.77\n"

    monkeypatch.delenv(program.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(program.urllib.request, "urlopen", lambda url, timeout: Answer())
    assert program.detect_admin_cidr() == "203.0.113.77/32"


def test_failed_address_lookup_is_a_config_error_not_a_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    from components import program

    def offline(url: str, timeout: float) -> None:
        raise OSError("network is unreachable")

    monkeypatch.delenv(program.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(program.urllib.request, "urlopen", offline)
    with pytest.raises(ConfigError, match=r"kube-ec2:adminCidrs: unset, and looking up .* failed \(network is unreachable\)"):
        program.detect_admin_cidr()


def test_offline_runs_use_the_documented_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    from components import program

    monkeypatch.setenv(program.OFFLINE_ENV, "1")
    assert program.detect_admin_cidr() == "192.0.2.1/32"
