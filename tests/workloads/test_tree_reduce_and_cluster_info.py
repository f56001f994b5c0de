"""Pure parts of workloads/tree_reduce.py and workloads/cluster_info.py."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import cluster_info, tree_reduce
from workloads.tree_reduce import combine, stats_of


class Immediate:
    """Stands in for a Ray task handle: .remote() runs the function now (refs = values)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def remote(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.fixture(scope="module")
def partials():
    x = np.random.default_rng(3).standard_normal(10_007) * 2
    return x, [stats_of(x[a:b], 16) for a, b in tree_reduce.chunk_bounds(x.size, 11)]


def test_chunk_bounds_cover_the_array_exactly():
    b = tree_reduce.chunk_bounds(10, 3)
    assert b == [(0, 3), (3, 6), (6, 10)]
    assert tree_reduce.chunk_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]


def test_tree_and_chain_agree_with_numpy(partials):
    x, parts = partials
    tree_task, chain_task = Immediate(combine), Immediate(combine)
    tree, tree_depth = tree_reduce.tree_reduce(parts, tree_task)
    chain, chain_depth = tree_reduce.chain_reduce(parts, chain_task)
    assert (tree_depth, chain_depth) == (4, 10)  # ceil(log2 11), 11 - 1
    assert tree_task.calls == chain_task.calls == 10
    whole = stats_of(x, 16)
    assert tree_reduce.disagreements(tree, chain, "t") == []
    assert tree_reduce.disagreements(tree, whole, "t") == []
    assert tree.count == x.size and tree.hist.sum() == x.size
    assert tree.mean == pytest.approx(x.mean()) and tree.std == pytest.approx(x.std())


def test_disagreements_are_reported(partials):
    _, parts = partials
    a = parts[0]
    b = combine(a, stats_of(np.array([100.0]), 16))
    problems = tree_reduce.disagreements(a, b, "tree vs chain")
    assert any("count" in p for p in problems) and any("hi" in p for p in problems)
    assert any("histograms differ in 1 bins" in p for p in problems)


def test_cluster_info_describes_alive_nodes_head_first():
    nodes = [
        {"NodeID": "w" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.3",
         "NodeManagerHostname": "w1",
         "Resources": {"CPU": 8.0, "GPU": 1.0, "memory": 32 * 2**30, "object_store_memory": 2**30,
                       "node:10.0.0.3": 1.0, "accelerator_type:T4": 1.0}},
        {"NodeID": "d" * 56, "Alive": False, "Resources": {"CPU": 4.0}},
        {"NodeID": "h" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.2",
         "NodeManagerHostname": "head",
         "Resources": {"CPU": 0.0, "memory": 2**30, "node:__internal_head__": 1.0}},
    ]
    report = cluster_info.describe(nodes, {"CPU": 6.0, "GPU": 1.0, "node:10.0.0.3": 1.0})
    assert report["totals"] == {"nodes": 2, "cpus": 8.0, "gpus": 1.0}
    assert report["available"] == {"CPU": 6.0, "GPU": 1.0}
    head, worker = report["nodes"]
    assert head["head"] and head["cpus"] == 0.0 and head["memory_gib"] == 1.0
    assert not worker["head"] and worker["gpus"] == 1.0 and worker["memory_gib"] == 32.0
    assert worker["resources"] == {"CPU": 8.0, "GPU": 1.0, "accelerator_type:T4": 1.0,
                                   "memory": 32 * 2**30, "object_store_memory": 2**30}
    text = cluster_info.render_text({"ray_version": "2.60.0", "python": "3.11.7", **report})
    assert text.splitlines()[0] == ("This cluster consists of 2 nodes, 8 CPUs, 1 GPU "
                                    "(Ray 2.60.0, Python 3.11.7)")
    assert "accelerator_type:T4" in text and "available now: CPU 6, GPU 1" in text
