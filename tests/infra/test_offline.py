"""`python -m infra.offline`: the resource listing `make demo` prints."""

import pytest

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
