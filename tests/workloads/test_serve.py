"""workloads/serve.py without Ray: validation, the Flask app and the batcher around a real model.

The batcher tests replace the Ray actors by in-process fakes that delay,
reorder and fail calls; every assertion is on what callers get back,
compared with the model's answer for each caller's own rows computed here.
"""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import pytest

from workloads import anomaly_model, serve


class InProcessPool:
    """The pool interface backed by one model fitted in this process (same code as the actors)."""

    def __init__(self, seed=0, n_features=serve.DEFAULT_FEATURES):
        self.model = serve.fit_model(seed, n_features)
        self.n_features = n_features
        self.calls = []

    def predict(self, rows):
        self.calls.append(len(rows))
        return serve.predict_with(self.model, rows)

    def health(self):
        return [{"index": 0, "alive": True, "pid": 1, "node_id": "n"}]


@pytest.fixture(scope="module")
def pool():
    return InProcessPool()


@pytest.fixture
def client(pool):
    return serve.create_app(pool, max_instances=50).test_client()


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
        (json.dumps({"instances": [[0] * 8] * 51}).encode(), "too many instances: 51 > 50"),
    ],
)
def test_bad_bodies_get_400_saying_what_is_wrong(client, pool, body, message):
    before = len(pool.calls)
    resp = client.post("/predict", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]
    assert len(pool.calls) == before  # never reaches the model


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
    resp = client.open(path, method=method)
    assert resp.status_code == status
    assert resp.content_type == "application/json"
    assert resp.get_json() == {"error": message}


def test_oversized_body_gets_413_with_a_message(client):
    resp = client.post("/predict", data=b" " * (serve.MAX_BODY_BYTES + 1),
                       content_type="application/json")
    assert resp.status_code == 413 and "split the batch" in resp.get_json()["error"]


def test_healthz_reports_actors(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok", "actors": [
        {"index": 0, "alive": True, "pid": 1, "node_id": "n"}]}


def test_healthz_is_503_when_no_actor_answers(pool):
    class DeadPool(InProcessPool):
        def health(self):
            return [{"index": 0, "alive": False}]

    resp = serve.create_app(DeadPool()).test_client().get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["status"] == "down"


def test_pool_failure_is_503(pool):
    class FailingPool(InProcessPool):
        def predict(self, rows):
            raise serve.PoolUnavailable("1 of 2 chunks failed after 3 attempts")

    resp = serve.create_app(FailingPool()).test_client().post(
        "/predict", json={"instances": [[0] * 8]})
    assert resp.status_code == 503 and "model pool unavailable" in resp.get_json()["error"]


def test_actor_class_is_shipped_by_reference():
    from ray import cloudpickle

    blob = cloudpickle.dumps(serve.AnomalyModel)
    assert len(blob) < 200 and b"workloads.serve" in blob


# ------------------------------------------------------------- batching ------


class FakeActors:
    """Stands in for ModelPool: `size` workers, scores_on(i, x) with the real model.

    delay(i, x) -> seconds to sleep before answering (reorders completions);
    fail(i, x, attempt) -> True makes that call raise ActorUnavailable. Every
    call is recorded as (worker, tags of the rows it got, ok, rows).
    """

    def __init__(self, model, size=3, delay=None, fail=None):
        self.model, self.size = model, size
        self.delay = delay or (lambda i, x: 0.0)
        self.fail = fail or (lambda i, x, attempt: False)
        self.calls: list[tuple[int, list[int], bool, int]] = []
        self._attempts: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def scores_on(self, i, x):
        time.sleep(self.delay(i, x))
        with self._lock:
            key = x.tobytes()
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        failed = self.fail(i, x, attempt)
        with self._lock:
            self.calls.append((i, tags(x), not failed, len(x)))
        if failed:
            raise serve.ActorUnavailable("ActorDiedError")
        return anomaly_model.scores(self.model, x)

    def health(self):
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


def post_all(app, requests, threads=8):
    """POST every request from `threads` concurrent clients; {id: (status, json, headers)}."""
    results, lock = {}, threading.Lock()
    todo = list(range(len(requests)))

    def client():
        c = app.test_client()
        while True:
            with lock:
                if not todo:
                    return
                rid = todo.pop()
            r = c.post("/predict", json={"instances": requests[rid]})
            with lock:
                results[rid] = (r.status_code, r.get_json(), dict(r.headers))

    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results


def test_batching_returns_each_callers_own_rows_across_chunks_and_actors(pool):
    # Row counts that are not multiples of the batch size, some larger than it;
    # worker 0 is slow and the others random, so batches finish out of order.
    rnd = random.Random(7)
    fake = FakeActors(pool.model, size=3,
                      delay=lambda i, x: 0.03 if i == 0 else rnd.uniform(0, 0.01))
    batcher = serve.Batcher(fake, 8, max_batch_rows=16, max_wait_ms=5, max_queued_rows=10_000)
    requests = tagged_requests(60, sizes=[1, 5, 7, 13, 23, 37])
    results = post_all(serve.create_app(batcher), requests)
    assert sorted(results) == list(range(60))
    for rid, (status, body, _) in results.items():
        assert status == 200, body
        assert body["predictions"] == serve.predict_with(pool.model, requests[rid]), rid
    # What the app sent the actors: merged requests, split large ones, never over the limit.
    assert any(len(t) > 1 for _, t, _, _ in fake.calls), "no batch merged two requests"
    assert max(n for *_, n in fake.calls) == 16  # full batches, never more
    big = {rid for rid, r in enumerate(requests) if len(r) == 37}
    assert len({i for i, t, _, _ in fake.calls if big & set(t)}) >= 2  # split across actors
    assert batcher.stats()["rows"] == sum(n for *_, n in fake.calls) == sum(map(len, requests))
    assert batcher.stats()["batches"] == len(fake.calls)


def test_a_large_request_is_split_across_actors_in_order(pool):
    fake = FakeActors(pool.model, size=4, delay=lambda i, x: 0.02 * (4 - i))  # later parts first
    batcher = serve.Batcher(fake, 8, max_batch_rows=16, max_wait_ms=1)
    rows = tagged_requests(1, sizes=[61])[0]
    got = batcher.predict(rows)
    assert got == serve.predict_with(pool.model, rows)
    assert len(fake.calls) == 4 and len({i for i, *_ in fake.calls}) == 4


def test_a_failed_batch_fails_only_the_requests_in_it(pool):
    poisoned = {5, 17, 40}
    fake = FakeActors(pool.model, size=2, delay=lambda i, x: 0.002,
                      fail=lambda i, x, attempt: bool(poisoned & set(tags(x))))
    batcher = serve.Batcher(fake, 8, max_batch_rows=24, max_wait_ms=3, attempts=2)
    requests = tagged_requests(48, sizes=[3, 8, 11])
    results = post_all(serve.create_app(batcher), requests)
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
    batcher = serve.Batcher(fake, 8, max_batch_rows=20, max_wait_ms=2)
    requests = tagged_requests(30, sizes=[4, 9, 30])
    results = post_all(serve.create_app(batcher), requests)
    for rid, (status, body, _) in results.items():
        assert status == 200, body
        assert body["predictions"] == serve.predict_with(pool.model, requests[rid]), rid
    stats = batcher.stats()
    assert stats["resent_batches"] == stats["batches"] > 0 and stats["failed_batches"] == 0
    assert stats["resent_requests"] == stats["requests"] == 30
    # each answered row went out exactly twice: once failed, once answered
    sent = [rid for _, t, ok, _ in fake.calls if ok for rid in t]
    assert sorted(set(sent)) == list(range(30))
    assert stats["rows"] == sum(len(r) for r in requests)


def test_overload_answers_503_with_retry_after_and_recovers(pool):
    gate = threading.Event()
    fake = FakeActors(pool.model, size=1, delay=lambda i, x: gate.wait(30) and 0)
    batcher = serve.Batcher(fake, 8, max_batch_rows=64, max_wait_ms=0, max_queued_rows=20,
                            pipeline_depth=1)
    app = serve.create_app(batcher)
    held = tagged_requests(2, sizes=[8])
    first = post_all_async(app, held)
    deadline = time.monotonic() + 10
    while batcher.stats()["queued_rows"] < 16:  # both admitted, both stuck behind the gate
        assert time.monotonic() < deadline
        time.sleep(0.01)
    resp = app.test_client().post("/predict", json={"instances": [[0.0] * 8] * 8})
    assert not gate.is_set()  # answered at once, while the actor is still busy
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert "overloaded: 16 rows queued; limit 20" in resp.get_json()["error"]
    assert batcher.stats()["rejected_requests"] == 1
    gate.set()
    results = first()
    assert [results[r][0] for r in (0, 1)] == [200, 200]
    assert batcher.stats()["queued_rows"] == 0
    again = app.test_client().post("/predict", json={"instances": [[9.0] * 8] * 8})
    assert again.status_code == 200 and again.get_json()["predictions"][0]["anomaly"] is True


def post_all_async(app, requests):
    out = {}
    t = threading.Thread(target=lambda: out.update(post_all(app, requests, threads=len(requests))))
    t.start()

    def join():
        t.join(60)
        return out

    return join


def test_batching_off_keeps_the_per_request_path(pool):
    # --max-batch-rows 0: the app calls pool.predict directly (no Batcher)
    args = serve.build_parser().parse_args(["--max-batch-rows", "0"])
    assert args.max_batch_rows == 0
    with pytest.raises(SystemExit):
        serve.build_parser().parse_args(["--max-batch-rows", "-1"])
    with pytest.raises(ValueError, match="max_batch_rows"):
        serve.Batcher(FakeActors(pool.model), 8, max_batch_rows=0)
