"""The job's helper module: numba kernels that the Ray tasks import on the workers.

``count_segment(lo, hi, base)`` counts the primes in ``[lo, hi)`` with a
segmented sieve, given every prime up to ``isqrt(hi - 1)`` in ``base``.
``base_primes(n)`` returns the primes up to ``n``. Both are compiled by
numba on first use in each worker process.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def base_primes(n: int) -> np.ndarray:
    """Every prime <= n (a plain sieve; n is about sqrt of the job's limit)."""
    if n < 2:
        return np.empty(0, dtype=np.int64)
    is_prime = np.ones(n + 1, dtype=np.bool_)
    is_prime[0] = False
    is_prime[1] = False
    p = 2
    while p * p <= n:
        if is_prime[p]:
            is_prime[p * p :: p] = False
        p += 1
    return np.flatnonzero(is_prime).astype(np.int64)


@numba.njit(cache=True)
def count_segment(lo: int, hi: int, base: np.ndarray) -> int:
    """Number of primes p with lo <= p < hi (segmented sieve over [lo, hi))."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    is_prime = np.ones(hi - lo, dtype=np.bool_)
    for p in base:
        if p * p >= hi:
            break
        start = max(p * p, ((lo + p - 1) // p) * p)
        for multiple in range(start, hi, p):
            is_prime[multiple - lo] = False
    return int(is_prime.sum())
