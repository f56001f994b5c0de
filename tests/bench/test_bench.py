"""The benchmark code's pure parts, plus one small end-to-end comparison on the shared cluster.

Timings are never asserted (speed targets live in BENCHMARKS.md); these tests
check that the numbers are computed, checked and reported correctly.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import shutil
import threading

import numpy as np
import pytest

from bench import cli, config, loadgen, machine, report, stats, work
from bench.clusters import BenchError, parse_result, scaleup_spec, work_spec
from bench.comparisons import annotate as annotate_cmp
from bench.comparisons import serve as serve_cmp
from cluster.spec import local_default_spec

# ---------------------------------------------------------------- stats ------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = list(np.random.default_rng(3).exponential(1.0, size=101)) + [7.0, 0.1]
    assert stats.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_median_summary_ratio_efficiency():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 2, 3]) == 2.5
    assert stats.summary([2.0, 1.0, 4.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 4.0}
    assert stats.ratio(10.0, 4.0) == 2.5
    assert stats.efficiency(1.5, 2) == 0.75
    for bad in (lambda: stats.median([]), lambda: stats.percentile([1], 101),
                lambda: stats.ratio(1, 0), lambda: stats.efficiency(1, 0)):
        with pytest.raises(ValueError):
            bad()


def test_formatting():
    assert stats.fmt_ratio(1.234) == "1.23x"
    assert stats.fmt_seconds(123.4) == "123 s"
    assert stats.fmt_seconds(12.34) == "12.3 s"
    assert stats.fmt_seconds(1.234) == "1.23 s"
    assert stats.fmt_seconds(0.0123) == "12 ms"
    assert stats.fmt_spread({"n": 3, "median": 2.0, "min": 1.5, "max": 2.5}) == \
        "2.00 s (1.50 s to 2.50 s, n=3)"


# -------------------------------------------------------------- machine ------


def test_machine_description_parses_proc_files():
    assert machine.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert machine.cpu_model("processor: 0\n") == "unknown"
    assert machine.mem_total_gib("MemTotal:       24684544 kB\n") == 23.5
    d = machine.describe()
    assert d["usable_cores"] >= 1 and d["python"].startswith("3.11")
    assert len(d["load_average_at_start"]) == 3


# ---------------------------------------------------------------- specs ------


def test_bench_specs_keep_the_spec_defaults_but_size_the_workers():
    base = local_default_spec()
    w = work_spec(2)
    assert w.worker_types["cpu-worker"].ray_resources()["CPU"] == 2
    assert w.worker_types["cpu-worker"].min_workers == 1 == w.max_workers
    assert w.head.ray_resources()["CPU"] == 0
    ours, ray_default = scaleup_spec(8, None), scaleup_spec(8, 1.0)
    assert ours.upscaling_speed == base.upscaling_speed != 1.0
    assert ray_default.upscaling_speed == 1.0
    assert ours.worker_types["cpu-worker"].max_workers == 8 == ours.max_workers
    # The two runs differ in nothing but upscaling_speed.
    a, b = ours.model_dump(), ray_default.model_dump()
    a.pop("upscaling_speed"), b.pop("upscaling_speed")
    assert a == b


def test_scaleup_ours_uses_renders_launch_settings_ray_default_none():
    from bench.comparisons import scaleup
    from cluster.render import launch_concurrency

    spec = scaleup_spec(8, None)
    n = str(launch_concurrency(spec))
    assert scaleup.launch_env(spec, ours=True) == {
        "AUTOSCALER_MAX_LAUNCH_BATCH": n, "AUTOSCALER_MAX_CONCURRENT_LAUNCHES": n}
    assert scaleup.launch_env(scaleup_spec(8, 1.0), ours=False) == {}


def test_driver_result_parsing():
    assert parse_result('noise\nBENCH_RESULT {"a": 1}\n') == {"a": 1}
    with pytest.raises(BenchError, match="no result line"):
        parse_result("only noise\n")


# ----------------------------------------------------------------- work ------


def test_chunks_and_canonical_rows():
    assert work.chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError):
        work.chunks([1], 0)
    a = [{"key": "x", "ok": True, "row": {"key": "x", "w": 1, "node": "n1"}},
         {"key": "y", "ok": False, "reason": "bad"}]
    b = [{"key": "y", "ok": False, "reason": "bad"},
         {"key": "x", "ok": True, "row": {"key": "x", "w": 1, "node": "n2"}}]
    # The node differs legitimately between executors; order does not matter either.
    assert work.digest_rows(work.canonical_rows(a)) == work.digest_rows(work.canonical_rows(b))
    b[1]["row"]["w"] = 2
    assert work.digest_rows(work.canonical_rows(a)) != work.digest_rows(work.canonical_rows(b))


# ------------------------------------------------------------------ cli ------


def test_only_accepts_known_names_and_keeps_the_run_order():
    assert cli.parse_only(None) == cli.ORDER
    assert cli.parse_only(["serve,annotate"]) == ["annotate", "serve"]
    assert cli.parse_only(["tree_reduce", "scaleup"]) == ["tree_reduce", "scaleup"]
    with pytest.raises(SystemExit, match="allowed: node_setup, annotate"):
        cli.parse_only(["anotate"])


def test_every_comparison_has_sizes_and_a_reproduce_command():
    from bench.comparisons import ALL

    assert set(ALL) == set(cli.ORDER) == set(config.FULL) == set(config.QUICK)
    for name, mod in ALL.items():
        assert mod.COMMAND == f"python -m bench --only {name}"
        assert hasattr(mod, "standalone") or hasattr(mod, "on_cluster")


# -------------------------------------------------------------- loadgen ------


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = 200 if json.loads(body).get("ok") else 400
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        try:
            self.wfile.write(b"{}")
        except OSError:  # wrk closes its connections when its time is up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"),
    reason="wrk not installed (apt-get install wrk; .ci/run installs it)")


@needs_wrk
def test_loadgen_runs_wrk_and_counts_non_2xx(echo_server):
    ok = loadgen.run("127.0.0.1", echo_server, "/", b'{"ok": true}', connections=3, duration=1)
    assert ok["requests"] == ok["ok"] > 0 and ok["errors"] == ok["non_2xx"] == 0
    assert ok["rps"] > 0 and 0 < ok["p50_ms"] <= ok["p99_ms"] <= ok["max_ms"]
    assert 0 < ok["loadgen_cpu_seconds"] < 1.5  # wrk's own CPU, from the kernel
    bad = loadgen.run("127.0.0.1", echo_server, "/", b'{"ok": false}', connections=2, duration=1)
    assert bad["ok"] == 0 and bad["non_2xx"] == bad["requests"] > 0 and bad["rps"] == 0


def test_loadgen_only_targets_this_machine():
    with pytest.raises(ValueError, match="127.0.0.1"):
        loadgen.run("10.0.0.1", 80, "/", b"{}", connections=1, duration=1)


def test_wrk_summary_fields():
    raw = {"requests": 110, "duration_us": 2_000_000, "bytes": 1, "connect_errors": 1,
           "read_errors": 0, "write_errors": 0, "status_errors": 10, "timeouts": 2,
           "p50_us": 1500, "p90_us": 2000, "p99_us": 9000, "max_us": 12000, "mean_us": 1.0}
    s = loadgen.summarize(raw, cpu_seconds=0.5, cores=2)
    assert (s["ok"], s["non_2xx"], s["socket_errors"], s["errors"]) == (100, 10, 3, 13)
    assert s["rps"] == 50.0 and s["p99_ms"] == 9.0
    assert s["loadgen_cpu_core_share"] == 0.25 and s["loadgen_cpu_machine_share"] == 0.125
    with pytest.raises(loadgen.LoadGenError, match="no WRK_RESULT"):
        loadgen.parse_result("Running 1s test\n")


# --------------------------------------------------------------- report ------

DOC = {
    "schema": 1,
    "machine": {"date_utc": "2026-11-22T06:00:00Z", "cpu_model": "AMD EPYC", "logical_cpus": 2,
                "usable_cores": 2, "affinity": [0, 1], "mem_total_gib": 23.5, "python": "3.11.7",
                "ray": "2.60.0", "load_average_at_start": [0.5, 0.7, 1.0]},
    "comparisons": {
        "annotate": {
            "title": "annotate", "command": "python -m bench --only annotate",
            "started": "t", "load_at_start": [0.4, 0.5, 0.6], "wall_seconds": 60,
            "phase_loads": {"without Ray": [0.4, 0.5, 0.6], "on the Ray cluster": [1.2, 0.7, 0.6]},
            "data": {"cores": 2, "items": 100, "ray_cluster_cpus": 2, "ray_tasks": 13,
                     "seconds": {"sequential": [10.0, 12.0, 11.0], "pool": [6.0, 5.0, 5.5],
                                 "ray": [8.0, 8.0, 8.0]},
                     "digests": {"sequential": ["a", "b"], "pool": ["a", "b"], "ray": ["a", "b"]}},
        },
        "scaleup": {
            "title": "scale", "command": "python -m bench --only scaleup", "started": "t",
            "load_at_start": [1, 1, 1], "wall_seconds": 100,
            "data": {"workers": 8, "autoscaler": "v1", "update_interval_s": 1,
                     "runs": {"ray_default": {"upscaling_speed": 1.0,
                                              "requested": [[0, 0], [1.0, 5], [9.0, 6], [12.0, 8]],
                                              "joined": [[0, 0], [5.0, 1], [20.0, 8]],
                                              "seconds_to_all": 20.0,
                                              "seconds_to_all_requested": 12.0, "reached": True,
                                              "launch_rounds": 2},
                              "ours": {"upscaling_speed": 9999.0,
                                       "launch_env": {"AUTOSCALER_MAX_LAUNCH_BATCH": "10",
                                                      "AUTOSCALER_MAX_CONCURRENT_LAUNCHES": "10"},
                                       "requested": [[0, 0], [1.0, 8]],
                                       "joined": [[0, 0], [5.0, 1], [16.0, 8]],
                                       "seconds_to_all": 16.0, "seconds_to_all_requested": 1.0,
                                       "reached": True, "launch_rounds": 1}}},
        },
        "serve": {"title": "serve", "command": "python -m bench --only serve", "started": "t",
                  "load_at_start": [1, 1, 1], "wall_seconds": 50,
                  "error": "BenchError: server exited (1)"},
        "tree_reduce": {
            "title": "tree", "command": "python -m bench --only tree_reduce", "started": "t",
            "load_at_start": [1, 1, 1], "wall_seconds": 9,
            "data": {"seconds": {"chain": [0.3, 0.2, 0.4], "tree": [0.1, 0.1, 0.2]},
                     "depth": {"chain": 63, "tree": 6}, "map_seconds": 0.5, "chunks": 64,
                     "problems": [], "cluster_cpus": 2, "size": 1000}},
    },
}


def _with_checks(doc):
    from bench.comparisons import ALL

    doc = copy.deepcopy(doc)
    for name, e in doc["comparisons"].items():
        if "data" in e:
            e["checks"] = ALL[name].checks(e["data"])
    return doc


def test_report_computes_ratios_efficiency_and_flags_failures():
    md = report.render(_with_checks(DOC))
    # annotate: medians 11 / 5.5 / 8 -> Pool 2.00x (100%), Ray 1.38x (69%), Ray vs Pool 0.69x
    assert "| multiprocessing.Pool(2) | 5.50 s (5.00 s to 6.00 s, n=3) | 18.2 | 2.00x | 100% |" in md
    assert "| annotate: Ray vs sequential | 1.38x | `python -m bench --only annotate` |" in md
    assert "| annotate: Ray vs Pool | 0.69x |" in md
    assert "69%" in md and "Check: outputs agree" in md
    # scale-up: first launch round 5 of 8 vs 8 of 8; alive 20 / 16 = 1.25x; requested 12x
    assert "| v1 | Ray default | 1 | 5 / 10 (Ray default) | 5 of 8 | 12.0 s | 20.0 s | 2 |" in md
    assert "| v1 | ours (spec + render) | 9999 | 10 / 10 | 8 of 8 | 1.00 s | 16.0 s | 1 |" in md
    assert "alive, Ray default / ours | 1.25x" in md and "requested, Ray default / ours | 12.00x" in md
    assert "scale-up v1: launch rounds on fake nodes, Ray default / ours | 2 / 1 = 2.00x" in md
    # A failed comparison is reported as failed, not silently dropped.
    assert "**FAILED:** BenchError: server exited (1)" in md
    assert "| serve | failed | `python -m bench --only serve` |" in md
    assert ("each part: without Ray: 0.4, 0.5, 0.6; on the Ray cluster: 1.2, 0.7, 0.6" in md)
    assert "load average at start 1, 1, 1" in md  # one-part comparisons
    assert report.headline_value(_with_checks(DOC), "annotate: Pool vs sequential") == "2.00x"
    assert "| tree | 6 | 100 ms (100 ms to 200 ms, n=3) | 3.00x |" in md


def test_report_flags_disagreeing_outputs():
    doc = copy.deepcopy(DOC)
    doc["comparisons"]["annotate"]["data"]["digests"]["ray"] = ["a", "DIFFERENT"]
    checks = annotate_cmp.checks(doc["comparisons"]["annotate"]["data"])
    assert checks["outputs_agree"] is False
    md = report.render(_with_checks(doc))
    assert "**OUTPUTS DISAGREE**" in md


def test_serve_check_compares_predictions_and_errors():
    base = {"64": {"predictions_digest": "d1", "errors": 0}}
    three = {k: copy.deepcopy(base) for k in serve_cmp.DEFAULT_SERVERS}
    three["limit"] = {"1": {"64": 1000.0}, "2": {"64": 2000.0}}
    assert serve_cmp.checks(three)["outputs_agree"]
    for key in serve_cmp.DEFAULT_SERVERS:
        wrong = copy.deepcopy(three)
        wrong[key]["64"]["predictions_digest"] = "d2"
        assert not serve_cmp.checks(wrong)["outputs_agree"], key
        failed = copy.deepcopy(three)
        failed[key]["64"]["errors"] = 1
        assert not serve_cmp.checks(failed)["outputs_agree"], key
    missing = copy.deepcopy(three)
    del missing["ray_serve"]
    assert "servers measured: sequential, batching;" in serve_cmp.checks(missing)["detail"]
    no_limit = copy.deepcopy(three)
    no_limit["limit"] = {"1": {}}
    assert not serve_cmp.checks(no_limit)["outputs_agree"]


def test_model_limit_interpolates_linearly_in_seconds_per_call():
    from bench import model_limit

    # 6 ms + 4 us/row per call: exact at the grid points and in between.
    grid = {str(b): b / (0.006 + 4e-6 * b) for b in (1, 64, 1024, 8192)}
    for b in (1, 64, 300, 1024, 5000, 8192):
        assert model_limit.interpolate(grid, b) == pytest.approx(b / (0.006 + 4e-6 * b))
    assert model_limit.interpolate(grid, 10000) == pytest.approx(10000 / (0.006 + 0.04))


def test_model_limit_measures_the_model_in_process_on_one_and_two_cores():
    from bench import model_limit

    cores = sorted(os.sched_getaffinity(0))[:2]
    got = model_limit.measure([1, 256], 0.3, 8, 0, cores, log=lambda m: None)
    assert set(got["1"]) == {"1", "256"} and all(v > 0 for v in got["1"].values())
    assert got["1"]["256"] > got["1"]["1"]  # more rows per call, more rows per second
    if len(cores) == 2:
        assert set(got["2"]) == {"1", "256"}


def test_profile_summary_sorts_py_spy_samples_into_the_fronts_stages():
    from bench import serve_accounting as acc

    samples = [
        "main (workloads/serve.py:300);_start (workloads/serve.py:360) 50",
        ("run_asgi (uvicorn/protocols/http/httptools_impl.py:422);"
         "__call__ (workloads/serve_http.py:62);_predict (workloads/serve_http.py:80);"
         "parse_instances (workloads/anomaly_model.py:77) 30"),
        ("_run (workloads/serve_batcher.py:211);scores_on (workloads/serve.py:162);"
         "_actor_method_call (ray/actor.py:2578) 15"),
        "data_received (uvicorn/protocols/http/httptools_impl.py:174) 5",
    ]
    raw = "\n".join(samples)
    got = acc.summarize_profile(raw)
    assert got["samples"] == 100
    assert got["stages"] == {acc.LOOP_STAGE: 0.5, "parse and validate (JSON -> array)": 0.3,
                             "Ray: submit calls, receive results": 0.15,
                             "HTTP (uvicorn, httptools, asyncio)": 0.05}
    assert got["top_functions"][0] == ["_start (workloads/serve.py:360)", 0.5]


def test_cpu_split_accounts_for_every_second_of_the_machine():
    from bench import serve_accounting as acc

    before = {"model": 0, "actors": 0, "front": 0, "cluster": 0, "wrk": 0, "machine": 100.0}
    after = {"model": 8.0, "actors": 10.0, "front": 5.0, "cluster": 1.0, "wrk": 0.5,
             "machine": 118.0}
    got = acc.split_cpu(before, after, elapsed=10.0, cores=2, requests=1000)
    sec = got["seconds"]
    assert sec["model (IsolationForest in the actors)"] == 8.0
    assert sec["actors' other work (Ray calls, (de)serialisation)"] == 2.0
    assert sec["other processes on the machine"] == 1.5 and sec["idle"] == 2.0
    assert sum(sec.values()) == pytest.approx(got["machine_seconds"]) == 20.0
    assert got["ms_per_request"]["HTTP front (serve.py process)"] == 5.0


MONITOR_LOG = """\
2026-11-22 06:01:00,100\tINFO autoscaler.py:1450 -- StandardAutoscaler: Queue 5 new nodes for launch
2026-11-22 06:01:00,200\tINFO node_launcher.py:177 -- NodeLauncher0: Got 5 nodes to launch.
2026-11-22 06:01:03,000\tINFO node_launcher.py:177 -- NodeLauncher0: Launching 5 nodes, type w.
2026-11-22 06:01:04,500\tINFO autoscaler.py:1450 -- StandardAutoscaler: Queue 1 new nodes for launch
2026-11-22 06:01:07,000\tINFO autoscaler.py:1450 -- StandardAutoscaler: Queue 2 new nodes for launch
"""


def test_launch_requests_parsed_from_the_autoscaler_log():
    import datetime

    from bench.comparisons import scaleup

    reqs = scaleup.parse_launch_requests(MONITOR_LOG)
    t0 = datetime.datetime(2026, 11, 22, 6, 1, 0).timestamp()
    assert [(round(t - t0, 1), n) for t, n in reqs] == [(0.1, 5), (4.5, 1), (7.0, 2)]
    assert scaleup.requested_steps(reqs, t0) == [(0.0, 0), (0.1, 5), (4.5, 6), (7.0, 8)]


def test_v2_launch_lines_count_too():
    from bench.comparisons import scaleup

    log = ("2026-11-22 06:01:02,000\tINFO node_provider.py:485 -- Launching 1 nodes of type "
           "cpu-worker.\n2026-11-22 06:01:03,000\tINFO node_provider.py:489 -- Launched 1 nodes "
           "of type cpu-worker.\n")
    assert [n for _, n in scaleup.parse_launch_requests(log)] == [1]


def test_scaleup_check_fails_when_the_v2_runs_failed():
    from bench.comparisons import scaleup

    data = copy.deepcopy(DOC["comparisons"]["scaleup"]["data"])
    assert scaleup.checks(data)["outputs_agree"]
    data["v2"] = {"runs": copy.deepcopy(data["runs"])}
    assert scaleup.checks(data)["detail"].startswith("all 4 runs reached")
    text, heads = report.scaleup_section(data)
    assert "| v2 | ours (spec + render) |" in text and len(heads) == 5
    assert "GCP estimate (from Ray's source, not measured" in text
    data["v2"] = {"error": "TimeoutError: waited"}
    assert not scaleup.checks(data)["outputs_agree"]
    assert "The autoscaler v2 runs FAILED: TimeoutError: waited." in report.scaleup_section(data)[0]


def test_launch_rounds():
    from bench.comparisons.scaleup import launch_rounds

    # Ray default from zero: 5 requested at once, the rest only after nodes joined.
    assert launch_rounds([(0, 0), (0.1, 5), (4.5, 6), (7.0, 8)],
                         [(0, 0), (4.0, 1), (6.5, 2), (9, 3), (12, 8)]) == 2
    # Ours: all 8 requested before any node joined: one boot deep.
    assert launch_rounds([(0, 0), (0.1, 8)], [(0, 0), (4.0, 1), (20, 8)]) == 1
    # A chain: each node requested after the previous joined.
    assert launch_rounds([(0, 0), (1, 1), (3, 2), (5, 3)], [(0, 0), (2, 1), (4, 2), (6, 3)]) == 3
    assert launch_rounds([(0, 0)], [(0, 0)]) == 0
    # v1 may queue extra launches while fake nodes are slow to start; beyond N they do not count.
    assert launch_rounds([(0, 0), (0.1, 8), (9.0, 10)], [(0, 0), (4.0, 1), (20, 8)], 8) == 1


def test_first_round_counts_nodes_requested_together():
    assert report.first_round([[0, 0], [1.0, 5], [2.8, 6], [9.0, 8]]) == 5
    assert report.first_round([[0, 0], [1.0, 3], [2.0, 8]]) == 8
    assert report.first_round([[0, 0]]) == 0


def _serve_result(rps, p99, batch=None):
    out = {"rps": rps, "p50_ms": p99 / 2, "p99_ms": p99, "ok": int(rps * 10), "non_2xx": 0,
           "socket_errors": 0, "errors": 0, "loadgen_cpu_core_share": 0.05,
           "predictions_digest": "x", "load": [0.5, 0.6, 0.7]}
    if batch:
        secs = {"model (IsolationForest in the actors)": 10.0, "HTTP front (serve.py process)": 4.0,
                "idle": 6.0}
        out["breakdown"] = {
            "batches": 100, "mean_batch_rows": batch,
            "ms_per_request": {"read body": 0.01, "parse and validate": 0.05, "queue (waiting for "
                               "a batch to leave)": 1.0, "in the batch (actor call)": 8.0,
                               "build response": 0.02, "send response": 0.03},
            "ms_per_batch": {"actor call, round trip": 8.5, "model inside the actor": 8.0},
            "cpu": {"seconds": secs, "machine_seconds": 20.0,
                    "ms_per_request": {k: v / int(rps * 10) * 1000 for k, v in secs.items()}}}
    return out


# 6 ms + 4 us per row per call on one core; twice that on two
LIMIT = {n: {str(b): n * b / (0.006 + 4e-6 * b) for b in (1, 64, 512, 1024, 2048, 8192)}
         for n in (1, 2)}
SERVE_DATA = {
    "rows_per_request": [64, 2048], "concurrency": 16, "duration": 10.0, "actors": 2, "cores": 2,
    "loadgen": "wrk -t1 (bench/wrk_post.lua)",
    "limit": {str(n): g for n, g in LIMIT.items()},
    "sequential": {k: _serve_result(100.0, 200.0) for k in ("64", "2048")},
    "batching": {"64": _serve_result(1000.0, 50.0, batch=512),
                 "2048": _serve_result(160.0, 100.0, batch=8192)},
    "ray_serve": {"64": _serve_result(200.0, 100.0), "2048": _serve_result(320.0, 25.0)},
    "batching_profile": {"rows": 64, "seconds": 8, "rps_while_sampled": 990.0, "samples": 2000,
                         "stages": {"parse and validate (JSON -> array)": 0.25,
                                    "HTTP (uvicorn, httptools, asyncio)": 0.75},
                         "top_functions": [["parse_instances (workloads/anomaly_model.py:77)",
                                            0.2]]},
}
SERVE_DATA["limit_at"] = serve_cmp.limits_at(SERVE_DATA)


def test_serve_section_reports_every_server_at_each_size_with_its_share_of_the_limit():
    text, heads = report.serve_section(SERVE_DATA)
    lim64 = 2 * 512 / (0.006 + 4e-6 * 512)  # the 2-core limit at serve.py's 512-row batches
    assert SERVE_DATA["limit_at"]["64"]["batch"] == 512
    assert SERVE_DATA["limit_at"]["64"]["2"] == pytest.approx(lim64, rel=1e-3)
    assert f"| 64 | 512 | {lim64 / 2:,.0f} | {lim64:,.0f} | {lim64 / 64:,.0f} |" in text
    share = f"{1000 * 64 / lim64:.0%}"
    assert (f"| 64 | serve.py (asyncio front, dynamic batching) (2 actors) | 1000.0 | 64,000 | "
            f"{share} | {2 * 1000 * 64 / lim64:.0%} | 25.0 ms | 50.0 ms | 10000 / 0 / 0 | 5% | "
            "0.5 | 10.00x |") in text
    assert "| 2048 | Ray Serve app (`serve_app.py`, `@serve.batch`) (2 replicas) | 320.0 |" in text
    assert "16 concurrent connections from wrk" in text
    heads = dict(heads)
    assert heads["serve (64 rows/request): requests/s, serve.py / naive Flask"] == "10.00x"
    assert heads["serve (64 rows/request): p99 latency, naive Flask / serve.py"] == "4.00x"
    assert heads["serve (64 rows/request): serve.py rows/s, share of the model's own 2-core limit "
                 "(at 512-row batches)"] == share
    assert heads["serve (2048 rows/request): requests/s, serve.py / Ray Serve"] == "0.50x"
    # the verdicts: where Ray Serve wins, and serve.py vs the naive server
    assert "Ray Serve answers more requests/s at 2048 rows/request" in text
    assert ("serve.py vs the naive server: at least as many requests/s at every size; p99 not "
            "above the naive server's at any size") in text
    # where the time goes: CPU shares, the path of a request, the profile
    assert "| 64 | 50% (1.00) | 20% (0.40) | 30% (0.60) |" in text
    assert "| 64 | 512 | 0.01 | 0.05 | 1.00 | 8.00 | 0.02 | 0.03 | 8.50 | 8.00 | 0.50 |" in text
    assert "| parse and validate (JSON -> array) | 25% |" in text


def test_serve_section_of_results_saved_before_the_limit_still_renders():
    old = {k: v for k, v in SERVE_DATA.items() if k not in ("limit", "limit_at")}
    text, _ = report.serve_section(old)
    assert "| 64 | serve.py (asyncio front, dynamic batching) (2 actors) | 1000.0 | 64,000 | n/a |" \
        in text
    slower = copy.deepcopy(old)
    slower["batching"]["2048"]["rps"] = 50.0
    assert "FEWER requests/s at 2048 rows/request" in report.serve_section(slower)[0]


def test_plot_writes_a_png_with_missing_and_failed_panels(tmp_path):
    from bench import plot

    doc = _with_checks(DOC)
    out = plot.render(doc, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc["comparisons"]["serve"] = {"title": "s", "data": SERVE_DATA}
    assert plot.render(doc, tmp_path / "q.png").stat().st_size > 10_000
    old = {k: v for k, v in SERVE_DATA.items() if k not in ("limit", "limit_at")}
    doc["comparisons"]["serve"] = {"title": "s", "data": old}
    assert plot.render(doc, tmp_path / "r.png").stat().st_size > 10_000


def test_results_file_round_trip_and_schema(tmp_path):
    path = tmp_path / "r.json"
    assert cli.load_doc(path)["comparisons"] == {}
    cli.save_doc(_with_checks(DOC), path)
    assert cli.load_doc(path)["comparisons"]["annotate"]["checks"]["outputs_agree"] is True
    path.write_text(json.dumps({"schema": 999}))
    assert cli.load_doc(path)["comparisons"] == {}


# ------------------------------------------------------ end to end (tiny) ----


@pytest.mark.cluster
def test_annotate_comparison_end_to_end_on_the_shared_cluster(local_cluster, tmp_path):
    """Sequential, Pool and Ray on 8 generated images; all three must produce the same outputs."""
    p = {**config.QUICK["annotate"], "count": 8, "batch": 2}
    ctx = cli.Context(workdir=tmp_path, cores=machine.usable_cores(), log=lambda m: None)
    data = annotate_cmp.local(ctx, p)
    data = annotate_cmp.on_cluster(ctx, p, local_cluster, data)
    assert set(data["seconds"]) == {"sequential", "pool", "ray"}
    assert data["items"] == 8 and data["ok_items"] == 8 and data["ray_tasks"] == 4
    checks = annotate_cmp.checks(data)
    assert checks["outputs_agree"], checks["detail"]
    text, heads = report.annotate_section(data)
    assert "Ray tasks, local cluster" in text and len(heads) == 3


def test_wait_for_load_returns_at_once_when_quiet_and_gives_up_after_max_wait():
    logs = []
    assert cli.wait_for_load(1e9, 600, logs.append) <= 1e9
    assert "starting" in logs[-1]
    logs.clear()
    load = cli.wait_for_load(-1.0, 0.2, logs.append, poll=0.05)  # never quiet enough
    assert load >= 0 and "waiting" in logs[0] and "starting" in logs[-1]


E2E_DATA = {"workers": 2, "worker_cpus": 2.0, "head_ready": 120.4, "workers_joined": [61.0, 190.2],
            "all_joined": 190.2, "down": 14.0, "down_done": 230.9, "instances_after_down": 0,
            "leftovers": [], "api_calls": {"compute.instances.insert": 3}}


def test_e2e_section_reports_milestones_and_its_check_needs_every_worker_and_a_clean_host(tmp_path):
    from bench import plot
    from bench.comparisons import e2e

    doc = copy.deepcopy(DOC)
    doc["comparisons"]["e2e"] = {"title": "e2e", "command": e2e.COMMAND, "started": "t",
                                 "load_at_start": [1, 1, 1], "wall_seconds": 300,
                                 "data": E2E_DATA}
    md = report.render(_with_checks(doc))
    assert "| e2e on fake VMs: head ready / all workers joined / ray down done | 120 / 190 / 231 s |" in md
    assert "| worker 2 of 2 joined (demand sent after `ray up`) | 190 s |" in md
    assert "Check: outputs agree (2 of 2 workers joined; 0 instances left" in md
    assert plot.render(_with_checks(doc), tmp_path / "e.png").stat().st_size > 10_000
    assert e2e.checks({**E2E_DATA, "workers_joined": [61.0]})["outputs_agree"] is False
    assert e2e.checks({**E2E_DATA, "leftovers": ["process 1 survives"]})["outputs_agree"] is False
    assert e2e.checks({**E2E_DATA, "instances_after_down": 1})["outputs_agree"] is False
