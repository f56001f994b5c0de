"""Dynamic batching for serve.py: concurrent requests merged into few actor calls (asyncio).

Runs on the HTTP server's event loop: no threads, no locks. Every request's
rows go into one FIFO queue; a free worker (one model actor; one batch in
flight per actor) takes the next batch when one of these holds:

- the queue holds the worker's *share*: the rows the clients keep in flight
  (a recent peak of the rows admitted, forgotten with a half-life of
  ``load_half_life_s``) divided by the workers, at least ``min_split_rows``
  and at most ``max_batch_rows``;
- no request arrived for ``gap_ms`` (the burst of requests that the previous
  answers set off is over: waiting longer only adds latency);
- the oldest queued request has waited ``max_wait_ms`` (the bound).

The worker takes its share and leaves the rest for the next one, unless the
rest is under ``min_split_rows`` (a call costs ~6 ms however few its rows).
So under a steady load the workers take turns, each with its own group of
callers, instead of one batch holding every caller while the others idle;
on an idle pool a large request is cut across the free workers, under load
it stays whole; a lone small request leaves after ``gap_ms``. No batch holds
more than ``max_batch_rows``; a larger request is cut into several.

Each batch is answered once: by the first attempt that succeeds; a failed
call (dead, restarting or timed-out actor) is resent to the next worker, up
to ``attempts`` calls. A batch whose every attempt fails fails only the
requests with rows in it. At most ``max_queued_rows`` rows are admitted and
not yet answered: past that a request is refused at once (Overloaded; the
HTTP layer answers 503 with Retry-After, and asks ``check_room`` before it
parses a body).

The backend is anything with ``size`` (workers) and ``async scores_on(i, x)``
(one call on worker i; raises ActorUnavailable to have it resent).
"""

from __future__ import annotations

import asyncio
import collections
import time

import numpy as np

DEFAULT_MAX_BATCH_ROWS = 8192
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_GAP_MS = 1.0
DEFAULT_MIN_SPLIT_ROWS = 512
LOAD_HALF_LIFE_S = 1.0  # how fast the estimate of the rows in the system forgets a peak
# 16 callers of the largest requests (10,000 rows) fit; ~2.5 s of work for 2 cores' actors
DEFAULT_MAX_QUEUED_ROWS = 262_144

COUNTERS = ("requests", "batches", "rows", "resent_batches", "resent_requests",
            "failed_batches", "rejected_requests")


class ActorUnavailable(Exception):
    """One call on one actor failed (died, restarting, timed out); try another."""


class PoolUnavailable(Exception):
    """No actor answered; the request gets 503."""


class Overloaded(Exception):
    """Too many rows queued; the request gets 503 with Retry-After."""


class _Request:
    """One caller's rows, filled in by the batches its parts land in."""

    __slots__ = ("arrived", "dispatched", "error", "future", "left", "resent", "scores", "taken", "x")

    def __init__(self, x: np.ndarray, future: asyncio.Future, now: float):
        self.x = x
        self.future = future
        self.arrived = now
        self.dispatched = now  # when its last row went into a batch
        self.taken = 0  # rows already put into a batch
        self.left = len(x)  # rows not yet answered
        self.scores = np.empty(len(x), dtype=np.float64)
        self.error: str | None = None
        self.resent = False


class Batcher:
    """Merges concurrent requests into batches for ``backend``'s workers (see module doc).

    ``merge=False`` puts every request in a batch of its own (batching off),
    still one batch per worker at a time and split across free workers.
    Create and use it on one running event loop.
    """

    def __init__(self, backend, n_features: int, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS, attempts: int = 3,
                 gap_ms: float = DEFAULT_GAP_MS, min_split_rows: int = DEFAULT_MIN_SPLIT_ROWS,
                 merge: bool = True, load_half_life_s: float = LOAD_HALF_LIFE_S):
        if max_batch_rows < 1 or max_wait_ms < 0 or max_queued_rows < 1 or gap_ms < 0:
            raise ValueError("max_batch_rows and max_queued_rows must be >= 1, "
                             "max_wait_ms and gap_ms >= 0")
        self.backend = backend
        self.n_features = n_features
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.gap = min(gap_ms, max_wait_ms) / 1000.0
        self.min_split_rows = max(1, min(min_split_rows, max_batch_rows))
        self.max_queued_rows = max_queued_rows
        self.attempts = attempts
        self.merge = merge
        self.load_half_life = load_half_life_s
        self.counters = collections.Counter()
        self.seconds = collections.Counter()  # queue / call time summed over requests and batches
        self._queue: collections.deque[_Request] = collections.deque()
        self._free = list(range(backend.size))[::-1]  # pop() hands out worker 0 first
        self._unassigned = 0  # rows queued, not yet in a batch
        self._admitted = 0  # rows admitted, not yet answered (the overload ceiling)
        self._last_arrival = 0.0
        self._peak = 0.0  # recent peak of admitted rows: what the clients keep in flight
        self._peak_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------ callers --

    def check_room(self, n: int = 1) -> None:
        """Raise Overloaded if n more rows would pass the ceiling (a request alone always fits).

        The HTTP layer calls it with n=1 before parsing a body: once the ceiling
        is reached, a request is refused without spending CPU on its JSON.
        """
        if self._admitted and self._admitted + n > self.max_queued_rows:
            self.counters["rejected_requests"] += 1
            raise Overloaded(f"{self._admitted} rows queued; limit {self.max_queued_rows}")

    async def scores(self, x: np.ndarray) -> np.ndarray:
        """The model's scores for x's rows, in order; raises Overloaded or PoolUnavailable."""
        n = len(x)
        # One request alone is always admitted (the per-request row limit bounds it).
        self.check_room(n)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        req = _Request(x, loop.create_future(), now)
        self._admitted += n
        self._unassigned += n
        self._last_arrival = now
        self._peak = max(self._admitted,
                         self._peak * 0.5 ** ((now - self._peak_at) / self.load_half_life))
        self._peak_at = now
        self.counters["requests"] += 1
        self._queue.append(req)
        self._pump()
        scores = await req.future
        if req.error:
            raise PoolUnavailable(req.error)
        return scores

    def stats(self) -> dict:
        return {"max_batch_rows": self.max_batch_rows, "max_wait_ms": self.max_wait * 1000,
                "gap_ms": self.gap * 1000, "max_queued_rows": self.max_queued_rows,
                "queued_rows": self._admitted, **{k: self.counters[k] for k in COUNTERS},
                "seconds": {k: round(v, 6) for k, v in self.seconds.items()}}

    # ----------------------------------------------------------- dispatch --

    def _pump(self) -> None:
        """Hand batches to free workers while the rules allow; else arm the timer."""
        while self._free and self._queue:
            now = time.monotonic()
            due = self._due(now)
            if due > now:
                self._arm(due)
                return
            worker = self._free.pop()
            segments, rows = self._take(self._limit(), now)
            task = asyncio.get_running_loop().create_task(self._run(worker, segments, rows, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _due(self, now: float) -> float:
        """When the next batch may leave (<= now: at once)."""
        if not self.merge or self._unassigned >= self._target():
            return now
        return min(self._queue[0].arrived + self.max_wait, self._last_arrival + self.gap)

    def _target(self) -> int:
        """The batch size that gives every worker an equal share of the rows in flight.

        Clients keep about ``peak`` rows in the system; once a worker's share of
        them is queued, waiting longer only delays it, and a worker that takes
        just its share leaves the rest to the next one, so the workers take
        turns instead of one batch holding every caller while the others idle.
        Never under min_split_rows (a call costs ~6 ms however few its rows).
        """
        share = -(-int(self._peak) // self.backend.size)
        return min(self.max_batch_rows, max(share, self.min_split_rows))

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + (when - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._pump()

    def _limit(self) -> int:
        """Rows for the batch a free worker takes now: its target share of what is queued.

        The rest stays for the next free worker, unless that would be less than
        min_split_rows (a call costs ~6 ms however few its rows). So on an idle
        pool a large request is cut across the workers, while under load, when
        the clients keep more rows in flight than the queue holds, a request
        stays whole. Batching off: the head request's rows only.
        """
        if self.merge:
            rows = self._unassigned
        else:
            head = self._queue[0]
            rows = len(head.x) - head.taken
        target = self._target()
        return min(self.max_batch_rows, rows if rows - target < self.min_split_rows else target)

    def _take(self, limit: int, now: float) -> tuple[list[tuple[_Request, int, int]], int]:
        """Up to ``limit`` rows from the head of the queue: whole requests where they fit.

        A request is cut only when it is the first one and larger than the limit.
        """
        segments, rows = [], 0
        while self._queue and rows < limit:
            req = self._queue[0]
            left = len(req.x) - req.taken
            if rows and left > limit - rows:
                break  # it goes whole into the next batch
            n = min(left, limit - rows)
            segments.append((req, req.taken, req.taken + n))
            req.taken += n
            rows += n
            if req.taken == len(req.x):
                req.dispatched = now
                self._queue.popleft()
            if not self.merge:
                break
        self._unassigned -= rows
        return segments, rows

    async def _run(self, worker: int, segments, rows: int, started: float) -> None:
        try:
            x = (segments[0][0].x[segments[0][1]:segments[0][2]] if len(segments) == 1
                 else np.concatenate([r.x[a:b] for r, a, b in segments]))
            result, errors = None, []
            for attempt in range(self.attempts):
                try:
                    result = await self.backend.scores_on((worker + attempt) % self.backend.size, x)
                    break
                except ActorUnavailable as e:
                    errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - a bug here must not leave callers waiting forever
            result, errors = None, [f"{type(e).__name__}: {e}"]
        done = time.monotonic()
        self.counters["batches"] += 1
        self.counters["rows"] += rows
        self.counters["resent_batches"] += bool(errors) and result is not None
        self.counters["failed_batches"] += result is None
        self.seconds["call"] += done - started
        off = 0
        for req, a, b in segments:
            if result is None:
                req.error = req.error or (f"batch failed after {self.attempts} attempts "
                                          f"({', '.join(errors)})")
            else:
                req.scores[a:b] = result[off:off + b - a]
                req.resent |= bool(errors)
            off += b - a
            req.left -= b - a
            if (req.left == 0 or req.error) and not req.future.done():
                self._answer(req, done)
        self._admitted -= rows
        self._free.append(worker)
        self._pump()

    def _answer(self, req: _Request, done: float) -> None:
        self.seconds["queue"] += req.dispatched - req.arrived
        self.seconds["in_batch"] += done - req.dispatched
        if req.resent and not req.error:
            self.counters["resent_requests"] += 1
        req.future.set_result(req.scores)
