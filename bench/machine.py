"""What the numbers were measured on: cores, affinity, memory, CPU model, versions, load."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path


def usable_cores() -> int:
    """CPUs this process may run on (the affinity mask), not the host's count."""
    return len(os.sched_getaffinity(0))


def cpu_model(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def mem_total_gib(meminfo: str | None = None) -> float | None:
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / (1024 * 1024), 1)
    return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict:
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "mem_total_gib": mem_total_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless"),
        "scikit-learn": _version("scikit-learn"),
        "flask": _version("flask"),
        "load_average_at_start": load_average(),
    }
