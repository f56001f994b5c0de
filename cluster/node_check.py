"""Refuse to start Ray on a node whose Ray or Python differs from the lock.

Runs on every Ray node (with the node venv's Python) as the first start
command, so a node that somehow got another Ray or Python (#44063: mixed
versions fail in obscure ways) stops with one clear line instead of joining::

    ~/ray-venv/bin/python -m cluster.node_check --ray 2.60.0 --python 3.11 [--head]

Exit 0 and one "ok" line, or exit 1 and one line per problem on stderr.
Standard library only: it must work even when the venv is broken.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

from cluster import layout


def problems(expected_ray: str, expected_python: str, *, head: bool = False) -> list[str]:
    """What is wrong with this interpreter for running Ray; empty when all is well."""
    out = []
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python != expected_python:
        out.append(
            f"Python {python} at {sys.executable}, but the cluster is pinned to Python "
            f"{expected_python}: use an image with Python {expected_python} "
            "(the node venv is built from the image's python3)"
        )
    try:
        ray = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        out.append(
            f"Ray is not installed in {sys.prefix}: the node setup (uv pip sync of "
            "cluster/requirements-node.txt) did not complete; rerun `ray up`"
        )
    else:
        if ray != expected_ray:
            out.append(
                f"Ray {ray} in {sys.prefix}, but the cluster is pinned to Ray {expected_ray}: "
                "rerun `ray up` so the node setup syncs cluster/requirements-node.txt"
            )
    if head:
        # The head's autoscaler loads our provider class; fail here, not in its log.
        try:
            importlib.import_module("cluster.gcp_provider")
        except Exception as e:  # noqa: BLE001 - any import failure is the message
            out.append(
                f"cannot import cluster.gcp_provider ({type(e).__name__}: {e}): the "
                "autoscaler could not load its node provider; check that the bundle is "
                f"at {layout.NODE_SRC} and on the venv's sys.path"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.node_check", description=__doc__)
    parser.add_argument("--ray", default=layout.RAY_VERSION, help="expected Ray version")
    parser.add_argument("--python", default=layout.PYTHON_MINOR, help="expected Python minor")
    parser.add_argument("--head", action="store_true", help="also check the provider import")
    args = parser.parse_args(argv)
    found = problems(args.ray, args.python, head=args.head)
    if found:
        for p in found:
            print(f"ray-gcp node check FAILED: {p}", file=sys.stderr)
        print("ray-gcp node check: refusing to start Ray on this node", file=sys.stderr)
        return 1
    print(f"ray-gcp node check ok: ray {args.ray}, python {args.python}, {sys.executable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
