"""Shared fixtures: one local autoscaling Ray cluster and one GCS emulator per test session.

Tests that use ``local_cluster`` are marked ``@pytest.mark.cluster``. The
cluster is started lazily (only when such a test runs) and stopped at session
end. Tests that start a cluster of their own ask for ``machine_to_myself``
first: it stops the session cluster (the next test that needs it starts it
again), so two clusters never share the machine's cores. Every stop records
the cluster's process tree first and fails if any of it is still alive after
``down()`` (tests/processes.py).

The session cluster ships its Ray logs, as a GCP cluster does: every node
runs the log shipper (cluster/logship.py) into ``gs://ray-gcp-test/logs/``
of the session's emulator (``gcs_emulator``, tests/emulator.py), every
second, at most 256 KiB per file, with Ray's own rotation at 1 MiB.
"""

from __future__ import annotations

import os

import pytest

from cluster.local import LocalCluster
from cluster.spec import ClusterSpec, LogSpec, NodeTypeSpec
from tests.emulator import EMULATOR_BUCKET, start_emulator, stop_process_group
from tests.processes import down_and_check

# A short idle timeout so scale-down is observable within a test run;
# workers of 2 CPUs, at most 3 (2-core machine: ~300 MB RAM per fake node).
TEST_SPEC = ClusterSpec(
    cluster_name="ray-test",
    node_types={
        "head": NodeTypeSpec(machine_type="n2-standard-2", resources={"CPU": 0}),
        "cpu-worker": NodeTypeSpec(machine_type="n2-standard-2", min_workers=0, max_workers=3),
    },
    max_workers=3,
    idle_timeout_minutes=0.25,
    # Small, so tests see the cap and Ray's rotation at work within seconds.
    logs=LogSpec(
        interval_s=1.0, max_file_bytes=256 * 1024, rotate_bytes=1024 * 1024, rotate_backups=1
    ),
)
LOG_BUCKET = EMULATOR_BUCKET


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e", action="store_true", default=False,
        help="also run the end-to-end test (tests/e2e/test_e2e.py, marker e2e; `make e2e`)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end test (many minutes, root) runs only with --e2e, not in `make test`."""
    if config.getoption("--e2e"):
        return
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    if e2e:
        config.hook.pytest_deselected(items=e2e)
        items[:] = [item for item in items if not item.get_closest_marker("e2e")]


@pytest.fixture(scope="session")
def gcs_emulator():
    """``http://127.0.0.1:<port>`` of the session's emulator, with bucket EMULATOR_BUCKET."""
    proc, url = start_emulator()
    try:
        yield url
    finally:
        stop_process_group(proc, timeout=10)


@pytest.fixture(scope="session")
def _session_cluster(tmp_path_factory: pytest.TempPathFactory, gcs_emulator: str):
    """The session's LocalCluster object; up only while some test needs it."""
    lc = LocalCluster(
        tmp_path_factory.mktemp("ray-local"),
        spec=TEST_SPEC,
        log_bucket=LOG_BUCKET,
        log_endpoint=gcs_emulator,
    )
    try:
        yield lc
    finally:
        if (lc.state_dir / "state.json").exists():
            down_and_check(lc)


@pytest.fixture
def local_cluster(_session_cluster: LocalCluster) -> LocalCluster:
    """An up LocalCluster (token auth on, fake autoscaled workers), shared by the session."""
    return _session_cluster.up()


@pytest.fixture
def machine_to_myself(_session_cluster: LocalCluster) -> None:
    """For a test that starts its own cluster: the session cluster is stopped first."""
    if (_session_cluster.state_dir / "state.json").exists():
        down_and_check(_session_cluster)


@pytest.fixture
def driver_env(local_cluster: LocalCluster) -> dict[str, str]:
    """os.environ plus what a driver subprocess needs to reach the local cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(local_cluster.driver_env())
    return env
