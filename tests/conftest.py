"""Shared fixtures: one local autoscaling Ray cluster per test session.

Tests that use ``local_cluster`` are marked ``@pytest.mark.cluster``. The
cluster is started lazily (only when such a test runs), stopped at session
end, and the session fails if any process it started is still alive.
"""

from __future__ import annotations

import os

import pytest

from cluster.local import LocalCluster
from cluster.spec import ClusterSpec, NodeTypeSpec

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


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory):
    """An up LocalCluster (token auth on, fake autoscaled workers); downed at the end."""
    lc = LocalCluster(tmp_path_factory.mktemp("ray-local"), spec=TEST_SPEC)
    lc.up()
    try:
        yield lc
    finally:
        lc.down()
        leftover = lc.owned_pids()
        assert not leftover, f"processes of the local cluster survived down(): {leftover}"


@pytest.fixture
def driver_env(local_cluster: LocalCluster) -> dict[str, str]:
    """os.environ plus what a driver subprocess needs to reach the local cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(local_cluster.driver_env())
    return env
