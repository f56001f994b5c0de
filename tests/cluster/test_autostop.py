"""cluster/autostop.py's watcher on its own: one check, the stop, its failures, the state
file, what `ray-gcp-idle status` and the login banner say; and autostop_vm's logins.

On real clusters: test_autostop_vm.py (VM path), test_autostop_gke.py (GKE).
"""

from __future__ import annotations

import stat
import subprocess
import time

import pytest

from cluster import autostop, autostop_vm, idle, layout
from cluster.autostop import MemoryState, StateFile, StopFailed, Watcher
from cluster.idle_probe import HeadUnreachable, ProbeError

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def quiet() -> idle.ClusterSnapshot:
    return idle.ClusterSnapshot(T0)


def busy() -> idle.ClusterSnapshot:
    return idle.ClusterSnapshot(T0, jobs=(idle.Job("raysubmit_1", "SUBMISSION", "RUNNING"),))


def make(probes, stop=None, timeout=60.0):
    clock, log, stops, powered = Clock(), [], [], []
    probes = iter(probes)

    def probe():
        item = next(probes)
        if isinstance(item, Exception):
            raise item
        return item()

    def default_stop(state):
        stops.append(state)
        return "ray down finished"

    w = Watcher(timeout_s=timeout, probe=probe, stop=stop or default_stop, store=MemoryState(),
                log=log.append, clock=clock, epoch="boot", after_stop=lambda: powered.append(1))
    return w, clock, log, stops, powered


def run(w, clock, n, step=10.0):
    states = []
    for _ in range(n):
        states.append(w.check())
        clock.now += step
    return states


def test_quiet_for_the_timeout_stops_once_then_powers_off():
    w, clock, log, stops, powered = make([quiet] * 8)
    states = run(w, clock, 8)
    assert [s.status for s in states] == ["idle"] * 6 + ["stopped", "idle"]
    assert len(stops) == 1 and powered == [1]
    # One line per check, and one for what the stop did.
    assert len(log) == 9 and log[7] == "stopped: ray down finished"
    assert log[6].startswith("idle for 60 s (timeout 60 s, stopping now): no job, driver")


def test_busy_never_stops_and_an_error_counts_as_busy():
    w, clock, log, stops, powered = make(
        [busy] * 4 + [ProbeError("HTTP 401 from /api/jobs/")] * 4 + [quiet] * 4)
    states = run(w, clock, 12)
    assert {s.status for s in states[:4]} == {"busy"}
    assert {s.status for s in states[4:8]} == {"error"}
    assert "counted as busy" in log[5]
    assert stops == [] and powered == []
    assert states[-1].quiet_for == 30  # the quiet time started after the errors


def test_an_unreachable_head_raised_by_a_probe_is_quiet():
    w, clock, _, _, _ = make([HeadUnreachable("no answer")] * 8)
    states = run(w, clock, 8)
    assert states[0].status == "unreachable" and states[0].reason == "no answer"
    assert states[6].status == "stopped"


@pytest.mark.parametrize("failure", [StopFailed("ray down exited 1"), RuntimeError("boom")])
def test_a_failed_stop_is_logged_not_powered_off_and_retried(failure):
    attempts = []

    def stop(state):
        attempts.append(state.checked_at)
        raise failure

    w, clock, log, _, powered = make([quiet] * 9, stop=stop)
    states = run(w, clock, 9)
    assert states[6].status == idle.STOP_FAILED and "retried at the next check" in states[6].reason
    assert len(attempts) == 3 and powered == []  # retried at each later check, still quiet
    assert ("RuntimeError: boom" if type(failure) is RuntimeError else "exited 1") in log[-1]


def test_state_file_round_trip_is_readable_by_operators(tmp_path):
    store = StateFile(tmp_path / "state" / "state.json")
    assert store.load() is None
    state = idle.WatchState("idle", "nothing", T0, 3600.0, T0 - 600, "boot-1")
    store.save(state)
    assert store.load() == state
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o644
    store.path.write_text("{not json")
    assert store.load() is None


def test_status_and_banner_say_how_long_idle_and_when_it_stops():
    state = idle.WatchState("idle", "no job, driver, ...", T0, 3600.0, T0 - 42 * 60, "b")
    lines = autostop.describe(state, 60, now=T0 + 30)
    assert lines[0] == "autostop: on, after 60 min idle"
    assert "quiet for: 42 min" in lines
    stop_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(T0 + 18 * 60))
    assert f"stops at: {stop_at} unless something runs" in lines
    (first, second) = autostop.banner(state, 60, now=T0 + 30)
    assert "has been idle for 42 min" in first and f"it stops at {stop_at}" in first
    assert second == "ray-gcp: details: ray-gcp-idle status"
    assert autostop.describe(None, 0, now=T0) == [
        "autostop: off (ray-gcp:idleTimeoutMinutes = 0); the cluster runs until stopped"]
    stale = autostop.describe(state, 60, now=T0 + 3600)
    assert stale[-1].startswith("warning: the last check is 60 min old")
    error = idle.WatchState("error", "HTTP 401", T0, 3600.0, None, "b")
    assert "could not read the cluster's state" in autostop.banner(error, 60, now=T0)[0]


def test_names_repeated_for_the_gke_configmap_equal_layouts():
    """autostop.py repeats a few layout.py names so the GKE watcher needs no more of cluster/."""
    assert autostop.PROVIDER_AUTOSTOP_CONFIG == layout.PROVIDER_AUTOSTOP_CONFIG
    assert autostop.SECRET_SSH_PRIVATE_KEY == layout.SECRET_SSH_PRIVATE_KEY
    assert autostop.SECRET_RAY_AUTH_TOKEN == layout.SECRET_RAY_AUTH_TOKEN


def test_logins_are_open_user_sessions_of_logind():
    listed = "1 1001 alice seat0 pts/0\n2 1002 bob - pts/1\n3 0 root - -\nc4 1003 carol - -\n"
    shown = ("Name=alice\nClass=user\nState=active\n\n"
             "Name=bob\nClass=user\nState=closing\n\n"
             "Name=root\nClass=manager\nState=active\n\n"
             "Name=carol\nClass=user\nState=online\n")
    calls = []

    def run(argv, **_):
        calls.append(argv)
        out = listed if argv[1] == "list-sessions" else shown
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert autostop_vm.logged_in_users(run) == ("alice", "carol")
    assert calls[1][:5] == ["loginctl", "show-session", "1", "2", "3"]

    def failing(argv, **_):
        return subprocess.CompletedProcess(argv, 1, "", "Failed to connect to bus")

    with pytest.raises(ProbeError, match="loginctl list-sessions failed"):
        autostop_vm.logged_in_users(failing)
    assert autostop_vm.logged_in_users(
        lambda argv, **_: subprocess.CompletedProcess(argv, 0, "", "")) == ()


def test_status_without_settings_says_the_boot_has_not_completed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(autostop.CONFIG_ENV, str(tmp_path / "missing.json"))
    assert autostop.main(["status"]) == 1
    assert "has this VM's boot completed?" in capsys.readouterr().err
