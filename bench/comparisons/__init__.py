"""One module per comparison. Each exposes NAME, TITLE, COMMAND and some of:

- ``local(ctx, p) -> dict``: measurements without Ray (run before any cluster
  is up, so idle Ray daemons do not slow the baselines);
- ``on_cluster(ctx, p, lc, data) -> dict``: measurements on the shared work
  cluster (one worker with exactly the usable cores);
- ``standalone(ctx, p) -> dict``: measurements that bring their own clusters
  or need none (scale-up, node setup);
- ``checks(data) -> dict``: correctness of what was measured (outputs agree).
"""

from bench.comparisons import (
    annotate,
    e2e,
    granularity,
    node_setup,
    scaleup,
    serve,
    tree_reduce,
)

ALL = {m.NAME: m for m in (annotate, granularity, scaleup, node_setup, serve, tree_reduce, e2e)}
