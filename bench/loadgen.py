"""A bounded concurrent HTTP load generator for 127.0.0.1 (threads + http.client).

``run`` keeps `concurrency` requests in flight until `duration` seconds have
passed or `max_requests` were sent, whichever comes first; each request uses
its own connection (the sequential server speaks HTTP/1.0 and closes it).
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

from bench.stats import percentile

LOOPBACK = ("127.0.0.1", "localhost")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> dict:
        ok = len(self.latencies)
        return {
            "requests": ok + len(self.errors),
            "ok": ok,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            "elapsed": self.elapsed,
            "rps": ok / self.elapsed if self.elapsed > 0 else 0.0,
            "p50_ms": percentile(self.latencies, 50) * 1000 if ok else None,
            "p99_ms": percentile(self.latencies, 99) * 1000 if ok else None,
        }


def post_json(host: str, port: int, path: str, body: bytes, timeout: float = 30.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def run(host: str, port: int, path: str, body: bytes, *, concurrency: int, duration: float,
        max_requests: int, timeout: float = 30.0) -> LoadResult:
    if host not in LOOPBACK:
        raise ValueError(f"load generator only targets this machine (127.0.0.1), not {host!r}")
    if concurrency < 1 or duration <= 0 or max_requests < 1:
        raise ValueError("concurrency and max_requests must be >= 1 and duration > 0")
    result = LoadResult()
    lock = threading.Lock()
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + duration

    def worker():
        nonlocal sent
        while True:
            with lock:
                if sent >= max_requests or time.perf_counter() >= deadline:
                    return
                sent += 1
            t = time.perf_counter()
            try:
                status, data = post_json(host, port, path, body, timeout)
                err = None if status == 200 else f"HTTP {status}: {data[:200]!r}"
            except OSError as e:
                err = f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t
            with lock:
                if err:
                    result.errors.append(err)
                else:
                    result.latencies.append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(duration + timeout + 5)
    result.elapsed = time.perf_counter() - t0
    return result
