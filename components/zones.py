"""Which availability zone the subnet (and so every host and the etcd volume) lives in. Pure.

With `availabilityZone` unset, AWS would put the subnet in any zone of the region, including one
that does not offer the instance types (t3 is not offered in us-east-1e). The zone is chosen from
EC2's instance-type offerings instead: the first, in sorted order, of the region's standard zones
that offers every instance type the stack uses. The same answers give the same zone on every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from components.settings import PROJECT


class NoZoneError(ValueError):
    """No zone of the region offers every instance type the stack uses."""


def offered_in(instance_types: Sequence[str], locations: Sequence[str], wanted: Iterable[str]) -> dict[str, set[str]]:
    """instance type -> zones offering it, from get_instance_type_offerings' parallel lists."""
    offered: dict[str, set[str]] = {t: set() for t in wanted}
    for instance_type, location in zip(instance_types, locations, strict=True):
        if instance_type in offered:
            offered[instance_type].add(location)
    return offered


def choose_zone(region: str, zones: Iterable[str], offered: dict[str, set[str]]) -> str:
    """The first zone, in sorted order, among `zones` (the region's standard zones) offering every type."""
    common = set(zones)
    for locations in offered.values():
        common &= locations
    if not common:
        types = " and ".join(sorted(offered))
        raise NoZoneError(
            f"{PROJECT}:availabilityZone: unset, and no availability zone of {region} offers {types} "
            f"(EC2 instance-type offerings); allowed: instance types that share a zone in {region} "
            f"(masterInstanceType, minionInstanceType), or another aws:region"
        )
    return sorted(common)[0]
