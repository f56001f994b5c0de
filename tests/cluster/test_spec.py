"""ClusterSpec / GcpFacts: good specs build, bad ones name the field and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from ray.autoscaler._private.gcp.node import INSTANCE_NAME_MAX_LEN, _generate_node_name
from ray.autoscaler.tags import TAG_RAY_NODE_NAME

from cluster import layout
from cluster.render import example_gcp_facts
from cluster.spec import (
    CLUSTER_NAME_MAX_LEN,
    ClusterSpec,
    GcpFacts,
    NodeTypeSpec,
    SpecError,
    local_default_spec,
    machine_type_cpus,
)

HEAD = {"machine_type": "n2-standard-4", "resources": {"CPU": 0}}
WORKER = {"machine_type": "n2-standard-4", "max_workers": 4}


def spec_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"node_types": {"head": dict(HEAD), "cpu-worker": dict(WORKER)}}
    data.update(overrides)
    return data


def refusal(data: dict[str, Any]) -> tuple[tuple, str]:
    with pytest.raises(ValidationError) as exc:
        ClusterSpec.model_validate(data)
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return tuple(str(x) for x in errors[0]["loc"]), errors[0]["msg"]


def test_defaults_are_the_documented_ones():
    spec = ClusterSpec()
    assert spec.max_workers == 6
    assert spec.ray_version == layout.RAY_VERSION
    assert spec.python_minor == layout.PYTHON_MINOR
    assert spec.head.ray_resources() == {"CPU": 0}
    assert spec.worker_types["cpu-worker"].ray_resources() == {"CPU": 4}
    assert spec.worker_types["cpu-worker"].spot is False  # the stack default spotWorkers=false
    assert spec.upscaling_speed >= 1000


def test_from_settings_maps_flat_settings():
    spec = ClusterSpec.from_settings(
        cluster_name="team-a",
        head_machine_type="e2-standard-2",
        worker_machine_type="c3-standard-8",
        min_workers=1,
        max_workers=5,
        spot_workers=False,
    )
    assert spec.cluster_name == "team-a"
    assert spec.head.machine_type == "e2-standard-2"
    worker = spec.worker_types["cpu-worker"]
    assert (worker.machine_type, worker.min_workers, worker.max_workers) == ("c3-standard-8", 1, 5)
    assert worker.spot is False and worker.ray_resources() == {"CPU": 8}
    assert spec.max_workers == 5
    assert list(spec.worker_types) == ["cpu-worker"]


def test_from_settings_adds_a_gpu_type_only_when_asked():
    spec = ClusterSpec.from_settings(
        max_workers=4,
        gpu_accelerator_type="nvidia-l4",
        gpu_accelerator_count=1,
        gpu_machine_type="g2-standard-8",
        gpu_max_workers=2,
    )
    gpu = spec.worker_types["gpu-worker"]
    assert gpu.ray_resources() == {"CPU": 8, "GPU": 1}
    assert spec.max_workers == 6


@pytest.mark.parametrize(
    ("data", "loc", "needle"),
    [
        (
            spec_dict(
                node_types={"head": HEAD, "cpu-worker": {**WORKER, "min_workers": 5}},
            ),
            ("node_types", "cpu-worker"),
            "min_workers (5) > max_workers (4)",
        ),
        (
            spec_dict(head_node_type="boss"),
            (),
            "head_node_type 'boss' is not one of node_types: ['cpu-worker', 'head']",
        ),
        (spec_dict(cluster_name="Bad_Name"), ("cluster_name",), "lowercase letters, digits"),
        (spec_dict(cluster_name="a" * 36), ("cluster_name",), "at most 35 characters"),
        (spec_dict(cluster_name="ends-with-"), ("cluster_name",), "end with a letter or digit"),
        (spec_dict(cluster_name="9lives"), ("cluster_name",), "start with a letter"),
        (
            spec_dict(
                node_types={"head": HEAD, "gpu": {**WORKER, "accelerator_count": 2}},
            ),
            ("node_types", "gpu"),
            "accelerator_count=2 without accelerator_type",
        ),
        (
            spec_dict(
                node_types={"head": HEAD, "gpu": {**WORKER, "accelerator_type": "nvidia-l4"}},
            ),
            ("node_types", "gpu"),
            "set accelerator_count to 1..16",
        ),
        (
            spec_dict(
                node_types={
                    "head": HEAD,
                    "gpu": {
                        **WORKER,
                        "accelerator_type": "nvidia-l4",
                        "accelerator_count": 1,
                        "resources": {"GPU": 2},
                    },
                },
            ),
            ("node_types", "gpu"),
            "resources['GPU']=2.0 but accelerator_count=1",
        ),
        (spec_dict(ray_version="2.59.0"), ("ray_version",), "locked Ray '2.60.0'"),
        (spec_dict(python_minor="3.12"), ("python_minor",), "locked Python '3.11'"),
        (
            spec_dict(node_types={"head": {**HEAD, "max_workers": 1}, "cpu-worker": WORKER}),
            (),
            "node_types['head'] is the head type: min_workers and max_workers must be 0",
        ),
        (
            spec_dict(node_types={"head": {**HEAD, "spot": True}, "cpu-worker": WORKER}),
            (),
            "the head cannot be a spot VM",
        ),
        (spec_dict(node_types={"head": HEAD}), (), "needs at least one worker type"),
        (
            spec_dict(
                max_workers=2,
                node_types={"head": HEAD, "cpu-worker": {**WORKER, "min_workers": 3}},
            ),
            (),
            "max_workers (2) < sum of the worker types' min_workers (3)",
        ),
        (
            spec_dict(node_types={"head": HEAD, "Bad_Type": WORKER}),
            ("node_types",),
            "node type name 'Bad_Type'",
        ),
        (
            spec_dict(node_types={"head": HEAD, "w": {**WORKER, "machine_type": "custom"}}),
            ("node_types", "w"),
            "cannot derive the vCPU count",
        ),
        (
            spec_dict(node_types={"head": HEAD, "w": {**WORKER, "resources": {"CPU": -1}}}),
            ("node_types", "w", "resources"),
            "resources['CPU'] = -1.0: must be >= 0",
        ),
        (spec_dict(max_worker=3), ("max_worker",), "Extra inputs are not permitted"),
        (
            spec_dict(node_types={"head": HEAD, "w": {**WORKER, "max_workers": -1}}),
            ("node_types", "w", "max_workers"),
            "greater than or equal to 0",
        ),
    ],
    ids=lambda v: None,
)
def test_bad_specs_are_refused_naming_the_field(data, loc, needle):
    got_loc, msg = refusal(data)
    assert got_loc == loc
    assert needle in msg


def test_longest_cluster_name_fits_gce_instance_names():
    name = "a" * CLUSTER_NAME_MAX_LEN
    ClusterSpec(cluster_name=name)  # accepted
    # Ray's own naming (node_launcher: TAG_RAY_NODE_NAME = "ray-<name>-worker").
    for role in ("head", "worker"):
        vm = _generate_node_name({TAG_RAY_NODE_NAME: f"ray-{name}-{role}"}, "compute")
        assert len(vm) <= 63 < INSTANCE_NAME_MAX_LEN
    with pytest.raises(ValidationError, match="at most 35"):
        ClusterSpec(cluster_name=name + "a")


def test_machine_type_cpus():
    assert machine_type_cpus("n2-standard-8") == 8
    assert machine_type_cpus("c3-highcpu-22") == 22
    assert machine_type_cpus("e2-medium") == 2
    assert machine_type_cpus("g2-standard-4") == 4
    with pytest.raises(SpecError, match="resources"):
        machine_type_cpus("n1-custom")


def test_explicit_cpu_overrides_the_machine_shape():
    t = NodeTypeSpec(machine_type="n2-custom-6-24576", resources={"CPU": 6, "special": 1})
    assert t.ray_resources() == {"CPU": 6, "special": 1}


def test_local_default_spec_is_small():
    spec = local_default_spec()
    assert spec.max_workers <= 4
    assert spec.worker_types["cpu-worker"].ray_resources() == {"CPU": 2}


# ---- GcpFacts ---------------------------------------------------------------------


def facts_dict(**overrides: Any) -> dict[str, Any]:
    return {**example_gcp_facts().model_dump(), **overrides}


def test_example_facts_are_valid():
    f = GcpFacts.model_validate(facts_dict())
    assert f.subnetwork_name == "ray-gcp-subnet"
    assert f.subnetwork_project == "my-ray-project"


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        ({"zone": "us-central1-a"}, "", "zone 'us-central1-a' is not in region"),
        (
            {"image": "projects/debian-cloud/global/images/family/debian-12"},
            "image",
            "String should match pattern",
        ),
        (
            {"subnetwork": "projects/p-123456/regions/us-east1/subnetworks/x"},
            "",
            "is in region 'us-east1', not 'asia-northeast3'",
        ),
        ({"head_service_account": "someone@gmail.com"}, "head_service_account", "pattern"),
        ({"ssh_public_key": "not a key"}, "ssh_public_key", "pattern"),
        ({"project": "X"}, "project", "pattern"),
    ],
)
def test_bad_facts_are_refused_naming_the_field(overrides, field, needle):
    with pytest.raises(ValidationError) as exc:
        GcpFacts.model_validate(facts_dict(**overrides))
    err = exc.value.errors()[0]
    assert ".".join(str(x) for x in err["loc"]) == field
    assert needle in err["msg"]


def test_full_url_self_links_are_accepted():
    base = "https://www.googleapis.com/compute/v1/"
    f = GcpFacts.model_validate(
        facts_dict(
            subnetwork=base + "projects/my-ray-project/regions/asia-northeast3/subnetworks/n",
            image=base + "projects/debian-cloud/global/images/debian-12-bookworm-v20261110",
        )
    )
    assert f.subnetwork_name == "n"


@pytest.mark.parametrize(
    ("zones", "needle"),
    [
        (("us-central1-a",), "fallback_zones: zone 'us-central1-a' is not in region 'asia-northeast3'"),
        (("asia-northeast3-a",), "is listed twice or is the primary zone 'asia-northeast3-a'"),
        (("asia-northeast3-b", "asia-northeast3-b"), "is listed twice"),
        (("asia-northeast3",), "is not in region"),
    ],
)
def test_fallback_zones_must_be_other_zones_of_the_region(zones, needle):
    facts = example_gcp_facts().model_dump()
    facts["fallback_zones"] = zones
    with pytest.raises(ValidationError, match=needle):
        GcpFacts(**facts)


def test_fallback_zones_reach_the_rendered_provider_in_order():
    from cluster.render import render_gcp

    facts = example_gcp_facts().model_copy(update={"fallback_zones": ("asia-northeast3-c", "asia-northeast3-b")})
    assert render_gcp(ClusterSpec(), facts)["provider"]["fallback_zones"] == [
        "asia-northeast3-c",
        "asia-northeast3-b",
    ]
    off = example_gcp_facts().model_copy(update={"fallback_zones": ()})
    assert render_gcp(ClusterSpec(), off)["provider"]["fallback_zones"] == []
