"""The regions table lives in cluster/regions.py (the `render` preview checks it too)."""

from cluster.regions import REGION_ZONES, zones_of

__all__ = ["REGION_ZONES", "zones_of"]
