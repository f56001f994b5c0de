"""The naive baseline server: Flask, the model in-process, one request at a time.

``python -m bench.serve_local --port P`` fits the same IsolationForest as
serve.py's actors (anomaly_model.fit_model) and serves the same contract
(anomaly_model: the same parsing and 400 messages, the same response bytes,
413 and JSON 404/405) with Flask's built-in server, threaded=False, so
requests are handled strictly one after another: what a user writes first.
"""

from __future__ import annotations

import argparse
import os
import sys

from workloads import anomaly_model


def create_app(model, n_features: int, max_instances: int = anomaly_model.MAX_INSTANCES):
    """A Flask app scoring each request in this process."""
    from flask import Flask, Response, request

    app = Flask("ray-gcp-naive")
    app.config["MAX_CONTENT_LENGTH"] = anomaly_model.MAX_BODY_BYTES

    def reply(body: bytes, status: int = 200) -> Response:
        return Response(body, status=status, mimetype="application/json")

    @app.post("/predict")
    def predict():
        try:
            x = anomaly_model.parse_instances(request.get_data(cache=False), n_features,
                                              max_instances)
        except anomaly_model.BadRequest as e:
            return reply(anomaly_model.error_body(str(e)), 400)
        return reply(anomaly_model.response_body(anomaly_model.scores(model, x)))

    @app.get("/healthz")
    def healthz():
        return reply(anomaly_model.json_dumps({"status": "ok", "actors": [
            {"index": 0, "alive": True, "pid": os.getpid(), "node_id": "in-process"}]}))

    @app.errorhandler(404)
    @app.errorhandler(405)
    def no_route(_e):
        status, message = anomaly_model.route_error(request.method, request.path)
        return reply(anomaly_model.error_body(message), status)

    @app.errorhandler(413)
    def too_large(_e):
        return reply(anomaly_model.error_body(
            f"body larger than {anomaly_model.MAX_BODY_BYTES} bytes; split the batch"), 413)

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_local")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=anomaly_model.DEFAULT_SEED)
    p.add_argument("--features", type=int, default=anomaly_model.DEFAULT_FEATURES)
    args = p.parse_args(argv)
    app = create_app(anomaly_model.fit_model(args.seed, args.features), args.features)
    print(f"serve_local: listening on http://127.0.0.1:{args.port}", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
