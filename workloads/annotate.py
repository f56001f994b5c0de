"""Resize a LabelMe dataset and measure image quality, on a Ray cluster.

Reads images (jpg/jpeg/png) from --input (a folder or gs://bucket/prefix),
each with an optional LabelMe JSON of the same stem in the same folder, and
writes to --output with the same relative layout:

- the image resized so its longest side is at most --max-side (aspect ratio
  kept, never upscaled);
- the JSON with every shape's points rescaled (polygon, rectangle,
  oriented_rectangle, circle, line, linestrip, point, points, mask), new
  imageWidth/imageHeight, and imageData re-encoded if it was embedded;
- results.jsonl: one row of quality metrics per image (sharpness = variance
  of the Laplacian, brightness = mean, contrast = standard deviation, share of
  near-black and near-white pixels), appended as items finish;
- _summary.json: counts (processed, skipped, failed) and every failure with
  its reason;
- _done/<image>.json: a completion record per image, written last, after
  the image and the JSON. A rerun skips images that have one, so an
  interrupted run resumes where it stopped.

Work runs as Ray tasks over batches of files, with a bounded number in
flight. A task on a lost node is retried by Ray (--max-retries); outputs are
written atomically and are identical on a retry; the driver is the only
writer of results.jsonl and writes each image's row once.

A relative --input or --output is resolved against the driver's working
directory before it is shipped to tasks, which run in a worker's directory.
The per-image work (LabelMe geometry, OpenCV, metrics) is in labelme_resize.py
and --make-sample's generator in labelme_sample.py; this file is the driver:
items, the Ray task, results.jsonl and the command line.

Exit status: 0 if every image was processed or skipped, 1 if some failed,
2 for usage errors, 3 if the Ray cluster cannot be reached (within
--connect-timeout, default $RAY_GCP_CONNECT_TIMEOUT or 30 s).

Examples:
  python workloads/annotate.py --make-sample /tmp/sample --count 200 --corrupt 2 --broken-json 2
  python workloads/annotate.py --input /tmp/sample --output /tmp/out --max-side 512
  python workloads/annotate.py --input gs://my-bucket/raw --output gs://my-bucket/small
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

try:
    from workloads import common
except ImportError:  # run as a file from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import common

import cv2

from workloads.labelme_resize import (
    ItemError,
    annotation_key,
    decode_image,
    encode_image,
    parse_labelme,
    quality_metrics,
    rescale_annotation,
    resize_image,
    target_size,
)
from workloads.labelme_sample import make_sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DONE_PREFIX = "_done"
RESULTS_KEY = "results.jsonl"
SUMMARY_KEY = "_summary.json"
RESERVED = (DONE_PREFIX + "/", RESULTS_KEY, SUMMARY_KEY)


# --------------------------------------------------------------- items -------


@dataclass(frozen=True)
class Item:
    image: str  # storage key of the image; also the item's identity
    annotation: str | None  # storage key of the LabelMe JSON, if any


def done_key(image_key: str) -> str:
    return f"{DONE_PREFIX}/{image_key}.json"


def discover(keys) -> tuple[list[Item], list[dict]]:
    """Pair images with same-stem JSONs; returns (items, failures).

    Two images with the same stem in one folder (a.jpg, a.png) would share
    a.json and overwrite each other's output JSON, so both are failures.
    """
    images, jsons = [], set()
    for k in keys:
        if k.startswith(RESERVED):
            continue
        low = k.lower()
        if low.endswith(IMAGE_EXTENSIONS):
            images.append(k)
        elif low.endswith(".json"):
            jsons.add(k)
    by_stem: dict[str, list[str]] = {}
    for k in images:
        by_stem.setdefault(annotation_key(k), []).append(k)
    items, failures = [], []
    for stem_json, group in sorted(by_stem.items()):
        if len(group) > 1:
            for k in group:
                failures.append({
                    "key": k,
                    "reason": f"{k}: images {', '.join(sorted(group))} share one stem, "
                              "so their outputs would collide; rename one",
                })
            continue
        items.append(Item(group[0], stem_json if stem_json in jsons else None))
    items.sort(key=lambda it: it.image)
    return items, failures


def process_item(item: Item, src, dst, max_side: int, node: str = "") -> dict:
    """Read, resize, rescale, measure and write one image; never raises for bad data.

    Returns {"key", "ok": True, "row"} or {"key", "ok": False, "reason"}.
    Outputs are written image, then JSON, then the completion record.
    """
    try:
        annotation = None
        if item.annotation is not None:
            annotation = parse_labelme(src.read_bytes(item.annotation), item.annotation)
        raw = src.read_bytes(item.image)
        img = decode_image(raw, item.image)
        h, w = img.shape[:2]
        new_w, new_h = target_size(w, h, max_side)
        if (new_w, new_h) == (w, h):
            out_bytes = raw  # already small enough: keep the original bytes
        else:
            out_bytes = encode_image(resize_image(img, new_w, new_h), item.image)
        new_annotation = None
        if annotation is not None:
            new_annotation = rescale_annotation(
                annotation, w, h, new_w, new_h, out_bytes, item.annotation
            )
        row = {
            "key": item.image,
            "annotation": item.annotation,
            "width": w,
            "height": h,
            "out_width": new_w,
            "out_height": new_h,
            "channels": 1 if img.ndim == 2 else int(img.shape[2]),
            "shapes": len(new_annotation["shapes"]) if new_annotation else 0,
            **quality_metrics(img),
            "node": node,
        }
        dst.write_bytes(item.image, out_bytes)
        if new_annotation is not None:
            dst.write_text(item.annotation, json.dumps(new_annotation, indent=2) + "\n")
        dst.write_text(done_key(item.image), json.dumps(row, sort_keys=True) + "\n")
        return {"key": item.image, "ok": True, "row": row}
    except ItemError as e:
        return {"key": item.image, "ok": False, "reason": str(e)}
    except FileNotFoundError as e:
        where = getattr(e, "filename", None) or str(e)
        return {"key": item.image, "ok": False,
                "reason": f"{item.image}: file not found on this node ({where}); a local "
                          "--input/--output must be visible to every node, use gs:// on a real cluster"}
    except Exception as e:  # noqa: BLE001 - isolate any other per-item surprise
        return {"key": item.image, "ok": False, "reason": f"{item.image}: {type(e).__name__}: {e}"}


def process_batch(items: list[Item], src, dst, max_side: int, item_delay: float = 0.0) -> list[dict]:
    """Body of the Ray task: one batch of items, one result per item."""
    import ray

    cv2.setNumThreads(0)  # one task per CPU already; OpenCV's own threads would oversubscribe
    node = ""
    if ray.is_initialized():
        node = ray.get_runtime_context().get_node_id()
    out = []
    for item in items:
        if item_delay:
            time.sleep(item_delay)
        out.append(process_item(item, src, dst, max_side, node))
    return out


# ------------------------------------------------------------- results -------


class ResultsFile:
    """results.jsonl: the driver appends one row per finished image, once.

    Locally the file is appended and flushed row by row (a torn last line from
    a crash is cut off on the next open). On GCS an object cannot be appended
    to, so rows go to a local spool that is uploaded whole every
    ``flush_seconds`` and at the end; the per-item completion records keep
    every finished item recoverable in between.
    """

    def __init__(self, dst: common.Storage, flush_seconds: float = 30.0):
        self.dst = dst
        self.flush_seconds = flush_seconds
        self.keys: set[str] = set()
        self._last_upload = time.monotonic()
        self._dirty = False
        if isinstance(dst, common.LocalStorage):
            self.path = dst.path(RESULTS_KEY)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            self._cut_torn_tail()
            self._remote = False
        else:
            fd, tmp = tempfile.mkstemp(prefix="results-", suffix=".jsonl")
            os.close(fd)
            self.path = tmp
            try:
                existing = dst.read_bytes(RESULTS_KEY)
            except FileNotFoundError:
                existing = b""
            with open(self.path, "wb") as f:
                f.write(existing)
            self._cut_torn_tail()
            self._remote = True
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    self.keys.add(json.loads(line)["key"])
                except (ValueError, KeyError, TypeError):
                    continue
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open until close()
        if not self._remote:
            try:  # one driver per output folder: a second one would duplicate rows
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.close()
                raise common.UsageError(
                    f"another annotate run is writing to {dst.url} (it holds {self.path})"
                ) from None

    def _cut_torn_tail(self):
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def add(self, row: dict) -> bool:
        """Append the row unless its key is already there; True if written."""
        if row["key"] in self.keys:
            return False
        self._f.write(json.dumps(row, sort_keys=True) + "\n")
        self._f.flush()
        self.keys.add(row["key"])
        self._dirty = True
        if self._remote and time.monotonic() - self._last_upload > self.flush_seconds:
            self.upload()
        return True

    def upload(self):
        if self._remote and self._dirty:
            self._f.flush()
            with open(self.path, "rb") as f:
                self.dst.write_bytes(RESULTS_KEY, f.read())
            self._dirty = False
        self._last_upload = time.monotonic()

    def close(self):
        self._f.flush()
        os.fsync(self._f.fileno())
        self.upload()
        self._f.close()
        if self._remote:
            os.unlink(self.path)


# -------------------------------------------------------------- driver -------


@dataclass
class RunStats:
    total: int = 0
    processed: int = 0
    skipped: int = 0
    failures: list = field(default_factory=list)


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run(args) -> int:
    import ray
    from tqdm import tqdm

    src, dst = common.open_storage(args.input), common.open_storage(args.output)
    if common.overlapping(src, dst):
        raise common.UsageError(
            f"--output {dst.url} overlaps --input {src.url}; choose a location outside the input"
        )
    if isinstance(src, common.LocalStorage) and not src.root.is_dir():
        raise common.UsageError(f"--input {src.url} is not a folder")

    started = time.time()
    t0 = time.monotonic()
    try:
        items, failures = discover(src.list())
        done = {k[len(DONE_PREFIX) + 1:-len(".json")] for k in dst.list(DONE_PREFIX)}
    except (OSError, ValueError) as e:
        raise common.UsageError(f"cannot list {src.url} / {dst.url}: {e}") from None
    except Exception as e:  # google.api_core errors: no such bucket, no permission
        if type(e).__module__.startswith("google."):
            raise common.UsageError(f"cannot list {src.url} / {dst.url}: {e}") from None
        raise
    if not items and not failures:
        print(f"annotate: warning: no .jpg/.jpeg/.png images under {src.url}", file=sys.stderr)
    stats = RunStats(total=len(items) + len(failures), failures=list(failures))
    print(f"annotate: {len(items)} images under {src.url}; {len(done & {i.image for i in items})} "
          f"already done in {dst.url}", file=sys.stderr)

    common.connect(args.address, connect_timeout=args.connect_timeout)
    results = ResultsFile(dst)
    pending = []
    for item in items:
        if item.image in done:
            stats.skipped += 1
            if item.image not in results.keys:
                # Finished by a run that stopped before recording the row.
                try:
                    results.add(json.loads(dst.read_text(done_key(item.image))))
                except (ValueError, FileNotFoundError):
                    stats.skipped -= 1
                    pending.append(item)
        else:
            pending.append(item)

    task = ray.remote(process_batch).options(
        num_cpus=1, max_retries=args.max_retries, retry_exceptions=False
    )
    shape = common.cluster_shape()
    last_sample = time.monotonic()

    batches = _batches(pending, args.batch_size)
    in_flight: dict = {}
    bar = tqdm(total=len(pending), unit="img", file=sys.stderr, disable=args.no_progress,
               mininterval=1.0, desc="annotate")
    try:
        while True:
            limit = args.max_in_flight or max(16, 2 * int(shape.cpus))
            while len(in_flight) < limit:
                batch = next(batches, None)
                if batch is None:
                    break
                ref = task.remote(batch, src, dst, args.max_side, args.item_delay)
                in_flight[ref] = batch
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            for ref in ready:
                batch = in_flight.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except ray.exceptions.RayError as e:
                    reason = f"task failed after {args.max_retries} retries: {type(e).__name__}: " \
                             + str(e).strip().splitlines()[0][:300]
                    outcomes = [{"key": it.image, "ok": False, "reason": reason} for it in batch]
                for o in outcomes:
                    if o["ok"]:
                        results.add(o["row"])
                        stats.processed += 1
                    else:
                        stats.failures.append({"key": o["key"], "reason": o["reason"]})
                bar.update(len(outcomes))
            if time.monotonic() - last_sample > 5:
                shape = common.bigger(shape, common.cluster_shape())
                last_sample = time.monotonic()
    finally:
        bar.close()
        results.close()
    if isinstance(dst, common.LocalStorage):
        dst.remove_stale_temps()  # left by tasks killed mid-write; never visible as outputs
    shape = common.bigger(shape, common.cluster_shape())
    seconds = time.monotonic() - t0

    summary = {
        "input": src.url,
        "output": dst.url,
        "max_side": args.max_side,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(seconds, 3),
        "total": stats.total,
        "processed": stats.processed,
        "skipped": stats.skipped,
        "failed": len(stats.failures),
        "failures": sorted(stats.failures, key=lambda f: f["key"]),
        "cluster": {"nodes": shape.nodes, "cpus": shape.cpus, "gpus": shape.gpus},
    }
    dst.write_json(SUMMARY_KEY, summary)
    for f in summary["failures"]:
        print(f"FAILED {f['reason']}", file=sys.stderr)
    print(common.format_summary(shape, processed=stats.processed, skipped=stats.skipped,
                                failed=len(stats.failures), seconds=seconds))
    return 1 if stats.failures else 0


# ----------------------------------------------------------------- CLI -------


def _positive(name):
    def parse(v):
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {v!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {n}")
        return n
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="annotate.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("processing")
    io.add_argument("--input", help="folder or gs://bucket/prefix with images and LabelMe JSONs")
    io.add_argument("--output", help="folder or gs://bucket/prefix for the results (same layout)")
    io.add_argument("--max-side", type=_positive("--max-side"), default=1024,
                    help="longest side of the output images in pixels (default 1024; never upscales)")
    io.add_argument("--batch-size", type=_positive("--batch-size"), default=32,
                    help="images per Ray task (default 32)")
    io.add_argument("--max-in-flight", type=_positive("--max-in-flight"), default=None,
                    help="tasks submitted but not finished (default: max(16, 2 x cluster CPUs))")
    io.add_argument("--max-retries", type=int, default=5,
                    help="Ray retries of a task whose worker or node died (default 5)")
    common.add_connect_arguments(io)
    io.add_argument("--item-delay", type=float, default=0.0,
                    help="extra seconds of work per image, to simulate heavier processing in "
                         "demos of node loss (default 0)")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    sample = p.add_argument_group("synthetic sample")
    sample.add_argument("--make-sample", metavar="DIR",
                        help="write a synthetic LabelMe dataset to DIR (folder or gs://) and exit")
    sample.add_argument("--count", type=int, default=100, help="images in the sample (default 100)")
    sample.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    sample.add_argument("--corrupt", type=int, default=0,
                        help="how many sample images get corrupt bytes (default 0)")
    sample.add_argument("--broken-json", type=int, default=0,
                        help="how many sample JSONs get truncated (default 0)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.make_sample:
            m = make_sample(args.make_sample, args.count, args.seed, args.corrupt, args.broken_json)
            print(f"wrote {len(m.images)} images ({len(m.annotated)} with valid LabelMe JSON, "
                  f"{len(m.corrupt_images)} corrupt images, {len(m.broken_json)} broken JSONs) "
                  f"to {args.make_sample}")
            return 0
        if not args.input or not args.output:
            raise common.UsageError("--input and --output are required (or --make-sample DIR)")
        if args.item_delay < 0 or args.max_retries < 0:
            raise common.UsageError("--item-delay and --max-retries must be >= 0")
        return run(args)
    except common.UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"annotate.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("annotate.py: interrupted; finished items are recorded, run the same command "
              "again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run under the package name, so Ray pickles process_batch by reference
    # (workers import workloads.annotate) rather than by value from __main__.
    from workloads import annotate as _annotate  # noqa: PLW0406 - see above

    sys.exit(_annotate.main())
