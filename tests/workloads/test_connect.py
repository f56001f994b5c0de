"""A driver pointed at a dead cluster address gives up in bounded time with exit 3.

No Ray cluster is needed: the "cluster" is either a closed port (nothing
listens: the TCP probe fails at once) or a socket that accepts connections and
never answers (what a stale address whose port now belongs to something else,
or a half-dead head, looks like: Ray's own client retries that forever).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.workloads.conftest import REPO, WORKLOADS, free_port
from workloads import common

TIMEOUT_S = 3  # the configured limit in these tests
# Far above TIMEOUT_S plus Python/Ray start-up, far below "hangs forever".
HARD_LIMIT_S = 120


@pytest.fixture
def silent_listener():
    """host:port of a socket that completes TCP handshakes and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # the kernel accepts into the backlog; we never read or write
        yield f"127.0.0.1:{s.getsockname()[1]}"


def run_driver(script: str, args: list[str], env_extra: dict[str, str], tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(env_extra, PYTHONPATH=REPO)
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [sys.executable, os.path.join(WORKLOADS, script), *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=HARD_LIMIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} was still trying to connect after {HARD_LIMIT_S} s")
    return r, time.monotonic() - t0


def _args(script: str, tmp_path) -> list[str]:
    if script == "annotate.py":
        (tmp_path / "in").mkdir()
        return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    if script == "tree_reduce.py":
        return ["--size", "1000", "--chunks", "2"]
    if script == "serve.py":
        return ["--port", "0", "--actors", "1"]
    return []


# Every driver of workloads/README.md, serve.py included (its bounded connect is
# checked through its command line only: exit status, stderr, stdout).
DRIVERS = ["cluster_info.py", "annotate.py", "tree_reduce.py", "serve.py"]


def _never_served(script: str, r) -> None:
    if script == "serve.py":
        assert "serve: ready at" not in r.stdout + r.stderr, r.stdout
        assert "actors ready" not in r.stderr, r.stderr


@pytest.mark.parametrize("script", DRIVERS)
def test_a_silent_address_ends_in_one_line_and_exit_3(script, silent_listener, tmp_path):
    r, _ = run_driver(
        script, _args(script, tmp_path),
        {"RAY_ADDRESS": silent_listener, common.CONNECT_TIMEOUT_ENV: str(TIMEOUT_S)}, tmp_path,
    )
    assert r.returncode == common.EXIT_NO_CLUSTER, r.stderr
    ours = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert ours == [
        (
            f"error: cannot reach the Ray cluster at {silent_listener}: no working connection "
            f"within {TIMEOUT_S} s. Is it running (`python -m cluster local status`)? Point "
            "RAY_ADDRESS (or --address) at a running cluster, or unset it to run on a throwaway "
            "local Ray."
        )
    ]
    assert "Traceback" not in r.stderr
    _never_served(script, r)


@pytest.mark.parametrize("script", ["cluster_info.py", "serve.py"])
def test_a_closed_port_fails_at_once_without_rays_retry_noise(script, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens
    r, _ = run_driver(script, [*_args(script, tmp_path), "--address", address], {}, tmp_path)
    assert r.returncode == common.EXIT_NO_CLUSTER, r.stderr
    assert f"error: cannot reach the Ray cluster at {address}: " in r.stderr
    assert "Connection refused" in r.stderr
    assert "Failed to connect to GCS" not in r.stderr  # Ray was never asked
    assert "Traceback" not in r.stderr
    _never_served(script, r)


def test_the_flag_overrides_the_environment(silent_listener, tmp_path):
    r, _ = run_driver(
        "cluster_info.py", ["--connect-timeout", "2"],
        {"RAY_ADDRESS": silent_listener, common.CONNECT_TIMEOUT_ENV: "600"}, tmp_path,
    )
    assert r.returncode == common.EXIT_NO_CLUSTER, r.stderr
    assert "no working connection within 2 s" in r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_bad_timeouts_are_usage_errors(value, monkeypatch):
    monkeypatch.setenv(common.CONNECT_TIMEOUT_ENV, value)
    with pytest.raises(common.UsageError, match=f"{common.CONNECT_TIMEOUT_ENV}='{value}'"):
        common.connect_timeout_default()
    monkeypatch.delenv(common.CONNECT_TIMEOUT_ENV)
    assert common.connect_timeout_default() == 30


def test_the_default_is_30_s_and_every_driver_has_the_flag():
    import argparse

    from workloads import annotate, cluster_info, tree_reduce

    assert common.DEFAULT_CONNECT_TIMEOUT_S == 30
    for module in (annotate, cluster_info, tree_reduce):
        parser = module.build_parser()
        assert isinstance(parser, argparse.ArgumentParser)
        assert parser.parse_args(["--connect-timeout", "7"]).connect_timeout == 7
        assert "--connect-timeout" in parser.format_help()
