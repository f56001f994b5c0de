"""Map a large shared array, then aggregate as a tree and as a sequential chain.

The array is put into Ray's object store once (ray.put); every map task gets
the same reference and reads its slice without copying (one copy per node).
Each map task returns partial statistics of its slice: count, sum, sum of
squares, min, max and a histogram. The partials are then combined twice:

- tree:  pairs are combined level by level, log2(chunks) combines deep,
         all submitted at once and chained through object references;
- chain: one combine after another, chunks-1 combines deep.

Both results are checked against each other and against NumPy on the whole
array (counts, min, max and histograms exactly; sums to 1e-9 relative). The
script prints both aggregation times and exits 1 if anything disagrees.

Example:
  python workloads/tree_reduce.py --size 20000000 --chunks 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

try:
    from workloads import common
except ImportError:  # run as a file from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import common

import numpy as np

HIST_RANGE = (-5.0, 5.0)


@dataclass
class Stats:
    count: int
    total: float
    sumsq: float
    lo: float
    hi: float
    hist: np.ndarray  # counts in `bins` equal bins over HIST_RANGE; outside values clipped in

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def std(self) -> float:
        return math.sqrt(max(self.sumsq / self.count - self.mean**2, 0.0))


def stats_of(values: np.ndarray, bins: int) -> Stats:
    clipped = np.clip(values, *HIST_RANGE)
    hist, _ = np.histogram(clipped, bins=bins, range=HIST_RANGE)
    return Stats(
        count=int(values.size),
        total=float(values.sum()),
        sumsq=float(np.dot(values, values)),
        lo=float(values.min()),
        hi=float(values.max()),
        hist=hist.astype(np.int64),
    )


def map_chunk(array: np.ndarray, start: int, stop: int, bins: int) -> Stats:
    """Ray task: statistics of array[start:stop] (array arrives zero-copy from the object store)."""
    return stats_of(array[start:stop], bins)


def combine(a: Stats, b: Stats) -> Stats:
    """Ray task (and plain function): merge two partials; associative."""
    return Stats(a.count + b.count, a.total + b.total, a.sumsq + b.sumsq,
                 min(a.lo, b.lo), max(a.hi, b.hi), a.hist + b.hist)


def tree_reduce(refs: list, combine_task) -> tuple[object, int]:
    """Combine refs pairwise level by level; returns (final ref, depth)."""
    depth = 0
    while len(refs) > 1:
        nxt = [combine_task.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        if len(refs) % 2:
            nxt.append(refs[-1])
        refs = nxt
        depth += 1
    return refs[0], depth


def chain_reduce(refs: list, combine_task) -> tuple[object, int]:
    acc = refs[0]
    for r in refs[1:]:
        acc = combine_task.remote(acc, r)
    return acc, len(refs) - 1


def disagreements(a: Stats, b: Stats, what: str) -> list[str]:
    out = []
    for name in ("count", "lo", "hi"):
        if getattr(a, name) != getattr(b, name):
            out.append(f"{what}: {name} {getattr(a, name)!r} != {getattr(b, name)!r}")
    for name in ("total", "sumsq"):
        x, y = getattr(a, name), getattr(b, name)
        if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
            out.append(f"{what}: {name} {x!r} != {y!r}")
    if not np.array_equal(a.hist, b.hist):
        out.append(f"{what}: histograms differ in {int((a.hist != b.hist).sum())} bins")
    return out


def chunk_bounds(size: int, chunks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, size, chunks + 1).astype(np.int64)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(chunks) if edges[i + 1] > edges[i]]


def build_parser():
    p = argparse.ArgumentParser(
        prog="tree_reduce.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", type=int, default=20_000_000,
                   help="float64 elements in the shared array (default 20,000,000 = 160 MB)")
    p.add_argument("--chunks", type=int, default=64, help="map tasks (default 64)")
    p.add_argument("--bins", type=int, default=64, help="histogram bins (default 64)")
    p.add_argument("--seed", type=int, default=0, help="array seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    common.add_connect_arguments(p)
    return p


def main(argv=None) -> int:
    import ray

    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("size", "chunks", "bins"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.chunks > args.size:
        parser.error(f"--chunks ({args.chunks}) cannot exceed --size ({args.size})")

    # Ray forwards worker output and autoscaler events to stdout; keep --json parseable.
    common.connect(args.address, connect_timeout=args.connect_timeout, log_to_driver=not args.json)
    map_task = ray.remote(map_chunk).options(num_cpus=1)
    combine_task = ray.remote(combine).options(num_cpus=1)

    array = np.random.default_rng(args.seed).standard_normal(args.size)
    expected = stats_of(array, args.bins)
    t0 = time.perf_counter()
    array_ref = ray.put(array)  # shared once; tasks get the reference, not a copy each
    bounds = chunk_bounds(args.size, args.chunks)
    partials = [map_task.remote(array_ref, a, b, args.bins) for a, b in bounds]
    ray.wait(partials, num_returns=len(partials))
    t_map = time.perf_counter() - t0

    t0 = time.perf_counter()
    tree_ref, tree_depth = tree_reduce(partials, combine_task)
    tree = ray.get(tree_ref)
    t_tree = time.perf_counter() - t0

    t0 = time.perf_counter()
    chain_ref, chain_depth = chain_reduce(partials, combine_task)
    chain = ray.get(chain_ref)
    t_chain = time.perf_counter() - t0

    problems = (disagreements(tree, chain, "tree vs chain")
                + disagreements(tree, expected, "tree vs numpy"))
    report = {
        "cluster": common.cluster_shape().describe(),
        "size": args.size, "chunks": len(bounds),
        "map_seconds": round(t_map, 4),
        "tree_seconds": round(t_tree, 4), "tree_depth": tree_depth,
        "chain_seconds": round(t_chain, 4), "chain_depth": chain_depth,
        "mean": tree.mean, "std": tree.std, "min": tree.lo, "max": tree.hi,
        "agree": not problems, "problems": problems,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"This cluster consists of {report['cluster']}")
        print(f"array: {args.size:,} float64 ({args.size * 8 / 1e6:.0f} MB) in {len(bounds)} chunks; "
              f"map {t_map:.3f} s")
        print(f"tree  reduce: {t_tree:.3f} s ({tree_depth} levels)")
        print(f"chain reduce: {t_chain:.3f} s ({chain_depth} steps)")
        print(f"mean {tree.mean:.6f}  std {tree.std:.6f}  min {tree.lo:.4f}  max {tree.hi:.4f}")
        print("results agree (tree = chain = numpy)" if not problems
              else "RESULTS DISAGREE:\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    from workloads import tree_reduce as _tree_reduce  # noqa: PLW0406 - see above

    sys.exit(_tree_reduce.main())
