"""The anomaly model and its HTTP contract, shared by serve.py and serve_app.py.

One place for what both servers must agree on: the model (an IsolationForest
fitted on data generated from a seed, so every process that fits it holds the
same model), request validation (the same 400 messages), the response body
and the JSON errors for unknown paths and methods.

This module imports nothing from ``workloads`` so it also works as a
top-level module (``import anomaly_model``) when ``workloads/`` itself is the
working directory, as in ``serve run serve_app:app`` or a KubeRay RayService.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import orjson

DEFAULT_FEATURES = 8
DEFAULT_SEED = 0
MAX_INSTANCES = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024
ENDPOINTS = "POST /predict, GET /healthz"


# --------------------------------------------------------------- model -------


def training_data(seed: int, n_features: int, n: int = 2048) -> np.ndarray:
    """Normal operating data: a correlated Gaussian cloud, plus 2% outliers."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(0, 0.5, size=(n_features, n_features)) + np.eye(n_features)
    normal = rng.normal(0, 1, size=(n - n // 50, n_features)) @ mixing
    outliers = rng.uniform(-8, 8, size=(n // 50, n_features))
    return np.vstack([normal, outliers])


def fit_model(seed: int = DEFAULT_SEED, n_features: int = DEFAULT_FEATURES):
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=100, contamination=0.02, random_state=seed, n_jobs=1)
    return model.fit(training_data(seed, n_features))


def scores(model, x) -> np.ndarray:
    """decision_function per row (negative = anomalous); rows are scored independently."""
    return model.decision_function(np.asarray(x, dtype=np.float64))


def predictions(row_scores) -> list[dict]:
    return [{"score": float(s), "anomaly": bool(s < 0)} for s in row_scores]


def predict_with(model, instances) -> list[dict]:
    return predictions(scores(model, instances))


# ------------------------------------------------------------ requests -------


class BadRequest(Exception):
    """The body is not a valid /predict request; the message says why (HTTP 400)."""


def parse_instances(body: bytes, n_features: int, max_instances: int = MAX_INSTANCES) -> np.ndarray:
    """The validated rows of a /predict body as an (n, n_features) float64 array.

    Raises BadRequest naming the first problem: not JSON, not an object, no
    "instances", too many rows, a row of the wrong length, a value that is
    not a finite number (JSON true/false and strings are refused).
    """
    try:
        # orjson and the byte scans below: ~3x less CPU per body than json (workloads/README.md)
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses a few bodies json takes (a 400-digit integer, a lone
        # surrogate): json parses those, and names what is wrong with the rest.
        doc = _json_loads(body)
    if not isinstance(doc, dict):
        raise BadRequest(f'body must be a JSON object {{"instances": [...]}}, got {_json_type(doc)}')
    if "instances" not in doc:
        raise BadRequest('missing "instances": send {"instances": [[...], ...]}')
    rows = doc["instances"]
    if not isinstance(rows, list) or not rows:
        raise BadRequest('"instances" must be a non-empty list of rows')
    if len(rows) > max_instances:
        raise BadRequest(f"too many instances: {len(rows)} > {max_instances} per request; split the batch")
    x = _numbers_only(body, rows, n_features)
    if x is not None:
        return x
    # Any other body: one pass over the value types (bool is a subclass of
    # int, so compare exact types), else the loop below names the first bad value.
    if all(type(r) is list and len(r) == n_features for r in rows) and (
        {type(v) for r in rows for v in r} <= {int, float}
    ):
        x = _as_array(rows, n_features)
        if x is not None and np.isfinite(x).all():
            return x
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadRequest(f"instances[{i}] must be a list of {n_features} numbers, got {_json_type(row)}")
        if len(row) != n_features:
            raise BadRequest(f"instances[{i}] has {len(row)} values; the model expects {n_features}")
        for j, v in enumerate(row):
            if type(v) not in (int, float):
                raise BadRequest(f"instances[{i}][{j}] is not a number: {_json_text(v)}")
            if not math.isfinite(_as_float(v)):
                raise BadRequest(f"instances[{i}][{j}] is not finite: {v!r}")
    raise AssertionError("unreachable: the fast path refused rows the slow path accepts")


def _json_loads(body: bytes):
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _numbers_only(body: bytes, rows: list, n_features: int) -> np.ndarray | None:
    """The rows as an array if the body can hold nothing but numbers in them, else None.

    A valid JSON body whose only quotes are those of its one key and that
    spells no true/false/null has only numbers and lists below "instances";
    then the per-value type check can be skipped (C-speed byte scans instead
    of a Python loop over every value). None sends the body to the checks
    that name the problem.
    """
    if (body.count(b'"') != 2 or b"true" in body or b"false" in body or b"null" in body
            or not all(type(r) is list and len(r) == n_features for r in rows)):
        return None
    x = _as_array(rows, n_features)
    return x if x is not None and np.isfinite(x).all() else None


def _as_array(rows: list, n_features: int) -> np.ndarray | None:
    try:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64,
                           count=len(rows) * n_features)
    except (TypeError, ValueError, OverflowError):  # a nested list; an integer beyond float64
        return None
    return flat.reshape(len(rows), n_features)


def _as_float(v) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _reject_constant(name):
    raise ValueError(f"body contains {name}, which is not a valid number here")


def _json_type(v) -> str:
    """The JSON name of a parsed value's type (the client sent JSON, not Python)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}
    return names.get(type(v), type(v).__name__)


def _json_text(v) -> str:
    """A value as the client wrote it (JSON): true, null, "8", not Python's True/None/'8'."""
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------- responses -------


def json_dumps(doc) -> bytes:
    # orjson: ~7x faster than json.dumps for 2048 predictions (1 ms vs 6 ms), same values
    return orjson.dumps(doc)


def response_body(row_scores) -> bytes:
    """{"predictions": [{"score": s, "anomaly": b}, ...]} as UTF-8 JSON."""
    return json_dumps({"predictions": predictions(row_scores)})


def error_body(message: str) -> bytes:
    return json_dumps({"error": message})


def route_error(method: str, path: str) -> tuple[int, str] | None:
    """(status, message) for a request no endpoint takes, or None if it is one of ENDPOINTS."""
    allowed = {"/predict": "POST", "/healthz": "GET"}
    if path not in allowed:
        return 404, f"no endpoint {path}; endpoints: {ENDPOINTS}"
    if method.upper() != allowed[path] and not (allowed[path] == "GET" and method.upper() == "HEAD"):
        return 405, f"{method.upper()} {path} is not allowed; use {allowed[path]} {path}"
    return None
