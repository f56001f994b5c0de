"""The recorded GCP calls of each actor equal the checked-in table infra/iam/calls.yaml.

A new Ray version (or our own change) that adds, drops or reshapes a call makes
this fail with the diff; review it, then regenerate:

    UPDATE_CALLS=1 .venv/bin/python -m pytest tests/infra/iam -q
"""

from __future__ import annotations

import difflib
import os

from infra.iam import CALLS_FILE, load_calls
from tests.infra.iam.conftest import table


def test_recorded_calls_match_the_checked_in_table(recorded):
    text = table(recorded["calls"])
    if os.environ.get("UPDATE_CALLS") == "1":
        CALLS_FILE.write_text(text)
    old = CALLS_FILE.read_text()
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(True), text.splitlines(True), "infra/iam/calls.yaml", "recorded"
        )
    )
    assert old == text, (
        "the recorded calls differ from infra/iam/calls.yaml; review, then run with "
        f"UPDATE_CALLS=1:\n{diff}"
    )


def test_every_actor_makes_the_calls_its_job_needs(recorded):
    """Not a tautology check: the recorder reached every code path it claims to drive."""
    methods = {actor: {c.method for c in calls} for actor, calls in load_calls().items()}
    assert {
        "secretmanager.projects.secrets.versions.access",  # boot script
        "cloudresourcemanager.projects.get",  # bootstrap
        "compute.instances.insert",  # ray up: the head
        "compute.instances.get",  # ray up: the head's command runner
        "compute.instances.setLabels",  # ray up: the head's status tags
        "compute.instances.delete",  # ray down
        "storage.objects.list",  # python -m cluster logs
        "storage.objects.get",  # python -m cluster logs
        "logging.entries.write",  # Google's guest agent (declared)
    } <= methods["provider"]
    assert {
        "compute.instances.insert",
        "compute.zoneOperations.get",
        "compute.instances.list",
        "compute.instances.get",
        "compute.instances.setLabels",
        "compute.instances.delete",
        "storage.objects.insert",
    } <= methods["head"]
    # buckets.get: the client's background bucket-metadata fetch (infra.iam.BEST_EFFORT);
    # delete and compose: the log shipper's size cap and compaction.
    assert methods["worker"] == {
        "storage.buckets.get", "storage.objects.get", "storage.objects.insert",
        "storage.objects.list", "storage.objects.delete", "storage.objects.compose",
    }
    # Nothing on a Ray node writes logs or metrics to Google: no logging/monitoring call.
    for actor in ("head", "worker"):
        assert not {m for m in methods[actor] if m.startswith(("logging.", "monitoring."))}
    assert methods["gke-node"] == {"logging.entries.write", "monitoring.projects.timeSeries.create"}


def test_every_log_request_stays_under_logs_and_is_the_shipper_or_the_reader(recorded):
    """The shipper and the reader act only on logs/ (recorder.RecordingProxy checks each
    URL), and each of their requests is a method of Google's storage discovery document."""
    from infra.iam import LOGS

    on_logs = {actor: {c.method for c in calls if c.on == LOGS}
               for actor, calls in load_calls().items()}
    assert on_logs["provider"] == {"storage.objects.list", "storage.objects.get"}  # reads only
    assert on_logs["head"] == on_logs["worker"] == {
        "storage.objects.insert", "storage.objects.list", "storage.objects.delete",
        "storage.objects.compose",
    }


def test_every_provider_vm_scenario_was_recorded(recorded):
    """Only deployments without a provider VM may be left out of the recording."""
    from tests.infra.conftest import SCENARIOS
    from tests.infra.iam.conftest import EXTRA_SPECS

    vm_scenarios = {"default", "key-mode", "ssh-ranges", "spot", "us-central1",
                    "predefined-roles", "operators"} & set(SCENARIOS)
    assert vm_scenarios | set(EXTRA_SPECS) <= set(recorded["calls"]["provider"])
