"""infra/settings.py: every setting parsed and validated before any resource exists."""

from __future__ import annotations

import json

import pytest

from cluster.api_endpoints import ApiEndpoints
from cluster.regions import REGION_ZONES, zones_of
from infra import offline as harness
from infra.settings import NAMESPACE, Settings, SettingsError, parse_settings

PROJECT = harness.TEST_PROJECT

PULUMI_TYPES = {
    str: "string",
    int: "integer",
    bool: "boolean",
    tuple[str, ...]: "array",
    tuple[str, ...] | None: "array",
}


def test_pulumi_yaml_declares_exactly_the_settings_with_the_same_defaults():
    declared = harness.pulumi_yaml()["config"]
    keys = Settings.config_keys()
    assert set(declared) == set(keys.values())
    for field, key in keys.items():
        info = Settings.model_fields[field]
        decl = declared[key]
        default = info.default
        if default is None:  # computed from other settings: Pulumi.yaml declares none
            assert "default" not in decl, key
        else:
            assert decl["default"] == (list(default) if isinstance(default, tuple) else default), key
        assert decl["description"] == info.description, key
        if info.annotation == ApiEndpoints | None:
            # Pulumi project config has no object type: declared untyped, so that
            # `pulumi config set --path ray-gcp:apiEndpoints.compute URL` passes Pulumi's
            # own check (a declared `type: string` would refuse the object).
            assert "type" not in decl, key
            continue
        expected_type = PULUMI_TYPES.get(info.annotation, "string")  # Literal[...] -> string
        assert decl["type"] == expected_type, key


def test_pulumi_yaml_project_and_runtime():
    doc = harness.pulumi_yaml()
    assert doc["name"] == "ray-gcp"
    assert doc["main"] == "infra/"
    assert doc["runtime"]["name"] == "python"
    assert doc["runtime"]["options"]["virtualenv"] == ".venv"
    assert doc["description"]


def test_defaults():
    s = parse_settings({}, PROJECT)
    assert (s.region, s.zone, s.cluster_name) == ("asia-northeast3", "asia-northeast3-a", "ray-gcp")
    assert (s.min_workers, s.max_workers, s.spot_workers) == (0, 6, False)
    assert s.ssh_source_ranges == () and not s.ssh_needs_public_ip
    assert s.credential_mode == "metadata"
    assert s.subnet_cidr == "10.10.0.0/20"


def test_gke_defaults_and_the_gpu_pool_in_the_spec():
    s = parse_settings({"platform": "gke"}, PROJECT)
    assert s.platform == "gke" and not s.gpu_pool
    assert (s.gke_pods_cidr, s.gke_services_cidr) == ("10.64.0.0/14", "10.68.0.0/20")
    assert (s.gke_release_channel, s.gke_deletion_protection) == ("REGULAR", True)
    assert set(s.cluster_spec().worker_types) == {"cpu-worker"}
    s = parse_settings({"platform": "gke", "gkeGpuType": "nvidia-tesla-t4", "gkeGpuCount": "2",
                        "gkeGpuMachineType": "n1-standard-8", "gkeGpuMaxNodes": "4"}, PROJECT)
    gpu = s.cluster_spec().worker_types["gpu-worker"]
    assert (gpu.accelerator_type, gpu.accelerator_count, gpu.machine_type, gpu.max_workers) == (
        "nvidia-tesla-t4", 2, "n1-standard-8", 4)
    # The VM path never gets a GPU type from these settings (they are refused there).
    assert set(parse_settings({}, PROJECT).cluster_spec().worker_types) == {"cpu-worker"}


def test_values_arrive_as_engine_strings():
    s = parse_settings(
        {
            "minWorkers": "2",
            "maxWorkers": "9",
            "spotWorkers": "true",
            "sshSourceRanges": '["203.0.113.0/24", "10.1.0.0/16"]',
            "credentialMode": "key",
        },
        PROJECT,
    )
    assert (s.min_workers, s.max_workers, s.spot_workers, s.credential_mode) == (2, 9, True, "key")
    assert s.ssh_source_ranges == ("203.0.113.0/24", "10.1.0.0/16")
    assert s.ssh_needs_public_ip


def test_private_ssh_ranges_need_no_public_ip():
    s = parse_settings({"sshSourceRanges": '["10.1.0.0/16", "192.168.5.0/24"]'}, PROJECT)
    assert s.ssh_source_ranges == ("10.1.0.0/16", "192.168.5.0/24")
    assert not s.ssh_needs_public_ip


# A list setting given as a plain string (`pulumi config set ray-gcp:fallbackZones
# asia-northeast3-b`, without --path) is refused, naming the setting, the value, what is
# allowed and the command that stores a list; Pulumi's own typed-config check refuses it
# at `pulumi up` too ("must be of type 'array<string>'"), with less to go on.
@pytest.mark.parametrize(
    ("key", "value", "allowed", "command"),
    [
        ("fallbackZones", "asia-northeast3-b", "a list of zones of `region` other than `zone`",
         "pulumi config set --path 'ray-gcp:fallbackZones[0]' asia-northeast3-b"),
        ("fallbackZones", "asia-northeast3-b,asia-northeast3-c", "[] for no fallback",
         "pulumi config set --path 'ray-gcp:fallbackZones[0]' asia-northeast3-b"),
        ("sshSourceRanges", "203.0.113.0/24", "a list of IPv4 CIDRs",
         "pulumi config set --path 'ray-gcp:sshSourceRanges[0]' 203.0.113.0/24"),
        ("operators", "user:alice@example.com", "a list of user:EMAIL or group:EMAIL",
         "pulumi config set --path 'ray-gcp:operators[0]' user:alice@example.com"),
        ("operators", "", "a list of user:EMAIL or group:EMAIL",
         "pulumi config set --path 'ray-gcp:operators[0]' <item>"),
    ],
    ids=["zone", "comma-list", "cidr", "operator", "empty"],
)
def test_a_plain_string_for_a_list_setting_is_refused(key, value, allowed, command):
    with pytest.raises(SettingsError) as info:
        parse_settings({key: value}, PROJECT)
    message = str(info.value)
    assert f"{NAMESPACE}:{key} = {value!r}: not a list" in message
    assert allowed in message and command in message


def test_every_region_has_zones_and_every_zone_is_accepted():
    for region in REGION_ZONES:
        for zone in zones_of(region):
            assert parse_settings({"region": region, "zone": zone}, PROJECT).zone == zone


def test_cluster_spec_follows_the_settings():
    s = parse_settings(
        {"clusterName": "research", "workerMachineType": "c3-standard-8", "minWorkers": "1",
         "maxWorkers": "10", "spotWorkers": "true"},
        PROJECT,
    )
    spec = s.cluster_spec()
    assert spec.cluster_name == "research"
    (worker,) = spec.worker_types.values()
    assert (worker.machine_type, worker.min_workers, worker.max_workers, worker.spot) == (
        "c3-standard-8", 1, 10, True)
    assert spec.head.machine_type == s.head_machine_type


# (raw settings, the key the error must name, a fragment saying what is allowed)
BAD_SETTINGS = [
    ({"region": "asia-northeast9"}, "ray-gcp:region", "asia-northeast3"),
    ({"region": "US-CENTRAL1"}, "ray-gcp:region", "us-central1"),
    ({"zone": "us-central1-a"}, "ray-gcp:zone", "asia-northeast3-a, asia-northeast3-b"),
    ({"region": "us-east1", "zone": "us-east1-a"}, "ray-gcp:zone", "us-east1-b, us-east1-c"),
    ({"minWorkers": "-1"}, "ray-gcp:minWorkers", ">= 0"),
    ({"maxWorkers": "-3"}, "ray-gcp:maxWorkers", ">= minWorkers"),
    ({"minWorkers": "5", "maxWorkers": "2"}, "ray-gcp:maxWorkers", ">= minWorkers"),
    ({"maxWorkers": "many"}, "ray-gcp:maxWorkers", "integer"),
    ({"spotWorkers": "sometimes"}, "ray-gcp:spotWorkers", "true or false"),
    ({"sshSourceRanges": '["0.0.0.0/0"]'}, "ray-gcp:sshSourceRanges", "never 0.0.0.0/0"),
    ({"sshSourceRanges": '["0.0.0.0/1"]'}, "ray-gcp:sshSourceRanges", "/8 or longer"),
    ({"sshSourceRanges": '["203.0.113.7"]'}, "ray-gcp:sshSourceRanges", "203.0.113.7/32"),
    ({"sshSourceRanges": '["203.0.113.300/32"]'}, "ray-gcp:sshSourceRanges", "IPv4 CIDRs"),
    ({"sshSourceRanges": '["203.0.113.7/24"]'}, "ray-gcp:sshSourceRanges", "203.0.113.0/24"),
    ({"sshSourceRanges": '["2001:db8::/32"]'}, "ray-gcp:sshSourceRanges", "IPv4"),
    ({"sshSourceRanges": '["10.0.0.0/8", "10.0.0.0/8"]'}, "ray-gcp:sshSourceRanges", "twice"),
    ({"subnetCidr": "34.64.0.0/20"}, "ray-gcp:subnetCidr", "RFC 1918"),
    ({"subnetCidr": "10.0.0.0/30"}, "ray-gcp:subnetCidr", "/29"),
    ({"subnetCidr": "10.0.0.0"}, "ray-gcp:subnetCidr", "10.0.0.0/32"),
    ({"subnetCidr": "not-a-cidr/20"}, "ray-gcp:subnetCidr", "RFC 1918"),
    ({"clusterName": "Ray_GCP"}, "ray-gcp:clusterName", "lowercase"),
    ({"clusterName": "9lives"}, "ray-gcp:clusterName", "start with a letter"),
    ({"clusterName": "a" * 36}, "ray-gcp:clusterName", "at most 35"),
    ({"credentialMode": "keyfile"}, "ray-gcp:credentialMode", "metadata or key"),
    ({"providerMachineType": "e2 small"}, "ray-gcp:providerMachineType", "machine type"),
    ({"headMachineType": "N2-STANDARD-4"}, "ray-gcp:headMachineType", "machine type"),
    ({"workerMachineType": "n2-standard"}, "ray-gcp:workerMachineType", "vCPU"),
    ({"maxWorker": "3"}, "ray-gcp:maxWorker", "ray-gcp:maxWorkers"),
    # a list setting stored as a plain string (`pulumi config set` without --path)
    ({"fallbackZones": "asia-northeast3-b"}, "ray-gcp:fallbackZones",
     "pulumi config set --path 'ray-gcp:fallbackZones[0]' asia-northeast3-b"),
    ({"operators": "user:alice@example.com"}, "ray-gcp:operators",
     "pulumi config set --path 'ray-gcp:operators[0]' user:alice@example.com"),
    # platform and the GKE settings
    ({"platform": "k8s"}, "ray-gcp:platform", "vm or gke"),
    ({"platform": "gke", "gkePodsCidr": "34.0.0.0/14"}, "ray-gcp:gkePodsCidr", "RFC 1918"),
    ({"platform": "gke", "gkePodsCidr": "10.64.0.0/24"}, "ray-gcp:gkePodsCidr", "/8 to /21"),
    ({"platform": "gke", "gkeServicesCidr": "10.96.0.0/12"}, "ray-gcp:gkeServicesCidr",
     "/16 to /27"),
    ({"platform": "gke", "gkeServicesCidr": "10.64.0.0/20"}, "ray-gcp:gkeServicesCidr",
     "overlaps ray-gcp:gkePodsCidr"),
    ({"platform": "gke", "gkePodsCidr": "10.8.0.0/13"}, "ray-gcp:gkePodsCidr",
     "overlaps ray-gcp:subnetCidr"),
    ({"platform": "gke", "gkeGpuType": "nvidia-rtx"}, "ray-gcp:gkeGpuType", "nvidia-l4"),
    ({"platform": "gke", "gkeGpuCount": "3"}, "ray-gcp:gkeGpuCount", "1, 2, 4 or 8"),
    ({"platform": "gke", "gkeGpuMaxNodes": "0"}, "ray-gcp:gkeGpuMaxNodes", "1 to 100"),
    ({"platform": "gke", "gkeReleaseChannel": "regular"}, "ray-gcp:gkeReleaseChannel",
     "RAPID, REGULAR or STABLE"),
    ({"platform": "gke", "workerMachineType": "e2-standard-1"}, "ray-gcp:workerMachineType",
     "allowed on GKE"),
    ({"platform": "gke", "gkeGpuType": "nvidia-l4", "gkeGpuMachineType": "a2-highgpu-1g"},
     "ray-gcp:gkeGpuMachineType", "g2-standard-<vCPUs>"),
    ({"platform": "gke", "gkeGpuType": "nvidia-tesla-t4", "gkeGpuMachineType": "g2-standard-8"},
     "ray-gcp:gkeGpuMachineType", "n1-standard-<vCPUs>"),
    ({"platform": "gke", "gkeGpuType": "nvidia-l4", "gkeGpuMachineType": "g2-standard-24"},
     "ray-gcp:gkeGpuCount", "set ray-gcp:gkeGpuCount 2"),
    # a setting of one platform set on the other
    ({"platform": "gke", "credentialMode": "key"}, "ray-gcp:credentialMode",
     "applies only to ray-gcp:platform vm"),
    ({"platform": "gke", "providerMachineType": "e2-small"}, "ray-gcp:providerMachineType",
     "applies only to ray-gcp:platform vm"),
    ({"platform": "gke", "operators": ["user:alice@example.com"]}, "ray-gcp:operators",
     "applies only to ray-gcp:platform vm"),
    ({"platform": "gke", "customRoles": False}, "ray-gcp:customRoles",
     "applies only to ray-gcp:platform vm"),
    ({"gkeGpuMachineType": "g2-standard-4"}, "ray-gcp:gkeGpuMachineType",
     "applies only to ray-gcp:platform gke"),
    ({"gkePodsCidr": "10.80.0.0/14"}, "ray-gcp:gkePodsCidr", "applies only to ray-gcp:platform gke"),
]


@pytest.mark.parametrize(("raw", "key", "allowed"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_bad_setting_names_key_value_and_what_is_allowed(raw, key, allowed):
    with pytest.raises(SettingsError) as info:
        parse_settings(raw, PROJECT)
    message = str(info.value)
    assert key in message
    bad_value = raw.get(key.removeprefix(f"{NAMESPACE}:"))
    if bad_value is not None and key != "ray-gcp:maxWorker":
        # Named as given, or as Pulumi config stores it (false, ["user:a@b.c"]).
        assert repr(bad_value) in message or json.dumps(bad_value) in message
    assert allowed in message
    assert "nothing was created" in message


def test_missing_project_is_an_error():
    with pytest.raises(SettingsError, match=r"gcp:project is required"):
        parse_settings({}, None)


def test_all_problems_are_reported_at_once():
    with pytest.raises(SettingsError) as info:
        parse_settings({"region": "nowhere-1", "credentialMode": "x", "minWorkers": "-2"}, PROJECT)
    for key in ("ray-gcp:region", "ray-gcp:credentialMode", "ray-gcp:minWorkers"):
        assert key in str(info.value)


# More bad settings, as `pulumi config set` stores typed values (JSON, not strings).
PROGRAM_BAD = {
    "unknown region": ({"ray-gcp:region": "mars-north1"}, "ray-gcp:region"),
    "zone outside region": ({"ray-gcp:zone": "us-central1-a"}, "ray-gcp:zone"),
    "negative workers": ({"ray-gcp:minWorkers": -1}, "ray-gcp:minWorkers"),
    "inverted workers": ({"ray-gcp:minWorkers": 4, "ray-gcp:maxWorkers": 2}, "ray-gcp:maxWorkers"),
    "fractional workers": ({"ray-gcp:maxWorkers": 2.5}, "ray-gcp:maxWorkers"),
    "open ssh": ({"ray-gcp:sshSourceRanges": ["0.0.0.0/0"]}, "ray-gcp:sshSourceRanges"),
    "bad cidr": ({"ray-gcp:sshSourceRanges": ["1.2.3/33"]}, "ray-gcp:sshSourceRanges"),
    "ipv6 ssh range": ({"ray-gcp:sshSourceRanges": ["::/0"]}, "ray-gcp:sshSourceRanges"),
    "ipv6 subnet": ({"ray-gcp:subnetCidr": "fd00::/64"}, "ray-gcp:subnetCidr"),
    "public subnet": ({"ray-gcp:subnetCidr": "8.8.0.0/16"}, "ray-gcp:subnetCidr"),
    "bad cluster name": ({"ray-gcp:clusterName": "My Cluster"}, "ray-gcp:clusterName"),
    "unknown credential mode": ({"ray-gcp:credentialMode": "json"}, "ray-gcp:credentialMode"),
    "malformed machine type": ({"ray-gcp:workerMachineType": "big"}, "ray-gcp:workerMachineType"),
    "numeric spot flag": ({"ray-gcp:spotWorkers": 2}, "ray-gcp:spotWorkers"),
    "misspelt key": ({"ray-gcp:spotWorker": True}, "ray-gcp:spotWorker"),
}
# ... and every entry of BAD_SETTINGS, as the engine strings parse_settings was given.
PROGRAM_CASES = {
    **{case: (overrides, key, None) for case, (overrides, key) in PROGRAM_BAD.items()},
    **{
        f"{key} {str(raw)[:50]}": ({f"{NAMESPACE}:{k}": v for k, v in raw.items()}, key, allowed)
        for raw, key, allowed in BAD_SETTINGS
    },
}


@pytest.fixture(scope="module")
def warm():
    harness.warm_up()


def test_program_cases_cover_every_kind_the_readme_names():
    """IPv6, non-integer, non-boolean and every machine-type key reach the program."""
    keys = {key for _, key, _ in PROGRAM_CASES.values()}
    assert {"ray-gcp:headMachineType", "ray-gcp:providerMachineType",
            "ray-gcp:workerMachineType"} <= keys
    values = [json.dumps(overrides) for overrides, _, _ in PROGRAM_CASES.values()]
    for fragment in ("::", "many", "sometimes", "2.5"):
        assert any(fragment in v for v in values), fragment
    assert len(PROGRAM_CASES) == len(PROGRAM_BAD) + len(BAD_SETTINGS)


@pytest.mark.parametrize("case", sorted(PROGRAM_CASES))
def test_bad_setting_stops_the_program_before_any_resource(warm, case):
    overrides, key, allowed = PROGRAM_CASES[case]
    result = harness.run_isolated(harness.engine_config(overrides))
    error = result["error"]
    assert error is not None, f"{case}: the program accepted {overrides}"
    # RunError: Pulumi shows the message alone, without a Python traceback.
    assert error["is_run_error"], error["traceback"]
    assert key in error["message"]
    if key in harness.pulumi_yaml()["config"]:  # a declared setting (not a misspelt key)
        # The value as the engine handed it over (typed values arrive as JSON text), or as
        # parsed when a rule across settings refused it (`gkeGpuCount = 1`).
        raw = harness.engine_config(overrides)[key]
        assert f"{key} = {raw!r}" in error["message"] or f"{key} = {raw}:" in error["message"]
    assert "nothing was created" in error["message"]
    if allowed is not None:
        assert allowed in error["message"]
    assert result["new_resource_calls"] == 0
    assert result["resources"] == []
    assert result["invokes"] == []


def test_missing_project_stops_the_program_before_any_resource(warm):
    result = harness.run_isolated(harness.engine_config({}, project=None))
    assert "gcp:project" in result["error"]["message"]
    assert result["new_resource_calls"] == 0 and result["invokes"] == []


def test_bad_project_id_names_gcp_project():
    with pytest.raises(SettingsError) as info:
        parse_settings({}, "My_Project")
    assert "gcp:project = 'My_Project'" in str(info.value)


# ---- fallbackZones ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, ("asia-northeast3-b", "asia-northeast3-c")),
        ({"zone": "asia-northeast3-b"}, ("asia-northeast3-c", "asia-northeast3-a")),
        ({"region": "us-central1", "zone": "us-central1-c"}, ("us-central1-f", "us-central1-a", "us-central1-b")),
        ({"fallbackZones": '["asia-northeast3-c"]'}, ("asia-northeast3-c",)),
        ({"fallbackZones": '["asia-northeast3-c", "asia-northeast3-b"]'},
         ("asia-northeast3-c", "asia-northeast3-b")),
        ({"fallbackZones": "[]"}, ()),
    ],
    ids=["default", "after-zone-wraps", "us-central1", "json", "order-kept", "empty-turns-it-off"],
)
def test_fallback_zones(raw, expected):
    assert parse_settings(raw, PROJECT).node_fallback_zones == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('["us-central1-a"]', "zone 'us-central1-a' is not in region 'asia-northeast3'; allowed: asia-northeast3-b, asia-northeast3-c"),
        ('["asia-northeast3-a"]', "is `zone` itself"),
        ('["asia-northeast3-b", "asia-northeast3-b"]', "listed twice"),
        ('["asia-northeast3-', "not a JSON list of zone names"),
    ],
)
def test_bad_fallback_zones_name_the_key_the_zone_and_the_region(value, needle):
    with pytest.raises(SettingsError) as err:
        parse_settings({"fallbackZones": value}, PROJECT)
    assert f"{NAMESPACE}:fallbackZones = " in str(err.value)
    assert needle in str(err.value)


# ---- apiEndpoints -------------------------------------------------------------------------

PSC = {
    "compute": "https://compute-ray.p.googleapis.com/compute/v1/",
    "iam": "https://iam-ray.p.googleapis.com/",
    "cloudresourcemanager": "https://cloudresourcemanager-ray.p.googleapis.com/",
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, {}),
        ({"apiEndpoints": json.dumps(PSC)}, PSC),  # what the engine hands over for an object
        ({"apiEndpoints": '{"compute": "http://10.99.0.1:8080/compute/v1/"}'},
         {"compute": "http://10.99.0.1:8080/compute/v1/"}),
        ({"apiEndpoints": "{}"}, {}),
    ],
    ids=["unset", "all-three", "compute-only", "empty-object"],
)
def test_api_endpoints(raw, expected):
    s = parse_settings(raw, PROJECT)
    assert s.node_api_endpoints == expected
    assert (s.api_endpoints is None) == (not expected)


@pytest.mark.parametrize(
    ("value", "key", "needle"),
    [
        ('{"compute": "compute.googleapis.com/compute/v1/"}', "apiEndpoints.compute",
         "not an absolute http(s) URL; allowed: an absolute http(s) URL ending in '/'"),
        ('{"compute": "ftp://h/compute/v1/"}', "apiEndpoints.compute", "not an absolute http(s) URL"),
        ('{"iam": "https://iam-ray.p.googleapis.com"}', "apiEndpoints.iam", "must end with '/'"),
        ('{"iam": "https://h/?alt=json"}', "apiEndpoints.iam", "no query"),
        ('{"storage": "https://h/"}', "apiEndpoints.storage",
         "unknown key (allowed: an object whose keys are compute, iam, cloudresourcemanager"),
        ('{"compute": 8080}', "apiEndpoints.compute", "Input should be a valid string"),
        ('["https://h/"]', "apiEndpoints", "not an object"),
        ('{"compute": ', "apiEndpoints", "not a JSON object"),
    ],
)
def test_bad_api_endpoints_name_the_member_and_the_allowed_form(value, key, needle):
    with pytest.raises(SettingsError) as err:
        parse_settings({"apiEndpoints": value}, PROJECT)
    assert f"{NAMESPACE}:{key} = " in str(err.value)
    assert needle in str(err.value)


def test_api_endpoints_are_refused_on_gke():
    with pytest.raises(SettingsError) as err:
        parse_settings({"platform": "gke", "apiEndpoints": json.dumps(PSC)}, PROJECT)
    assert (
        f"{NAMESPACE}:apiEndpoints = {json.dumps(PSC)}: applies only to {NAMESPACE}:platform vm"
        in str(err.value)
    )
