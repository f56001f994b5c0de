"""`python -m infra.offline`: the resource listing `make demo` prints."""

import json

import pytest
import yaml

from infra import offline
from infra import offline as harness


def test_inventory_lists_every_resource_once_under_its_component():
    result = harness.run_isolated(offline.default_config())
    lines = offline.inventory_lines(result)
    assert len(lines) == len(result["resources"])
    names = [line.strip().split("  (")[0] for line in lines]
    assert sorted(names) == sorted(r["name"] for r in result["resources"])
    # Every custom resource sits under one of the seven components.
    top_level = [line for line in lines if not line.startswith(" ")]
    # (registration order is asynchronous, so compare as sets)
    assert sorted(line.split("  (")[0] for line in top_level) == [
        "apis", "identity", "network", "operators", "provider", "secrets", "storage",
    ]
    assert all("ray-gcp:infra:" in line for line in top_level)


def test_cli_reports_a_bad_setting_and_fails(capsys):
    assert offline.main(["--set", "ray-gcp:maxWorkers=-1"]) == 1
    assert "ray-gcp:maxWorkers" in capsys.readouterr().out


def test_cli_rejects_a_malformed_set(capsys):
    with pytest.raises(SystemExit):
        offline.main(["--set", "no-equals-sign"])
    assert "KEY=VALUE" in capsys.readouterr().err


# ---- what a user of `python -m infra.offline --set` sees (issue: a setting must visibly
# take effect, or be refused) ---------------------------------------------------------


def test_a_key_without_its_namespace_is_refused_not_dropped(capsys):
    assert offline.main(["--set", "maxWorkers=10"]) == 1
    out = capsys.readouterr().out
    assert "--set maxWorkers=10: a key needs its namespace (allowed: ray-gcp:maxWorkers" in out
    assert "resources" not in out  # nothing was run


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("ray-gcp:spotWorkers=yes", "not a boolean (allowed: true or false)"),
        ("ray-gcp:spotWorkers=1", "not a boolean (allowed: true or false)"),
        ("ray-gcp:maxWorkers=ten", "not an integer"),
    ],
)
def test_values_pulumi_would_refuse_are_refused(capsys, item, message):
    assert offline.main(["--set", item]) == 1
    assert f"--set {item}: {message}" in capsys.readouterr().out


def test_the_program_itself_refuses_a_non_pulumi_boolean():
    # The same value passed straight to the program (as a stack file could).
    result = harness.run_isolated(offline.engine_config({"ray-gcp:spotWorkers": "yes"}))
    assert result["error"] is not None and result["resources"] == []
    assert "ray-gcp:spotWorkers = 'yes': not a boolean (allowed: true or false)" in (
        result["error"]["message"]
    )


def test_listing_is_sorted_so_two_runs_print_the_same_text():
    result = harness.run_isolated(offline.default_config())
    lines = offline.inventory_lines(result)
    # Siblings in name order at every level, whatever the registration order was.
    by_depth: dict[int, list[str]] = {}
    for line in lines:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        for deeper in [d for d in by_depth if d > depth]:
            del by_depth[deeper]  # a new parent: its children start afresh
        by_depth.setdefault(depth, []).append(line.strip())
        siblings = by_depth[depth]
        assert siblings == sorted(siblings), siblings
    shuffled = {**result, "resources": list(reversed(result["resources"]))}
    assert offline.inventory_lines(shuffled) == lines


def test_set_visibly_changes_the_summary(capsys):
    assert offline.main(["--set", "ray-gcp:spotWorkers=true", "--set", "ray-gcp:maxWorkers=10",
                         "--set", "ray-gcp:workerMachineType=c3-standard-8"]) == 0
    out = capsys.readouterr().out
    assert " * ray-gcp:spotWorkers = true" in out
    assert " * ray-gcp:maxWorkers = 10" in out
    assert "   ray-gcp:minWorkers = 0" in out  # a default, unmarked
    assert "cluster 'ray-gcp': at most 10 workers in all" in out
    assert "  cpu-worker: workers 0-10, c3-standard-8, SPOT, resources {'CPU': 8}" in out
    assert "  head: head 1, n2-standard-4, STANDARD, resources {'CPU': 0}" in out


def test_default_summary_shows_standard_workers(capsys):
    assert offline.main([]) == 0
    out = capsys.readouterr().out
    assert "  cpu-worker: workers 0-6, n2-standard-4, STANDARD, resources {'CPU': 4}" in out


# ---- what the preview shows and refuses (issue 24) ---------------------------------------


def test_a_plain_string_for_a_list_setting_is_refused_before_anything_runs(capsys):
    assert offline.main(["--set", "ray-gcp:fallbackZones=asia-northeast3-b"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("invalid --set (nothing was run):")
    assert "--set ray-gcp:fallbackZones=asia-northeast3-b: not a list" in out
    # The two forms that work, with the user's own value.
    assert """--set 'ray-gcp:fallbackZones=["asia-northeast3-b"]'""" in out
    assert "--set 'ray-gcp:fallbackZones[0]=asia-northeast3-b'" in out


def test_the_zone_order_is_printed_and_follows_fallback_zones(capsys):
    # Read back from the rendered cluster config, so it shows what the nodes will do.
    assert offline.main([]) == 0
    out = capsys.readouterr().out
    assert "   ray-gcp:fallbackZones = (unset: the region's other zones, after zone)" in out
    assert ("zones: asia-northeast3-a, then asia-northeast3-b, asia-northeast3-c when it has "
            "no capacity") in out
    assert offline.main(["--set", "ray-gcp:fallbackZones=[]"]) == 0
    out = capsys.readouterr().out
    assert " * ray-gcp:fallbackZones = []" in out
    assert "zones: asia-northeast3-a only (zone fallback off)" in out
    assert offline.main(["--set", "ray-gcp:fallbackZones[0]=asia-northeast3-c"]) == 0
    out = capsys.readouterr().out
    assert "zones: asia-northeast3-a, then asia-northeast3-c when it has no capacity" in out


def test_gcp_project_given_with_set_is_the_project_of_the_whole_preview(capsys):
    assert offline.main(["--set", "gcp:project=my-proj-42"]) == 0
    out = capsys.readouterr().out
    assert " * gcp:project = my-proj-42" in out
    assert "bucket my-proj-42-ray-gcp-io" in out
    assert offline.TEST_PROJECT not in out
    # Every resource input, invoke and output names the given project, never the mock one.
    for overrides in ({}, {"ray-gcp:platform": "gke"}):
        result = harness.run_isolated(
            offline.default_config({**overrides, "gcp:project": "my-proj-42"}))
        assert result["error"] is None, result["error"]
        seen = json.dumps([result["resources"], result["invokes"], result["outputs"]])
        assert offline.TEST_PROJECT not in seen and "my-proj-42" in seen
        if "clusterConfig" in result["outputs"]:  # the rendered `ray up` config too
            cluster = yaml.safe_load(result["outputs"]["clusterConfig"]["value"])
            assert cluster["provider"]["project_id"] == "my-proj-42"


def test_a_bad_gcp_project_is_refused_by_the_program(capsys):
    assert offline.main(["--set", "gcp:project=My_Project"]) == 1
    assert "gcp:project = 'My_Project': not a GCP project ID" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("items", "listed", "resource"),
    [
        (["ray-gcp:operators[0]=user:alice@example.com",
          "ray-gcp:operators[1]=group:ml-team@example.com"],
         '["user:alice@example.com", "group:ml-team@example.com"]', "user-alice-example-com"),
        (['ray-gcp:operators=["user:alice@example.com"]'], '["user:alice@example.com"]',
         "user-alice-example-com"),
    ],
    ids=["path", "json"],
)
def test_set_takes_the_paths_pulumi_config_set_path_takes(capsys, items, listed, resource):
    argv = [arg for item in items for arg in ("--set", item)]
    assert offline.main(argv) == 0
    out = capsys.readouterr().out
    assert f" * ray-gcp:operators = {listed}" in out
    assert resource in out  # the operator's IAM members exist


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("ray-gcp:operators[1]=user:alice@example.com",
         "index 1 is past the end of the list (0 items): set [0] first"),
        ("ray-gcp:operators.first=user:alice@example.com",
         "ray-gcp:operators is a list: give an index, e.g. --set 'ray-gcp:operators[0]=...'"),
        ("ray-gcp:maxWorkers[0]=3", "ray-gcp:maxWorkers is not a list"),
    ],
)
def test_a_path_that_pulumi_would_refuse_is_refused(capsys, item, message):
    assert offline.main(["--set", item]) == 1
    out = capsys.readouterr().out
    assert f"--set {item}: {message}" in out


@pytest.mark.parametrize("key", ["gcp:region", "gcp:zone", "aws:region"])
def test_a_key_the_program_never_reads_is_refused_not_ignored(capsys, key):
    assert offline.main(["--set", f"{key}=us-central1"]) == 1
    out = capsys.readouterr().out
    assert f"--set {key}=us-central1: not read by this program" in out
    assert "ray-gcp:region" in out  # where regions and zones come from


def test_gke_summary_shows_the_same_resources_as_the_vm_summary(capsys):
    assert offline.main(["--set", "ray-gcp:platform=gke"]) == 0
    gke = capsys.readouterr().out
    assert offline.main([]) == 0
    vm = capsys.readouterr().out
    for line in ("  cpu-worker: workers 0-6, n2-standard-4, STANDARD, resources {'CPU': 4}",
                 "  head: head 1, n2-standard-4, STANDARD, resources {'CPU': 0}"):
        assert line in gke.splitlines() and line in vm.splitlines()
    assert "zone: asia-northeast3-a (GKE: one zonal cluster, no zone fallback)" in gke
