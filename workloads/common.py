"""Shared helpers for the ray-gcp driver scripts.

- :func:`connect` joins the Ray cluster the environment names (``RAY_ADDRESS``
  plus Ray's own token settings ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` /
  ``RAY_AUTH_TOKEN_PATH``), or starts a throwaway local instance when there is
  none.
- :class:`Storage` reads and writes a local folder or a ``gs://bucket/prefix``
  with the same five calls, writing atomically in both cases.
- :func:`cluster_shape` / :func:`format_summary` describe the cluster and a
  run in one line.

Everything here is importable on every Ray node (the cluster config puts the
repo bundle on the node venv's ``sys.path``), so Storage objects can be
shipped to tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GS_SCHEME = "gs://"
EXIT_NO_CLUSTER = 3  # exit status of every script that cannot reach its Ray cluster
# How long a driver tries to reach its cluster before it gives up with EXIT_NO_CLUSTER.
CONNECT_TIMEOUT_ENV = "RAY_GCP_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 30.0


class UsageError(Exception):
    """Bad command-line input; scripts exit 2 with this message."""


# ---------------------------------------------------------------- Ray --------


def connect_timeout_default() -> float:
    """``$RAY_GCP_CONNECT_TIMEOUT`` (seconds), else 30; a bad value is a usage error."""
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        return _positive_seconds(text)
    except ValueError as e:
        raise UsageError(f"{CONNECT_TIMEOUT_ENV}={text!r}: {e}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number of seconds; allowed: a number > 0") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("allowed: a number of seconds > 0")
    return value


def add_connect_arguments(parser) -> None:
    """``--address`` and ``--connect-timeout``, the same in every driver."""
    parser.add_argument(
        "--address", default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)",
    )

    def seconds(text: str) -> float:
        import argparse

        try:
            return _positive_seconds(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--connect-timeout {text!r}: {e}") from None

    parser.add_argument(
        "--connect-timeout", type=seconds, default=None, metavar="SECONDS",
        help=f"give up (exit {EXIT_NO_CLUSTER}) if the cluster cannot be reached within this "
        f"time (default: ${CONNECT_TIMEOUT_ENV}, else {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )


def _no_cluster(address: str, why: str) -> SystemExit:
    print(
        f"error: cannot reach the Ray cluster at {address}: {why}. Is it running "
        "(`python -m cluster local status`)? Point RAY_ADDRESS (or --address) at a running "
        "cluster, or unset it to run on a throwaway local Ray.",
        file=sys.stderr,
        flush=True,
    )
    return SystemExit(EXIT_NO_CLUSTER)


def _gcs_host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS address; None for what we do not probe (auto, ray://)."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe_gcs(address: str, timeout: float) -> None:
    """Fail fast, without Ray's retry loop, when nothing listens at ``address``.

    Raises SystemExit(EXIT_NO_CLUSTER) after one clear line if a TCP
    connection cannot be opened within ``timeout`` seconds.
    """
    target = _gcs_host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else str(e)
        raise _no_cluster(address, why) from None


def connect(address: str | None = None, *, connect_timeout: float | None = None, **init_kwargs):
    """``ray.init`` against ``address`` or ``$RAY_ADDRESS``; a local instance if neither.

    Token auth needs nothing here: ``ray.init`` itself reads ``RAY_AUTH_MODE``
    and the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) from the environment, and a job started by
    ``ray job submit`` inherits both from the head.

    With an address, the whole attempt is bounded by ``connect_timeout``
    (default ``$RAY_GCP_CONNECT_TIMEOUT``, else 30 s): Ray itself retries a
    dead GCS forever (``Failed to connect to GCS ... within 5 seconds``, then
    ``Timed out while waiting for GCS``, again and again). A dead address ends
    in one line on stderr and exit status 3.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    init_kwargs.setdefault("log_to_driver", True)
    init_kwargs.setdefault("ignore_reinit_error", True)
    if address is None:
        return ray.init(**init_kwargs)
    try:
        timeout = connect_timeout if connect_timeout is not None else connect_timeout_default()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    deadline = time.monotonic() + timeout
    probe_gcs(address, timeout)

    def give_up() -> None:
        # ray.init is blocked in Ray's C++ retry loop and cannot be interrupted;
        # nothing was started (we only connect), so leaving hard is safe.
        _no_cluster(address, f"no working connection within {timeout:g} s")
        os._exit(EXIT_NO_CLUSTER)

    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        return ray.init(address=address, **init_kwargs)
    except ConnectionError as e:
        print(
            f"error: cannot connect to the Ray cluster at {address}: {e}. If the cluster uses "
            "token auth, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN).",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_CLUSTER) from None
    finally:
        watchdog.cancel()


@dataclass(frozen=True)
class ClusterShape:
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        gpus = f", {_plural(self.gpus, 'GPU')}" if self.gpus else ""
        return f"{_plural(self.nodes, 'node')}, {_plural(self.cpus, 'CPU')}{gpus}"


def cluster_shape() -> ClusterShape:
    """Alive nodes and their total CPUs/GPUs right now (autoscaling changes it)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in alive)
    gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in alive)
    return ClusterShape(nodes=len(alive), cpus=cpus, gpus=gpus)


def bigger(a: ClusterShape | None, b: ClusterShape) -> ClusterShape:
    """The larger of two samples, for "peak cluster size during the run"."""
    if a is None:
        return b
    return max(a, b, key=lambda s: (s.cpus, s.nodes, s.gpus))


def format_summary(
    shape: ClusterShape, *, processed: int, skipped: int, failed: int, seconds: float
) -> str:
    return (
        f"This cluster consists of {shape.describe()}; "
        f"processed {processed}, skipped {skipped}, failed {failed} in {seconds:.1f} s"
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _plural(x: float, noun: str) -> str:
    return f"{_num(x)} {noun}" + ("" if x == 1 else "s")


# ------------------------------------------------------------- Storage -------


class Storage:
    """A folder or ``gs://bucket/prefix``: list, read, write, exists, url.

    Keys are POSIX relative paths ("a/b.jpg"). Writes are atomic: locally a
    temp file in the same folder renamed over the target; on GCS an object
    upload, which is atomic by itself. So a reader never sees half a file.
    """

    url: str

    def list(self, under: str = "") -> Iterator[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def exists(self, key: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def join(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, obj) -> None:
        self.write_text(key, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def open_storage(url: str) -> Storage:
    """``gs://bucket[/prefix]`` -> GCS, anything else -> a local folder."""
    if not url:
        raise UsageError("empty storage location")
    if url.startswith(GS_SCHEME):
        return GCSStorage.from_url(url)
    if "://" in url:
        raise UsageError(f"unsupported storage location {url!r}: use a local path or gs://bucket/prefix")
    return LocalStorage(url)


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def __repr__(self):
        return f"LocalStorage({self.url!r})"

    def __reduce__(self):
        return (LocalStorage, (self.url,))

    def list(self, under: str = "") -> Iterator[str]:
        base = self.root / under if under else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith(".tmp-"):
                    continue  # our own in-flight writes
                yield name if rel_dir == "." else f"{rel_dir}/{name}"

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def remove_stale_temps(self) -> int:
        """Delete temp files of writes that never finished (a task killed mid-write).

        Call only when no writer is active (the driver, after its last task).
        """
        removed = 0
        if self.root.is_dir():
            for p in self.root.rglob(".tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
        return removed

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


class GCSStorage(Storage):
    """``gs://bucket/prefix`` through google-cloud-storage.

    The client honours ``STORAGE_EMULATOR_HOST`` (tests point it at
    gcp-storage-emulator); on GCP it uses the node's service account. The
    emulator address is captured at construction so a Storage shipped to a
    task on another node talks to the same endpoint.
    """

    def __init__(self, bucket: str, prefix: str = "", emulator_host: str | None = None):
        if not bucket:
            raise UsageError("gs:// location has no bucket name")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.emulator_host = emulator_host if emulator_host is not None else os.environ.get(
            "STORAGE_EMULATOR_HOST"
        )
        self.url = f"{GS_SCHEME}{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._bucket = None

    @classmethod
    def from_url(cls, url: str) -> GCSStorage:
        rest = url[len(GS_SCHEME):]
        bucket, _, prefix = rest.partition("/")
        return cls(bucket, prefix)

    def __repr__(self):
        return f"GCSStorage({self.url!r})"

    def __reduce__(self):
        return (GCSStorage, (self.bucket_name, self.prefix, self.emulator_host or ""))

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            if self.emulator_host:
                # The endpoint this Storage captured wins over whatever this process
                # (a reused worker, a raylet started earlier) inherited.
                os.environ["STORAGE_EMULATOR_HOST"] = self.emulator_host
                client = storage.Client(project="ray-gcp-emulated")
            else:
                client = storage.Client()
            self._bucket = client.bucket(self.bucket_name)
        return self._bucket

    def _name(self, key: str) -> str:
        _check_key(key)
        return posixpath.join(self.prefix, key) if self.prefix else key

    def list(self, under: str = "") -> Iterator[str]:
        base = self.prefix + "/" if self.prefix else ""
        search = base + (under.strip("/") + "/" if under else "")
        for blob in self.bucket.client.list_blobs(self.bucket_name, prefix=search):
            if blob.name.endswith("/"):
                continue  # "folder" placeholder objects
            yield blob.name[len(base):]

    def read_bytes(self, key: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return self.bucket.blob(self._name(key)).download_as_bytes()
        except NotFound:
            raise FileNotFoundError(self.join(key)) from None

    def exists(self, key: str) -> bool:
        return self.bucket.blob(self._name(key)).exists()

    def write_bytes(self, key: str, data: bytes) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        # The library retries uploads only with a generation precondition; ours
        # are idempotent (a retry writes the same bytes), so retry transient errors.
        self.bucket.blob(self._name(key)).upload_from_string(data, retry=DEFAULT_RETRY)


def overlapping(a: Storage, b: Storage) -> bool:
    """True if one location is inside the other (or they are the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, GCSStorage):
        if a.bucket_name != b.bucket_name:
            return False
        pa, pb = a.prefix + "/", b.prefix + "/"
        return pa.startswith(pb) or pb.startswith(pa) or not a.prefix or not b.prefix
    ra, rb = a.root, b.root
    return ra == rb or ra in rb.parents or rb in ra.parents
