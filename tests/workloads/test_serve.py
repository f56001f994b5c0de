"""workloads/serve.py without Ray: validation, the HTTP front and the batcher around a real model.

The front (serve_http.App on uvicorn) runs in a thread on 127.0.0.1 and the
tests talk HTTP to it (tests/workloads/asgi_server.py). The batcher tests
replace the Ray actors by in-process fakes that delay, reorder and fail
calls; every assertion is on what callers get back, compared with the
model's answer for each caller's own rows computed here.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading

import numpy as np
import pytest

from workloads import anomaly_model, serve, serve_http

from .asgi_server import AppServer, wait_until


class InProcessPool:
    """The backend interface backed by one model fitted in this process (same code as the actors)."""

    size = 1

    def __init__(self, seed=0, n_features=serve.DEFAULT_FEATURES):
        self.model = serve.fit_model(seed, n_features)
        self.n_features = n_features
        self.calls = []

    def predict(self, rows):
        return serve.predict_with(self.model, rows)

    async def scores_on(self, i, x):
        self.calls.append(len(x))
        return anomaly_model.scores(self.model, x)

    async def health(self):
        return [{"index": 0, "alive": True, "pid": 1, "node_id": "n"}]


def serve_app(backend, max_instances=serve.MAX_INSTANCES, **batcher_args):
    """An AppServer with serve.py's front (App + Batcher) around ``backend``."""
    def make():
        batcher = serve.Batcher(backend, 8, **batcher_args)
        return serve_http.App(batcher, backend.health, 8, max_instances=max_instances)

    return AppServer(make)


@pytest.fixture(scope="module")
def pool():
    return InProcessPool()


@pytest.fixture(scope="module")
def server(pool):
    srv = serve_app(pool, max_instances=50)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = server.client()
    yield c
    c.close()


def test_same_seed_same_model_different_seed_different_model():
    x = np.random.default_rng(5).normal(0, 3, size=(20, serve.DEFAULT_FEATURES))
    a = serve.predict_with(serve.fit_model(0), x)
    b = serve.predict_with(serve.fit_model(0), x)
    c = serve.predict_with(serve.fit_model(1), x)
    assert a == b and a != c


def test_model_flags_far_points_as_anomalies(pool):
    out = pool.predict([[0.0] * 8, [9.0] * 8])
    assert out[0]["anomaly"] is False and out[1]["anomaly"] is True
    assert out[0]["score"] > 0 > out[1]["score"]


def test_predict_returns_predictions_in_order(client, pool):
    rows = np.random.default_rng(1).normal(0, 2, size=(17, 8)).tolist()
    resp = client.post("/predict", json={"instances": rows})
    assert resp.status_code == 200
    assert resp.get_json()["predictions"] == serve.predict_with(pool.model, rows)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[[1, 2]]", 'body must be a JSON object {"instances": [...]}, got array'),
        (b'{"rows": [[1]]}', 'missing "instances"'),
        (b'{"instances": []}', '"instances" must be a non-empty list'),
        (b'{"instances": 5}', '"instances" must be a non-empty list'),
        (b'{"instances": [[1,2,3]]}', "instances[0] has 3 values; the model expects 8"),
        (b'{"instances": [[1,2,3,4,5,6,7,8], 3]}', "instances[1] must be a list of 8 numbers, got number"),
        (b'{"instances": [[1,2,3,4,5,6,7,"8"]]}', 'instances[0][7] is not a number: "8"'),
        (b'{"instances": [[1,2,3,4,5,6,7,true]]}', "instances[0][7] is not a number: true"),
        (b'{"instances": [[1,2,3,4,5,6,7,null]]}', "instances[0][7] is not a number: null"),
        (b'[true]', 'must be a JSON object {"instances": [...]}, got array'),
        (b'{"instances": [[1,2,3,4,5,6,7,1e999999]]}', "instances[0][7] is not finite"),
        (b'{"instances": [[1,2,3,4,5,6,7,' + b"9" * 400 + b']]}', "instances[0][7] is not finite"),
        (b'{"instances": [[1,2,3,4,5,6,7,NaN]]}', "body contains NaN"),
        (b'{"instances": [[1,2,3,4,5,6,7,1e999]]}', "instances[0][7] is not finite"),
        (b'{"instances": [[1,2,3,4,5,6,7,[8]]]}', "instances[0][7] is not a number: [8]"),
        (b'{"instances": [[[1,2,3,4,5,6,7,8]]]}', "instances[0] has 1 values; the model expects 8"),
        (b'{"instances": [[1,2,3,4,5,6,7,8]], "note": [[1,2,3,4,5,6,7,true]]}', None),
        (json.dumps({"instances": [[0] * 8] * 51}).encode(), "too many instances: 51 > 50"),
    ],
)
def test_bad_bodies_get_400_saying_what_is_wrong(client, pool, body, message):
    before = len(pool.calls)
    resp = client.post("/predict", data=body)
    if message is None:  # other keys are ignored, whatever they hold
        assert resp.status_code == 200 and len(resp.get_json()["predictions"]) == 1
        return
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]
    assert len(pool.calls) == before  # never reaches the model


def test_fast_and_checked_parsing_agree_on_every_accepted_body():
    # The byte-scan fast path (no quotes but the key's, no true/false/null) and
    # the per-value checks must give the same array for the same numbers.
    rows = [[0, -1.5, 2e-3, 1e300, -0.0, 7, 3.25, 123456789012345678901]] * 3
    plain = json.dumps({"instances": rows}).encode()
    with_extra_key = json.dumps({"instances": rows, "id": "abc"}).encode()
    want = np.array(rows, dtype=np.float64)
    for body in (plain, with_extra_key, plain.replace(b" ", b"")):
        assert np.array_equal(anomaly_model.parse_instances(body, 8), want)


def test_true_is_reported_as_json_not_python(client):
    body = client.post("/predict", json={"instances": [[True] + [0] * 7]}).get_json()
    assert body["error"] == "instances[0][0] is not a number: true"
    assert "True" not in body["error"]


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("GET", "/", 404, "no endpoint /; endpoints: POST /predict, GET /healthz"),
    ("GET", "/nope", 404, "no endpoint /nope; endpoints: POST /predict, GET /healthz"),
    ("GET", "/predict", 405, "GET /predict is not allowed; use POST /predict"),
    ("PUT", "/predict", 405, "PUT /predict is not allowed; use POST /predict"),
    ("POST", "/healthz", 405, "POST /healthz is not allowed; use GET /healthz"),
])
def test_unknown_paths_and_methods_get_json_errors(client, method, path, status, message):
    resp = client.open(path, method=method, data=b"{}" if method != "GET" else None)
    assert resp.status_code == status
    assert resp.content_type == "application/json"
    assert resp.get_json() == {"error": message}


def test_oversized_body_gets_413_with_a_message(client, pool):
    before = len(pool.calls)
    resp = client.post("/predict", data=b" " * (serve.MAX_BODY_BYTES + 1))
    assert resp.status_code == 413 and "split the batch" in resp.get_json()["error"]
    assert len(pool.calls) == before
    # the connection is still usable afterwards
    assert client.post("/predict", json={"instances": [[0] * 8]}).status_code == 200


def test_a_chunked_body_over_the_limit_gets_413(pool):
    # No Content-Length (chunked): the front counts bytes as they arrive.
    import http.client

    srv = AppServer(lambda: serve_http.App(serve.Batcher(pool, 8), pool.health, 8,
                                           max_body_bytes=1000))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", "/predict", body=iter([b"{" + b" " * 600, b" " * 600 + b"}"]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and "larger than 1000 bytes" in json.loads(resp.read())["error"]
        conn.close()
    finally:
        srv.stop()


def test_healthz_reports_actors_and_where_the_time_goes(client):
    client.post("/predict", json={"instances": [[0] * 8] * 3})
    resp = client.get("/healthz")
    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["status"] == "ok"
    assert doc["actors"] == [{"index": 0, "alive": True, "pid": 1, "node_id": "n"}]
    assert doc["batching"]["rows"] >= 3 and doc["batching"]["batches"] >= 1
    assert set(doc["http"]["seconds"]) == {"read", "parse", "wait", "respond", "send"}
    assert doc["http"]["answered"] >= 1 and doc["http"]["cpu_seconds"] > 0


def test_healthz_is_503_when_no_actor_answers():
    class DeadPool(InProcessPool):
        async def health(self):
            return [{"index": 0, "alive": False}]

    srv = serve_app(DeadPool())
    try:
        resp = srv.client().get("/healthz")
        assert resp.status_code == 503 and resp.get_json()["status"] == "down"
    finally:
        srv.stop()


def test_pool_failure_is_503():
    class FailingPool(InProcessPool):
        async def scores_on(self, i, x):
            raise serve.ActorUnavailable("ActorDiedError")

    srv = serve_app(FailingPool(), attempts=2)
    try:
        resp = srv.client().post("/predict", json={"instances": [[0] * 8]})
        assert resp.status_code == 503
        assert resp.get_json()["error"] == ("model pool unavailable: batch failed after 2 "
                                            "attempts (ActorDiedError, ActorDiedError)")
    finally:
        srv.stop()


def test_a_taken_port_fails_at_once_before_anything_starts(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from .conftest import REPO, WORKLOADS

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        r = subprocess.run(
            [sys.executable, os.path.join(WORKLOADS, "serve.py"), "--port", str(port)],
            env={**env, "PYTHONPATH": REPO, "RAY_ADDRESS": "127.0.0.1:1"}, cwd=tmp_path,
            capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"serve.py: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_actor_class_is_shipped_by_reference():
    from ray import cloudpickle

    blob = cloudpickle.dumps(serve.AnomalyModel)
    assert len(blob) < 200 and b"workloads.serve" in blob


# ------------------------------------------------------------- batching ------


class FakeActors:
    """Stands in for ModelPool: `size` workers, async scores_on(i, x) with the real model.

    delay(i, x) -> seconds to wait before answering (reorders completions);
    fail(i, x, attempt) -> True makes that call raise ActorUnavailable;
    hold: a threading.Event every call waits for. Every call is recorded as
    (worker, tags of the rows it got, ok, rows).
    """

    def __init__(self, model, size=3, delay=None, fail=None, hold=None):
        self.model, self.size = model, size
        self.delay = delay or (lambda i, x: 0.0)
        self.fail = fail or (lambda i, x, attempt: False)
        self.hold = hold
        self.calls: list[tuple[int, list[int], bool, int]] = []
        self.busy: set[int] = set()
        self.overlaps = 0  # calls that found their worker already busy
        self._attempts: dict[bytes, int] = {}

    async def scores_on(self, i, x):
        self.overlaps += i in self.busy
        self.busy.add(i)
        try:
            await asyncio.sleep(self.delay(i, x))
            if self.hold is not None:
                await asyncio.to_thread(self.hold.wait, 30)
        finally:
            self.busy.discard(i)
        key = x.tobytes()
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        failed = self.fail(i, x, attempt)
        self.calls.append((i, tags(x), not failed, len(x)))
        if failed:
            raise serve.ActorUnavailable("ActorDiedError")
        return anomaly_model.scores(self.model, x)

    async def health(self):
        return [{"index": i, "alive": True} for i in range(self.size)]


def tags(x) -> list[int]:
    """The request ids of a batch's rows (feature 0 carries id * 1000 + row)."""
    return sorted({int(v) // 1000 for v in x[:, 0]})


def tagged_requests(n, sizes, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for rid in range(n):
        rows = rng.normal(0, 2.5, size=(sizes[rid % len(sizes)], 8))
        rows[:, 0] = rid * 1000 + np.arange(len(rows))  # unique, and recoverable by the fake
        out.append(rows.tolist())
    return out


def post_all(srv, requests, threads=8):
    """POST every request from `threads` concurrent clients; {id: (status, json, headers)}."""
    results, lock = {}, threading.Lock()
    todo = list(range(len(requests)))

    def client():
        c = srv.client()
        while True:
            with lock:
                if not todo:
                    break
                rid = todo.pop()
            r = c.post("/predict", json={"instances": requests[rid]})
            with lock:
                results[rid] = (r.status_code, r.get_json(), r.headers)
        c.close()

    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results


def post_all_async(srv, requests):
    out = {}
    t = threading.Thread(target=lambda: out.update(post_all(srv, requests, threads=len(requests))))
    t.start()

    def join():
        t.join(60)
        return out

    return join


def batcher_of(srv):
    return srv.app.front


def test_batching_returns_each_callers_own_rows_across_chunks_and_actors(pool):
    # Row counts that are not multiples of the batch size, some larger than it;
    # worker 0 is slow and the others random, so batches finish out of order.
    rnd = random.Random(7)
    fake = FakeActors(pool.model, size=3,
                      delay=lambda i, x: 0.03 if i == 0 else rnd.uniform(0, 0.01))
    srv = serve_app(fake, max_batch_rows=16, max_wait_ms=5, max_queued_rows=10_000)
    try:
        requests = tagged_requests(60, sizes=[1, 5, 7, 13, 23, 37])
        results = post_all(srv, requests)
        stats = batcher_of(srv).stats()
    finally:
        srv.stop()
    assert sorted(results) == list(range(60))
    for rid, (status, body, _) in results.items():
        assert status == 200, body
        assert body["predictions"] == serve.predict_with(pool.model, requests[rid]), rid
    # What the app sent the actors: merged requests, split large ones, never over the limit.
    assert any(len(t) > 1 for _, t, _, _ in fake.calls), "no batch merged two requests"
    assert max(n for *_, n in fake.calls) == 16  # full batches, never more
    big = {rid for rid, r in enumerate(requests) if len(r) == 37}
    assert len({i for i, t, _, _ in fake.calls if big & set(t)}) >= 2  # split across actors
    assert stats["rows"] == sum(n for *_, n in fake.calls) == sum(map(len, requests))
    assert stats["batches"] == len(fake.calls)
    assert fake.overlaps == 0  # one batch at a time per actor


def test_a_large_request_is_split_across_actors_in_order(pool):
    fake = FakeActors(pool.model, size=4, delay=lambda i, x: 0.02 * (4 - i))  # later parts first
    srv = serve_app(fake, max_batch_rows=16, max_wait_ms=1)
    try:
        rows = tagged_requests(1, sizes=[61])[0]
        got = srv.client().post("/predict", json={"instances": rows}).get_json()["predictions"]
    finally:
        srv.stop()
    assert got == serve.predict_with(pool.model, rows)
    assert len(fake.calls) == 4 and len({i for i, *_ in fake.calls}) == 4


def test_an_idle_pool_splits_a_large_request_but_not_a_small_one(pool):
    fake = FakeActors(pool.model, size=2)
    srv = serve_app(fake, max_batch_rows=8192, max_wait_ms=1, min_split_rows=512)
    try:
        c = srv.client()
        small, large = tagged_requests(2, sizes=[100, 3000])
        assert c.post("/predict", json={"instances": small}).status_code == 200
        assert [n for *_, n in fake.calls] == [100]  # one call: a call costs ~6 ms however small
        got = c.post("/predict", json={"instances": large}).get_json()["predictions"]
    finally:
        srv.stop()
    assert got == serve.predict_with(pool.model, large)
    assert sorted(n for *_, n in fake.calls[1:]) == [1500, 1500]  # both actors, half each
    assert {i for i, *_ in fake.calls[1:]} == {0, 1}


def test_under_load_a_request_stays_whole_even_when_workers_are_free(pool):
    # After 8 callers kept 8 x 1024 rows in flight, a worker's share is 4096
    # rows: a 2048-row request is not cut across the two free workers (a cut
    # costs another call), although on an idle pool it would be.
    gate = threading.Event()
    fake = FakeActors(pool.model, size=2, hold=gate)
    srv = serve_app(fake, max_batch_rows=8192, max_wait_ms=5, load_half_life_s=600)
    try:
        burst = post_all_async(srv, tagged_requests(8, sizes=[1024]))
        wait_until(lambda: batcher_of(srv).stats()["queued_rows"] == 8192, what="8 callers in")
        gate.set()
        assert all(r[0] == 200 for r in burst().values())
        before = len(fake.calls)
        rows = tagged_requests(1, sizes=[2048], seed=9)[0]
        got = srv.client().post("/predict", json={"instances": rows}).get_json()["predictions"]
    finally:
        gate.set()
        srv.stop()
    assert got == serve.predict_with(pool.model, rows)
    assert [n for *_, n in fake.calls[before:]] == [2048]


def test_a_lone_request_leaves_after_the_gap_not_the_longest_wait(pool):
    # max_wait 60 s: only the gap rule (no request for 20 ms) can send the batch on.
    fake = FakeActors(pool.model, size=1)
    srv = serve_app(fake, max_wait_ms=60_000, gap_ms=20)
    try:
        done = threading.Event()
        out = {}

        def call():
            out["r"] = srv.client().post("/predict", json={"instances": [[0] * 8]})
            done.set()

        threading.Thread(target=call, daemon=True).start()
        assert done.wait(30), "the request waited for max_wait instead of the gap"
        assert out["r"].status_code == 200
    finally:
        srv.stop()


def test_workers_take_turns_in_batches_of_their_share_of_the_rows_in_flight(pool):
    # 16 callers x 64 rows keep at most 1024 rows in the server; with 2 workers
    # no batch takes more than half of them (else one batch holds every caller
    # while the other worker idles), and both workers get batches.
    fake = FakeActors(pool.model, size=2, delay=lambda i, x: 0.01)
    srv = serve_app(fake, max_batch_rows=8192, max_wait_ms=10, min_split_rows=64)
    try:
        requests = tagged_requests(320, sizes=[64])
        results = post_all(srv, requests, threads=16)
    finally:
        srv.stop()
    assert all(r[0] == 200 for r in results.values()) and len(results) == 320
    for rid, (_, body, _) in list(results.items())[:20]:
        assert body["predictions"] == serve.predict_with(pool.model, requests[rid])
    assert max(n for *_, n in fake.calls) <= 512
    assert {i for i, *_ in fake.calls} == {0, 1}
    assert any(n > 64 for *_, n in fake.calls)  # and they do merge


def test_a_failed_batch_fails_only_the_requests_in_it(pool):
    poisoned = {5, 17, 40}
    fake = FakeActors(pool.model, size=2, delay=lambda i, x: 0.002,
                      fail=lambda i, x, attempt: bool(poisoned & set(tags(x))))
    srv = serve_app(fake, max_batch_rows=24, max_wait_ms=3, attempts=2)
    try:
        requests = tagged_requests(48, sizes=[3, 8, 11])
        results = post_all(srv, requests)
    finally:
        srv.stop()
    in_failed = {rid for _, t, ok, _ in fake.calls if not ok for rid in t}
    assert poisoned <= in_failed
    for rid, (status, body, _) in results.items():
        if rid in in_failed:
            assert status == 503 and "failed after 2 attempts" in body["error"], rid
        else:
            assert status == 200, (rid, body)
            assert body["predictions"] == serve.predict_with(pool.model, requests[rid]), rid
    assert len(in_failed) < len(requests) // 2  # most requests never met a poisoned batch


def test_a_resent_batch_answers_each_request_once(pool):
    # Every batch's first call "dies" (as on a killed actor); the resend answers.
    fake = FakeActors(pool.model, size=2, delay=lambda i, x: 0.003,
                      fail=lambda i, x, attempt: attempt == 0)
    srv = serve_app(fake, max_batch_rows=20, max_wait_ms=2)
    try:
        requests = tagged_requests(30, sizes=[4, 9, 30])
        results = post_all(srv, requests)
        stats = batcher_of(srv).stats()
    finally:
        srv.stop()
    for rid, (status, body, _) in results.items():
        assert status == 200, body
        assert body["predictions"] == serve.predict_with(pool.model, requests[rid]), rid
    assert stats["resent_batches"] == stats["batches"] > 0 and stats["failed_batches"] == 0
    assert stats["resent_requests"] == stats["requests"] == 30
    # each answered row went out exactly twice: once failed, once answered
    sent = [rid for _, t, ok, _ in fake.calls if ok for rid in t]
    assert sorted(set(sent)) == list(range(30))
    assert stats["rows"] == sum(len(r) for r in requests)


def test_overload_answers_503_with_retry_after_and_recovers(pool):
    gate = threading.Event()
    fake = FakeActors(pool.model, size=1, hold=gate)
    srv = serve_app(fake, max_batch_rows=64, max_wait_ms=0, max_queued_rows=20)
    try:
        batcher = batcher_of(srv)
        held = tagged_requests(2, sizes=[8])
        first = post_all_async(srv, held)
        wait_until(lambda: batcher.stats()["queued_rows"] >= 16, what="both requests admitted")
        resp = srv.client().post("/predict", json={"instances": [[0.0] * 8] * 8})
        assert not gate.is_set()  # answered at once, while the actor is still busy
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert "overloaded: 16 rows queued; limit 20" in resp.get_json()["error"]
        assert batcher.stats()["rejected_requests"] == 1
        gate.set()
        results = first()
        assert [results[r][0] for r in (0, 1)] == [200, 200]
        assert batcher.stats()["queued_rows"] == 0
        again = srv.client().post("/predict", json={"instances": [[9.0] * 8] * 8})
        assert again.status_code == 200 and again.get_json()["predictions"][0]["anomaly"] is True
    finally:
        gate.set()
        srv.stop()


def test_a_full_server_refuses_before_parsing_the_body(pool):
    # At the ceiling, a request is refused before its JSON is read: even a body
    # that would be a 400 gets 503 + Retry-After, and the model is not called.
    gate = threading.Event()
    fake = FakeActors(pool.model, size=1, hold=gate)
    srv = serve_app(fake, max_batch_rows=64, max_wait_ms=0, max_queued_rows=16)
    try:
        batcher = batcher_of(srv)
        first = post_all_async(srv, tagged_requests(2, sizes=[8]))
        wait_until(lambda: batcher.stats()["queued_rows"] == 16, what="the ceiling reached")
        calls = len(fake.calls)
        resp = srv.client().post("/predict", data=b"{not json")
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert resp.get_json()["error"] == ("overloaded: 16 rows queued; limit 16; retry later")
        assert len(fake.calls) == calls
        gate.set()
        assert [r[0] for r in first().values()] == [200, 200]
        assert srv.client().post("/predict", data=b"{not json").status_code == 400
    finally:
        gate.set()
        srv.stop()


def test_batching_off_sends_each_request_on_its_own(pool):
    # --max-batch-rows 0: serve.py builds Batcher(merge=False): one request per call.
    args = serve.build_parser().parse_args(["--max-batch-rows", "0"])
    assert args.max_batch_rows == 0
    with pytest.raises(SystemExit):
        serve.build_parser().parse_args(["--max-batch-rows", "-1"])
    with pytest.raises(ValueError, match="max_batch_rows"):
        serve.Batcher(FakeActors(pool.model), 8, max_batch_rows=0)
    fake = FakeActors(pool.model, size=2, delay=lambda i, x: 0.005)
    srv = serve_app(fake, max_batch_rows=serve.MAX_INSTANCES, merge=False)
    try:
        requests = tagged_requests(24, sizes=[3, 10])
        results = post_all(srv, requests)
    finally:
        srv.stop()
    assert all(results[r][1]["predictions"] == serve.predict_with(pool.model, requests[r])
               for r in range(24))
    assert len(fake.calls) == 24 and all(len(t) == 1 for _, t, _, _ in fake.calls)
