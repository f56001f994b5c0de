"""Every driver command line in workloads/README.md parses with that script's own parser."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from workloads import annotate, cluster_info, serve, serve_app, tree_reduce

from .conftest import WORKLOADS

PARSERS = {
    "annotate.py": annotate.build_parser,
    "serve.py": serve.build_parser,
    "serve_app.py": serve_app.build_parser,
    "tree_reduce.py": tree_reduce.build_parser,
    "cluster_info.py": cluster_info.build_parser,
}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(script, args) for each script invocation in the README's bash blocks."""
    with open(os.path.join(WORKLOADS, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip().strip("'")
            for script in PARSERS:
                m = re.search(rf"(?:^|[\s/]){re.escape(script)}(?:\s+--)?(\s.*)?$", line)
                if m and not line.startswith("#"):
                    args = shlex.split((m.group(1) or "").replace("<job id>", "x"))
                    commands.append((script, args))
    return commands


COMMANDS = readme_commands()


def test_the_readme_documents_every_script():
    assert {script for script, _ in COMMANDS} == set(PARSERS)
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize(
    ("script", "args"), COMMANDS, ids=[f"{s} {' '.join(a)}"[:80] for s, a in COMMANDS]
)
def test_readme_command_parses(script, args):
    PARSERS[script]().parse_args(args)  # argparse exits 2 on anything unknown


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_script_runs_as_a_file_with_help(script, tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(WORKLOADS, script), "--help"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout
    assert out.startswith(f"usage: {script}") and "--address" in out
