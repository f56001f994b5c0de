"""The top-level README promises only what exists: files it links, make
targets and `python -m` commands it shows."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_relative_links_and_named_paths_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    named = re.findall(r"`((?:infra|cluster|workloads|tests|bench|demo|examples)/[\w./-]*)`", README)
    missing = [p for p in links + named if not p.startswith("http") and not (ROOT / p).exists()]
    assert not missing, missing


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    shown = set(re.findall(r"\bmake ([\w-]+)", README))
    assert shown and shown <= targets, shown - targets


@pytest.mark.parametrize(
    "module", sorted(set(re.findall(r"python -m ([\w.]+)", README)))
)
def test_python_m_commands_have_help(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_pinned_versions_in_readme_match_the_lock():
    from cluster import layout

    for pin in (layout.RAY_VERSION, layout.PYTHON_MINOR, layout.UV_VERSION):
        assert pin in README
