"""logship: the same workloads with every node's log shipper running vs paused.

One local cluster that ships its logs as a GCP cluster does (cluster/logship.py
on the head and on the worker, into a GCS emulator on this machine; the
drivers copy their output, cluster/driver_log.py). Its repetitions alternate
"on" and "off" (the order flips each repetition, so drift on a busy machine
hits both alike): "off" SIGSTOPs every shipper and drops the driver hook,
"on" resumes them, so both sides run on the same cluster, the same worker
processes and the same files. Two workloads:

- ``annotate``: the main job (bench.work.process_chunk batches, as in the
  annotate comparison), which logs little;
- ``chatty``: tasks that print as fast as they can (the shipper's worst case:
  every worker file grows every pass, so every pass uploads; the cap and the
  newest-bytes window decide how much).

Also recorded: the CPU seconds the shippers used during the "on" windows (from
/proc; a window is both drivers' whole runs, start-up included) as a share of
one core over those windows, and the objects and bytes left in the bucket. A paused shipper catches up when resumed,
and that work lands in the next "on" run: a bias against shipping, on purpose.
The emulator runs on this machine too; on GCP the uploads go to Cloud Storage,
so the CPU the emulator uses here is not a cost there.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bench.clusters import driver_env, local_cluster, run_driver, work_spec
from cluster.spec import LogSpec
from workloads import annotate as wa

NAME = "logship"
TITLE = "Log shipping: the same workloads with every node's shipper running vs paused"
COMMAND = "python -m bench --only logship"
WORKLOADS = ("annotate", "chatty")


def _shippers(lc) -> list[int]:
    out = []
    for pid in lc.owned_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cluster.logship" in argv and b"run" in argv:
            out.append(pid)
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (their own, not their children's)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _set(pids: list[int], on: bool) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT if on else signal.SIGSTOP)
        except ProcessLookupError:
            pass


def standalone(ctx, p) -> dict:
    from tests.emulator import EMULATOR_BUCKET, start_emulator, stop_process_group

    src = str(ctx.workdir / NAME / "sample")
    wa.make_sample(src, p["annotate_count"], seed=0, min_side=p["min_side"],
                   max_side=p["max_side_sample"])
    spec = work_spec(ctx.cores).model_copy(update={"logs": LogSpec(
        interval_s=p["interval_s"], max_file_bytes=p["max_file_bytes"])})
    emulator, url = start_emulator()
    seconds: dict[str, dict[str, list[float]]] = {w: {"on": [], "off": []} for w in WORKLOADS}
    ship_cpu = ship_wall = 0.0
    try:
        with local_cluster(spec, workers=1, log=ctx.log, log_bucket=EMULATOR_BUCKET,
                           log_endpoint=url) as lc:
            deadline = time.monotonic() + 120  # a node's shipper starts right after its raylet
            while len(pids := _shippers(lc)) != 2 and time.monotonic() < deadline:
                time.sleep(1)
            if len(pids) != 2:
                raise RuntimeError(f"expected a shipper on the head and the worker, found {pids}")
            for rep in range(p["reps"]):
                for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
                    _set(pids, mode == "on")
                    env = driver_env(lc)
                    if mode == "off":
                        env.pop("RAY_RUNTIME_ENV_HOOK", None)
                    cpu0, wall0 = _cpu_seconds(pids), time.monotonic()
                    seconds["annotate"][mode] += run_driver("annotate", {
                        "src": src, "out_root": str(ctx.workdir / NAME / f"{mode}-{rep}"),
                        "max_side": p["max_side"], "batch": p["batch"], "reps": 1,
                    }, env, timeout=p["timeout"])["seconds"]
                    seconds["chatty"][mode] += run_driver("chatty", {
                        "tasks": p["chatty_tasks"], "lines": p["chatty_lines"], "reps": 1,
                    }, env, timeout=p["timeout"])["seconds"]
                    if mode == "on":
                        ship_cpu += _cpu_seconds(pids) - cpu0
                        ship_wall += time.monotonic() - wall0
                    ctx.log(f"rep {rep + 1}/{p['reps']} shipping {mode}: annotate "
                            f"{seconds['annotate'][mode][-1]:.2f} s, chatty "
                            f"{seconds['chatty'][mode][-1]:.2f} s")
            _set(pids, True)
            time.sleep(2 * p["interval_s"])  # let them catch up before the count
            objects, shipped = _objects_and_bytes(url, EMULATOR_BUCKET)
    finally:
        stop_process_group(emulator, timeout=10)
    return {"seconds": seconds, "reps": p["reps"], "cores": ctx.cores,
            "interval_s": p["interval_s"], "max_file_bytes": p["max_file_bytes"],
            "chatty": {"tasks": p["chatty_tasks"], "lines": p["chatty_lines"]},
            "annotate_items": p["annotate_count"], "shipper_cpu_seconds": round(ship_cpu, 2),
            "shipper_cpu_share": round(ship_cpu / ship_wall, 4) if ship_wall else None,
            "on_window_seconds": round(ship_wall, 1),
            "objects_in_bucket": objects, "bytes_in_bucket": shipped}


def _objects_and_bytes(url: str, bucket: str) -> tuple[int, int]:
    """How many objects the shippers left under logs/, and their bytes (every page)."""
    from cluster.gcs_http import GcsHttp

    listing = GcsHttp(bucket, endpoint=url).list("logs/")
    return len(listing.objects), sum(o.size for o in listing.objects)


def checks(data) -> dict:
    ok = all(data["seconds"][w][m] for w in WORKLOADS for m in ("on", "off")) and (
        data["objects_in_bucket"] > 0)
    return {"outputs_agree": ok,
            "detail": (f"every run finished on and off; the shippers left "
                       f"{data['objects_in_bucket']} objects in the bucket") if ok else
                      "a side has no runs, or nothing was shipped"}
