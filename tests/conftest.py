"""Shared fixtures: one local autoscaling Ray cluster per test session.

Tests that use ``local_cluster`` are marked ``@pytest.mark.cluster``. The
cluster is started lazily (only when such a test runs) and stopped at session
end. Tests that start a cluster of their own ask for ``machine_to_myself``
first: it stops the session cluster (the next test that needs it starts it
again), so two clusters never share the machine's cores. Every stop records
the cluster's process tree first and fails if any of it is still alive after
``down()`` (tests/processes.py).
"""

from __future__ import annotations

import os

import pytest

from cluster.local import LocalCluster
from cluster.spec import ClusterSpec, NodeTypeSpec
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
)


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
def _session_cluster(tmp_path_factory: pytest.TempPathFactory):
    """The session's LocalCluster object; up only while some test needs it."""
    lc = LocalCluster(tmp_path_factory.mktemp("ray-local"), spec=TEST_SPEC)
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
