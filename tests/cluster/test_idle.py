"""cluster/idle.py on its own: the rules on hand-made snapshots, and the clock.

The same rules on a real local Ray cluster: tests/cluster/test_idle_local.py.
"""

from __future__ import annotations

import pytest

from cluster import autostop, idle
from cluster.idle import (
    Actor,
    ClusterSnapshot,
    Demand,
    Job,
    PlacementGroup,
    Task,
    advance,
    assess,
)

T0 = 1_800_000_000.0


def snap(**kw) -> ClusterSnapshot:
    return ClusterSnapshot(taken_at=T0, **kw)


BUSY_CASES = {
    "job": snap(jobs=(Job("raysubmit_1", "SUBMISSION", "RUNNING", "python x.py"),)),
    "job pending": snap(jobs=(Job("raysubmit_1", "SUBMISSION", "PENDING"),)),
    "driver": snap(jobs=(Job("01000000", "DRIVER", "RUNNING", "python drv.py"),)),
    "actor": snap(actors=(Actor("a1", "AnomalyModel", "ALIVE", "anon-ns"),)),
    "actor pending": snap(actors=(Actor("a1", "Pool", "PENDING_CREATION", "ns"),)),
    "serve replica": snap(actors=(
        Actor("c", "ServeController", "ALIVE", "serve", "SERVE_CONTROLLER_ACTOR"),
        Actor("r", "ServeReplica:app:H", "ALIVE", "serve", "SERVE_REPLICA::app#H#x"),
    )),
    "task": snap(tasks=(Task("t1", "long", "RUNNING"),)),
    "task pending": snap(tasks=(Task("t1", "f", "PENDING_NODE_ASSIGNMENT"),)),
    "placement_group": snap(placement_groups=(PlacementGroup("pg1", "CREATED"),)),
    "demand": snap(demand=(Demand("tasks/actors", {"CPU": 1.0}, 2),)),
    "login": snap(logins=("alice_example_com",)),
}
EXPECTED_RULE = {
    "job": "job", "job pending": "job", "driver": "driver", "actor": "actor",
    "actor pending": "actor", "serve replica": "actor", "task": "task", "task pending": "task",
    "placement_group": "placement_group", "demand": "demand", "login": "login",
}


@pytest.mark.parametrize("case", sorted(BUSY_CASES))
def test_each_rule_makes_the_cluster_busy_on_its_own(case):
    a = assess(BUSY_CASES[case])
    assert a.busy and a.status == idle.BUSY
    assert a.rules == {EXPECTED_RULE[case]}
    assert a.reason.startswith(EXPECTED_RULE[case] + ": ")


NOT_BUSY = {
    "finished jobs and dead drivers": snap(jobs=(
        Job("raysubmit_1", "SUBMISSION", "SUCCEEDED", end_time=T0 - 100),
        Job("raysubmit_2", "SUBMISSION", "FAILED", end_time=T0 - 50),
        Job("raysubmit_3", "SUBMISSION", "STOPPED", end_time=T0 - 30),
        Job("01000000", "DRIVER", "SUCCEEDED", end_time=T0 - 20),
    )),
    "Serve's controller and proxy alone": snap(actors=(
        Actor("c", "ServeController", "ALIVE", "serve", "SERVE_CONTROLLER_ACTOR"),
        Actor("p", "ProxyActor", "ALIVE", "serve", "SERVE_PROXY_ACTOR-node"),
    )),
    "Ray's own actors": snap(actors=(
        Actor("j", "JobSupervisor", "ALIVE", "SUPERVISOR_ACTOR_RAY_NAMESPACE"),
        Actor("s", "_StatsActor", "ALIVE", "_dataset_stats_actor", "datasets_stats_actor"),
        Actor("s2", "_StatsSummaryActor", "ALIVE", "_dataset_stats_summary_actor"),
        Actor("r", "AutoscalingRequester", "ALIVE", "AutoscalingRequester"),
        Actor("k", "_AutoscalingCoordinatorActor", "ALIVE", "AutoscalingCoordinator"),
        Actor("u", "_UsageCollectionActor", "ALIVE", "DataUsageCollectionActor"),
        Actor("i", "Anything", "ALIVE", "_ray_internal_something"),
    )),
    "dead actors": snap(actors=(Actor("a", "Pool", "DEAD", "ns"),)),
    "done tasks, actor tasks": snap(tasks=(
        Task("t1", "f", "FINISHED"), Task("t2", "g", "FAILED"),
        Task("t3", "ServeController.run_control_loop", "RUNNING", "ACTOR_TASK"),
        Task("t4", "A.__init__", "RUNNING", "ACTOR_CREATION_TASK"),
    )),
    "removed placement group": snap(placement_groups=(PlacementGroup("pg", "REMOVED"),)),
    "no demand": snap(demand=(Demand("tasks/actors", {"CPU": 1.0}, 0),)),
    "nobody logged in": snap(logins=()),
}


@pytest.mark.parametrize("case", sorted(NOT_BUSY))
def test_what_does_not_count(case):
    a = assess(NOT_BUSY[case])
    assert a.status == idle.IDLE, a.reason
    assert a.activities == ()


def test_a_user_actor_in_the_serve_namespace_counts():
    """Only Serve's controller and proxy are Serve's own; anything else there is an app."""
    a = assess(snap(actors=(Actor("d", "MyDeploymentActor", "ALIVE", "serve", "x"),)))
    assert a.rules == {"actor"}


def test_quiet_kinds_and_their_reasons():
    assert assess(snap(head="unreachable", head_detail="no SSH")).status == idle.UNREACHABLE
    assert assess(snap(head="unreachable", head_detail="no SSH")).reason == "no SSH"
    assert assess(snap(head="absent", head_detail="no head VM")).status == idle.ABSENT
    # A login keeps even a cluster without a head busy (the operator may be about to `ray up`).
    a = assess(snap(head="absent", logins=("bob",)))
    assert a.status == idle.BUSY and a.rules == {"login"}
    with pytest.raises(ValueError, match="head"):
        snap(head="gone")


def test_snapshot_round_trips_through_json():
    s = snap(jobs=(Job("j", "DRIVER", "RUNNING", "x", T0 - 5, None),),
             actors=(Actor("a", "A", "ALIVE", "ns", "n"),), tasks=(Task("t", "f", "RUNNING"),),
             placement_groups=(PlacementGroup("p", "CREATED", "pg"),),
             demand=(Demand("tasks/actors", {"CPU": 1.0}, 3),), logins=("alice",))
    assert ClusterSnapshot.from_json(s.to_json()) == s


# ---- the clock ----------------------------------------------------------------------------

IDLE_A = idle.Assessment(idle.IDLE, "nothing")
BUSY_A = idle.Assessment(idle.BUSY, "job: j", (idle.Activity("job", "j"),))


def run(assessments, *, timeout=60.0, step=10.0, start=T0, state=None, epoch="boot-1"):
    states = []
    for i, a in enumerate(assessments):
        state = advance(state, a, now=start + i * step, timeout_s=timeout, epoch=epoch)
        states.append(state)
    return states


def test_quiet_for_the_whole_timeout_is_due_and_not_a_second_earlier():
    states = run([IDLE_A] * 8)  # checks at 0, 10, ..., 70 s
    assert [s.due for s in states] == [False] * 6 + [True, True]
    assert states[6].quiet_for == 60 and states[0].stop_at == T0 + 60


def test_busy_resets_the_clock():
    states = run([IDLE_A] * 5 + [BUSY_A] + [IDLE_A] * 7)
    assert not any(s.due for s in states[:12])
    assert states[5].quiet_since is None and states[6].quiet_since == T0 + 60
    assert states[12].due


def test_a_read_error_counts_as_busy():
    err = idle.read_error("HTTP 401")
    states = run([IDLE_A] * 5 + [err] + [IDLE_A] * 3)
    assert states[5].status == idle.ERROR and states[5].quiet_since is None
    assert "counted as busy" in states[5].reason
    assert states[-1].quiet_since == T0 + 60


def test_unreachable_and_absent_are_quiet_and_continue_one_clock():
    unreachable = idle.Assessment(idle.UNREACHABLE, "no answer")
    states = run([IDLE_A, unreachable, unreachable, IDLE_A, unreachable, unreachable, IDLE_A])
    assert all(s.quiet_since == T0 for s in states)
    assert states[-1].due and states[-1].status == idle.IDLE


def test_a_job_that_ended_between_checks_resets_the_clock():
    """A job submitted in the last minute before the deadline: it started and finished
    between two checks, and its end time moves the start of the quiet time."""
    states = run([IDLE_A] * 5)
    ended = idle.Assessment(idle.IDLE, "nothing", (), last_active_at=T0 + 45)
    later = advance(states[-1], ended, now=T0 + 50, timeout_s=60, epoch="boot-1")
    assert later.quiet_since == T0 + 45 and not later.due
    # A clock ahead of ours does not push the quiet time into the future.
    ahead = idle.Assessment(idle.IDLE, "nothing", (), last_active_at=T0 + 500)
    assert advance(later, ahead, now=T0 + 60, timeout_s=60, epoch="boot-1").quiet_since == T0 + 60


def test_a_new_boot_or_a_stopped_state_starts_afresh():
    old = run([IDLE_A] * 8)[-1]
    assert old.due
    assert advance(old, IDLE_A, now=T0 + 80, timeout_s=60, epoch="boot-2").quiet_since == T0 + 80
    stopped = old.with_status(idle.STOPPED, "ray down")
    assert advance(stopped, IDLE_A, now=T0 + 80, timeout_s=60, epoch="boot-1").quiet_since == T0 + 80


def test_a_failed_stop_is_retried_while_still_quiet():
    due = run([IDLE_A] * 8)[-1]
    failed = due.with_status(idle.STOP_FAILED, "ray down exited 1")
    again = advance(failed, IDLE_A, now=T0 + 80, timeout_s=60, epoch="boot-1")
    assert again.due and again.quiet_since == T0
    assert not advance(failed, BUSY_A, now=T0 + 80, timeout_s=60, epoch="boot-1").due


def test_log_line_says_how_long_and_when():
    states = run([IDLE_A] * 4)
    assert states[-1].log_line() == "idle for 30 s (timeout 60 s, stops in 30 s): nothing"
    assert run([BUSY_A])[0].log_line() == "busy: job: j"
    with pytest.raises(ValueError, match="timeout_s"):
        advance(None, IDLE_A, now=T0, timeout_s=0)


@pytest.mark.parametrize(("seconds", "text"), [
    (5, "5 s"), (89, "89 s"), (90, "1 min"), (3599, "59 min"), (7200, "2 h 00 min"),
    (3 * 86400 + 4 * 3600, "3 d 4 h"),
])
def test_format_duration(seconds, text):
    assert idle.format_duration(seconds) == text


# ---- the setting's one rule -----------------------------------------------------------------


@pytest.mark.parametrize("value", [0, "0", 5, "60", 10080, " 15 "])
def test_timeout_minutes_accepted(value):
    assert autostop.check_timeout_minutes(value) == int(str(value).strip())


@pytest.mark.parametrize("value", [4, "1", 10081, "-5", "60.5", 2.5, "abc", "", True, None, "٣٠"])
def test_timeout_minutes_refused_naming_the_allowed_values(value):
    with pytest.raises(ValueError, match=r"allowed: 0 \(autostop off\) or a whole number of "
                       r"minutes from 5 to 10080"):
        autostop.check_timeout_minutes(value)


# ---- the names Ray uses for its own actors, from Ray itself -----------------------------------


def test_ray_system_actor_names_are_rays_own():
    """Each entry of RAY_SYSTEM_ACTORS is where Ray 2.60 puts that actor: Serve's and the
    Jobs API's from their constants, Ray Data's from its source (importing ray.data needs
    pandas, which the nodes do not install)."""
    from pathlib import Path

    import ray
    from ray.dashboard.modules.job.common import (
        JOB_ACTOR_NAME_TEMPLATE,
        SUPERVISOR_ACTOR_RAY_NAMESPACE,
    )
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve._private.controller import ServeController
    from ray.serve._private.proxy import ProxyActor

    namespaces = {ns for ns, _ in idle.RAY_SYSTEM_ACTORS}
    assert (SERVE_NAMESPACE, ServeController.__name__) in idle.RAY_SYSTEM_ACTORS
    assert (SERVE_NAMESPACE, ProxyActor.__ray_metadata__.class_name) in idle.RAY_SYSTEM_ACTORS
    assert SUPERVISOR_ACTOR_RAY_NAMESPACE in namespaces
    assert JOB_ACTOR_NAME_TEMPLATE.startswith(idle.RAY_INTERNAL_NAMESPACE_PREFIX)
    data = Path(ray.__file__).parent / "data" / "_internal"
    for source, needle in (
        ("stats.py", 'STATS_ACTOR_NAMESPACE = "_dataset_stats_actor"'),
        ("stats_summary_actor.py",
         'STATS_SUMMARY_ACTOR_NAMESPACE = "_dataset_stats_summary_actor"'),
        ("execution/autoscaling_requester.py", 'namespace="AutoscalingRequester"'),
        ("cluster_autoscaler/default_autoscaling_coordinator.py",
         'namespace="AutoscalingCoordinator"'),
        ("usage/actor.py", 'namespace="DataUsageCollectionActor"'),
    ):
        assert needle in (data / source).read_text(), source
        assert needle.split('"')[1] in namespaces
    assert len(namespaces) == 7  # serve + the six above: nothing listed without a check
