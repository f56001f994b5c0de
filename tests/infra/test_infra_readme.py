"""infra/README.md stays true: its settings table, IAM table and example match the code."""

from __future__ import annotations

import json
import re
import shlex

from test_infra_program import STACK_OUTPUTS

from infra import offline as harness
from infra import preview
from infra.components.identity import CUSTOM, GKE_GRANTS, grants
from infra.components.ray_on_gke import BUCKET_ROLE
from infra.iam import readme_section
from infra.settings import parse_settings

README = (harness.PROJECT_ROOT / "infra" / "README.md").read_text()


def _table_after(heading: str) -> list[list[str]]:
    section = README.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set(cells[0]) <= {"-"} or cells[0] in ("Key", "Who"):
            continue
        rows.append(cells)
    return rows


def test_settings_table_matches_pulumi_yaml():
    declared = harness.pulumi_yaml()["config"]
    rows = _table_after("## Settings")
    assert [r[0].strip("`") for r in rows] == list(declared)
    for key, typ, default, _ in rows:
        decl = declared[key.strip("`")]
        # An object setting is declared untyped (Pulumi project config has no object type).
        assert typ == decl.get("type", "object"), key
        if "default" not in decl:  # computed from other settings (e.g. fallbackZones)
            assert default.startswith("unset:"), key
            continue
        expected = decl["default"]
        shown = default.strip("`")
        assert shown == (str(expected).lower() if isinstance(expected, bool) else
                         "[]" if expected == [] else str(expected)), key


def test_iam_table_matches_the_grants():
    documented = set()
    for who, roles, scope, _ in _table_after("### IAM"):
        for custom, role in re.findall(r"(custom )?`([a-zA-Z.0-9]+)`", roles):
            documented.add((who, (CUSTOM if custom else "roles/") + role, scope))
    scopes = {"project": "project", "bucket": "workload bucket", "head": "head account",
              "worker": "worker account"}
    expected = {(g.who, g.role, scopes[g.scope]) for g in grants(custom_roles=True)}
    expected.add(("provider", "roles/secretmanager.secretAccessor", "each secret"))
    assert documented == expected


def test_gke_iam_table_matches_the_grants():
    documented = set()
    for who, roles, scope, _ in _table_after("### GKE IAM"):
        for role in re.findall(r"`([a-zA-Z.0-9]+)`", roles):
            documented.add((who.split(" (")[0], f"roles/{role}", scope))
    expected = {(g.who, g.role, "project") for g in GKE_GRANTS}
    expected.add(("KSA `ray/ray-workloads`", BUCKET_ROLE, "workload bucket"))
    assert documented == expected


def test_gke_example_commands_are_valid_settings():
    settings = _example_settings("## GKE example")
    assert settings.platform == "gke" and settings.gpu_pool and settings.spot_workers


def _example_settings(heading: str):
    block = README.split(heading, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    raw: dict = {}
    project = None
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("pulumi config set"):
            key, value = shlex.split(line)[3:]
            if key == "gcp:project":
                project = value
                continue
            raw[key.removeprefix("ray-gcp:")] = value
        elif "pulumi stack output" in line:
            name = re.search(r"stack output (\w+)", line).group(1)
            assert name in _gke_outputs(), name
    return parse_settings(raw, project)


def _gke_outputs() -> set[str]:
    from test_gke import GKE_STACK_OUTPUTS

    return GKE_STACK_OUTPUTS


def test_example_commands_are_valid_settings():
    """The example's `pulumi config set [--path]` lines, stored as Pulumi stores them (the
    preview's own reading of `--path`), make valid settings."""
    block = README.split("## Example", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    items = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("pulumi config set"):
            args = [a for a in shlex.split(line)[3:] if a != "--path"]
            items.append((args[0], args[1]))
        elif "pulumi stack output" in line:
            assert re.search(r"stack output (\w+)", line).group(1) in STACK_OUTPUTS
    stored, problems = preview.parse_set_items(items)
    assert problems == [] and preview.check_overrides(stored) == []
    project = stored.pop("gcp:project")
    raw = {k.removeprefix("ray-gcp:"): json.dumps(v) if isinstance(v, list) else v
           for k, v in stored.items()}
    settings = parse_settings(raw, project)
    assert settings.cluster_name == "research" and settings.max_workers == 10
    assert settings.ssh_source_ranges == ("203.0.113.0/24",)


def test_custom_role_table_is_generated_from_the_iam_data():
    """The permission lists and rules shown are what infra/iam computes from calls.yaml."""
    assert readme_section() in README


def test_the_offline_example_prints_what_the_readme_shows():
    """The `python -m infra.offline --set ...` example, run as written (minus `.venv/bin/`)."""
    import subprocess
    import sys

    section = README.split("Before any of that, offline", 1)[1]
    command, after = section.split("```bash", 1)[1].split("```", 1)
    command = command.replace("\\\n", " ").strip()  # continuation lines
    shown = after.split("```\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(command)
    assert argv[:3] == [".venv/bin/python", "-m", "infra.offline"]
    out = subprocess.run(
        [sys.executable, *argv[1:]], cwd=harness.PROJECT_ROOT, capture_output=True, text=True,
        check=True,
    ).stdout
    for line in shown.strip("\n").splitlines():
        if line != "...":
            assert line in out.splitlines(), (line, out)


def _documented_outputs(heading: str) -> set[str]:
    names: set[str] = set()
    for row in _table_after(heading):
        names |= set(re.findall(r"`(\w+)`", row[0]))
    return names


def test_stack_output_tables_list_exactly_the_programs_outputs():
    """Both tables name every `pulumi stack output` the program exports, and nothing else
    (the sets are checked against the program's own exports in test_infra_program/test_gke)."""
    assert _documented_outputs("### Stack outputs") == STACK_OUTPUTS
    assert _documented_outputs("### GKE stack outputs") == _gke_outputs()
