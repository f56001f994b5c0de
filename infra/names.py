"""Resource names live in cluster/names.py (the `render` preview uses the same names);
OS Login usernames of operators are derived here."""

from __future__ import annotations

import re

from cluster.names import account_id, bucket_name, resource_name

# OS Login POSIX usernames are at most 32 characters.
_POSIX_USER_MAX = 32


def oslogin_username(email: str) -> str:
    """The default OS Login POSIX username of a Google account: the email, lowercased,
    every character other than a letter or digit replaced by `_`, cut to 32 characters
    (alice.smith@example.com -> alice_smith_example_com)."""
    return re.sub(r"[^a-z0-9]", "_", email.lower())[:_POSIX_USER_MAX]


__all__ = ["account_id", "bucket_name", "oslogin_username", "resource_name"]
