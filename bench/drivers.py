"""Ray-side measurements, run as driver subprocesses: ``python -m bench.drivers NAME``.

Each driver reads its parameters as JSON on stdin, joins the cluster named by
the environment (``RAY_ADDRESS`` + token settings from LocalCluster.driver_env)
and prints one line ``BENCH_RESULT <json>`` on stdout. Progress goes to
stderr. A separate process per measurement keeps the orchestrator free of
Ray state, exactly as a user's driver would run.

Timings start after ``ray.init`` and a warm-up wave of tasks (worker
processes started, modules imported): they measure executing the work on an
up cluster, not connecting to it. Scale-up is the one measurement that
times the cluster itself.
"""

from __future__ import annotations

import json
import sys
import time

RESULT_PREFIX = "BENCH_RESULT "


def _log(msg: str) -> None:
    print(f"  [driver] {msg}", file=sys.stderr, flush=True)


def _connect():
    import logging

    import ray

    ray.init(log_to_driver=False, ignore_reinit_error=True, logging_level=logging.WARNING)
    return ray


def _cluster_cpus(ray) -> int:
    return int(sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]))


def _warm_chunk_task(p: dict, warmup_prefix: str):
    """Connect, and warm one worker per CPU (starts the processes, imports cv2),
    so the timed runs measure the work, not Ray's start-up."""
    from bench import work

    ray = _connect()
    task = ray.remote(work.process_chunk).options(num_cpus=1, max_retries=0)
    items = work.discover(p["src"])
    cpus = _cluster_cpus(ray)
    ray.get([task.remote(items[:1], p["src"], f"{p['out_root']}/{warmup_prefix}-{i}",
                         p["max_side"]) for i in range(max(cpus, 1))])
    return ray, task, items, cpus


# ------------------------------------------------------------- annotate ------


def annotate(p: dict) -> dict:
    """p: src, out_root, max_side, batch, reps. Batched tasks of bench.work.process_chunk."""
    from bench import work

    ray, task, items, cpus = _warm_chunk_task(p, "ray-warmup")
    times, outcomes, dst = [], None, None
    for rep in range(p["reps"]):
        dst = f"{p['out_root']}/ray-{rep}"
        t0 = time.perf_counter()
        refs = [task.remote(c, p["src"], dst, p["max_side"]) for c in work.chunks(items, p["batch"])]
        outcomes = [o for part in ray.get(refs) for o in part]
        times.append(time.perf_counter() - t0)
        _log(f"ray run {rep + 1}/{p['reps']}: {times[-1]:.2f} s ({len(refs)} tasks of {p['batch']})")
    rows = work.canonical_rows(outcomes)
    return {"seconds": times, "cluster_cpus": cpus, "tasks": len(refs),
            "rows_digest": work.digest_rows(rows), "outputs_digest": work.digest_outputs(dst),
            "ok": sum(1 for o in outcomes if o["ok"]), "items": len(outcomes)}


# ----------------------------------------------------------- granularity -----


def granularity(p: dict) -> dict:
    """p: src, out_root, max_side, batch, reps. One task per file vs tasks of `batch` files."""
    from bench import work

    ray, task, items, cpus = _warm_chunk_task(p, "warmup")
    variants = {"per_file": 1, "batched": p["batch"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    digests: dict[str, str] = {}
    for rep in range(p["reps"]):
        # Alternate the order so drift in machine load hits both variants alike.
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            dst = f"{p['out_root']}/{name}-{rep}"
            t0 = time.perf_counter()
            refs = [task.remote(c, p["src"], dst, p["max_side"])
                    for c in work.chunks(items, variants[name])]
            outcomes = [o for part in ray.get(refs) for o in part]
            times[name].append(time.perf_counter() - t0)
            digests[name] = work.digest_rows(work.canonical_rows(outcomes))
            _log(f"{name} run {rep + 1}/{p['reps']}: {times[name][-1]:.2f} s ({len(refs)} tasks)")
    return {"seconds": times, "tasks": {k: -(-len(items) // v) for k, v in variants.items()},
            "items": len(items), "cluster_cpus": cpus, "rows_digest": digests}


# ----------------------------------------------------------- tree_reduce -----


def tree_reduce(p: dict) -> dict:
    """p: size, chunks, bins, reps, seed. Reuses workloads.tree_reduce's functions."""
    import numpy as np

    from workloads import tree_reduce as tr

    ray = _connect()
    map_task = ray.remote(tr.map_chunk).options(num_cpus=1)
    combine_task = ray.remote(tr.combine).options(num_cpus=1)
    array = np.random.default_rng(p["seed"]).standard_normal(p["size"])
    expected = tr.stats_of(array, p["bins"])
    array_ref = ray.put(array)
    bounds = tr.chunk_bounds(p["size"], p["chunks"])
    t0 = time.perf_counter()
    partials = [map_task.remote(array_ref, a, b, p["bins"]) for a, b in bounds]
    ray.wait(partials, num_returns=len(partials))
    map_seconds = time.perf_counter() - t0
    # Warm-up of the combine path (both shapes) so the first timed run pays no start-up.
    ray.get(tr.tree_reduce(partials[:4], combine_task)[0])
    ray.get(tr.chain_reduce(partials[:4], combine_task)[0])
    reducers = {"chain": tr.chain_reduce, "tree": tr.tree_reduce}
    times: dict[str, list[float]] = {k: [] for k in reducers}
    depth, problems = {}, []
    for rep in range(p["reps"]):
        order = list(reducers) if rep % 2 == 0 else list(reversed(reducers))
        for name in order:
            t = time.perf_counter()
            ref, depth[name] = reducers[name](partials, combine_task)
            result = ray.get(ref)
            times[name].append(time.perf_counter() - t)
            problems += tr.disagreements(result, expected, f"{name} vs numpy")
        _log(f"run {rep + 1}/{p['reps']}: chain {times['chain'][-1]:.3f} s, "
             f"tree {times['tree'][-1]:.3f} s")
    return {"seconds": times, "depth": depth, "map_seconds": map_seconds,
            "chunks": len(bounds), "problems": sorted(set(problems)),
            "cluster_cpus": _cluster_cpus(ray)}


# --------------------------------------------------------------- scaleup -----


def scaleup(p: dict) -> dict:
    """p: workers, timeout. Submit `workers` one-CPU tasks on an empty cluster; time joins.

    The tasks only hold their CPU (sleep) so the demand persists; the driver
    exits (and Ray cancels them) once every worker is alive or on timeout.
    Prints SUBMITTED <epoch> on stdout first so the orchestrator can align its
    own polling of the autoscaler's pending launches.
    """
    ray = _connect()

    @ray.remote(num_cpus=1, max_retries=0)
    def hold(seconds: float) -> None:
        time.sleep(seconds)

    def alive_workers() -> int:
        return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)

    if alive_workers():
        raise RuntimeError("scale-up must start from an empty cluster; workers are already alive")
    t_epoch = time.time()
    t0 = time.monotonic()
    refs = [hold.remote(p["timeout"]) for _ in range(p["workers"])]  # noqa: F841 - keep alive
    print(f"SUBMITTED {t_epoch:.3f}", flush=True)
    timeline = [(0.0, 0)]
    while time.monotonic() - t0 < p["timeout"]:
        n = alive_workers()
        if n != timeline[-1][1]:
            timeline.append((round(time.monotonic() - t0, 3), n))
            _log(f"{timeline[-1][0]:6.1f} s: {n} workers alive")
        if n >= p["workers"]:
            break
        time.sleep(0.2)
    reached = timeline[-1][1] >= p["workers"]
    return {"submitted_epoch": t_epoch, "timeline": timeline, "reached": reached,
            "seconds_to_all": timeline[-1][0] if reached else None}


# -------------------------------------------------------------- chatty -------


def chatty(p: dict) -> dict:
    """p: tasks, lines, reps. Tasks that print `lines` lines of 100 bytes each, as fast
    as they can: the log shipper's worst case (logship comparison)."""
    ray = _connect()

    @ray.remote(num_cpus=1, max_retries=0)
    def talk(lines: int) -> int:
        line = "z" * 90
        for i in range(lines):
            print(f"{i:08d} {line}")
        return lines

    cpus = _cluster_cpus(ray)
    ray.get([talk.remote(1) for _ in range(max(cpus, 1))])  # warm one worker per CPU
    times = []
    for rep in range(p["reps"]):
        t0 = time.perf_counter()
        done = ray.get([talk.remote(p["lines"]) for _ in range(p["tasks"])])
        times.append(time.perf_counter() - t0)
        assert sum(done) == p["tasks"] * p["lines"]
        _log(f"chatty run {rep + 1}/{p['reps']}: {times[-1]:.2f} s")
    return {"seconds": times, "cluster_cpus": cpus}


DRIVERS = {f.__name__: f for f in (annotate, granularity, tree_reduce, scaleup, chatty)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in DRIVERS:
        print(f"usage: python -m bench.drivers {{{','.join(DRIVERS)}}} < params.json",
              file=sys.stderr)
        return 2
    params = json.loads(sys.stdin.read() or "{}")
    result = DRIVERS[argv[0]](params)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    # Run under the package name so Ray pickles bench.* functions by reference.
    from bench import drivers as _drivers  # noqa: PLW0406

    sys.exit(_drivers.main())
