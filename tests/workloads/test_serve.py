"""workloads/serve.py without Ray: request validation and the Flask app around a real model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workloads import serve


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
        (b"[[1, 2]]", 'body must be a JSON object {"instances": [...]}, got list'),
        (b'{"rows": [[1]]}', 'missing "instances"'),
        (b'{"instances": []}', '"instances" must be a non-empty list'),
        (b'{"instances": 5}', '"instances" must be a non-empty list'),
        (b'{"instances": [[1,2,3]]}', "instances[0] has 3 values; the model expects 8"),
        (b'{"instances": [[1,2,3,4,5,6,7,8], 3]}', "instances[1] must be a list of 8 numbers, got int"),
        (b'{"instances": [[1,2,3,4,5,6,7,"8"]]}', "instances[0][7] is not a number: '8'"),
        (b'{"instances": [[1,2,3,4,5,6,7,true]]}', "instances[0][7] is not a number: True"),
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
