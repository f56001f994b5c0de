"""One PNG, a panel per comparison (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report import ORDER
from bench.stats import median

COLORS = ["#8c8c8c", "#4c72b0", "#dd8452", "#55a868"]


def _bars(ax, labels, values, unit, title, ratio_base=None, higher_is_better=False, fmt="{:.1f}"):
    bars = ax.bar(range(len(values)), values, color=COLORS[:len(values)])
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    top = max(values) if values else 1
    ax.set_ylim(0, top * 1.25)
    for i, (b, v) in enumerate(zip(bars, values)):
        text = fmt.format(v)
        if ratio_base is not None and i != ratio_base and v > 0 and values[ratio_base] > 0:
            r = v / values[ratio_base] if higher_is_better else values[ratio_base] / v
            text += f"\n{r:.2f}x"
        ax.text(b.get_x() + b.get_width() / 2, v + top * 0.02, text, ha="center", va="bottom",
                fontsize=8)


def _annotate(ax, d):
    s = {k: median(v) for k, v in d["seconds"].items()}
    keys = [k for k in ("sequential", "pool", "ray") if k in s]
    names = {"sequential": "sequential", "pool": f"Pool({d['cores']})", "ray": "Ray"}
    _bars(ax, [names[k] for k in keys], [s[k] for k in keys], "seconds (median)",
          f"annotate: {d['items']} images\n(lower is better; x = speedup)", ratio_base=0,
          fmt="{:.2f}")


def _granularity(ax, d):
    s = {k: median(v) for k, v in d["seconds"].items()}
    vals = [d["items"] / s["per_file"], d["items"] / s["batched"]]
    _bars(ax, ["1 task/file", f"{d['batch']} files/task"], vals, "files per second",
          f"task granularity: {d['items']} small files\n(higher is better)", ratio_base=0,
          higher_is_better=True, fmt="{:.0f}")


def _scaleup(ax, d):
    for (key, label), c in zip((("ray_default", "Ray default"), ("ours", "ours")),
                               (COLORS[1], COLORS[2])):
        r = d["runs"][key]
        sp = f"speed {r['upscaling_speed']:g}, {r.get('launch_rounds', '?')} launch round(s)"
        for steps, style, what in ((r["requested"], "--", "requested"), (r["joined"], "-", "alive")):
            if not steps:
                continue
            xs = [t for t, _ in steps] + [max(t for t, _ in r["joined"])]
            ys = [min(n, d["workers"]) for _, n in steps] + [min(steps[-1][1], d["workers"])]
            ax.step(xs, ys, where="post", linestyle=style, color=c, label=f"{label} ({sp}) {what}")
    ax.set_xlabel("seconds since the burst of demand")
    ax.set_ylabel("workers")
    ax.set_title(f"scale-up to {d['workers']} fake nodes, autoscaler v1\n"
                 "(dashed: requested, solid: alive)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def _node_setup(ax, d):
    pip, uv = d["pip"], d["uv"]
    labels = ["pip", "uv (ours)"]
    ax.bar(labels, [0, uv["bootstrap"]], color="#c7c7c7", label="bootstrap uv")
    ax.bar(labels, [pip["venv"], uv["venv"]], bottom=[0, uv["bootstrap"]], color=COLORS[0],
           label="create venv")
    ax.bar(labels, [pip["install"], uv["install"]],
           bottom=[pip["venv"], uv["bootstrap"] + uv["venv"]], color=COLORS[1], label="install")
    top = max(pip["total"], uv["total"])
    ax.set_ylim(0, top * 1.25)
    for i, tot in enumerate([pip["total"], uv["total"]]):
        text = f"{tot:.1f} s" + ("" if i == 0 else f"\n{pip['total'] / tot:.2f}x")
        ax.text(i, tot + top * 0.02, text, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title(f"node setup, cold caches\n{d['installed']}", fontsize=10)
    ax.legend(fontsize=7)


def _serve(ax, d):
    from bench.report_serve import SERVE_LABELS, SHORT, limit_at

    sizes = d["rows_per_request"]
    keys = [k for k in SERVE_LABELS if k in d]
    limits = [limit_at(d, s) for s in sizes]
    share = all(lim and lim.get("2") for lim in limits)
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        rps = [d[key][str(s)]["rps"] for s in sizes]
        vals = ([100 * r * s / lim["2"] for r, s, lim in zip(rps, sizes, limits)] if share
                else rps)
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(sizes))]
        bars = ax.bar(xs, vals, width, color=COLORS[i % len(COLORS)], label=SHORT[key])
        for b, v, r in zip(bars, vals, rps):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{r:.0f}", ha="center", va="bottom",
                    fontsize=5, rotation=90)
    ax.set_xticks(range(len(sizes)), [f"{s} rows" for s in sizes], fontsize=7)
    if share:
        ax.set_ylim(0, 110)
        ax.set_ylabel("% of the model's own 2-core limit")
    else:
        ax.set_yscale("log")
        ax.set_ylabel("requests per second")
    ax.set_title(f"serve: {d['concurrency']} connections (wrk), per request size\n"
                 "(higher is better; numbers: requests/s)", fontsize=10)
    ax.legend(fontsize=6, loc="upper left")


def _tree(ax, d):
    s = {k: median(v) for k, v in d["seconds"].items()}
    _bars(ax, [f"chain\n(depth {d['depth']['chain']})", f"tree\n(depth {d['depth']['tree']})"],
          [s["chain"], s["tree"]], "seconds (median)",
          f"tree_reduce: {d['chunks']} partials\n(lower is better)", ratio_base=0, fmt="{:.3f}")


def _e2e(ax, d):
    marks = [("head ready", d["head_ready"])]
    marks += [(f"worker {i + 1} joined", t) for i, t in enumerate(d["workers_joined"])]
    marks += [("ray down done", d["down_done"])]
    ys = range(len(marks))
    ax.barh(ys, [t for _, t in marks], color=COLORS[1])
    for y, (_, t) in zip(ys, marks):
        ax.text(t, y, f" {t:.0f} s", va="center", fontsize=8)
    ax.set_yticks(list(ys), [m for m, _ in marks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(t for _, t in marks) * 1.2)
    ax.set_xlabel("seconds since `ray up` started")
    ax.set_title("ray up .. ray down on fake VMs\n(namespaces, only the Google APIs faked)",
                 fontsize=10)


PANELS = {"annotate": _annotate, "granularity": _granularity, "scaleup": _scaleup,
          "node_setup": _node_setup, "serve": _serve, "tree_reduce": _tree, "e2e": _e2e}


def render(doc: dict, path: Path) -> Path:
    comps = doc.get("comparisons", {})
    cols = 4 if len(ORDER) > 6 else 3
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 9))
    for ax in list(axes.flat)[len(ORDER):]:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, ORDER):
        e = comps.get(name)
        if e is None or "data" not in e:
            ax.set_title(name, fontsize=10)
            ax.text(0.5, 0.5, "failed" if e else "not measured", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            continue
        PANELS[name](ax, e["data"])
    m = doc.get("machine", {})
    fig.suptitle(f"ray-gcp benchmarks on the local fake-node Ray cluster - "
                 f"{m.get('usable_cores', '?')} usable cores ({m.get('cpu_model', '?')}), "
                 f"Ray {m.get('ray', '?')}, {m.get('date_utc', '')}"
                 + ("  [QUICK SIZES]" if doc.get("quick") else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
