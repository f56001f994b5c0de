"""The offline Pulumi harness lives in infra/offline.py (make demo uses it too)."""

from infra.offline import *  # noqa: F401,F403
from infra.offline import SECRET_SIG  # noqa: F401
