"""Every request our code paths send, checked against Google's discovery documents.

The recorded FakeGcp calls of every scenario (Ray's real create_node for every
node type: spot, GPU, custom machine types, regions...) are checked method by
method against compute v1 / iam v1 / cloudresourcemanager v1: parameters known
and matching their patterns, bodies against the request schema (unknown fields,
JSON types, enum values). Instance names and labels against GCE's rules, and
the boot script's URLs against the Secret Manager document and the metadata keys
infra/ sets.
"""

from __future__ import annotations

import re

import pytest

from tests.infra.iam import recorder
from tests.infra.iam.discovery import check_call, validate

API_DOCS = {"compute": "compute.v1", "iam": "iam.v1", "crm": "cloudresourcemanager.v1"}
INSTANCE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
ATTRIBUTES = "/computeMetadata/v1/instance/attributes/"


def label_problems(labels: dict) -> list[str]:
    problems = [f"{len(labels)} labels (GCE allows 64)"] if len(labels) > 64 else []
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            problems.append(f"label key {key!r} !~ {LABEL_KEY.pattern}")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            problems.append(f"label {key}={value!r} !~ {LABEL_VALUE.pattern}")
    return problems


def test_the_checks_catch_what_gce_would_refuse():
    """The validators themselves refuse the kinds of mistakes they exist for."""
    body = {"name": "Ray_Head", "machineType": 4, "bogusField": 1,
            "scheduling": {"provisioningModel": "CHEAP"},
            "labels": {"Ray-Node": "Head"}}
    problems = " ".join(check_call("compute.v1", "compute.instances.insert",
                                   {"project": "p-1", "zone": "z", "body": body, "foo": 1}))
    for needle in ("bogusField: unknown field", "machineType: expected a string",
                   "'CHEAP' is not one of", "unknown parameter foo"):
        assert needle in problems
    assert not INSTANCE_NAME.match("Ray_Head") and not INSTANCE_NAME.match("a" * 62 + "-")
    assert len(label_problems({"Ray-Node": "Head"})) == 2
    assert validate("compute.v1", "Instance", {"disks": [{"initializeParams": {"diskSizeGb": True}}]})


def test_every_compute_iam_and_crm_request_is_valid(recorded, scenarios):
    inserts = 0
    for name, scenario in scenarios.items():
        assert scenario.raw, f"{name}: nothing recorded"
        for call in scenario.raw:
            api = API_DOCS[call.api]
            method_id = f"{recorder.API_PREFIX[call.api]}.{call.method}"
            assert check_call(api, method_id, call.kwargs) == [], (name, method_id)
            if call.method == "instances.insert":
                inserts += 1
                body = call.kwargs["body"]
                assert len(body["name"]) <= 63 and INSTANCE_NAME.match(body["name"]), body["name"]
                assert label_problems(body.get("labels", {})) == [], (name, body["name"])
            if call.method == "instances.setLabels":
                assert label_problems(call.kwargs["body"]["labels"]) == [], name
    assert inserts >= 3 * len(scenarios)


@pytest.mark.parametrize(
    ("scenario", "node_type", "expect"),
    [
        ("spot", "cpu-worker", {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}),
        ("gpu", "gpu-worker", {"onHostMaintenance": "TERMINATE"}),
        ("default", "head", {"provisioningModel": "STANDARD"}),
    ],
)
def test_node_types_of_each_scenario_were_created(recorded, scenarios, scenario, node_type, expect):
    """The body checks above did see the node types they are meant to cover."""
    bodies = [
        c.kwargs["body"] for c in scenarios[scenario].raw
        if c.method == "instances.insert"
        and c.kwargs["body"]["labels"].get("ray-user-node-type") == node_type
    ]
    assert bodies, f"no {node_type} created in {scenario}"
    for body in bodies:
        assert expect.items() <= body["scheduling"].items()
        if node_type == "gpu-worker":
            (acc,) = body["guestAccelerators"]
            assert acc["acceleratorType"].endswith("/acceleratorTypes/nvidia-tesla-t4")


def test_boot_script_urls_are_known_methods_and_metadata_keys(recorded, scenarios):
    for name, paths in recorded["metadata_paths"].items():
        keys = set(scenarios[name].metadata)
        assert TOKEN_PATH in paths
        for path in paths:
            path = path.split("?", 1)[0]
            if path == TOKEN_PATH:
                continue
            assert path.startswith(ATTRIBUTES), path
            assert path[len(ATTRIBUTES):] in keys, f"{name}: boot reads unset metadata key {path}"
    # Secret Manager: every request matched secretmanager.v1 (pattern-checked by match_url).
    for name, calls in recorded["calls"]["provider"].items():
        access = [c for c in calls if c.method.startswith("secretmanager.")]
        assert access and {c.method for c in access} == {
            "secretmanager.projects.secrets.versions.access"}, name
