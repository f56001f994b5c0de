"""The sequential baseline server: serve.py's Flask app, model in-process, one request at a time.

``python -m bench.serve_local --port P`` fits the same IsolationForest as the
actors do (workloads.serve.fit_model) and serves it with Flask's built-in
server, threaded=False, so requests are handled strictly one after another.
"""

from __future__ import annotations

import argparse
import sys

from workloads import serve


class InProcessModel:
    """What create_app needs from a pool (predict, health, n_features), without Ray."""

    def __init__(self, seed: int, n_features: int):
        self.model = serve.fit_model(seed, n_features)
        self.n_features = n_features

    def predict(self, rows):
        return serve.predict_with(self.model, rows)

    def health(self):
        return [{"index": 0, "alive": True, "pid": None, "node_id": "in-process"}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_local")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=serve.DEFAULT_SEED)
    p.add_argument("--features", type=int, default=serve.DEFAULT_FEATURES)
    args = p.parse_args(argv)
    app = serve.create_app(InProcessModel(args.seed, args.features))
    print(f"serve_local: listening on http://127.0.0.1:{args.port}", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
