"""`python -m bench`: run the comparisons, save raw JSON, write BENCHMARKS.md and the plot.

Order: node setup (network only), then every baseline that needs no Ray
(sequential, Pool, sequential Flask) with no cluster up, then one shared work
cluster for the Ray sides, then scale-up with its own clusters. Each
comparison's result is saved the moment it is complete, so an interrupted
run keeps what it finished and ``--only NAME`` re-measures just NAME (the
report is rebuilt from the saved results of all comparisons).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import config, machine, report
from bench.clusters import REPO, local_cluster, work_spec
from bench.comparisons import ALL

ORDER = ["node_setup", "annotate", "granularity", "serve", "tree_reduce", "scaleup", "e2e"]
RESULTS_DIR = REPO / "bench" / "results"
JSON_NAME = "benchmarks.json"
PNG_NAME = "benchmarks.png"
SCHEMA = 1


@dataclass
class Context:
    workdir: Path
    cores: int
    log: Callable[[str], None]


def _logger(name: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} {name}] {msg}", file=sys.stderr, flush=True)
    return log


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(ORDER)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL]
    if bad:
        raise SystemExit(f"bench: error: --only {', '.join(bad)}: unknown comparison; "
                         f"allowed: {', '.join(ORDER)}")
    return [n for n in ORDER if n in names]


def load_doc(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        if doc.get("schema") == SCHEMA:
            return doc
    except (FileNotFoundError, ValueError):
        pass
    return {"schema": SCHEMA, "machine": {}, "comparisons": {}}


def save_doc(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


class Run:
    def __init__(self, selected, sizes, results_dir: Path, md_path: Path, quick: bool):
        self.selected, self.sizes, self.quick = selected, sizes, quick
        self.json_path = results_dir / JSON_NAME
        self.png_path = results_dir / PNG_NAME
        self.md_path = md_path
        self.doc = load_doc(self.json_path)
        self.doc["machine"] = machine.describe()
        self.doc["quick"] = quick
        self.log = _logger("bench")
        self.failed: list[str] = []
        self.state: dict[str, dict] = {}

    def _begin(self, name):
        st = self.state.setdefault(name, {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "load_at_start": machine.load_average(),
                                          "wall_seconds": 0.0, "data": {}})
        return st

    def _phase(self, name, fn, phase: str = "run") -> bool:
        st = self._begin(name)
        st.setdefault("phase_loads", {})[phase] = machine.load_average()
        t0 = time.monotonic()
        try:
            st["data"] = fn(st["data"]) or {}
            return True
        except Exception as e:  # noqa: BLE001 - record, go on with the other comparisons
            self._fail(name, e)
            return False
        finally:
            st["wall_seconds"] += time.monotonic() - t0

    def _fail(self, name, e: BaseException):
        _logger(name)(f"FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        st = self._begin(name)
        st["error"] = f"{type(e).__name__}: {e}"
        self.failed.append(name)
        self._record(name)

    def _record(self, name):
        mod, st = ALL[name], self.state[name]
        entry = {"title": mod.TITLE, "command": mod.COMMAND, "started": st["started"],
                 "load_at_start": st["load_at_start"], "wall_seconds": round(st["wall_seconds"], 1),
                 "phase_loads": st.get("phase_loads", {}),
                 "params": self.sizes[name], "quick": self.quick}
        if "error" in st:
            entry["error"] = st["error"]
        else:
            entry["data"] = st["data"]
            entry["checks"] = mod.checks(st["data"])
            if not entry["checks"]["outputs_agree"]:
                self.failed.append(name)
        self.doc["comparisons"][name] = entry
        save_doc(self.doc, self.json_path)
        self.write_reports()
        _logger(name)(f"done in {entry['wall_seconds']:.0f} s; saved {self.json_path}")

    def write_reports(self):
        self.md_path.write_text(report.render(self.doc, png=self._png_rel()))
        try:
            from bench import plot

            plot.render(self.doc, self.png_path)
        except Exception as e:  # noqa: BLE001 - the tables matter more than the picture
            self.log(f"plot failed: {type(e).__name__}: {e}")

    def _png_rel(self) -> str:
        try:
            return os.path.relpath(self.png_path, self.md_path.parent)
        except ValueError:
            return str(self.png_path)

    def execute(self, workdir: Path) -> int:
        cores = machine.usable_cores()
        t_start = time.monotonic()
        self.log(f"comparisons: {', '.join(self.selected)}; usable cores {cores}; "
                 f"load {machine.load_average()}; work dir {workdir}")

        def ctx(name):
            d = workdir / name
            d.mkdir(parents=True, exist_ok=True)
            return Context(workdir=workdir, cores=cores, log=_logger(name))

        on_cluster = []
        for name in self.selected:
            mod, p = ALL[name], self.sizes[name]
            if name == "scaleup":
                continue
            if hasattr(mod, "standalone"):
                if self._phase(name, lambda d, m=mod, p=p, n=name: m.standalone(ctx(n), p)):
                    self._record(name)
            elif hasattr(mod, "local"):
                if self._phase(name, lambda d, m=mod, p=p, n=name: m.local(ctx(n), p),
                               "without Ray"):
                    on_cluster.append(name)
            else:
                on_cluster.append(name)
        if on_cluster:
            finished: set[str] = set()
            try:
                with local_cluster(work_spec(cores), workers=1, log=_logger("cluster")) as lc:
                    for name in on_cluster:
                        mod, p = ALL[name], self.sizes[name]
                        if self._phase(name, lambda d, m=mod, p=p, n=name:
                                       m.on_cluster(ctx(n), p, lc, d), "on the Ray cluster"):
                            self._record(name)
                        finished.add(name)
            except Exception as e:  # noqa: BLE001 - the cluster itself failed
                for name in on_cluster:
                    if name not in finished:
                        self._fail(name, e)
        scaleup = ALL["scaleup"]
        if "scaleup" in self.selected and self._phase(
            "scaleup", lambda d: scaleup.standalone(ctx("scaleup"), self.sizes["scaleup"])
        ):
            self._record("scaleup")
        self.doc["last_run_seconds"] = round(time.monotonic() - t_start, 1)
        save_doc(self.doc, self.json_path)
        self.write_reports()
        self.log(f"finished in {self.doc['last_run_seconds']:.0f} s; wrote {self.md_path}, "
                 f"{self.png_path}, {self.json_path}")
        if self.failed:
            self.log(f"FAILED or disagreeing: {', '.join(sorted(set(self.failed)))}")
            return 1
        return 0


def wait_for_load(threshold: float, max_wait: float, log, poll: float = 15.0) -> float:
    """Block until the 1-minute load is <= threshold or max_wait passed; returns the load."""
    deadline = time.monotonic() + max_wait
    while True:
        load = machine.load_average()[0]
        if load <= threshold or time.monotonic() >= deadline:
            log(f"1-minute load {load} (threshold {threshold}); starting")
            return load
        log(f"1-minute load {load} > {threshold}; waiting "
            f"({deadline - time.monotonic():.0f} s left)")
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.1)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure ray-gcp's comparisons on the local fake-node Ray cluster and write "
                    "BENCHMARKS.md, bench/results/benchmarks.png and bench/results/benchmarks.json.",
    )
    p.add_argument("--only", action="append", metavar="NAME[,NAME]",
                   help=f"run only these comparisons (from: {', '.join(ORDER)}); the report keeps "
                        "the saved results of the others")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke run; writes to a temp dir unless --results-dir/--md")
    p.add_argument("--results-dir", type=Path, help=f"where the JSON and PNG go (default {RESULTS_DIR})")
    p.add_argument("--md", type=Path, help="the Markdown report (default BENCHMARKS.md)")
    p.add_argument("--wait-for-load", type=float, metavar="LOAD",
                   help="before measuring, wait until the 1-minute load average is at most LOAD "
                        "(at most --max-wait seconds; the load measured at is recorded either way)")
    p.add_argument("--max-wait", type=float, default=600, help="seconds (default 600)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing; rebuild the report and plot from the saved JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selected = parse_only(args.only)
    if args.quick and not (args.results_dir and args.md):
        out = Path(tempfile.mkdtemp(prefix="rgb-bench-quick-", dir="/tmp"))
        results_dir = args.results_dir or out
        md = args.md or out / "BENCHMARKS.md"
    else:
        results_dir = args.results_dir or RESULTS_DIR
        md = args.md or REPO / "BENCHMARKS.md"
    run = Run(selected, config.sizes(args.quick), results_dir, md, args.quick)
    if args.render_only:
        if not run.json_path.exists():
            raise SystemExit(f"bench: error: no saved results at {run.json_path}")
        run.doc = load_doc(run.json_path)
        run.write_reports()
        print(f"wrote {md} and {run.png_path}")
        return 0
    if args.wait_for_load is not None:
        wait_for_load(args.wait_for_load, args.max_wait, run.log)
        run.doc["machine"] = machine.describe()
    workdir = Path(tempfile.mkdtemp(prefix="rgb-work-", dir="/tmp"))
    try:
        return run.execute(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
