"""A user's Ray job: count the primes below --limit with numba, across the cluster.

    uv run python driver.py --limit 20000000 --chunks 16 [--output result.json]

The range is cut into --chunks segments; each is one Ray task that imports the
helper module ``primes`` (numba) on whichever worker runs it and reports back
its count, its node, and the numba it imported. The driver adds the counts,
checks the total against a NumPy sieve that does not use numba, prints one
result line and, with --output, writes a JSON result atomically (a temp file
renamed over the target: never a half-written file). Exit 0 when the check
passes, 1 when it does not, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import primes
import ray


@ray.remote(num_cpus=1)
def count_task(lo: int, hi: int, base: np.ndarray, want_numba: str) -> dict:
    import numba  # the job's own package, from its lock, on this worker

    assert numba.__version__ == want_numba, (numba.__version__, want_numba)
    return {
        "lo": lo,
        "hi": hi,
        "count": primes.count_segment(lo, hi, base),
        "node": ray.get_runtime_context().get_node_id(),
        "numba": numba.__version__,
        "python": sys.prefix,
        "pid": os.getpid(),
    }


def numpy_count(limit: int) -> int:
    """Primes below ``limit`` with NumPy only: the independent check."""
    if limit < 3:
        return 0
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(limit - 1) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    return int(sieve.sum())


def write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driver.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=20_000_000, help="count primes below this")
    p.add_argument("--chunks", type=int, default=16, help="Ray tasks (segments)")
    p.add_argument("--output", help="write the result as JSON here (atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 2 <= args.limit <= 10**9:
        parser.error(f"--limit {args.limit}: allowed 2 to 1000000000")
    if not 1 <= args.chunks <= 10_000:
        parser.error(f"--chunks {args.chunks}: allowed 1 to 10000")
    started = time.monotonic()
    import numba

    print(f"driver: ray {ray.__version__}, numba {numba.__version__}, in {sys.prefix}", flush=True)
    ray.init()  # the cluster of `ray job submit`, or RAY_ADDRESS

    base = ray.put(primes.base_primes(math.isqrt(args.limit - 1)))
    bounds = np.linspace(0, args.limit, args.chunks + 1).astype(np.int64)
    parts = ray.get(
        [
            count_task.remote(int(lo), int(hi), base, numba.__version__)
            for lo, hi in itertools.pairwise(bounds)
        ]
    )
    total = sum(p["count"] for p in parts)
    expected = numpy_count(args.limit)
    nodes = sorted({p["node"] for p in parts})
    result = {
        "limit": args.limit,
        "count": total,
        "expected": expected,
        "ok": total == expected,
        "numba": numba.__version__,
        "nodes": nodes,
        "tasks": parts,
        "seconds": round(time.monotonic() - started, 2),
    }
    if args.output:
        write_atomically(args.output, json.dumps(result, indent=2, sort_keys=True) + "\n")
    verdict = "matches NumPy" if result["ok"] else f"DIFFERS from NumPy's {expected}"
    print(
        f"primes below {args.limit}: {total} ({verdict}); {len(parts)} tasks on "
        f"{len(nodes)} node(s), numba {numba.__version__}, {result['seconds']} s",
        flush=True,
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
