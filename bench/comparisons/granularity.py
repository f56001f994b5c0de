"""Task granularity: one Ray task per small file vs batched tasks."""

from __future__ import annotations

import time

from bench import work
from bench.clusters import driver_env, run_driver
from workloads import labelme_sample

NAME = "granularity"
TITLE = "Task granularity: one Ray task per small file vs batched tasks"
COMMAND = "python -m bench --only granularity"


def local(ctx, p) -> dict:
    src = str(ctx.workdir / NAME / "sample")
    labelme_sample.make_sample(src, p["count"], seed=1, min_side=p["min_side"], max_side=p["max_side_sample"])
    items = work.discover(src)
    dst = str(ctx.workdir / NAME / "seq")
    t0 = time.perf_counter()
    outcomes = work.process_chunk(items, src, dst, p["max_side"])
    seq = time.perf_counter() - t0
    ctx.log(f"{len(items)} small files, sequential reference: {seq:.2f} s")
    return {"src": src, "items": len(items), "sequential_seconds": seq,
            "rows_digest": {"sequential": work.digest_rows(work.canonical_rows(outcomes))}}


def on_cluster(ctx, p, lc, data) -> dict:
    res = run_driver(NAME, {"src": data["src"], "out_root": str(ctx.workdir / NAME),
                            "max_side": p["max_side"], "batch": p["batch"], "reps": p["reps"]},
                     driver_env(lc), timeout=p["timeout"])
    data["seconds"] = res["seconds"]
    data["tasks"] = res["tasks"]
    data["batch"] = p["batch"]
    data["cluster_cpus"] = res["cluster_cpus"]
    data["rows_digest"].update(res["rows_digest"])
    return data


def checks(data) -> dict:
    d = data["rows_digest"]
    agree = len(set(d.values())) == 1 and len(d) == 3
    return {"outputs_agree": agree,
            "detail": "per-file, batched and sequential result rows identical"
            if agree else f"digests differ: {d}"}
