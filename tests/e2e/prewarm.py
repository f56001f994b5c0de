"""What the fake machines install from, prepared once on this host (the registry is
reachable here, never from the machines).

``prewarm(root, uid)`` returns a directory with

- ``uv/``: a uv cache filled by the nodes' own install (``uv venv`` on
  /usr/bin/python3.X, ``uv pip sync --require-hashes`` of
  cluster/requirements-node.txt, with the pinned uv and the setup command's
  environment) and by ``uv sync --frozen`` of the job template's lock
  (examples/my-job: what its ``uv run`` on each node needs), owned by ``uid`` (the machines' login user: the cache is the
  lower layer of an overlay at that user's ``~/.cache/uv``);
- ``wheels/``: the uv wheel of cluster/requirements-uv.txt (pip's
  ``--find-links`` on the machines).

The directory is keyed by the requirements, the job template's lock, the uv
version, the Python minor and ``uid``, reused while they hold, and built under a file lock (concurrent
runs wait for one build). The real download of the same packages is covered
by tests/cluster/test_node_setup.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from cluster import layout
from cluster.bundle import find_uv

# How this host reaches PyPI (a proxy, a TLS-inspecting proxy's CA): passed through.
NETWORK_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
               "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")
SYSTEM_PYTHON = Path(f"/usr/bin/python{layout.PYTHON_MINOR}")
JOB_TEMPLATE = "examples/my-job"  # a user's job, run on the machines from their cache


def cache_root() -> Path:
    if os.environ.get("RAY_GCP_E2E_CACHE"):
        return Path(os.environ["RAY_GCP_E2E_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ray-gcp-e2e"


def _key(root: Path, uid: int) -> str:
    h = hashlib.sha256()
    for rel in (layout.NODE_REQUIREMENTS, layout.UV_REQUIREMENTS, f"{JOB_TEMPLATE}/uv.lock"):
        h.update((root / rel).read_bytes())
    h.update(f"{layout.UV_VERSION} {layout.PYTHON_MINOR} {uid}".encode())
    return h.hexdigest()[:16]


def _run(argv: list[str], env: dict[str, str], log) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    done = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"prewarm step failed ({done.returncode}): {' '.join(argv)}; "
                           f"see {log.name}")


def prewarm(root: Path, uid: int, progress=print) -> Path:
    uv = find_uv(root)
    if uv is None:
        raise RuntimeError(f"uv not found: `make setup` installs uv {layout.UV_VERSION}")
    out = cache_root() / _key(root, uid)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(str(out) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "complete").exists():
            return out
        progress(f"prewarming the machines' uv cache in {out} (once; downloads from PyPI)")
        shutil.rmtree(out, ignore_errors=True)
        work = out / "work"
        work.mkdir(parents=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "UV_CACHE_DIR": str(out / "uv"),
               "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1",
               **{k: os.environ[k] for k in NETWORK_ENV if k in os.environ}}
        with open(out / "prewarm.log", "w") as log:
            _run([str(SYSTEM_PYTHON), "-m", "venv", str(work / "pip")], env, log)
            _run([str(work / "pip/bin/pip"), "download", "-q", "--disable-pip-version-check",
                  "--no-deps", "--require-hashes", "-r", str(root / layout.UV_REQUIREMENTS),
                  "-d", str(out / "wheels")], env, log)
            _run([uv, "venv", "-q", "--python", str(SYSTEM_PYTHON), str(work / "venv")], env, log)
            _run([uv, "pip", "sync", "-q", "--require-hashes", "--python",
                  str(work / "venv/bin/python"), str(root / layout.NODE_REQUIREMENTS)], env, log)
            # What `uv run --frozen --no-dev` of the template fetches on a node.
            _run([uv, "sync", "-q", "--frozen", "--no-dev", "--python", str(SYSTEM_PYTHON),
                  "--project", str(root / JOB_TEMPLATE)],
                 {**env, "UV_PROJECT_ENVIRONMENT": str(work / "my-job")}, log)
        shutil.rmtree(work)
        for dirpath, dirnames, filenames in os.walk(out / "uv"):
            os.lchown(dirpath, uid, uid)
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, uid)
        os.chmod(out, 0o755)
        (out / "complete").write_text("ok\n")
        return out
