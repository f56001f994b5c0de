"""Fixtures for the workload tests: the GCS emulator (the session's, tests/conftest.py)
as the environment a test runs in.

The emulator is the PyPI ``gcp-storage-emulator`` package (tests/emulator.py);
the google-cloud-storage client finds it through ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import os

import pytest

from tests.emulator import EMULATOR_BUCKET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOADS = os.path.join(REPO, "workloads")


def readme_local_block() -> str:
    """The bash block of workloads/README.md's "### Local" section (its commands as written)."""
    with open(os.path.join(WORKLOADS, "README.md")) as f:
        text = f.read()
    section = text.split("### Local\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def emulated_gcs(gcs_emulator, monkeypatch):
    """STORAGE_EMULATOR_HOST set for this test; yields the bucket name."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    return EMULATOR_BUCKET
