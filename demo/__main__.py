"""`make demo`: the whole ray-gcp flow on one machine, no cloud needed.

1. Render the two cluster configs with the same renderers: the local one
   (fake nodes on this machine) and the GCP one that `pulumi up` puts on the
   provider VM with default settings (example project; placeholder image
   and key, the only facts that exist just after deployment).
2. Show what `pulumi up` would create: the Pulumi program run offline, the
   way Pulumi's language host runs it, under Pulumi's mocks.
3. Start a local autoscaling Ray cluster (fake worker nodes, token auth on).
4. Generate a LabelMe sample and run workloads/annotate.py on it, printing
   every change in the cluster's worker count while the job runs.
5. Print the summary and where the outputs are.
6. Let idle workers scale down, then stop the cluster.

Ctrl-C at any point stops the cluster: everything it started, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from cluster.local import LocalCluster
from cluster.render import example_gcp_facts, render_gcp, render_local, to_yaml
from cluster.spec import ClusterSpec, local_default_spec

ROOT = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def render_configs(out: Path, local_spec: ClusterSpec) -> tuple[Path, Path]:
    """Write the local config of `local_spec` and the default stack's GCP config."""
    local_path = out / "local-cluster.yaml"
    gcp_path = out / "gcp-cluster.yaml"
    local_path.write_text(to_yaml(render_local(local_spec, gcs_port=6379, host="127.0.0.1")))
    # ClusterSpec() is the default settings' cluster: what `pulumi up` renders.
    gcp_path.write_text(to_yaml(render_gcp(ClusterSpec(), example_gcp_facts())))
    return local_path, gcp_path


def pulumi_preview(out: Path) -> Path:
    """Run infra/ offline under Pulumi's mocks and list what it would create."""
    from infra.offline import default_config, inventory_lines, run_isolated

    result = run_isolated(default_config())
    lines = inventory_lines(result)
    path = out / "pulumi-resources.txt"
    path.write_text("\n".join(lines) + "\n")
    for line in lines:
        print("   " + line)
    print(f"   ({len(result['resources'])} resources; list saved to {path})")
    return path


class ScalingWatcher(threading.Thread):
    """Prints a line whenever the cluster's alive or pending worker count changes."""

    def __init__(self, cluster: LocalCluster, interval: float = 1.0):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_workers = 0
        self._last: tuple[int, int] | None = None
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            self.stop_event.wait(self.interval)

    def poll(self) -> None:
        try:
            st = self.cluster.status()
        except Exception:  # noqa: BLE001 - the dashboard can blink under load; try again
            return
        now = (st.worker_count, st.pending_count)
        self.peak_workers = max(self.peak_workers, st.worker_count)
        if now != self._last:
            self._last = now
            cpus = sum(n.resources.get("CPU", 0) for n in st.nodes)
            print(
                f"\r[cluster +{time.monotonic() - self._t0:5.1f}s] "
                f"{st.worker_count} worker node(s) alive, {now[1]} launching, "
                f"{cpus:g} CPUs in total",
                file=sys.stderr,
                flush=True,
            )

    def stop(self) -> None:
        """Stop watching; the last line printed is the state at this moment."""
        if self.is_alive():
            self.stop_event.set()
            self.join(timeout=5)
            self.poll()


def run_annotate(cluster: LocalCluster, sample: Path, output: Path, max_side: int,
                 batch_size: int | None = None) -> int:
    env = {**os.environ, **cluster.driver_env()}
    cmd = [
        sys.executable,
        str(ROOT / "workloads" / "annotate.py"),
        "--input", str(sample),
        "--output", str(output),
        "--max-side", str(max_side),
        *(["--batch-size", str(batch_size)] if batch_size else []),
    ]
    print("   $ " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "demo-out",
                   help="where the demo writes everything (default: demo-out/)")
    p.add_argument("--count", type=int, default=300, help="images in the sample (default 300)")
    p.add_argument("--max-side", type=int, default=256, help="resize target (default 256)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per Ray task (default: annotate.py's); smaller batches "
                        "make more tasks, so a small sample still scales the cluster out")
    p.add_argument("--skip-preview", action="store_true", help="skip the offline `pulumi up`")
    p.add_argument("--no-scale-down-wait", action="store_true",
                   help="stop the cluster without waiting for idle workers to go away")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, got {args.count}")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = local_default_spec()
    t_start = time.monotonic()

    banner("1. The cluster configs, from the same renderers")
    local_path, gcp_path = render_configs(out, spec)
    local_workers = spec.worker_types["cpu-worker"]
    print(f"   local (fake nodes on this machine, up to {local_workers.max_workers} workers; "
          f"preview, ports picked at start): {local_path}")
    gcp_spec = ClusterSpec()
    print(f"   GCP (what `pulumi up` with default settings puts on the provider VM for `ray up`, "
          f"up to {gcp_spec.max_workers} workers; example project, placeholder image and key): "
          f"{gcp_path}")

    if not args.skip_preview:
        banner("2. What `pulumi up` would create (program run offline under Pulumi mocks)")
        pulumi_preview(out)

    banner("3. Start a local autoscaling Ray cluster (token auth on)")
    cluster = LocalCluster(out / "cluster-state", spec)
    watcher = ScalingWatcher(cluster)
    try:
        cluster.up()
        print(f"   head up at {cluster.address}; dashboard {cluster.dashboard_url} "
              f"(needs the token in {cluster.token_path})")
        print(f"   running config (same spec, its free ports): {cluster.config_path}")

        banner(f"4. annotate.py on a generated sample of {args.count} images")
        sample = out / "sample"
        output = out / "annotated"
        shutil.rmtree(output, ignore_errors=True)  # a demo shows a full run, not a resume
        if not (sample / ".complete").exists():
            shutil.rmtree(sample, ignore_errors=True)
            subprocess.run(
                [sys.executable, str(ROOT / "workloads" / "annotate.py"),
                 "--make-sample", str(sample), "--count", str(args.count),
                 "--corrupt", "2", "--broken-json", "2"],
                check=True, cwd=ROOT,
            )
            (sample / ".complete").write_text("")
        watcher.start()
        rc = run_annotate(cluster, sample, output, args.max_side, args.batch_size)
        time.sleep(1.5)  # let the watcher print the last change

        banner("5. Result")
        summary_path = output / "_summary.json"
        summary = json.loads(summary_path.read_text())
        print(f"   processed {summary['processed']}, skipped {summary['skipped']}, "
              f"failed {summary['failed']} (the sample has 2 corrupt images and 2 broken "
              f"JSONs on purpose; annotate.py exit code {rc})")
        print(f"   peak worker nodes: {watcher.peak_workers}")
        print(f"   outputs: {output}")
        print(f"   summary: {summary_path}")
        print(f"   metrics: {output / 'results.jsonl'}")

        if not args.no_scale_down_wait:
            minutes = spec.idle_timeout_minutes
            banner(f"6. Idle workers scale down (idle timeout {minutes:g} min)")
            try:
                cluster.wait_for_workers(0, timeout=minutes * 60 + 90, exact=True)
                print("   all worker nodes removed by the autoscaler")
            except TimeoutError as e:
                print(f"   {e}")
        return 0 if rc in (0, 1) else rc
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the cluster", file=sys.stderr)
        return 130
    finally:
        watcher.stop()
        stopped = cluster.down()
        print(f"\n   cluster stopped ({len(stopped)} processes); total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
