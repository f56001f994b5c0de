"""annotate: one process vs multiprocessing.Pool vs Ray tasks, same files, same function."""

from __future__ import annotations

import multiprocessing
import time

from bench import work
from bench.clusters import driver_env, run_driver
from workloads import labelme_sample

NAME = "annotate"
TITLE = "Image annotate: sequential vs multiprocessing.Pool vs Ray"
COMMAND = "python -m bench --only annotate"


def _sample(ctx, p) -> str:
    src = str(ctx.workdir / NAME / "sample")
    t0 = time.monotonic()
    labelme_sample.make_sample(src, p["count"], seed=0, min_side=p["min_side"], max_side=p["max_side_sample"])
    ctx.log(f"sample of {p['count']} images in {time.monotonic() - t0:.1f} s")
    return src


def local(ctx, p) -> dict:
    src = _sample(ctx, p)
    items = work.discover(src)
    seq, pool = [], []
    digests = {}
    for rep in range(p["reps"]):
        dst = str(ctx.workdir / NAME / f"seq-{rep}")
        t0 = time.perf_counter()
        outcomes = work.process_chunk(items, src, dst, p["max_side"])
        seq.append(time.perf_counter() - t0)
        digests["sequential"] = (work.digest_rows(work.canonical_rows(outcomes)),
                                 work.digest_outputs(dst))
        ctx.log(f"sequential run {rep + 1}/{p['reps']}: {seq[-1]:.2f} s")

        dst = str(ctx.workdir / NAME / f"pool-{rep}")
        t0 = time.perf_counter()  # pool start-up is part of its cost
        with multiprocessing.get_context("fork").Pool(ctx.cores) as mp:
            parts = mp.starmap(work.process_chunk,
                               [(c, src, dst, p["max_side"]) for c in work.chunks(items, p["batch"])])
        pool.append(time.perf_counter() - t0)
        outcomes = [o for part in parts for o in part]
        digests["pool"] = (work.digest_rows(work.canonical_rows(outcomes)), work.digest_outputs(dst))
        ctx.log(f"Pool({ctx.cores}) run {rep + 1}/{p['reps']}: {pool[-1]:.2f} s")
    ok = sum(1 for o in outcomes if o["ok"])
    return {"src": src, "items": len(items), "ok_items": ok, "cores": ctx.cores,
            "sample_sides": [p["min_side"], p["max_side_sample"]], "max_side": p["max_side"],
            "seconds": {"sequential": seq, "pool": pool}, "digests": digests}


def on_cluster(ctx, p, lc, data) -> dict:
    res = run_driver(NAME, {"src": data["src"], "out_root": str(ctx.workdir / NAME),
                            "max_side": p["max_side"], "batch": p["batch"], "reps": p["reps"]},
                     driver_env(lc), timeout=p["timeout"])
    data["seconds"]["ray"] = res["seconds"]
    data["digests"]["ray"] = (res["rows_digest"], res["outputs_digest"])
    data["ray_cluster_cpus"] = res["cluster_cpus"]
    data["ray_tasks"] = res["tasks"]
    return data


def checks(data) -> dict:
    d = data["digests"]
    agree = len({tuple(v) for v in d.values()}) == 1 and set(d) == {"sequential", "pool", "ray"}
    return {"outputs_agree": agree,
            "detail": "result rows and output bytes identical across sequential, Pool and Ray"
            if agree else f"digests differ: {d}"}
