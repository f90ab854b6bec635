"""What EC2 answers the offline engine gives to the program's zone lookups.

A small model of an account's view of a few regions: each zone, whether it is a standard zone or
an opt-in one (a Local Zone the account opted in to), and which instance families it does NOT
offer. Modelled on what AWS publishes: us-east-1e is an old zone without current families such as
t3 (the reason the program chooses zones at all). The Local Zone offers every type in this model
and sorts before every standard zone, so only the opt-in filter keeps it out. Any other region is
a typical one: zones a, b and c, each offering every type.

Only the arguments the program passes are understood; anything else raises, so a change in the
program's lookups cannot pass unnoticed against answers that ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STANDARD = "opt-in-not-required"
OPTED_IN = "opted-in"
CURRENT_FAMILIES_MISSING_IN_OLD_ZONES = frozenset({"t3", "t3a", "m6i", "m6a", "m7i", "c6i", "c7i", "r6i"})


@dataclass(frozen=True)
class Zone:
    opt_in_status: str = STANDARD
    lacks: frozenset[str] = field(default_factory=frozenset)
    """Instance families (the part before the dot) this zone does not offer."""

    def offers(self, instance_type: str) -> bool:
        return instance_type.split(".", 1)[0] not in self.lacks


REGIONS: dict[str, dict[str, Zone]] = {
    "us-east-1": {
        "us-east-1-bos-1a": Zone(OPTED_IN),
        "us-east-1a": Zone(),
        "us-east-1b": Zone(),
        "us-east-1c": Zone(),
        "us-east-1d": Zone(),
        "us-east-1e": Zone(lacks=CURRENT_FAMILIES_MISSING_IN_OLD_ZONES),
        "us-east-1f": Zone(),
    },
    "eu-west-1": {"eu-west-1a": Zone(), "eu-west-1b": Zone(), "eu-west-1c": Zone()},
    "ap-southeast-2": {"ap-southeast-2a": Zone(), "ap-southeast-2b": Zone(), "ap-southeast-2c": Zone()},
}


def _zones(region: str) -> dict[str, Zone]:
    return REGIONS.get(region) or {f"{region}{letter}": Zone() for letter in "abc"}


def _filters(args: Mapping[str, Any], allowed: str) -> list[str] | None:
    """Values of the one filter the program uses, None when there is none."""
    filters = args.get("filters") or []
    for f in filters:
        if f["name"] != allowed:
            raise ValueError(f"offline engine: filter {f['name']!r} is not modelled (only {allowed!r})")
    return [v for f in filters for v in f["values"]] if filters else None


def availability_zones(region: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """aws:index/getAvailabilityZones:getAvailabilityZones, with `state` and `opt-in-status`."""
    if args.get("allAvailabilityZones") or args.get("excludeNames") or args.get("excludeZoneIds"):
        raise ValueError("offline engine: only state and the opt-in-status filter are modelled for getAvailabilityZones")
    if args.get("state") not in (None, "available"):
        raise ValueError(f"offline engine: state {args['state']!r} is not modelled (every zone is available)")
    statuses = _filters(args, "opt-in-status")
    names = sorted(n for n, z in _zones(region).items() if statuses is None or z.opt_in_status in statuses)
    return {"id": region, "names": names, "zoneIds": [f"{region}-az{i}" for i, _ in enumerate(names, 1)], "state": args.get("state")}


def instance_type_offerings(region: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings by zone, filtered by instance type."""
    if args.get("locationType") != "availability-zone":
        raise ValueError(f"offline engine: locationType {args.get('locationType')!r} is not modelled (only availability-zone)")
    wanted = _filters(args, "instance-type")
    if not wanted:
        raise ValueError("offline engine: getInstanceTypeOfferings needs an instance-type filter here")
    rows = [(t, name) for name, zone in sorted(_zones(region).items()) for t in wanted if zone.offers(t)]
    return {
        "id": region,
        "instanceTypes": [t for t, _ in rows],
        "locations": [z for _, z in rows],
        "locationTypes": ["availability-zone"] * len(rows),
    }
