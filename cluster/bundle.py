"""The code bundle the provider VM unpacks and ``ray up`` ships to every node.

``build_bundle(project_root)`` returns a deterministic tar.gz (sorted entries,
mtime 0, uid/gid 0, no ``__pycache__``) of the code in ``cluster/`` and
``workloads/``: not their READMEs (``*.md``), which no node reads and which
would take a fifth of the metadata value;
``cluster/requirements-node.txt`` (the nodes' exact packages, exported from
uv.lock) is part of ``cluster/``. infra/ base64s it into the provider VM's
metadata key ``layout.META_BUNDLE``; a metadata value may hold 256 KB, so
``build_bundle`` refuses to produce more than ``MAX_BUNDLE_BYTES``.

``export_requirements(project_root)`` regenerates the requirements text with
the pinned uv (``python -m cluster requirements`` writes it).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from cluster import layout

BUNDLE_DIRS = ("cluster", "workloads")
REQUIREMENTS_PATH = layout.NODE_REQUIREMENTS
# Base64 grows by 4/3; keep the encoded value well under GCE's 256 KB per value.
MAX_BUNDLE_BYTES = 160 * 1024
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
# Docs stay out: the nodes run code, the operator reads the docs in the checkout.
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~", ".md")

# The exact export command; its text is also the file's header, so the
# drift test compares byte for byte.
EXPORT_ARGS = (
    "export",
    "--frozen",
    "--no-dev",
    "--no-emit-project",
    "--python",
    layout.PYTHON_MINOR,
)


class BundleError(RuntimeError):
    pass


def bundle_files(project_root: Path | str) -> list[str]:
    """Relative paths that go into the bundle, sorted."""
    root = Path(project_root)
    out = []
    for top in BUNDLE_DIRS:
        base = root / top
        if not base.is_dir():
            raise BundleError(f"{base} is missing: run from the project root")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for f in filenames:
                if f.endswith(_SKIP_SUFFIXES):
                    continue
                out.append((Path(dirpath) / f).relative_to(root).as_posix())
    if REQUIREMENTS_PATH not in out:
        raise BundleError(
            f"{root / REQUIREMENTS_PATH} is missing: run `python -m cluster requirements`"
        )
    return sorted(out)


def build_bundle(project_root: Path | str) -> bytes:
    """Deterministic tar.gz of cluster/ and workloads/ (same tree -> same bytes)."""
    root = Path(project_root)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in bundle_files(root):
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o755 if os.access(root / rel, os.X_OK) else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    # mtime=0 and no file name: gzip's header is deterministic too.
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=9) as gz:
        gz.write(raw.getvalue())
    blob = out.getvalue()
    if len(blob) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"bundle is {len(blob)} bytes, over {MAX_BUNDLE_BYTES} (base64 must fit a 256 KB "
            "metadata value): keep data files out of cluster/ and workloads/"
        )
    return blob


def find_uv(project_root: Path | str) -> str | None:
    """The uv to export with: the Makefile's pinned .tools/bin/uv, else uv on PATH."""
    local = Path(project_root) / ".tools" / "bin" / "uv"
    if local.is_file():
        return str(local)
    return shutil.which("uv")


def export_requirements(project_root: Path | str) -> str:
    """`uv export` of uv.lock's non-dev packages with hashes (the nodes' exact set)."""
    uv = find_uv(project_root)
    if uv is None:
        raise BundleError(f"uv not found: run `make setup` (installs uv {layout.UV_VERSION})")
    proc = subprocess.run(
        [uv, *EXPORT_ARGS],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "UV_NO_CONFIG": "1"},
    )
    if proc.returncode != 0:
        raise BundleError(f"uv export failed: {proc.stderr.strip()}")
    return proc.stdout
