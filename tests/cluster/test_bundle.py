"""The bundle is normalised and self-contained; requirements-node.txt matches uv.lock.

That it is the same bytes in every process (hash seed, clock, file order) is
tests/infra/test_vm_inputs_reproducible.py, against the reviewed digest in
tests/infra/inventory/.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from cluster import layout
from cluster.bundle import (
    MAX_BUNDLE_BYTES,
    REQUIREMENTS_PATH,
    BundleError,
    build_bundle,
    export_requirements,
    find_uv,
)

ROOT = Path(__file__).resolve().parents[2]


def members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return tar.getmembers()


def test_bundle_is_normalised_sorted_and_small():
    blob = build_bundle(ROOT)
    assert len(blob) <= MAX_BUNDLE_BYTES
    assert len(base64.b64encode(blob)) < 256 * 1024  # one GCE metadata value
    names = [m.name for m in members(blob)]
    assert names == sorted(names)
    assert {"cluster/__init__.py", "cluster/gcp_provider.py", REQUIREMENTS_PATH} <= set(names)
    assert "cluster/layout.py" in names and "workloads/__init__.py" in names
    # Code only: the READMEs would take a fifth of the one metadata value.
    assert (ROOT / "cluster/README.md").is_file()
    assert not [n for n in names if n.endswith(".md")]
    for m in members(blob):
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.isfile()


def test_bundle_skips_caches_and_needs_the_requirements(tmp_path):
    for top in ("cluster", "workloads"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    clean = build_bundle(tmp_path)
    (tmp_path / "cluster/__pycache__").mkdir()
    (tmp_path / "cluster/__pycache__/spec.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "workloads/stale.pyc").write_bytes(b"junk")
    assert build_bundle(tmp_path) == clean
    (tmp_path / REQUIREMENTS_PATH).unlink()
    with pytest.raises(BundleError, match="python -m cluster requirements"):
        build_bundle(tmp_path)


def test_bundle_refuses_to_outgrow_metadata(tmp_path):
    for top in ("cluster", "workloads"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "workloads/data.bin").write_bytes(__import__("os").urandom(MAX_BUNDLE_BYTES))
    with pytest.raises(BundleError, match="keep data files out"):
        build_bundle(tmp_path)


def test_unpacked_bundle_imports_the_provider_on_its_own(tmp_path):
    """What the provider VM and each node do: the bundle alone on sys.path."""
    with tarfile.open(fileobj=io.BytesIO(build_bundle(ROOT)), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cluster.gcp_provider as g, cluster.render, workloads; print(g.__file__)",
        ],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(tmp_path / "cluster/gcp_provider.py")


# ---- requirements-node.txt vs uv.lock ----------------------------------------------


def lock_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def pinned(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^ ;\\\n]+)", text, re.MULTILINE)
    }


def test_requirements_pin_exactly_the_locked_versions():
    text = (ROOT / REQUIREMENTS_PATH).read_text()
    pins = pinned(text)
    locked = lock_versions()
    assert pins["ray"] == layout.RAY_VERSION == locked["ray"]
    assert "pulumi" not in pins and "pytest" not in pins  # infra/dev extras stay off nodes
    for name, version in pins.items():
        assert locked.get(name) == version, f"{name}=={version} but uv.lock has {locked.get(name)}"
    # Every pin carries hashes (nodes install with --require-hashes).
    assert len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.MULTILINE)) == len(pins)
    assert text.count("--hash=sha256:") >= len(pins)


def test_requirements_file_is_the_uv_export_of_the_lock():
    if find_uv(ROOT) is None:
        pytest.fail(f"uv not found: `make setup` installs uv {layout.UV_VERSION}")
    assert (ROOT / REQUIREMENTS_PATH).read_text() == export_requirements(ROOT), (
        f"{REQUIREMENTS_PATH} drifted from uv.lock: run `python -m cluster requirements`"
    )


def test_layout_versions_match_the_lock_and_this_interpreter():
    assert lock_versions()["ray"] == layout.RAY_VERSION
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" == layout.PYTHON_MINOR


def test_the_makefile_installs_the_uv_version_the_nodes_and_the_vm_pin():
    """`make setup` installs uv from the Makefile's UV_VERSION (it exports the
    lock into requirements-node.txt); the nodes and the provider VM install
    layout.UV_VERSION. One version, written twice: they must agree."""
    makefile = (ROOT / "Makefile").read_text()
    assigned = re.findall(r"^UV_VERSION\s*[:?]?=\s*(\S+)\s*$", makefile, re.MULTILINE)
    assert assigned == [layout.UV_VERSION], (
        f"Makefile UV_VERSION {assigned} but cluster/layout.py UV_VERSION is {layout.UV_VERSION}")
    assert "uv==$(UV_VERSION)" in makefile  # and that is the version it installs
