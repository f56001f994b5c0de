"""`python -m infra.offline`: the resource listing `make demo` prints."""

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
    import pytest

    with pytest.raises(SystemExit):
        offline.main(["--set", "no-equals-sign"])
    assert "KEY=VALUE" in capsys.readouterr().err
