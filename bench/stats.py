"""Small, dependency-free statistics for the benchmark tables (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of no samples")
    s = sorted(xs)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method), q in [0, 100]."""
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def summary(xs: Sequence[float]) -> dict:
    """n, median, min, max of repeated timings."""
    return {"n": len(xs), "median": median(xs), "min": float(min(xs)), "max": float(max(xs))}


def ratio(baseline: float, candidate: float) -> float:
    """How many times faster candidate is than baseline (time ratio baseline / candidate)."""
    if candidate <= 0:
        raise ValueError(f"candidate time must be > 0, got {candidate}")
    return baseline / candidate


def efficiency(speedup: float, cores: int) -> float:
    """Parallel efficiency: speedup per usable core (1.0 = perfect scaling)."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    return speedup / cores


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def fmt_seconds(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.0f} ms" if x >= 0.01 else f"{x * 1000:.1f} ms"


def fmt_spread(s: dict) -> str:
    """'12.3 s (11.9-13.0, n=3)'."""
    if s["n"] == 1:
        return fmt_seconds(s["median"])
    return f"{fmt_seconds(s['median'])} ({fmt_seconds(s['min'])} to {fmt_seconds(s['max'])}, n={s['n']})"
