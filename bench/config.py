"""Sizes of every comparison: FULL for `make bench` (~20 min on 2 cores), QUICK for smoke runs."""

from __future__ import annotations

import copy

FULL = {
    # Photo-like sizes (640-1280 px) so decoding/resizing, not the per-file fsync, dominates.
    "annotate": {"count": 200, "min_side": 640, "max_side_sample": 1280, "max_side": 512,
                 "batch": 8, "reps": 5, "timeout": 600},
    "granularity": {"count": 400, "min_side": 32, "max_side_sample": 64, "max_side": 1024,
                    "batch": 32, "reps": 5, "timeout": 600},
    "scaleup": {"workers": 8, "timeout": 240},
    "node_setup": {"timeout": 240},
    # Every request size from one row to 8192 (16 connections from wrk), three servers
    # (bench/comparisons/serve.py), the model's own limit over a grid of batch sizes on
    # 1 and 2 cores, and a py-spy profile of serve.py at 64 rows.
    "serve": {"rows": [1, 64, 512, 2048, 8192], "features": 8, "concurrency": 16,
              "duration": 10.0, "warmup_seconds": 3.0, "timeout": 240,
              "servers": ["sequential", "batching", "ray_serve"],
              # Ray Serve as Ray's documentation tunes it for throughput (workloads/README.md)
              "ray_serve_args": ["--throughput-optimized"],
              "limit_batches": [1, 16, 64, 256, 512, 1024, 2048, 4096, 8192, 10000],
              "limit_seconds": 1.5, "profile_rows": 64, "profile_seconds": 8.0},
    "tree_reduce": {"size": 8_000_000, "chunks": 64, "bins": 64, "reps": 7, "seed": 0,
                    "timeout": 600},
    # One `ray up` .. `ray down` of the end-to-end harness (tests/e2e): 2 Spot workers.
    "e2e": {"timeout": 1200},
}

QUICK = {
    "annotate": {**FULL["annotate"], "count": 16, "reps": 1, "batch": 4, "min_side": 160,
                 "max_side_sample": 640, "max_side": 256},
    "granularity": {**FULL["granularity"], "count": 16, "reps": 1, "batch": 8},
    "scaleup": {"workers": 2, "timeout": 180},
    "node_setup": {"timeout": 120, "spec": "six==1.17.0"},
    "serve": {**FULL["serve"], "rows": [8], "concurrency": 2, "duration": 2.0,
              "warmup_seconds": 1.0, "limit_batches": [1, 64], "limit_seconds": 0.3,
              "profile_seconds": 2.0},
    "tree_reduce": {**FULL["tree_reduce"], "size": 100_000, "chunks": 8, "reps": 1},
    "e2e": {"timeout": 1200},  # no smaller version: it boots the same machines
}


def sizes(quick: bool) -> dict:
    return copy.deepcopy(QUICK if quick else FULL)
