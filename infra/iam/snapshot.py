"""Refresh infra/iam/data/ from a copy of iann0036/iam-dataset (MIT).

Keeps only what this project uses: the map entries of the REST methods in
calls.yaml (plus any already in the snapshot and any --method), and the
predefined roles already in data/roles/ (plus any --role). Usage::

    git clone https://github.com/iann0036/iam-dataset /tmp/iam-dataset
    .venv/bin/python -m infra.iam.snapshot /tmp/iam-dataset [--role roles/x.y] [--method a.b.c]

or, from a bare mirror: ``--git-dir /path/to/repo.git --commit <sha>``.
Then review ``git diff infra/iam/data`` and run tests/infra/iam.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from infra.iam import AGENT_CALLS, DATA_DIR, RULES, load_calls

SOURCE_URL = "https://github.com/iann0036/iam-dataset"


class Source:
    def __init__(self, checkout: Path | None, git_dir: Path | None, commit: str | None):
        self.checkout, self.git_dir = checkout, git_dir
        git = ["git", "--git-dir", str(git_dir)] if git_dir else ["git", "-C", str(checkout)]
        self._git = git
        self.commit = subprocess.run(
            [*git, "rev-parse", commit or "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()

    def read(self, path: str) -> str:
        if self.git_dir:
            return subprocess.run(
                [*self._git, "show", f"{self.commit}:{path}"],
                check=True, capture_output=True, text=True,
            ).stdout
        return (self.checkout / path).read_text()

    def date(self) -> str:
        return subprocess.run(
            [*self._git, "show", "-s", "--format=%cs", self.commit],
            check=True, capture_output=True, text=True,
        ).stdout.strip()


def refresh(src: Source, extra_roles: list[str], extra_methods: list[str]) -> None:
    full = json.loads(src.read("gcp/map.json"))["api"]
    by_method = {m: e for api in full.values() for m, e in api.get("methods", {}).items()}
    old = json.loads((DATA_DIR / "map.json").read_text())["methods"] if (
        DATA_DIR / "map.json").is_file() else {}
    wanted = set(old) | set(extra_methods)
    for calls in [*load_calls().values(), *AGENT_CALLS.values()]:
        wanted |= {c.method for c in calls}
    # A method the map lacks is fine when RULES give its permissions (infra/iam RULES).
    wanted -= {m for m in wanted if m not in by_method and any(
        r.method == m and r.grant for r in RULES)}
    missing = sorted(m for m in wanted if m not in by_method)
    if missing:
        sys.exit(f"not in {SOURCE_URL} gcp/map.json at {src.commit}: {', '.join(missing)}")
    doc = {
        "source": f"{SOURCE_URL}/blob/{src.commit}/gcp/map.json",
        "methods": {m: by_method[m] for m in sorted(wanted)},
    }
    (DATA_DIR / "map.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    roles_dir = DATA_DIR / "roles"
    roles_dir.mkdir(parents=True, exist_ok=True)
    roles = {p.stem for p in roles_dir.glob("*.json")} | {
        r.removeprefix("roles/") for r in extra_roles
    }
    for role in sorted(roles):
        data = json.loads(src.read(f"gcp/roles/{role}.json"))
        kept = {k: data[k] for k in ("name", "title", "stage", "includedPermissions") if k in data}
        (roles_dir / f"{role}.json").write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")

    (DATA_DIR / "LICENSE").write_text(src.read("LICENSE"))
    (DATA_DIR / "SOURCE.md").write_text(
        "# IAM data snapshot\n\n"
        f"A subset of [{SOURCE_URL}]({SOURCE_URL}) (MIT License, copyright Ian Mckay; "
        "the full notice is in `LICENSE` here), taken at commit\n"
        f"`{src.commit}` ({src.date()}).\n\n"
        "- `map.json`: the entries of `gcp/map.json` for the REST methods this project calls "
        "(REST method -> permissions GCP checks).\n"
        "- `roles/*.json`: `gcp/roles/<role>.json` of the predefined roles this project grants "
        "(name, title, stage, includedPermissions).\n\n"
        "Written by `python -m infra.iam.snapshot`; refresh as described in infra/README.md "
        "(\"IAM data\"). Do not edit by hand.\n"
    )
    print(f"infra/iam/data: {len(wanted)} methods, {len(roles)} roles from {src.commit}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", nargs="?", type=Path, help="a clone of iam-dataset")
    parser.add_argument("--git-dir", type=Path, help="a bare clone instead of a checkout")
    parser.add_argument("--commit", help="commit to read (default HEAD)")
    parser.add_argument("--role", action="append", default=[], help="add a predefined role")
    parser.add_argument("--method", action="append", default=[], help="add a REST method id")
    args = parser.parse_args(argv)
    if not args.checkout and not args.git_dir:
        parser.error("give a checkout path or --git-dir")
    refresh(Source(args.checkout, args.git_dir, args.commit), args.role, args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
