"""Resource names live in cluster/names.py (the `render` preview uses the same names)."""

from cluster.names import account_id, bucket_name, resource_name

__all__ = ["account_id", "bucket_name", "resource_name"]
