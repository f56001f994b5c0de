"""cluster/README.md's examples run as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from cluster.render import example_gcp_facts

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "cluster/README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL)


def test_python_examples_run():
    runnable = [b for b in blocks("python") if "LocalCluster(" not in b]
    assert len(runnable) == 4
    for code in runnable:
        exec(compile(code, "cluster/README.md", "exec"), {})  # noqa: S102 - our own docs


def test_cli_examples_run(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps(example_gcp_facts().model_dump()))
    (tmp_path / "spec.yaml").write_text("cluster_name: from-readme\n")
    lines = [
        line.split("#", 1)[0].strip()
        for block in blocks("bash")
        for line in block.splitlines()
        if line.startswith("python -m cluster ")
    ]
    ran = logs_lines = 0
    for line in lines:
        args = shlex.split(line)[3:]
        if args[0] == "requirements" and "--check" not in args:
            continue  # would rewrite the committed file
        if args[0] == "logs":
            # They read a real bucket (tests/cluster/test_logs_reader.py runs the
            # commands against the emulator): here, each must parse as written.
            from cluster.__main__ import build_parser

            build_parser().parse_args(args)
            logs_lines += 1
            continue
        args = [str(tmp_path / a) if a in ("facts.json", "spec.yaml") else a for a in args]
        out = subprocess.run(
            [sys.executable, "-m", "cluster", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, f"{line}\n{out.stderr}"
        if args[0] == "render":
            docs = list(yaml.safe_load_all(out.stdout))
            assert docs and all(isinstance(d, dict) for d in docs)
        ran += 1
    assert ran == 8 and logs_lines == 5
