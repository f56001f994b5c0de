"""cluster/driver_log.py: a driver's output copied into the Ray logs (no cluster needed).

The hook runs in a child Python exactly as ray.init() would call it
(RAY_RUNTIME_ENV_HOOK); what the child's terminal (its captured stdout and
stderr) and the log file receive are compared. Its own call of ray.init's
job-id record is covered on the local cluster (test_logs_on_local_cluster.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from cluster.driver_log import hook
    assert hook({"pip": ["x"]}) == {"pip": ["x"]}  # the runtime env, unchanged
    print("out line", flush=True)
    print("err line", file=sys.stderr, flush=True)
    os.system("echo from a child process")
    sys.stdout.write("no newline, then killed")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the tee still gets everything
    """
)


def _run(code: str, logs: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    full.update({"PYTHONPATH": str(REPO), "RAY_GCP_DRIVER_LOG_DIR": str(logs), **env})
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=120, check=False)


def _wait_for(path_glob, logs: Path, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = "".join(p.read_text() for p in sorted(logs.glob(path_glob)))
        if text in found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_driver_keeps_a_copy_and_its_terminal_gets_everything_unchanged(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    done = _run(DRIVER, logs)
    assert done.returncode == -9
    # The terminal: stdout and stderr, each on its own stream, as without the hook.
    assert done.stdout.splitlines()[:2] == ["out line", "from a child process"]
    assert done.stdout.endswith("no newline, then killed")
    assert done.stderr == "err line\n"
    (copy,) = logs.glob("driver-*.log")  # driver-<UTC time>-<pid>.log
    assert copy.name.startswith("driver-20") and copy.name.endswith(".log")
    text = _wait_for("driver-*.log", logs, "then killed")
    for line in ("out line", "err line", "from a child process", "no newline, then killed"):
        assert line in text


def test_the_copy_rotates_so_a_runaway_driver_cannot_fill_the_disk(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    code = ("from cluster.driver_log import hook; hook({})\n"
            "for i in range(400): print(f'{i:05d}' + 'y' * 44, flush=True)\n")
    done = _run(code, logs, RAY_GCP_DRIVER_LOG_MAX_BYTES="4000")
    assert done.returncode == 0 and done.stdout.count("\n") == 400  # 20 KB to the terminal
    text = _wait_for("driver-*.log", logs, "00399")
    files = sorted(logs.glob("driver-*.log*"))
    assert [p.suffix for p in files] == [".log", ".1"]  # the file and one older copy
    assert all(p.stat().st_size <= 4000 for p in files)
    assert "00399" in text


def test_a_ray_job_driver_is_left_alone(tmp_path):
    """Ray's JobSupervisor already writes job-driver-<id>.log: no second copy."""
    logs = tmp_path / "logs"
    logs.mkdir()
    done = _run("from cluster.driver_log import hook; hook({}); print('job output')", logs,
                RAY_JOB_CONFIG_JSON_ENV_VAR='{"metadata": {"job_submission_id": "raysubmit_1"}}')
    assert done.returncode == 0 and done.stdout == "job output\n"
    assert not list(logs.glob("driver-*"))


def test_a_driver_away_from_a_ray_node_is_left_alone(tmp_path):
    done = _run("from cluster.driver_log import hook; hook({}); print('laptop')",
                tmp_path / "no-such-dir")
    assert done.returncode == 0 and done.stdout == "laptop\n" and not done.stderr


def test_a_full_non_blocking_terminal_waits_instead_of_losing_output(tmp_path):
    """Seen on the local cluster: a driver whose stdout had been made non-blocking
    lost its last lines once the reader fell behind (EAGAIN)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    code = ("import os, sys; os.set_blocking(1, False)\n"
            "from cluster.driver_log import hook; hook({})\n"
            "for i in range(20000): print(f'{i:06d}' + 'w' * 93)\n"
            "print('LAST', flush=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PYTHONPATH": str(REPO), "RAY_GCP_DRIVER_LOG_DIR": str(logs)})
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    time.sleep(2)  # a slow reader: the 64 KiB pipe is full long before it reads
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert out.endswith(b"LAST\n") and out.count(b"\n") == 20001
    assert "terminal stopped" not in _wait_for("driver-*.log", logs, "LAST")
