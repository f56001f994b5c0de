"""Names of the shipped log objects: written by ``cluster.logship``, read by ``cluster.logs``.

::

    logs/<cluster>/<date>/<node>/<session>/_node.json
    logs/<cluster>/<date>/<node>/<session>/<file>/<gen>/<start>-<end>.<t0>-<t1>.<level>

Standard library only: it runs in the KubeRay log sidecar too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

LOG_PREFIX = "logs"
NODE_MANIFEST = "_node.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SESSION_RE = re.compile(r"^session_(\d{4}-\d{2}-\d{2})_(\d{2})-(\d{2})-(\d{2})_\d+_\d+$")
CHUNK_RE = re.compile(r"^(\d{3})/(\d{15})-(\d{15})\.(\d+)-(\d+)\.(\d)$")


def session_date(session: str) -> str:
    """``2026-12-07`` of ``session_2026-12-07_02-51-59_441416_29779``."""
    m = SESSION_RE.match(session)
    if not m:
        raise ValueError(f"not a Ray session directory name: {session!r}")
    return m.group(1)


def session_start(session: str) -> int:
    """The session's start, unix seconds (Ray names it in the head's local time;
    our VMs run in UTC, and so does this)."""
    m = SESSION_RE.match(session)
    if not m:
        raise ValueError(f"not a Ray session directory name: {session!r}")
    stamp = f"{m.group(1)} {m.group(2)}:{m.group(3)}:{m.group(4)}"
    return int(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC).timestamp())


def run_prefix(cluster: str, session: str, node: str) -> str:
    return f"{LOG_PREFIX}/{cluster}/{session_date(session)}/{node}/{session}/"


def chunk_name(
    prefix: str, file: str, gen: int, start: int, end: int, t0: int, t1: int, level: int = 0
) -> str:
    return f"{prefix}{file}/{gen:03d}/{start:015d}-{end:015d}.{t0}-{t1}.{level}"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One object of one file, parsed from its name."""

    file: str
    gen: int
    start: int
    end: int
    t0: int
    t1: int
    level: int

    @property
    def size(self) -> int:
        return self.end - self.start


def parse_chunk(rest: str) -> Chunk | None:
    """``<file>/<gen>/<start>-<end>.<t0>-<t1>.<level>`` (after the run prefix), or None."""
    parts = rest.rsplit("/", 2)
    if len(parts) != 3:
        return None
    m = CHUNK_RE.match(f"{parts[1]}/{parts[2]}")
    if not m:
        return None
    return Chunk(parts[0], *(int(g) for g in m.groups()))
