"""GCP regions and their Compute Engine zones, so a typo fails before `pulumi up` does.

A snapshot of `gcloud compute zones list` (public regions, 2026). A region
Google adds later is refused with a clear message until it is added here:
one line per region, nothing else changes.
"""

from __future__ import annotations

_ABC = ("a", "b", "c")

# The stack's default place (infra/settings.py and `render --target gcp` use these).
DEFAULT_REGION = "asia-northeast3"
DEFAULT_ZONE = "asia-northeast3-a"

REGION_ZONES: dict[str, tuple[str, ...]] = {
    "africa-south1": _ABC,
    "asia-east1": _ABC,
    "asia-east2": _ABC,
    "asia-northeast1": _ABC,
    "asia-northeast2": _ABC,
    "asia-northeast3": _ABC,
    "asia-south1": _ABC,
    "asia-south2": _ABC,
    "asia-southeast1": _ABC,
    "asia-southeast2": _ABC,
    "australia-southeast1": _ABC,
    "australia-southeast2": _ABC,
    "europe-central2": _ABC,
    "europe-north1": _ABC,
    "europe-north2": _ABC,
    "europe-southwest1": _ABC,
    "europe-west1": ("b", "c", "d"),
    "europe-west2": _ABC,
    "europe-west3": _ABC,
    "europe-west4": _ABC,
    "europe-west6": _ABC,
    "europe-west8": _ABC,
    "europe-west9": _ABC,
    "europe-west10": _ABC,
    "europe-west12": _ABC,
    "me-central1": _ABC,
    "me-central2": _ABC,
    "me-west1": _ABC,
    "northamerica-northeast1": _ABC,
    "northamerica-northeast2": _ABC,
    "northamerica-south1": _ABC,
    "southamerica-east1": _ABC,
    "southamerica-west1": _ABC,
    "us-central1": ("a", "b", "c", "f"),
    "us-east1": ("b", "c", "d"),
    "us-east4": _ABC,
    "us-east5": _ABC,
    "us-south1": _ABC,
    "us-west1": _ABC,
    "us-west2": _ABC,
    "us-west3": _ABC,
    "us-west4": _ABC,
}


def zones_of(region: str) -> list[str]:
    """Full zone names of a region (`asia-northeast3` -> `asia-northeast3-a`, ...)."""
    return [f"{region}-{suffix}" for suffix in REGION_ZONES[region]]


def default_fallback_zones(region: str, zone: str) -> tuple[str, ...]:
    """ray-gcp:fallbackZones when unset: the region's other zones, after `zone`, wrapping."""
    zones = zones_of(region)
    i = zones.index(zone)
    return tuple(zones[i + 1 :] + zones[:i])
