"""tree_reduce: chain vs tree aggregation of map partials (workloads/tree_reduce.py)."""

from __future__ import annotations

from bench.clusters import driver_env, run_driver

NAME = "tree_reduce"
TITLE = "Aggregation: sequential chain vs tree (workloads/tree_reduce.py)"
COMMAND = "python -m bench --only tree_reduce"


def on_cluster(ctx, p, lc, data) -> dict:
    res = run_driver(NAME, {k: p[k] for k in ("size", "chunks", "bins", "reps", "seed")},
                     driver_env(lc), timeout=p["timeout"])
    return {**data, **res, "size": p["size"]}


def checks(data) -> dict:
    ok = not data["problems"]
    return {"outputs_agree": ok,
            "detail": "chain = tree = NumPy on the whole array (counts, min, max, histogram "
                      "exact; sums to 1e-9)" if ok else "; ".join(data["problems"][:5])}
