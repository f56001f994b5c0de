"""Ship a Ray node's log files to ``gs://BUCKET/logs/...`` while the node runs.

One shipper per node (a VM of ``ray up``, a fake node of the local cluster, a
sidecar of a KubeRay pod) polls the node's Ray log directory
(``/tmp/ray/session_latest/logs``) every ``interval_s`` seconds and uploads
what each file gained since the last pass. A node that vanishes (a preempted
Spot VM, a SIGKILLed fake node) has therefore already shipped everything it
wrote up to ``interval_s`` (plus one upload) before it went. On SIGTERM (VM
shutdown, pod deletion, ``LocalCluster.down()``) it makes one last pass.

Objects (never overwritten, never appended to: the bucket is versioned)::

    logs/<cluster>/<date>/<node>/<session>/_node.json
    logs/<cluster>/<date>/<node>/<session>/<file>/<gen>/<start>-<end>.<t0>-<t1>.<level>

``<date>`` and ``<session>`` come from Ray's session directory
(``session_2026-12-07_02-51-59_441416_29779``: the run), ``<file>`` is the
path under ``logs/`` (``worker-<id>-<job>-<pid>.err``, ``raylet.out``,
``events/event_AUTOSCALER.log``; a file Ray's log monitor moved to ``old/``
and a copy Ray's rotation made, ``x.out.1``, keep the name), ``<gen>`` counts
files of that name on that node and run (files are followed by inode, so a
rotated file continues its generation and the new one starts the next),
``<start>-<end>`` is the byte range of the file the object holds,
``<t0>-<t1>`` (unix seconds) brackets when those bytes were written (after
the pass that last saw the file shorter, before they were read) and
``<level>`` says whether the object was uploaded (0) or composed (1, 2).
``cluster.logs`` reads them back. A restarted shipper lists its run's objects
and continues where they end; it keeps no state on the node.

**Volume bound, per file.** At most ``max_file_bytes`` of each file name (all
generations) are kept per node and run: the first half is kept for good, and
the second half is a window of the newest bytes, whose oldest objects are
deleted (that exact generation: gone for good, also in a versioned bucket)
as new ones arrive. A pass ships at most ``max_chunk`` bytes of one file;
past the first half, a file that grew more than that since the last pass
ships only its newest ``max_chunk`` bytes. The rest of a runaway file is never
read or copied, and the missing byte ranges show as gaps (``cluster.logs``
prints them). The shipper writes nothing to the node's disk; Ray's own
rotation (``RAY_ROTATION_MAX_BYTES``, set by ``cluster.ray_start``) bounds
Ray's files there.

**Few objects.** Every run of 32 contiguous objects of one file is composed
into one (``objects.compose``) and the 32 are deleted, twice over at most
(GCS allows 1024 components per composite), so a day of a busy file is a
few dozen objects to read, not thousands.

Standard library only (with ``cluster.gcs_http`` and ``cluster.logpaths``), so
the same files run in any Python 3, the KubeRay sidecar's Ray image included.

    python -m cluster.logship run   --bucket B --cluster C --node N [--role head] ...
    python -m cluster.logship start --pidfile F ... (the same options; detaches, replaces F's shipper)

(the command line is cluster/logship_cli.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import sys
import threading
import time

from cluster import gcs_http
from cluster.logpaths import (
    LOG_PREFIX,
    NAME_RE,
    NODE_MANIFEST,
    SESSION_RE,
    Chunk,
    chunk_name,
    parse_chunk,
    run_prefix,
    session_start,
)

DEFAULT_LOGS_DIR = "/tmp/ray/session_latest/logs"
DEFAULT_INTERVAL_S = 5.0
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
MIN_MAX_FILE_BYTES = 64 * 1024
MIN_CHUNK_BYTES = 4 * 1024
COMPOSE_RUN = gcs_http.COMPOSE_MAX_SOURCES
START_BYTES = 64  # remembered per file, to tell a reused inode from the file it had
MAX_COMPOSE_LEVEL = 2  # 32 * 32 = 1024 components, GCS's limit per composite
# Files Ray rewrites in place (state dumps, not logs) and its per-job scratch dirs.
SKIPPED_FILES = re.compile(r"^(debug_state.*\.txt|.*\.pid|.*\.lock|.*\.sock)$")
SKIPPED_DIRS = frozenset({"nsight", "rocprof_sys", "profiles"})
# A copy made by rotation (Ray's and Python's): the name gains ".<n>" after its extension.
ROTATED = re.compile(r"^(.+\.(?:out|err|log|txt))\.(\d+)$")

logger = logging.getLogger("ray-gcp.logship")


# ---- configuration ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShipConfig:
    bucket: str
    cluster: str
    node: str
    role: str = "worker"
    node_type: str = ""
    logs_dir: str = DEFAULT_LOGS_DIR
    interval_s: float = DEFAULT_INTERVAL_S
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

    def __post_init__(self):
        problems = []
        for field in ("cluster", "node"):
            if not NAME_RE.match(getattr(self, field)):
                problems.append(
                    f"--{field} = {getattr(self, field)!r}: allowed: letters, digits, '.', '_', "
                    "'-', at most 100, starting with a letter or digit"
                )
        if not re.match(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", self.bucket):
            problems.append(
                f"--bucket = {self.bucket!r}: not a bucket name (allowed: 3-63 of [a-z0-9._-])"
            )
        if self.role not in ("head", "worker"):
            problems.append(f"--role = {self.role!r}: allowed: head, worker")
        if self.node_type and not NAME_RE.match(self.node_type):
            problems.append(f"--node-type = {self.node_type!r}: allowed: [A-Za-z0-9._-]")
        if not 0.1 <= self.interval_s <= 300:
            problems.append(f"--interval = {self.interval_s}: allowed: 0.1 to 300 seconds")
        if self.max_file_bytes < MIN_MAX_FILE_BYTES:
            problems.append(
                f"--max-file-bytes = {self.max_file_bytes}: allowed: at least {MIN_MAX_FILE_BYTES}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_bytes(self) -> int:
        """Bytes at the start of each file that are kept for good."""
        return self.max_file_bytes // 2

    @property
    def tail_bytes(self) -> int:
        """The window of newest bytes after those."""
        return self.max_file_bytes - self.head_bytes

    @property
    def max_chunk(self) -> int:
        """Most bytes of one file shipped in one pass (so the largest upload)."""
        return max(MIN_CHUNK_BYTES, self.tail_bytes // 8)

    @property
    def max_composite_tail(self) -> int:
        """Largest composed object in the window, so old bytes leave it in small steps."""
        return self.tail_bytes // 4


def run_argv(cfg: ShipConfig) -> list[str]:
    """``run``'s options for this config (what ``start``, the renderers and the
    local cluster pass), every one explicit."""
    return [
        "--bucket", cfg.bucket, "--cluster", cfg.cluster, "--node", cfg.node,
        "--role", cfg.role, "--node-type", cfg.node_type, "--logs-dir", cfg.logs_dir,
        "--interval", f"{cfg.interval_s:g}", "--max-file-bytes", str(cfg.max_file_bytes),
    ]


# ---- state (in memory only; rebuilt from the bucket on a restart) ------------------


@dataclasses.dataclass
class Obj:
    """A live object of one file name (``head``: in the part kept for good)."""

    chunk: Chunk
    name: str
    generation: str
    head: bool

    def info(self) -> gcs_http.ObjectInfo:
        return gcs_http.ObjectInfo(self.name, self.chunk.size, self.generation)


@dataclasses.dataclass
class FileLog:
    """Everything shipped of one file name on this node and run (all generations)."""

    gens: int = 0
    head_used: int = 0
    objects: list[Obj] = dataclasses.field(default_factory=list)  # by (gen, start)
    garbage: list[gcs_http.ObjectInfo] = dataclasses.field(default_factory=list)

    def live_bytes(self) -> int:
        return sum(o.chunk.size for o in self.objects) + sum(g.size for g in self.garbage)

    def add(self, obj: Obj) -> None:
        self.objects.append(obj)
        self.objects.sort(key=lambda o: (o.chunk.gen, o.chunk.start, -o.chunk.end))


@dataclasses.dataclass
class Stream:
    """One file on disk (an inode): the name and generation it feeds, and how far."""

    key: str
    gen: int
    offset: int = 0
    checked: float = 0.0  # the last time a pass saw the file at `offset` bytes
    start: bytes = b""  # its first bytes: a new file that reuses the inode differs


@dataclasses.dataclass
class Session:
    name: str
    logs_dir: str
    prefix: str
    last_pass: float
    manifest_written: bool = False
    files: dict[str, FileLog] = dataclasses.field(default_factory=dict)
    streams: dict[tuple[int, int], Stream] = dataclasses.field(default_factory=dict)
    # file name -> (gen, end) of what a previous shipper of this run shipped
    resumed: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


class Retry(Exception):
    """The bucket did not answer: stop this pass, try again in the next one."""


# ---- the shipper ----------------------------------------------------------------


class Shipper:
    """Polls one node's Ray log directory and ships what is new (see the module doc)."""

    def __init__(self, cfg: ShipConfig, gcs: gcs_http.GcsHttp, *, clock=time.time):
        self.cfg = cfg
        self.gcs = gcs
        self.clock = clock
        self.session: Session | None = None
        self.stats = {"uploads": 0, "bytes": 0, "skipped_bytes": 0, "composes": 0,
                      "deletes": 0, "errors": 0}

    def resolve_session(self) -> tuple[str, str] | None:
        """(session name, real logs dir) of the directory ``logs_dir`` points at now."""
        real = os.path.realpath(os.path.expanduser(self.cfg.logs_dir))
        session = os.path.basename(os.path.dirname(real))
        if not os.path.isdir(real) or not SESSION_RE.match(session):
            return None
        return session, real

    def pass_once(self) -> None:
        """Ship what is new; when Ray started a new session, finish the old one first."""
        found = self.resolve_session()
        if found is not None and (self.session is None or found[0] != self.session.name):
            if self.session is not None:
                self._ship(self.session)  # the old run's last lines
                self.session = None
            try:
                self.session = self._open(*found)
            except gcs_http.GcsError as e:
                self.stats["errors"] += 1
                logger.warning("listing %s: %s (next pass in %gs)", found[0], e,
                               self.cfg.interval_s)
                return
        if self.session is not None:
            self._ship(self.session)

    def _open(self, name: str, logs_dir: str) -> Session:
        """A run's state: empty, or what a previous shipper of this node left in the bucket."""
        prefix = run_prefix(self.cfg.cluster, name, self.cfg.node)
        st = Session(name, logs_dir, prefix, last_pass=session_start(name))
        for info in self.gcs.list(prefix).objects:
            chunk = parse_chunk(info.name[len(prefix):])
            if info.name == prefix + NODE_MANIFEST:
                st.manifest_written = True
            if chunk is None:
                continue
            flog = st.files.setdefault(chunk.file, FileLog())
            flog.gens = max(flog.gens, chunk.gen)
            flog.add(Obj(chunk, info.name, info.generation, head=False))
        for key, flog in st.files.items():
            self._settle(flog)
            last = flog.objects[-1].chunk if flog.objects else None
            if last is not None:
                st.resumed[key] = (last.gen, max(o.chunk.end for o in flog.objects
                                                 if o.chunk.gen == last.gen))
        return st

    def _settle(self, flog: FileLog) -> None:
        """After a listing: superseded objects (a composite's leftover sources) are
        garbage, and the first ``head_bytes`` in order are the kept head."""
        kept: list[Obj] = []
        for o in flog.objects:
            if kept and kept[-1].chunk.gen == o.chunk.gen and o.chunk.end <= kept[-1].chunk.end:
                flog.garbage.append(o.info())
                continue
            kept.append(o)
        flog.objects = kept
        # The head is the leading run from the first file's byte 0; while it is
        # not full nothing else was shipped (every later byte went into it).
        used, expect = 0, (1, 0)
        for o in kept:
            starts_next_gen = o.chunk.start == 0 and o.chunk.gen == expect[0] + 1
            if (o.chunk.gen, o.chunk.start) != expect and not starts_next_gen:
                break
            if used + o.chunk.size > self.cfg.head_bytes:
                break
            o.head = True
            used += o.chunk.size
            expect = (o.chunk.gen, o.chunk.end)
        flog.head_used = used if all(o.head for o in kept) else self.cfg.head_bytes

    def _ship(self, st: Session) -> None:
        now = self.clock()
        try:
            if not st.manifest_written:
                st.manifest_written = self._write_manifest(st)
            for key, path, stat in self._scan(st.logs_dir):
                stream = self._stream(st, key, path, stat)
                if stat.st_size > stream.offset:
                    self._ship_stream(st, stream, path, stat.st_size)
                stream.checked = now
            for flog in st.files.values():
                self._collect(flog)
                self._compact(st, flog)
        except Retry as e:
            self.stats["errors"] += 1
            logger.warning("%s (next pass in %.1fs)", e, self.cfg.interval_s)
        st.last_pass = now

    def _stream(self, st: Session, key: str, path: str, stat: os.stat_result) -> Stream:
        ino = (stat.st_dev, stat.st_ino)
        stream = st.streams.get(ino)
        if (
            stream is not None
            and stat.st_size >= stream.offset
            and stream.key == key
            and (stat.st_size == stream.offset or _starts_with(path, stream.start))
        ):
            return stream
        flog = st.files.setdefault(key, FileLog())
        resumed = st.resumed.pop(key, None)
        if stream is None and resumed is not None and stat.st_size >= resumed[1]:
            # A restarted shipper: this file continues where the bucket's copy ends.
            stream = Stream(key, resumed[0], resumed[1], st.last_pass)
        else:  # a new file (or one that shrank: Ray does not, but be safe)
            flog.gens += 1
            stream = Stream(key, flog.gens, 0, st.last_pass)
        st.streams[ino] = stream
        return stream

    def _scan(self, logs_dir: str) -> list[tuple[str, str, os.stat_result]]:
        """(name, path, stat) of every regular log file, oldest copy of a name first.

        Names are relative to logs/, without ``old/`` (Ray's log monitor moves
        finished workers' files there) and without a rotation suffix
        (``worker-x.out.1``: Ray's rotation renames the full file and opens a
        new one), so every copy of a file is one name; a copy seen first after
        its rotation gets a lower generation than the newer copies.
        """
        found = []
        stack = [(logs_dir, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                name = f"{rel}{entry.name}"
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in SKIPPED_DIRS:
                            sub = "" if (rel == "" and entry.name == "old") else f"{name}/"
                            stack.append((entry.path, sub))
                        continue
                    if not entry.is_file(follow_symlinks=False) or SKIPPED_FILES.match(entry.name):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # moved or deleted meanwhile; seen again next pass
                m = ROTATED.match(name)
                key, copy = (m.group(1), int(m.group(2))) if m else (name, 0)
                found.append((key, -copy, entry.path, stat))
        found.sort(key=lambda f: (f[0], f[1]))
        return [(key, path, stat) for key, _, path, stat in found]

    def _ship_stream(self, st: Session, stream: Stream, path: str, size: int) -> None:
        cfg = self.cfg
        flog = st.files[stream.key]
        avail = size - stream.offset
        head = flog.head_used < cfg.head_bytes
        if head:
            n = min(avail, cfg.head_bytes - flog.head_used, cfg.max_chunk)
        else:
            n = min(avail, cfg.max_chunk)
        if not head and avail > n:
            # More than one pass may ship: keep the newest bytes, leave a gap.
            self.stats["skipped_bytes"] += avail - n
            stream.offset = size - n
        if not head:
            self._make_room(flog, n)
        read_at = self.clock()
        try:
            with open(path, "rb") as f:
                f.seek(stream.offset)
                data = f.read(n)
        except OSError:
            return  # moved (to old/) or removed meanwhile: next pass
        if not data:
            return
        t0 = int(min(stream.checked, read_at))
        t1 = int(read_at) + (read_at > int(read_at))
        if stream.offset == 0:
            stream.start = data[:START_BYTES]
        chunk = Chunk(stream.key, stream.gen, stream.offset, stream.offset + len(data), t0, t1, 0)
        name = chunk_name(st.prefix, chunk.file, chunk.gen, chunk.start, chunk.end, t0, t1)
        info = self._call(self.gcs.upload, name, data)
        self.stats["uploads"] += 1
        self.stats["bytes"] += len(data)
        flog.add(Obj(chunk, name, info.generation if info else "", head))
        if head:
            flog.head_used += len(data)
        stream.offset = chunk.end

    def _make_room(self, flog: FileLog, incoming: int) -> None:
        """Delete the window's oldest objects until ``incoming`` more bytes fit the cap."""
        while (
            sum(o.chunk.size for o in flog.objects) + incoming > self.cfg.max_file_bytes
            and any(not o.head for o in flog.objects)
        ):
            oldest = next(o for o in flog.objects if not o.head)
            flog.objects.remove(oldest)
            flog.garbage.append(oldest.info())
        self._collect(flog)
        if flog.live_bytes() + incoming > self.cfg.max_file_bytes:
            raise Retry("old objects could not be deleted; not uploading past the cap")

    def _collect(self, flog: FileLog) -> None:
        """Delete superseded objects (composed, or out of the window)."""
        while flog.garbage:
            self._call(self.gcs.delete, flog.garbage[0])
            flog.garbage.pop(0)
            self.stats["deletes"] += 1

    def _compact(self, st: Session, flog: FileLog) -> None:
        """Compose each run of 32 contiguous objects of one level into one."""
        i = 0
        while i <= len(flog.objects) - COMPOSE_RUN:
            run = flog.objects[i : i + COMPOSE_RUN]
            first, last = run[0].chunk, run[-1].chunk
            if (
                first.level >= MAX_COMPOSE_LEVEL
                or any(o.chunk.level != first.level or o.chunk.gen != first.gen
                       or o.head != run[0].head for o in run)
                or any(a.chunk.end != b.chunk.start for a, b in itertools.pairwise(run))
                or (not run[0].head and last.end - first.start > self.cfg.max_composite_tail)
            ):
                i += 1
                continue
            t0, t1 = min(o.chunk.t0 for o in run), max(o.chunk.t1 for o in run)
            chunk = Chunk(first.file, first.gen, first.start, last.end, t0, t1, first.level + 1)
            name = chunk_name(st.prefix, chunk.file, chunk.gen, chunk.start, chunk.end, t0, t1,
                              chunk.level)
            info = self._call(self.gcs.compose, [o.info() for o in run], name)
            self.stats["composes"] += 1
            flog.objects[i : i + COMPOSE_RUN] = [Obj(chunk, name, info.generation if info else "",
                                                     run[0].head)]
            flog.garbage += [o.info() for o in run]
            self._collect(flog)
            i = max(0, i - COMPOSE_RUN)  # the new object may complete a run of its level

    def _call(self, fn, *args):
        """One request; None if the object already exists (a re-upload after a restart)."""
        try:
            return fn(*args)
        except gcs_http.PreconditionFailed:
            return None
        except gcs_http.GcsError as e:
            raise Retry(str(e)) from None

    def _write_manifest(self, st: Session) -> bool:
        body = {
            "cluster": self.cfg.cluster,
            "node": self.cfg.node,
            "role": self.cfg.role,
            "node_type": self.cfg.node_type,
            "session": st.name,
            "session_started": session_start(st.name),
            "shipper_started": int(self.clock()),
            "interval_s": self.cfg.interval_s,
            "max_file_bytes": self.cfg.max_file_bytes,
        }
        data = json.dumps(body, sort_keys=True).encode()
        self._call(self.gcs.upload, st.prefix + NODE_MANIFEST, data)
        return True

    # ---- loop ----

    def run(self, stop: threading.Event) -> None:
        logger.info(
            "shipping %s to gs://%s/%s/%s/<date>/%s/ every %gs, at most %d bytes per file",
            self.cfg.logs_dir, self.cfg.bucket, LOG_PREFIX, self.cfg.cluster, self.cfg.node,
            self.cfg.interval_s, self.cfg.max_file_bytes,
        )
        while not stop.is_set():
            started = time.monotonic()
            self._safe_pass()
            stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - started)))
        self._safe_pass()  # the last lines before a shutdown
        logger.info("stopped: %s", json.dumps(self.stats, sort_keys=True))

    def _safe_pass(self) -> None:
        try:
            self.pass_once()
        except Exception:  # one bad pass must not end the shipping
            self.stats["errors"] += 1
            logger.exception("pass failed (next pass in %gs)", self.cfg.interval_s)


def _starts_with(path: str, start: bytes) -> bool:
    """Whether the file still begins as it did (False: the inode now holds another file)."""
    if not start:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(start)) == start
    except OSError:
        return True  # moved meanwhile: decided next pass


if __name__ == "__main__":  # python -m cluster.logship run|start ... (cluster/logship_cli.py)
    from cluster.logship_cli import main

    sys.exit(main())
