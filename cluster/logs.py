"""Read the Ray logs that ``cluster.logship`` shipped, after the cluster is gone.

    python -m cluster logs runs                       # every run of the cluster, newest first
    python -m cluster logs job raysubmit_XyZ          # a job's driver output, then its workers' files
    python -m cluster logs node ray-gcp-worker-1a2b --file 'raylet.*'
    python -m cluster logs files --run latest         # what was kept, per node and file

Filters: ``--run`` (a session name, a unique part of one, or ``latest``),
``--node`` (a node name, a unique part of one, ``head`` or ``worker``),
``--since``/``--until`` (``2026-12-07T02:50``, ``2026-12-07 02:50:00``, or
``30m``/``2h``/``3d`` ago; UTC). A time filter keeps the objects whose bytes
were written in the window, so it is as fine as the shipping interval (5 s).

Every section names the node it came from (its name, role and node type),
and bytes the size cap dropped show as ``[... N bytes not kept ...]``.

Where: ``--bucket`` and ``--cluster``, else ``$RAY_GCP_BUCKET`` and
``$RAY_GCP_CLUSTER`` (set on Ray nodes), else the cluster config
``$RAY_GCP_CLUSTER_YAML`` names (the provider VM's ``/etc/ray-gcp/cluster.yaml``,
``provider.log_bucket``). Credentials: the VM's service account, or
Application Default Credentials on a laptop
(``gcloud auth application-default login``); ``STORAGE_EMULATOR_HOST`` points
it at an emulator.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import fnmatch
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from cluster import gcs_http
from cluster.logpaths import (
    LOG_PREFIX,
    NODE_MANIFEST,
    SESSION_RE,
    Chunk,
    parse_chunk,
    session_start,
)

MARKER_RE = re.compile(r"^ray-gcp-driver-([0-9a-f]+)\.json$")
WORKER_FILE_RE = re.compile(r"^worker-[0-9a-f]+-([0-9a-f]+)-\d+\.(out|err)$")
FETCH_THREADS = 16


class LogsError(Exception):
    """Nothing to show, or not where asked; the message says what to try."""


# ---- what is in the bucket ------------------------------------------------------------


@dataclasses.dataclass
class Piece:
    """One object of one file."""

    name: str
    chunk: Chunk


@dataclasses.dataclass
class NodeRun:
    """One node's logs of one run."""

    cluster: str
    date: str
    node: str
    session: str
    prefix: str
    manifest: dict = dataclasses.field(default_factory=dict)
    files: dict[str, list[Piece]] = dataclasses.field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.manifest.get("role", "?")

    @property
    def label(self) -> str:
        """``name (role, type)``: how every section says where it came from."""
        kind = ", ".join(p for p in (self.role, self.manifest.get("node_type")) if p)
        return f"{self.node} ({kind})"

    @property
    def last_shipped(self) -> int:
        return max((p.chunk.t1 for ps in self.files.values() for p in ps), default=0)

    def pieces(self, file: str, since: float | None = None, until: float | None = None
               ) -> list[Piece]:
        """The file's objects in byte order, overlaps resolved, inside the time window."""
        out: list[Piece] = []
        ordered = sorted(self.files.get(file, []),
                         key=lambda p: (p.chunk.gen, p.chunk.start, -p.chunk.end))
        for p in ordered:
            if out and out[-1].chunk.gen == p.chunk.gen and p.chunk.end <= out[-1].chunk.end:
                continue  # a composed object's leftover source
            out.append(p)
        return [p for p in out if (since is None or p.chunk.t1 >= since)
                and (until is None or p.chunk.t0 <= until)]


@dataclasses.dataclass
class Run:
    cluster: str
    session: str
    date: str
    nodes: list[NodeRun]

    @property
    def started(self) -> int:
        return session_start(self.session)

    @property
    def ended(self) -> int:
        return max((n.last_shipped for n in self.nodes), default=self.started)

    def markers(self) -> list[tuple[NodeRun, str]]:
        return [(n, f) for n in self.nodes for f in n.files if MARKER_RE.match(f)]


class LogStore:
    """The ``logs/`` prefix of one bucket."""

    def __init__(self, gcs: gcs_http.GcsHttp):
        self.gcs = gcs

    def clusters(self) -> list[str]:
        return [p.rstrip("/").rsplit("/", 1)[1] for p in self.gcs.iter_prefixes(f"{LOG_PREFIX}/")]

    def runs(self, cluster: str, since: float | None = None, until: float | None = None
             ) -> list[Run]:
        """Every run of the cluster overlapping the window, newest first."""
        base = f"{LOG_PREFIX}/{cluster}/"
        node_prefixes = []
        for date_prefix in self.gcs.iter_prefixes(base):
            date = date_prefix[len(base):].rstrip("/")
            day = _parse_date(date)
            if day is None or (until is not None and day > until) or (
                since is not None and day + 2 * 86400 < since  # a run may outlast its day
            ):
                continue
            node_prefixes += [(date, p) for p in self.gcs.iter_prefixes(date_prefix)]
        session_prefixes = []
        with concurrent.futures.ThreadPoolExecutor(FETCH_THREADS) as pool:
            for date, prefixes in zip(
                [d for d, _ in node_prefixes],
                pool.map(lambda dp: list(self.gcs.iter_prefixes(dp[1])), node_prefixes),
                strict=True,
            ):
                session_prefixes += [(date, p) for p in prefixes]
            node_runs = list(pool.map(lambda dp: self._node_run(cluster, *dp), session_prefixes))
        by_session: dict[str, list[NodeRun]] = {}
        for nr in node_runs:
            if nr is not None:
                by_session.setdefault(nr.session, []).append(nr)
        runs = []
        for session, nodes in by_session.items():
            nodes.sort(key=lambda n: (n.role != "head", n.node))
            run = Run(cluster, session, nodes[0].date, nodes)
            if (since is not None and run.ended < since) or (until is not None and run.started > until):
                continue
            runs.append(run)
        return sorted(runs, key=lambda r: (r.started, r.session), reverse=True)

    def _node_run(self, cluster: str, date: str, prefix: str) -> NodeRun | None:
        parts = prefix.rstrip("/").split("/")
        node, session = parts[-2], parts[-1]
        if not SESSION_RE.match(session):
            return None
        nr = NodeRun(cluster, date, node, session, prefix)
        for info in self.gcs.list(prefix).objects:
            rest = info.name[len(prefix):]
            if rest == NODE_MANIFEST:
                try:
                    nr.manifest = json.loads(self.gcs.download(info.name))
                except (ValueError, gcs_http.GcsError):
                    nr.manifest = {}
                continue
            chunk = parse_chunk(rest)
            if chunk is not None:
                nr.files.setdefault(chunk.file, []).append(Piece(info.name, chunk))
        return nr

    def read(self, pieces: list[Piece]) -> Iterator[bytes | int]:
        """The pieces' bytes in order, with the size of each gap (an int) between them."""
        with concurrent.futures.ThreadPoolExecutor(FETCH_THREADS) as pool:
            datas = pool.map(lambda p: self.gcs.download(p.name), pieces)
            pos: tuple[int, int] | None = None  # (generation, end) of what was yielded
            for p, data in zip(pieces, datas, strict=True):
                c = p.chunk
                if pos is None or pos[0] != c.gen:
                    skip = 0
                    if c.start > 0:
                        yield c.start
                else:
                    skip = max(0, pos[1] - c.start)
                    if c.start > pos[1]:
                        yield c.start - pos[1]
                yield data[skip:]
                pos = (c.gen, c.end)


# ---- selection -------------------------------------------------------------------------


def pick_run(runs: list[Run], wanted: str | None) -> list[Run]:
    """``--run``: all runs (None), the newest (``latest``) or those matching a part of the name."""
    if not wanted:
        return runs
    if wanted == "latest":
        return runs[:1]
    exact = [r for r in runs if r.session == wanted]
    if exact:
        return exact
    found = [r for r in runs if wanted in r.session]
    if len(found) > 1:
        raise LogsError(f"--run {wanted!r} matches {len(found)} runs: "
                        + ", ".join(r.session for r in found[:5]) + "; give more of the name")
    if not found:
        raise LogsError(f"--run {wanted!r}: no such run (`logs runs` lists them)")
    return found


def pick_nodes(run: Run, wanted: str | None) -> list[NodeRun]:
    if not wanted:
        return run.nodes
    if wanted in ("head", "worker"):
        return [n for n in run.nodes if n.role == wanted]
    exact = [n for n in run.nodes if n.node == wanted]
    if exact:
        return exact
    return [n for n in run.nodes if wanted in n.node]


# ---- output -----------------------------------------------------------------------------


def fmt_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_runs(runs: list[Run], out: TextIO) -> None:
    for run in runs:
        jobs = sorted({f for n in run.nodes for f in n.files
                       if f.startswith(("job-driver-", "driver-")) and f.endswith(".log")})
        print(f"{run.session}  {fmt_time(run.started)} .. {fmt_time(run.ended)} UTC  "
              f"({len(run.nodes)} node{'s' * (len(run.nodes) != 1)})", file=out)
        for n in run.nodes:
            size = sum(p.chunk.size for f in n.files for p in n.pieces(f))
            print(f"  {n.label}: {len(n.files)} files, {fmt_bytes(size)}, "
                  f"last shipped {fmt_time(n.last_shipped)}", file=out)
        for j in jobs:
            print(f"  driver log: {j}", file=out)


def print_files(store: LogStore, run: Run, nodes: list[NodeRun], out: TextIO) -> None:
    print(f"{run.session}", file=out)
    for n in nodes:
        print(f"  {n.label}", file=out)
        for f in sorted(n.files):
            ps = n.pieces(f)
            kept = sum(p.chunk.size for p in ps)
            end = max((p.chunk.end for p in ps), default=0)
            print(f"    {f}  {fmt_bytes(kept)} kept" + (
                f" of {fmt_bytes(end)}" if end > kept else ""), file=out)


def print_file(store: LogStore, node: NodeRun, file: str, out: TextIO, *, since=None,
               until=None, prefix_lines: bool = False) -> bool:
    """One file's section; False if nothing of it is in the window."""
    pieces = node.pieces(file, since, until)
    if not pieces:
        return False
    t0, t1 = min(p.chunk.t0 for p in pieces), max(p.chunk.t1 for p in pieces)
    print(f"==> {node.label}: {file}  [{fmt_time(t0)} .. {fmt_time(t1)} UTC] <==", file=out)
    pending = ""
    tag = f"[{node.node} {file}] " if prefix_lines else ""
    for part in store.read(pieces):
        if isinstance(part, int):
            if pending:
                print(tag + pending, file=out)
                pending = ""
            why = "outside the time window or not kept" if since or until else "not kept: size cap"
            print(f"{tag}[... {part} bytes {why} ...]", file=out)
            continue
        text = pending + part.decode("utf-8", errors="replace")
        lines = text.split("\n")
        pending = lines.pop()
        for line in lines:
            print(tag + line, file=out)
    if pending:
        print(tag + pending, file=out)
    out.flush()
    return True


def find_job(run: Run, job: str, store: LogStore) -> tuple[NodeRun, str | None, str | None] | None:
    """(driver's node, driver log file, Ray job id) of a submission id, job id or driver log."""
    for node, marker in run.markers():
        pieces = node.pieces(marker)
        if not pieces:
            continue
        try:
            info = json.loads(b"".join(d for d in store.read(pieces) if isinstance(d, bytes)))
        except ValueError:
            continue
        names = {info.get("job_id"), info.get("submission_id"), info.get("driver_log"),
                 str(info.get("pid"))}
        if job in names or (info.get("driver_log") or "").startswith(job):
            return node, info.get("driver_log"), info.get("job_id")
    for node in run.nodes:
        for f in node.files:
            if f in (f"job-driver-{job}.log", job) or (f.startswith("driver-") and job in f):
                return node, f, None
    return None


# ---- command line ----------------------------------------------------------------------


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """``30m``/``2h``/``3d`` ago, or an ISO date/time (UTC)."""
    if not text:
        return None
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        t = dt.datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        raise LogsError(
            f"time {text!r}: allowed: 30m, 2h, 3d (ago) or 2026-12-07T02:50[:00] (UTC)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _parse_date(date: str) -> float | None:
    try:
        return dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def where_from_config(path: str | None) -> tuple[str | None, str | None]:
    """(bucket, cluster) the rendered cluster config names, if there is one."""
    if not path or not os.path.isfile(path):
        return None, None
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    return (cfg.get("provider") or {}).get("log_bucket"), cfg.get("cluster_name")


def add_arguments(parser) -> None:
    parser.add_argument("what", choices=["runs", "job", "node", "files"])
    parser.add_argument("name", nargs="?", help="job: submission id, Ray job id or driver log; "
                        "node: node name (or a unique part of it)")
    parser.add_argument("--bucket", default=None,
                        help="the stack's bucket (`pulumi stack output bucket`); default "
                        "$RAY_GCP_BUCKET or the cluster config's provider.log_bucket")
    parser.add_argument("--cluster", default=None,
                        help="the cluster's name (ray-gcp:clusterName); default "
                        "$RAY_GCP_CLUSTER or the cluster config's cluster_name")
    parser.add_argument("--run", default=None, help="a session name, a unique part, or latest")
    parser.add_argument("--node", default=None, help="node name (or part), head or worker")
    parser.add_argument("--file", default=None, help="node: file glob, e.g. 'raylet.*'")
    parser.add_argument("--since", default=None,
                        help="only bytes written since: 2026-12-07T02:50 (UTC) or 30m/2h/3d ago")
    parser.add_argument("--until", default=None, help="only bytes written until (as --since)")
    parser.add_argument("--prefix", action="store_true",
                        help="start every line with [node file] (for grep)")


def main(args, out: TextIO = sys.stdout) -> int:
    try:
        return _main(args, out)
    except LogsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except gcs_http.GcsError as e:
        hint = {401: "no valid credentials", 403: "this identity may not read the bucket",
                404: "no such bucket"}.get(e.status, "")
        print(f"error: reading gs://{args.bucket}: {hint or e}", file=sys.stderr)
        return 1


def _main(args, out: TextIO) -> int:
    cfg_bucket, cfg_cluster = where_from_config(os.environ.get("RAY_GCP_CLUSTER_YAML"))
    args.bucket = args.bucket or os.environ.get("RAY_GCP_BUCKET") or cfg_bucket
    cluster = args.cluster or os.environ.get("RAY_GCP_CLUSTER") or cfg_cluster
    if not args.bucket:
        raise LogsError("no bucket: give --bucket (`pulumi stack output bucket`) or set "
                        "RAY_GCP_BUCKET")
    endpoint = gcs_http.default_endpoint()
    token = None
    if endpoint == gcs_http.GOOGLE_ENDPOINT:
        token = gcs_http.metadata_token() if _on_gcp() else gcs_http.adc_token()
    store = LogStore(gcs_http.GcsHttp(args.bucket, endpoint=endpoint, token_source=token))
    if not cluster:
        found = store.clusters()
        raise LogsError("give --cluster: " + (f"gs://{args.bucket}/{LOG_PREFIX}/ has "
                        + ", ".join(found) if found else f"nothing under gs://{args.bucket}/"
                        f"{LOG_PREFIX}/ yet"))
    since, until = parse_time(args.since), parse_time(args.until)
    runs = store.runs(cluster, since, until)
    if not runs:
        raise LogsError(f"no runs of cluster {cluster!r} under gs://{args.bucket}/{LOG_PREFIX}/"
                        f"{cluster}/" + (" in that time window" if since or until else "")
                        + " (is log shipping on? see cluster/README.md, 'Logs')")
    runs = pick_run(runs, args.run)
    if args.what == "runs":
        print_runs(runs, out)
        return 0
    if args.what == "files":
        for run in runs[: 1 if not args.run else None]:
            print_files(store, run, pick_nodes(run, args.node), out)
        return 0
    if not args.name:
        raise LogsError(f"`logs {args.what}` needs a name (`logs runs` lists them)")
    if args.what == "job":
        return _print_job(store, runs, args.name, args, since, until, out)
    return _print_node(store, runs, args.name, args, since, until, out)


def _print_job(store, runs, job, args, since, until, out) -> int:
    for run in runs:
        found = find_job(run, job, store)
        if found is None:
            continue
        node, driver_log, job_id = found
        print(f"run {run.session}", file=out)
        shown = 0
        if driver_log and (not args.node or node in pick_nodes(run, args.node)):
            shown += print_file(store, node, driver_log, out, since=since, until=until,
                                prefix_lines=args.prefix)
        if job_id:
            for n in pick_nodes(run, args.node):
                files = sorted(
                    (f for f in n.files if (m := WORKER_FILE_RE.match(f)) and m.group(1) == job_id),
                    key=lambda f: min(p.chunk.t0 for p in n.files[f]),
                )
                for f in files:
                    shown += print_file(store, n, f, out, since=since, until=until,
                                        prefix_lines=args.prefix)
        if not shown:
            raise LogsError(f"job {job!r}: nothing shipped in that window or on that node")
        return 0
    raise LogsError(f"no job {job!r} in " + ("that run" if args.run else "any run")
                    + " (a submission id like raysubmit_..., a Ray job id like 02000000, "
                    "or a driver log name from `logs runs`)")


def _print_node(store, runs, node_name, args, since, until, out) -> int:
    for run in runs:
        nodes = pick_nodes(run, node_name)
        if not nodes:
            continue
        if len(nodes) > 1:
            raise LogsError(f"node {node_name!r} matches " + ", ".join(n.node for n in nodes))
        (node,) = nodes
        print(f"run {run.session}", file=out)
        shown = 0
        for f in sorted(node.files, key=lambda f: min(p.chunk.t0 for p in node.files[f])):
            if MARKER_RE.match(f) or (args.file and not fnmatch.fnmatch(f, args.file)):
                continue
            shown += print_file(store, node, f, out, since=since, until=until,
                                prefix_lines=args.prefix)
        if not shown:
            raise LogsError(f"node {node.node}: no file matches in that window")
        return 0
    raise LogsError(f"no node {node_name!r} in " + ("that run" if args.run else "any run"))


def _on_gcp() -> bool:
    """A GCE VM (its metadata server answers), where the VM's account reads the bucket."""
    import urllib.request

    host = os.environ.get(gcs_http.METADATA_HOST_ENV, gcs_http.METADATA_HOST)
    try:
        req = urllib.request.Request(f"http://{host}/computeMetadata/v1/",
                                     headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(req, timeout=1):
            return True
    except OSError:
        return False
