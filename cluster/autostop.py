"""Autostop: a watcher that stops the Ray cluster once it has been idle for the timeout.

The decision is ``cluster/idle.py`` (what idle means, and the clock); what is
read and what "stop" does depend on the platform:

* VM path (``cluster/autostop_vm.py``): on the provider VM a systemd timer runs
  ``python -m cluster.autostop vm-check`` once a minute (installed by the boot
  script, infra/provider_boot/autostop.sh). Stop = ``ray down -y`` with the
  cluster's config, then the provider VM powers itself off.
* GKE (``cluster/autostop_gke.py``): a Deployment in the Ray namespace runs
  ``python -m cluster.autostop gke-watch``; stop = the RayCluster's
  ``spec.suspend: true`` (KubeRay deletes its Pods).

Every check writes one line (the journal on the VM, the Pod's log on GKE) and
the state (:class:`StateFile`), which ``ray-gcp-idle status`` and the provider
VM's login banner read. This module and the ones it imports use only the
standard library (and Ray, lazily, for the GCS demand query), so the GKE
watcher runs them from a ConfigMap in the stock Ray image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import idle
from cluster.idle_probe import HeadUnreachable, ProbeError

# The setting (ray-gcp:idleTimeoutMinutes): 0 turns autostop off.
DEFAULT_TIMEOUT_MINUTES = 60
MIN_TIMEOUT_MINUTES = 5
MAX_TIMEOUT_MINUTES = 7 * 24 * 60  # 10080
CHECK_INTERVAL_S = 60.0


def check_timeout_minutes(value: Any, *, field: str = "idleTimeoutMinutes") -> int:
    """The one rule for the setting: 0 (off) or a whole number from 5 to 10080."""
    allowed = (
        f"0 (autostop off) or a whole number of minutes from {MIN_TIMEOUT_MINUTES} "
        f"to {MAX_TIMEOUT_MINUTES}"
    )
    text = "" if isinstance(value, bool) else str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{field} = {value!r}: allowed: {allowed}")
    minutes = int(text)
    if minutes != 0 and not MIN_TIMEOUT_MINUTES <= minutes <= MAX_TIMEOUT_MINUTES:
        raise ValueError(f"{field} = {value!r}: allowed: {allowed}")
    return minutes


# ---- the VM watcher's settings (stdlib only: `ray-gcp-idle status` runs at every login) ----

# cluster/layout.py's names, repeated so this file runs without the rest of cluster/
# (the GKE watcher's ConfigMap); tests/cluster/test_autostop.py keeps them equal.
PROVIDER_AUTOSTOP_CONFIG = "/etc/ray-gcp/autostop.json"
SECRET_SSH_PRIVATE_KEY = "ssh-private-key"
SECRET_RAY_AUTH_TOKEN = "ray-auth-token"

# Written by the boot script (infra/provider_boot/autostop.sh); overridable for tests.
CONFIG_ENV = "RAY_GCP_AUTOSTOP_CONFIG"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclasses.dataclass(frozen=True)
class VmConfig:
    """What the watcher needs on the provider VM (``PROVIDER_AUTOSTOP_CONFIG``)."""

    timeout_minutes: int
    cluster_yaml: Path
    secrets_dir: Path
    state_dir: Path
    ray: Path  # the venv's `ray` (the pinned Ray)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def ssh_key(self) -> Path:
        return self.secrets_dir / SECRET_SSH_PRIVATE_KEY

    @property
    def token_file(self) -> Path:
        return self.secrets_dir / SECRET_RAY_AUTH_TOKEN

    @classmethod
    def load(cls, path: str | Path | None = None) -> VmConfig:
        path = Path(path or os.environ.get(CONFIG_ENV) or PROVIDER_AUTOSTOP_CONFIG)
        doc = json.loads(path.read_text())
        return cls(
            timeout_minutes=int(doc["idle_timeout_minutes"]),
            cluster_yaml=Path(doc["cluster_yaml"]),
            secrets_dir=Path(doc["secrets_dir"]),
            state_dir=Path(doc["state_dir"]),
            ray=Path(doc["ray"]),
        )

    def cluster_config(self) -> dict[str, Any]:
        import yaml  # not needed by `status`, which every login runs

        return yaml.safe_load(self.cluster_yaml.read_text())


def boot_id() -> str:
    """This boot's id: a state from an earlier boot is forgotten (the clock restarts)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class StopFailed(RuntimeError):
    """The stop action did not complete; the watcher retries at the next check."""


# ---- state ------------------------------------------------------------------------------


class StateFile:
    """The watcher's state as JSON, replaced atomically (readable by operators: no secrets)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def load(self) -> idle.WatchState | None:
        try:
            return idle.WatchState.from_json(json.loads(self.path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, state: idle.WatchState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_json(), f, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)


class MemoryState:
    """State kept in the process (the GKE watcher: a restarted Pod starts afresh)."""

    def __init__(self) -> None:
        self.state: idle.WatchState | None = None

    def load(self) -> idle.WatchState | None:
        return self.state

    def save(self, state: idle.WatchState) -> None:
        self.state = state


# ---- the watcher --------------------------------------------------------------------------

Probe = Callable[[], idle.ClusterSnapshot]
StopAction = Callable[[idle.WatchState], str]


class Watcher:
    """One check: probe, assess, advance the clock, log one line, stop when due.

    ``probe`` returns a snapshot (``head`` says up, unreachable or absent) or
    raises ProbeError (counted as busy). ``stop`` stops the cluster and returns
    what it did in words, or raises StopFailed (logged; retried at the next
    check, the cluster still counting as quiet). ``after_stop`` runs once the
    "stopped" state is saved (the VM powers itself off there).
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        probe: Probe,
        stop: StopAction,
        store: StateFile | MemoryState,
        log: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        epoch: str = "",
        after_stop: Callable[[], None] | None = None,
    ):
        self.timeout_s = timeout_s
        self.after_stop = after_stop
        self.probe = probe
        self.stop = stop
        self.store = store
        self.log = log
        self.clock = clock
        self.epoch = epoch

    def observe(self) -> idle.Assessment:
        try:
            return idle.assess(self.probe())
        except HeadUnreachable as exc:  # a probe may also raise it (no logins to add)
            return idle.assess(
                idle.ClusterSnapshot(self.clock(), head=idle.HEAD_UNREACHABLE, head_detail=str(exc))
            )
        except ProbeError as exc:
            return idle.read_error(str(exc))

    def check(self) -> idle.WatchState:
        previous = self.store.load()
        assessment = self.observe()
        state = idle.advance(
            previous, assessment, now=self.clock(), timeout_s=self.timeout_s, epoch=self.epoch
        )
        self.log(state.log_line())
        self.store.save(state)
        if not state.due:
            return state
        self.store.save(state.with_status(idle.STOPPING, f"stopping: {state.reason}"))
        try:
            done = self.stop(state)
        except Exception as exc:  # noqa: BLE001 (StopFailed, or anything: retried, logged)
            what = str(exc) if isinstance(exc, StopFailed) else f"{type(exc).__name__}: {exc}"
            failed = state.with_status(idle.STOP_FAILED, f"stop failed, retried at the next check: {what}")
            self.log(failed.log_line())
            self.store.save(failed)
            return failed
        stopped = state.with_status(idle.STOPPED, done)
        self.log(f"stopped: {done}")
        self.store.save(stopped)
        if self.after_stop is not None:
            self.after_stop()
        return stopped


def journal_log(line: str) -> None:
    """One line on stdout; systemd puts it in the journal, Kubernetes in the Pod's log."""
    print(f"ray-gcp-autostop: {line}", flush=True)


# ---- status and banner ----------------------------------------------------------------------


def _clock_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def describe(state: idle.WatchState | None, timeout_minutes: int, *, now: float) -> list[str]:
    """What `ray-gcp-idle status` prints."""
    if timeout_minutes == 0:
        return ["autostop: off (ray-gcp:idleTimeoutMinutes = 0); the cluster runs until stopped"]
    head = f"autostop: on, after {timeout_minutes} min idle"
    if state is None:
        return [head, "state: no check has run yet (the first runs about 2 min after boot)"]
    lines = [head, f"state: {state.status} (checked {_clock_time(state.checked_at)})"]
    lines.append(f"reason: {state.reason}")
    if state.status in idle.QUIET and state.stop_at is not None:
        lines.append(f"quiet for: {idle.format_duration(state.quiet_for)}")
        lines.append(f"stops at: {_clock_time(state.stop_at)} unless something runs")
    if now - state.checked_at > 5 * CHECK_INTERVAL_S:
        lines.append(
            f"warning: the last check is {idle.format_duration(now - state.checked_at)} old; "
            "is the timer running? (systemctl status ray-gcp-autostop.timer)"
        )
    return lines


def banner(state: idle.WatchState | None, timeout_minutes: int, *, now: float) -> list[str]:
    """The login banner's lines: how long idle, when it stops (empty when there is nothing to say)."""
    if timeout_minutes == 0:
        return ["ray-gcp: autostop is off (idleTimeoutMinutes = 0)."]
    if state is None:
        return [f"ray-gcp: autostop on: the cluster stops after {timeout_minutes} min idle."]
    if state.status in idle.QUIET and state.stop_at is not None:
        quiet = (
            f"ray-gcp: the Ray cluster has been {state.status} for "
            f"{idle.format_duration(state.quiet_for)} (as of {_clock_time(state.checked_at)}); "
            f"it stops at {_clock_time(state.stop_at)} (ray down, then this VM powers off) "
            "unless something runs. Not while you are logged in."
        )
        return [quiet, "ray-gcp: details: ray-gcp-idle status"]
    if state.status == idle.ERROR:
        return [
            ("ray-gcp: autostop could not read the cluster's state at the last check (counted "
            "as busy). Details: ray-gcp-idle status")
        ]
    busy = (
        f"ray-gcp: the Ray cluster is {state.status}; it stops after {timeout_minutes} min idle. "
        "Details: ray-gcp-idle status"
    )
    return [busy]


# ---- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cluster.autostop",
        description="ray-gcp autostop: stop the Ray cluster after ray-gcp:idleTimeoutMinutes "
        "of idleness (see cluster/idle.py for what counts as busy).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("vm-check", help="one check on the provider VM (the systemd timer runs it)")
    sub.add_parser("status", help="the state and reason of the last check (VM)")
    sub.add_parser("banner", help="the login banner's lines (VM)")
    gke = sub.add_parser("gke-watch", help="check every interval in the GKE watcher Pod")
    gke.add_argument("--interval", type=float, default=CHECK_INTERVAL_S)
    gke.add_argument("--once", action="store_true", help="one check, then exit")
    args = p.parse_args(argv)

    if args.command == "gke-watch":
        from cluster import autostop_gke

        return autostop_gke.watch_from_env(interval=args.interval, once=args.once)

    try:
        config = VmConfig.load()
    except (OSError, ValueError, KeyError) as exc:
        print(f"ray-gcp-autostop: no autostop settings ({exc}); has this VM's boot completed? "
              "(sudo journalctl -u google-startup-scripts)", file=sys.stderr)
        return 1
    if args.command == "vm-check":
        from cluster import autostop_vm  # Ray, yaml: only for the check itself

        return autostop_vm.check_once(config)
    store = StateFile(config.state_file)
    state = store.load()
    if state is not None and state.epoch != boot_id():
        state = None  # from an earlier boot: the clock started again at this boot
    lines = (describe if args.command == "status" else banner)(
        state, config.timeout_minutes, now=time.time()
    )
    with contextlib.suppress(BrokenPipeError):
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
