"""Command line: ``python -m cluster local up|down|status`` and ``python -m cluster render``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STATE_DIR = Path(".ray-local")


def _local(args: argparse.Namespace) -> int:
    from cluster.local import LocalCluster

    lc = LocalCluster(args.state_dir)
    if args.action == "up":
        print(f"starting local Ray cluster (state in {lc.state_dir}) ...", flush=True)
        lc.up()
        print(f"up: GCS {lc.address}, dashboard {lc.dashboard_url}")
        print("driver environment:")
        for k, v in sorted(lc.driver_env().items()):
            print(f"  export {k}={v}")
    elif args.action == "down":
        pids = lc.down()
        print(f"down: stopped {len(pids)} processes started from {lc.state_dir}")
    else:
        if not lc.is_up():
            print(f"no local cluster running from {lc.state_dir}")
            return 1
        print(f"GCS {lc.address}, dashboard {lc.dashboard_url}")
        print(lc.status().summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="a local autoscaling Ray cluster with fake nodes")
    local.add_argument("action", choices=["up", "down", "status"])
    local.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where pids, ports, token and config live (default: .ray-local/)",
    )
    args = parser.parse_args(argv)
    if args.command == "local":
        return _local(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
