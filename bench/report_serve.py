"""The serve section of BENCHMARKS.md (pure: the comparison's data in, Markdown and headlines out)."""

from __future__ import annotations

from bench import model_limit
from bench.stats import fmt_ratio

SERVE_LABELS = {
    "sequential": "naive Flask (model in-process, one request at a time)",
    "batching": "serve.py (asyncio front, dynamic batching)",
    "ray_serve": "Ray Serve app (`serve_app.py`, `@serve.batch`)",
    "actor_pool": "serve.py, batching off (one request per actor call)",
    # results saved before issue 26 named the naive server "sequential Flask"
}
SHORT = {"sequential": "naive Flask", "batching": "serve.py", "ray_serve": "Ray Serve",
         "actor_pool": "serve.py batching off"}


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _ms(x) -> str:
    return "n/a" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def _rate(x) -> str:
    return f"{x:,.0f}"


def limit_at(d: dict, size) -> dict | None:
    """{"batch", "1", "2"}: the model's rows/s at the batch serve.py formed (saved or recomputed)."""
    saved = (d.get("limit_at") or {}).get(str(size))
    if saved:
        return saved
    grid = d.get("limit")
    if not grid:
        return None
    run = (d.get("batching") or {}).get(str(size)) or {}
    batch = (run.get("breakdown") or {}).get("mean_batch_rows") or size
    return {"batch": batch, **{n: model_limit.interpolate(g, batch) for n, g in grid.items()}}


def _servers(d: dict) -> list[str]:
    return [k for k in SERVE_LABELS if k in d]


def _label(d: dict, key: str) -> str:
    n = d.get("actors")
    extra = {"batching": f" ({n} actors)", "actor_pool": f" ({n} actors)",
             "ray_serve": f" ({n} replicas)"}.get(key, "") if n else ""
    return SERVE_LABELS[key] + extra


def limit_table(d: dict) -> str:
    rows = []
    for size in d["rows_per_request"]:
        lim = limit_at(d, size)
        if not lim:
            continue
        two = lim.get("2")
        rows.append([size, f"{lim['batch']:,.0f}", _rate(lim["1"]),
                     _rate(two) if two else "n/a",
                     f"{two / size:,.0f}" if two else "n/a"])
    return _table(["rows/request", "batch serve.py formed (mean rows)",
                   "model in-process, 1 core (rows/s)", "2 cores (rows/s)",
                   "2 cores, as requests/s"], rows)


def servers_table(d: dict) -> str:
    rows = []
    for size in d["rows_per_request"]:
        base = d["sequential"][str(size)]
        lim = limit_at(d, size) or {}
        for key in _servers(d):
            r = d[key][str(size)]
            rate = r["rps"] * size
            load = r.get("load")
            rows.append([
                size, _label(d, key), f"{r['rps']:.1f}", _rate(rate),
                _pct(rate / lim["2"]) if lim.get("2") else "n/a",
                _pct(rate / lim["1"]) if lim.get("1") else "n/a",
                f"{r['p50_ms']:.1f} ms", f"{r['p99_ms']:.1f} ms",
                f"{r['ok']} / {r.get('non_2xx', r['errors'])} / {r.get('socket_errors', 0)}",
                f"{r['loadgen_cpu_core_share']:.0%}" if "loadgen_cpu_core_share" in r else "n/a",
                load[0] if load else "n/a",
                fmt_ratio(r["rps"] / base["rps"])])
    return _table(["rows/request", "server", "requests/s", "rows/s", "share of the 2-core limit",
                   "share of the 1-core limit", "p50", "p99", "ok / non-2xx / socket errors",
                   "wrk CPU", "load (1 min)", "requests/s vs naive"], rows)


def cpu_table(d: dict, key: str = "batching") -> str:
    rows, header = [], None
    for size in d["rows_per_request"]:
        b = (d.get(key) or {}).get(str(size), {}).get("breakdown")
        if not b:
            continue
        cpu = b["cpu"]
        total = cpu["machine_seconds"] or 1.0
        if header is None:
            header = list(cpu["seconds"])
        rows.append([size] + [f"{cpu['seconds'][k] / total:.0%} ({_ms(cpu['ms_per_request'][k])})"
                              for k in header])
    if not rows:
        return ""
    return _table(["rows/request"] + header, rows)


def path_table(d: dict, key: str = "batching") -> str:
    rows = []
    for size in d["rows_per_request"]:
        b = (d.get(key) or {}).get(str(size), {}).get("breakdown")
        if not b:
            continue
        per_req, per_batch = b["ms_per_request"], b["ms_per_batch"]
        call, model = per_batch["actor call, round trip"], per_batch["model inside the actor"]
        rows.append([size, f"{b['mean_batch_rows']:,.0f}" if b["mean_batch_rows"] else "n/a",
                     *[_ms(v) for v in per_req.values()], _ms(call), _ms(model),
                     _ms(call - model) if call is not None and model is not None else "n/a"])
    if not rows:
        return ""
    first = next(iter((d.get(key) or {}).values()))["breakdown"]["ms_per_request"]
    return _table(["rows/request", "mean batch (rows)", *first,
                   "per batch: actor call round trip", "of which the model",
                   "rest of the call (Ray, (de)serialising, waiting for a core)"], rows)


def profile_text(d: dict) -> str:
    prof = d.get("batching_profile")
    if not prof:
        return ""
    head = (f"py-spy profile of serve.py's HTTP process at {prof['rows']} rows/request "
            f"({prof['seconds']:g} s under the same load, {prof.get('rps_while_sampled', '?')} "
            "requests/s while sampled; not part of the measured runs)")
    if "error" in prof:
        return f"{head}: not taken ({prof['error']})."
    stages = _table(["stage of the HTTP process", "share of its samples"],
                    [[k, f"{v:.0%}"] for k, v in prof["stages"].items()])
    top = ", ".join(f"`{f}` {v:.0%}" for f, v in prof["top_functions"][:8])
    return (f"{head}, {prof['samples']} samples:\n\n{stages}\n\nTop functions (own time): {top}.")


def verdicts(d: dict) -> list[str]:
    out = []
    if "batching" in d:
        slower = [s for s in d["rows_per_request"]
                  if d["batching"][str(s)]["rps"] < d["sequential"][str(s)]["rps"]]
        worse_p99 = [s for s in d["rows_per_request"]
                     if d["batching"][str(s)]["p99_ms"] > d["sequential"][str(s)]["p99_ms"]]
        out.append("serve.py vs the naive server: "
                   + ("at least as many requests/s at every size"
                      if not slower else f"FEWER requests/s at {_sizes(slower)} rows/request")
                   + "; "
                   + ("p99 not above the naive server's at any size"
                      if not worse_p99 else f"p99 ABOVE the naive server's at {_sizes(worse_p99)}"))
    if "batching" in d and "ray_serve" in d:
        wins = [s for s in d["rows_per_request"]
                if d["ray_serve"][str(s)]["rps"] > d["batching"][str(s)]["rps"]]
        out.append("Ray Serve vs serve.py: "
                   + (f"Ray Serve answers more requests/s at {_sizes(wins)} rows/request"
                      if wins else "Ray Serve answers fewer requests/s at every size"))
    return out


def _sizes(sizes: list) -> str:
    return ", ".join(str(s) for s in sizes)


def serve_section(d: dict) -> tuple[str, list[tuple[str, str]]]:
    heads = []
    for size in d["rows_per_request"]:
        base = d["sequential"][str(size)]
        lim = limit_at(d, size) or {}
        if "batching" in d:
            r = d["batching"][str(size)]
            heads.append((f"serve ({size} rows/request): requests/s, serve.py / naive Flask",
                          fmt_ratio(r["rps"] / base["rps"])))
            heads.append((f"serve ({size} rows/request): p99 latency, naive Flask / serve.py",
                          fmt_ratio(base["p99_ms"] / r["p99_ms"])))
            if lim.get("2"):
                heads.append(((f"serve ({size} rows/request): serve.py rows/s, share of the "
                              f"model's own 2-core limit (at {lim['batch']:,.0f}-row batches)"),
                              _pct(r["rps"] * size / lim["2"])))
            if "ray_serve" in d:
                rs = d["ray_serve"][str(size)]
                heads.append((f"serve ({size} rows/request): requests/s, serve.py / Ray Serve",
                              fmt_ratio(r["rps"] / rs["rps"])))
    loadgen = d.get("loadgen", "wrk")
    parts = [
        (f"POST /predict with 1 to 8192 rows per request; {d['concurrency']} concurrent "
         f"connections from {loadgen} on 127.0.0.1 for {d['duration']:g} s per server and size, "
         "after a warm-up. Same model (`workloads/anomaly_model.py`, same seed), same "
         "validation and response bytes; every server is started as a user starts it. "
         "**The limit** is the model alone: `IsolationForest.decision_function` called "
         "in-process on batches of the size serve.py formed at that request size (no HTTP, "
         "no JSON, no Ray), in one process (1 core) and in two processes at once, each on its "
         "own core (2 cores); measured in the same run (`bench/model_limit.py`, a grid of batch "
         "sizes, interpolated linearly in seconds per call). A call costs ~6 ms plus ~4 us per "
         "row, so the limit grows with the batch. \"Share of the limit\" is a server's rows/s "
         "over it. The load average is the 1-minute one when each run started."),
        "**The model's own limit**\n\n" + limit_table(d),
        "**The servers**\n\n" + servers_table(d),
    ]
    parts += [f"- {v}" for v in verdicts(d)]
    cpu = cpu_table(d)
    if cpu:
        parts.append(
            "**Where serve.py's time goes: the machine's CPU during each run** (share of "
            f"{d.get('cores', 2)} cores x the run, and in brackets ms per request; from /proc "
            "and the actors' own counters of time inside the model)\n\n" + cpu)
    path = path_table(d)
    if path:
        parts.append("**A request's path through serve.py** (wall ms per request, from "
                     "serve.py's /healthz counters; per batch: the actor call as the front "
                     "sees it and the model's share of it)\n\n" + path)
    prof = profile_text(d)
    if prof:
        parts.append(prof)
    return "\n\n".join(parts), heads


TRANSFER = (
    "What transfers is the shape: one process turning JSON into arrays and answers, batches "
    "sized to the work in flight, and the model's fixed cost per call (~6 ms for 100 trees) "
    "paid once per batch instead of once per request. Here the HTTP front, the actors, Ray's "
    "daemons and wrk share {cores} cores, so every CPU-second the front spends is taken from "
    "the model; on GCP the actors run on worker VMs with their own cores and the front's "
    "single process on the head (one GIL: HTTP, parsing, JSON) becomes the ceiling, which is "
    "why its CPU per request is what serve.py optimises. Ray Serve runs a proxy on every node "
    "and scales that part too. Latency between VMs adds ~0.1-1 ms per actor call, paid once "
    "per batch.")
