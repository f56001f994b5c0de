"""What "idle" means for a ray-gcp cluster: one definition, for every platform.

Pure: a :class:`ClusterSnapshot` (what ``cluster/idle_probe.py`` read from a
live cluster) goes in, an :class:`Assessment` comes out; :func:`advance` turns
the assessments of successive checks into "stop now". No I/O, no clock, no Ray
import, so the VM watcher (on the provider VM), the GKE watcher (a Pod that
runs these files from a ConfigMap) and the tests run exactly this code.

The cluster is **busy** while any rule of :data:`RULES` holds:

``job``
    a Jobs API job that is PENDING or RUNNING (``ray job submit``, a RayJob
    that targets the cluster);
``driver``
    a connected driver that the Jobs API did not start (``ray submit``,
    ``python x.py`` with ``ray.init``, a Ray Client ``ray://`` session);
``actor``
    a live actor a user created: ``workloads/serve.py``'s pool, every Ray Serve
    application's replicas, detached actors. Ray's own bookkeeping actors do
    not count (:data:`RAY_SYSTEM_ACTORS`: Serve's controller and proxies, job
    supervisors, Ray Data's stats and autoscaling helpers);
``task``
    a normal task (a remote function) not finished yet, pending or running;
``placement_group``
    a placement group that is not removed;
``demand``
    resource demand the autoscaler sees: tasks or actors waiting for
    resources, placement groups waiting to be placed, a standing
    ``ray.autoscaler.sdk.request_resources()``;
``login``
    (VM path only) someone logged in to the provider VM.

Otherwise it is **quiet**, in one of three ways: ``idle`` (the head answered
and none of the rules holds), ``unreachable`` (a head exists but does not
answer: a broken head bills as much as an idle one) or ``absent`` (no head at
all: `ray up` has not run, or `ray down` did). A check that could not read the
state clearly is an **error** and counts as busy: the watcher never stops a
cluster it cannot see.

The cluster stops when it has been quiet, check after check, for the whole
timeout. The quiet time starts at the first quiet check, or later: at the end
of the newest job or driver (their end times come with the snapshot), so a job
that started and finished between two checks still resets the clock.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

# ---- the snapshot ----------------------------------------------------------------

HEAD_UP = "up"
HEAD_UNREACHABLE = "unreachable"
HEAD_ABSENT = "absent"
HEAD_STATES = (HEAD_UP, HEAD_UNREACHABLE, HEAD_ABSENT)

# Jobs API statuses (ray.job_submission.JobStatus) that mean "not finished".
ACTIVE_JOB_STATUSES = ("PENDING", "RUNNING")
# State API actor states (ray.util.state.common.ActorState) other than DEAD.
LIVE_ACTOR_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING")
# Task states (common.proto TaskStatus) of a task that is done, one way or the other.
DONE_TASK_STATES = ("FINISHED", "FAILED")
NORMAL_TASK = "NORMAL_TASK"

# Actors Ray creates for its own bookkeeping, by (namespace, class name); "*"
# matches any class of that namespace. Checked against Ray's own constants in
# tests/cluster/test_idle.py, so a Ray upgrade that renames one fails there.
RAY_SYSTEM_ACTORS: tuple[tuple[str, str], ...] = (
    # Ray Serve: the controller and one HTTP proxy per node exist as long as
    # Serve runs, with or without an application; replicas are the apps' work.
    ("serve", "ServeController"),
    ("serve", "ProxyActor"),
    # The Jobs API's supervisor of each job (the `job` rule covers the job).
    ("SUPERVISOR_ACTOR_RAY_NAMESPACE", "*"),
    # Ray Data's detached helpers, which outlive the driver that made them.
    ("_dataset_stats_actor", "*"),
    ("_dataset_stats_summary_actor", "*"),
    ("AutoscalingRequester", "*"),
    ("AutoscalingCoordinator", "*"),
    ("DataUsageCollectionActor", "*"),
)
# Namespaces Ray reserves for itself (ray.dashboard.modules.job.common).
RAY_INTERNAL_NAMESPACE_PREFIX = "_ray_internal_"


@dataclasses.dataclass(frozen=True)
class Job:
    """A Jobs API job (kind SUBMISSION) or a driver that connected by itself (DRIVER)."""

    id: str
    kind: str
    status: str
    entrypoint: str = ""
    start_time: float | None = None  # seconds since the epoch
    end_time: float | None = None


@dataclasses.dataclass(frozen=True)
class Actor:
    id: str
    class_name: str
    state: str
    namespace: str = ""
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Task:
    id: str
    name: str
    state: str
    type: str = NORMAL_TASK


@dataclasses.dataclass(frozen=True)
class PlacementGroup:
    id: str
    state: str
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Demand:
    """A resource shape the autoscaler is asked for, and how many of it."""

    source: str  # "tasks/actors", "placement groups", "request_resources"
    shape: dict[str, float]
    count: int = 1

    def describe(self) -> str:
        shape = ", ".join(f"{k}: {v:g}" for k, v in sorted(self.shape.items()))
        return f"{self.count} x {{{shape}}} ({self.source})"


@dataclasses.dataclass(frozen=True)
class ClusterSnapshot:
    """Everything the rules look at, read at one moment (``taken_at``)."""

    taken_at: float
    head: str = HEAD_UP
    head_detail: str = ""  # why the head is unreachable or absent; where it was read
    jobs: tuple[Job, ...] = ()
    actors: tuple[Actor, ...] = ()
    tasks: tuple[Task, ...] = ()
    placement_groups: tuple[PlacementGroup, ...] = ()
    demand: tuple[Demand, ...] = ()
    # Users logged in to the provider VM; None where that does not apply (GKE).
    logins: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.head not in HEAD_STATES:
            raise ValueError(f"head = {self.head!r}; allowed: {', '.join(HEAD_STATES)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClusterSnapshot:
        kinds = {
            "jobs": Job,
            "actors": Actor,
            "tasks": Task,
            "placement_groups": PlacementGroup,
            "demand": Demand,
        }
        values = dict(doc)
        for key, kind in kinds.items():
            values[key] = tuple(kind(**item) for item in doc.get(key, ()))
        if doc.get("logins") is not None:
            values["logins"] = tuple(doc["logins"])
        return cls(**values)


# ---- the rules -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Activity:
    """One reason the cluster is busy: the rule that holds and what it saw."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def is_ray_system_actor(actor: Actor) -> bool:
    """True for the actors Ray runs for itself (see RAY_SYSTEM_ACTORS)."""
    if actor.namespace.startswith(RAY_INTERNAL_NAMESPACE_PREFIX):
        return True
    return any(
        actor.namespace == namespace and cls in ("*", actor.class_name)
        for namespace, cls in RAY_SYSTEM_ACTORS
    )


def _jobs(s: ClusterSnapshot) -> Iterable[str]:
    for job in s.jobs:
        if job.kind == "SUBMISSION" and job.status in ACTIVE_JOB_STATUSES:
            yield f"job {job.id} {job.status}: {job.entrypoint}".rstrip(": ")


def _drivers(s: ClusterSnapshot) -> Iterable[str]:
    for job in s.jobs:
        if job.kind == "DRIVER" and job.status in ACTIVE_JOB_STATUSES:
            yield f"driver {job.id} connected: {job.entrypoint}".rstrip(": ")


def _actors(s: ClusterSnapshot) -> Iterable[str]:
    for actor in s.actors:
        if actor.state in LIVE_ACTOR_STATES and not is_ray_system_actor(actor):
            label = actor.class_name + (f" {actor.name!r}" if actor.name else "")
            yield f"actor {label} {actor.state}"


def _tasks(s: ClusterSnapshot) -> Iterable[str]:
    for task in s.tasks:
        if task.type == NORMAL_TASK and task.state not in DONE_TASK_STATES:
            yield f"task {task.name} {task.state}"


def _placement_groups(s: ClusterSnapshot) -> Iterable[str]:
    for pg in s.placement_groups:
        if pg.state != "REMOVED":
            yield f"placement group {pg.name or pg.id} {pg.state}"


def _demand(s: ClusterSnapshot) -> Iterable[str]:
    for demand in s.demand:
        if demand.count > 0:
            yield f"resource demand {demand.describe()}"


def _logins(s: ClusterSnapshot) -> Iterable[str]:
    for user in sorted(set(s.logins or ())):
        yield f"{user} is logged in to the provider VM"


# rule -> what it finds in a snapshot; the order of the log line's reasons.
RULES: dict[str, Callable[[ClusterSnapshot], Iterable[str]]] = {
    "job": _jobs,
    "driver": _drivers,
    "actor": _actors,
    "task": _tasks,
    "placement_group": _placement_groups,
    "demand": _demand,
    "login": _logins,
}


def activities(snapshot: ClusterSnapshot) -> tuple[Activity, ...]:
    """Every reason the cluster is busy, rule by rule (empty: it is quiet)."""
    return tuple(
        Activity(rule, detail) for rule, finds in RULES.items() for detail in finds(snapshot)
    )


def last_active_at(snapshot: ClusterSnapshot) -> float | None:
    """When the newest finished job or driver ended (None if none did)."""
    ends = [j.end_time for j in snapshot.jobs if j.end_time]
    return max(ends) if ends else None


# ---- one check ------------------------------------------------------------------------

BUSY = "busy"
IDLE = "idle"
UNREACHABLE = "unreachable"
ABSENT = "absent"
ERROR = "error"
QUIET = (IDLE, UNREACHABLE, ABSENT)


@dataclasses.dataclass(frozen=True)
class Assessment:
    """What one snapshot says: busy (with its activities) or one way of quiet."""

    status: str
    reason: str
    activities: tuple[Activity, ...] = ()
    last_active_at: float | None = None

    @property
    def rules(self) -> set[str]:
        return {a.rule for a in self.activities}

    @property
    def busy(self) -> bool:
        return self.status not in QUIET


def assess(snapshot: ClusterSnapshot) -> Assessment:
    """Busy, idle, unreachable or absent, with the reason in words."""
    found = activities(snapshot)
    if found:
        shown = "; ".join(str(a) for a in found[:5])
        more = f"; and {len(found) - 5} more" if len(found) > 5 else ""
        return Assessment(BUSY, shown + more, found, last_active_at(snapshot))
    if snapshot.head == HEAD_UP:
        reason = "no job, driver, user actor, task, placement group or resource demand"
        if snapshot.logins is not None:
            reason += ", nobody logged in"
        return Assessment(IDLE, reason, (), last_active_at(snapshot))
    status = UNREACHABLE if snapshot.head == HEAD_UNREACHABLE else ABSENT
    return Assessment(status, snapshot.head_detail or f"the Ray head is {snapshot.head}")


def read_error(detail: str) -> Assessment:
    """A check that could not read the cluster's state: counts as busy."""
    return Assessment(ERROR, f"cannot read the cluster's state ({detail}); counted as busy")


# ---- the clock ----------------------------------------------------------------------------

# What the watcher did about a due cluster.
STOPPING = "stopping"
STOPPED = "stopped"
STOP_FAILED = "stop-failed"


@dataclasses.dataclass(frozen=True)
class WatchState:
    """The watcher's memory between checks (a JSON file on the VM, memory in the Pod)."""

    status: str
    reason: str
    checked_at: float
    timeout_s: float
    quiet_since: float | None = None
    # The boot (VM) or process (Pod) this state belongs to: a new one starts afresh.
    epoch: str = ""

    @property
    def quiet_for(self) -> float:
        return 0.0 if self.quiet_since is None else max(0.0, self.checked_at - self.quiet_since)

    @property
    def stop_at(self) -> float | None:
        """When the cluster stops if it stays quiet (None while busy)."""
        return None if self.quiet_since is None else self.quiet_since + self.timeout_s

    @property
    def due(self) -> bool:
        """Quiet for the whole timeout: stop it now."""
        return (
            self.status in QUIET
            and self.quiet_since is not None
            and self.checked_at >= self.quiet_since + self.timeout_s
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WatchState:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in fields})

    def with_status(self, status: str, reason: str) -> WatchState:
        return dataclasses.replace(self, status=status, reason=reason)

    def log_line(self) -> str:
        """One line per check, for the journal / the Pod's log."""
        if self.status in QUIET:
            left = max(0.0, (self.stop_at or self.checked_at) - self.checked_at)
            when = "stopping now" if self.due else f"stops in {format_duration(left)}"
            return (
                f"{self.status} for {format_duration(self.quiet_for)} "
                f"(timeout {format_duration(self.timeout_s)}, {when}): {self.reason}"
            )
        return f"{self.status}: {self.reason}"


def advance(
    previous: WatchState | None,
    assessment: Assessment,
    *,
    now: float,
    timeout_s: float,
    epoch: str = "",
) -> WatchState:
    """The state after one check.

    Busy or an error: no quiet time. Quiet: quiet since the first quiet check of
    this run of quiet checks, or since the newest job or driver ended, whichever
    is later. A previous state of another epoch (an earlier boot), or one that
    had stopped the cluster, is forgotten.
    """
    if timeout_s <= 0 or not math.isfinite(timeout_s):
        raise ValueError(f"timeout_s = {timeout_s!r}: must be a positive number of seconds")
    if previous is not None and (
        previous.epoch != epoch or previous.status in (STOPPING, STOPPED)
    ):
        previous = None
    if assessment.busy:
        return WatchState(assessment.status, assessment.reason, now, timeout_s, None, epoch)
    since = now
    if previous is not None and previous.status in QUIET and previous.quiet_since is not None:
        since = previous.quiet_since
    elif previous is not None and previous.status == STOP_FAILED and previous.quiet_since:
        since = previous.quiet_since  # still quiet: retry the stop at once
    if assessment.last_active_at is not None:
        since = max(since, min(assessment.last_active_at, now))
    return WatchState(assessment.status, assessment.reason, now, timeout_s, since, epoch)


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min', '3 d 4 h'."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)
