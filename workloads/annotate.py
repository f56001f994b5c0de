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
import base64
import fcntl
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

try:
    from workloads import common
except ImportError:  # run as a file from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import common

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DONE_PREFIX = "_done"
RESULTS_KEY = "results.jsonl"
SUMMARY_KEY = "_summary.json"
RESERVED = (DONE_PREFIX + "/", RESULTS_KEY, SUMMARY_KEY)

# LabelMe shape types and how many points each carries (labelme's loader
# enforces the same). None = any number >= the minimum.
SHAPE_POINTS = {
    "polygon": (2, None),
    "rectangle": (2, 2),
    "oriented_rectangle": (4, 4),
    "circle": (2, 2),  # centre, then a point on the circumference
    "line": (2, 2),
    "linestrip": (1, None),
    "point": (1, 1),
    "points": (1, None),
    "mask": (2, 2),  # bbox corners; the bitmap is the base64 PNG in "mask"
}


class ItemError(Exception):
    """One image (or its JSON) cannot be processed; recorded, the job goes on."""


# ------------------------------------------------------------ geometry -------


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longest side at most max_side, aspect kept, never upscaled."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    s = max_side / longest
    new_w = max_side if width == longest else max(1, round(width * s))
    new_h = max_side if height == longest else max(1, round(height * s))
    return new_w, new_h


def _finite_point(p, where: str) -> tuple[float, float]:
    if (
        not isinstance(p, (list, tuple))
        or len(p) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        or not all(math.isfinite(v) for v in p)
    ):
        raise ItemError(f"{where}: expected [x, y] with finite numbers, got {p!r}")
    return float(p[0]), float(p[1])


def _r(v: float) -> float:
    return round(v, 4)


def scale_shape(shape: dict, sx: float, sy: float, where: str = "shape") -> dict:
    """A copy of one LabelMe shape with its geometry scaled by (sx, sy).

    Points are in LabelMe's pixel-corner coordinates, so a point scales as
    (x*sx, y*sy) and the image corners map onto the new corners. A circle's
    centre scales the same way; its radius scales by the mean factor, so it
    stays a circle. A mask's bitmap is resized with nearest neighbour to the
    scaled size of the bitmap.
    """
    if not isinstance(shape, dict):
        raise ItemError(f"{where}: expected an object, got {type(shape).__name__}")
    shape_type = shape.get("shape_type") or "polygon"  # labelme's default
    if shape_type not in SHAPE_POINTS:
        raise ItemError(
            f"{where}.shape_type: {shape_type!r} is not a LabelMe shape type "
            f"(allowed: {', '.join(sorted(SHAPE_POINTS))})"
        )
    points = shape.get("points")
    if not isinstance(points, list):
        raise ItemError(f"{where}.points: expected a list of [x, y], got {type(points).__name__}")
    lo, hi = SHAPE_POINTS[shape_type]
    if len(points) < lo or (hi is not None and len(points) > hi):
        want = f"exactly {lo}" if lo == hi else f"at least {lo}"
        raise ItemError(f"{where}.points: a {shape_type} has {want} points, got {len(points)}")
    pts = [_finite_point(p, f"{where}.points[{i}]") for i, p in enumerate(points)]

    out = dict(shape)
    if shape_type == "circle":
        (cx, cy), (px, py) = pts
        s = (sx + sy) / 2
        ncx, ncy = cx * sx, cy * sy
        out["points"] = [[_r(ncx), _r(ncy)], [_r(ncx + (px - cx) * s), _r(ncy + (py - cy) * s)]]
    else:
        out["points"] = [[_r(x * sx), _r(y * sy)] for x, y in pts]

    if shape_type == "mask":
        out["mask"] = _scale_mask(shape.get("mask"), sx, sy, f"{where}.mask")
    return out


def _scale_mask(encoded, sx: float, sy: float, where: str) -> str:
    if not isinstance(encoded, str) or not encoded:
        raise ItemError(f"{where}: a mask shape needs a base64 PNG bitmap, got {encoded!r:.40}")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError as e:
        raise ItemError(f"{where}: not valid base64 ({e})") from None
    bitmap = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if bitmap is None:
        raise ItemError(f"{where}: not a decodable PNG bitmap")
    if bitmap.ndim != 2:
        raise ItemError(f"{where}: the mask bitmap must be single-channel, got shape {bitmap.shape}")
    h, w = bitmap.shape
    new_w, new_h = max(1, round(w * sx)), max(1, round(h * sy))
    if (new_w, new_h) != (w, h):
        bitmap = cv2.resize(bitmap, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", bitmap)
    if not ok:  # pragma: no cover - encoding a valid array does not fail
        raise ItemError(f"{where}: re-encoding the bitmap failed")
    return base64.b64encode(png.tobytes()).decode("ascii")


def parse_labelme(raw: bytes, where: str) -> dict:
    """The JSON object of a LabelMe file, or ItemError saying what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ItemError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        # Some messages end in "at" already ("Unterminated string starting at").
        msg = e.msg.removesuffix(" at")
        raise ItemError(f"{where}: invalid JSON ({msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise ItemError(f"{where}: a LabelMe file is a JSON object, got {type(data).__name__}")
    shapes = data.get("shapes", [])
    if not isinstance(shapes, list):
        raise ItemError(f"{where}: 'shapes' must be a list, got {type(shapes).__name__}")
    for key in ("imageWidth", "imageHeight"):
        v = data.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ItemError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return data


def rescale_annotation(
    data: dict, width: int, height: int, new_w: int, new_h: int, image_bytes: bytes, where: str
) -> dict:
    """The LabelMe object for the resized image (pure; raises ItemError)."""
    jw, jh = data.get("imageWidth"), data.get("imageHeight")
    if (jw is not None and jw != width) or (jh is not None and jh != height):
        raise ItemError(
            f"{where}: imageWidth x imageHeight is {jw}x{jh} but the image is "
            f"{width}x{height}; the annotation does not belong to this image"
        )
    sx, sy = new_w / width, new_h / height
    out = dict(data)
    out["shapes"] = [
        scale_shape(s, sx, sy, f"{where}: shapes[{i}]") for i, s in enumerate(data.get("shapes", []))
    ]
    out["imageWidth"], out["imageHeight"] = new_w, new_h
    if out.get("imageData"):
        out["imageData"] = base64.b64encode(image_bytes).decode("ascii")
    return out


# -------------------------------------------------------------- images -------


def decode_image(raw: bytes, key: str) -> np.ndarray:
    # JPEGs decode with their EXIF orientation applied, as LabelMe shows them;
    # PNGs decode unchanged so alpha and 16-bit depth survive.
    flags = cv2.IMREAD_UNCHANGED if key.lower().endswith(".png") else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), flags) if raw else None
    if img is None or img.size == 0:
        raise ItemError(f"{key}: not a decodable image ({len(raw)} bytes; corrupt or not jpg/png)")
    return img


def encode_image(img: np.ndarray, key: str) -> bytes:
    ext = ".png" if key.lower().endswith(".png") else ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ItemError(f"{key}: encoding the resized image as {ext} failed")
    return buf.tobytes()


def resize_image(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (new_w, new_h) == (w, h):
        return img
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)


def quality_metrics(img: np.ndarray) -> dict:
    if img.ndim == 3 and img.shape[2] == 4:
        gray = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    elif img.ndim == 3:
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    else:
        gray = img
    if gray.dtype != np.uint8:  # 16-bit PNG: compare on the same 0-255 scale
        gray = (gray.astype(np.float64) * (255.0 / np.iinfo(gray.dtype).max)).astype(np.uint8)
    g = gray.astype(np.float64)
    return {
        "sharpness": round(float(cv2.Laplacian(gray, cv2.CV_64F).var()), 3),
        "brightness": round(float(g.mean()), 3),
        "contrast": round(float(g.std()), 3),
        "dark_fraction": round(float((gray < 16).mean()), 5),
        "bright_fraction": round(float((gray > 239).mean()), 5),
    }


# --------------------------------------------------------------- items -------


@dataclass(frozen=True)
class Item:
    image: str  # storage key of the image; also the item's identity
    annotation: str | None  # storage key of the LabelMe JSON, if any


def done_key(image_key: str) -> str:
    return f"{DONE_PREFIX}/{image_key}.json"


def annotation_key(image_key: str) -> str:
    return str(PurePosixPath(image_key).with_suffix(".json"))


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


# -------------------------------------------------------------- sample -------


@dataclass
class SampleManifest:
    images: list[str]  # every image key written
    annotated: list[str]  # image keys that have a (valid) JSON
    corrupt_images: list[str]
    broken_json: list[str]  # image keys whose JSON is broken


def _sample_shapes(rng, w, h):
    def pt():
        return [float(rng.integers(0, w)), float(rng.integers(0, h))]

    x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    x2, y2 = int(rng.integers(x1 + 8, w)), int(rng.integers(y1 + 8, h))
    cx, cy, r = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)), \
        int(rng.integers(5, max(6, min(w, h) // 5)))
    mx1, my1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
    mw, mh = int(rng.integers(8, 20)), int(rng.integers(8, 20))
    bitmap = np.zeros((mh, mw), np.uint8)
    cv2.ellipse(bitmap, (mw // 2, mh // 2), (mw // 2, mh // 2), 0, 0, 360, 1, -1)
    _, png = cv2.imencode(".png", bitmap)

    def shape(label, kind, points, **extra):
        return {"label": label, "points": points, "group_id": None, "description": "",
                "shape_type": kind, "flags": {}, "mask": None, **extra}

    return [
        shape("box", "rectangle", [[float(x1), float(y1)], [float(x2), float(y2)]]),
        shape("ball", "circle", [[float(cx), float(cy)], [float(cx + r), float(cy)]]),
        shape("region", "polygon", [pt() for _ in range(5)]),
        shape("edge", "line", [pt(), pt()]),
        shape("path", "linestrip", [pt() for _ in range(4)]),
        shape("spot", "point", [pt()]),
        shape("dots", "points", [pt() for _ in range(3)]),
        shape("tilted", "oriented_rectangle", [[float(x1), float(y1)], [float(x2), float(y1)],
                                                [float(x2), float(y2)], [float(x1), float(y2)]]),
        shape("blob", "mask", [[float(mx1), float(my1)], [float(mx1 + mw - 1), float(my1 + mh - 1)]],
              mask=base64.b64encode(png.tobytes()).decode("ascii")),
    ]


def _sample_image(rng, w, h, shapes):
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, size=3)
    img = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        img[..., c] = np.clip(base[c] + 40 * np.sin(xx / (7 + 5 * c)) * np.cos(yy / 11), 0, 255)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
    (x1, y1), (x2, y2) = shapes[0]["points"]
    cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), colour, 2)
    (cx, cy), (px, _) = shapes[1]["points"]
    cv2.circle(img, (int(cx), int(cy)), int(px - cx), colour, -1)
    cv2.polylines(img, [np.array(shapes[2]["points"], np.int32)], True, colour, 2)
    if rng.random() < 0.3:  # some blurry images, so sharpness varies
        img = cv2.GaussianBlur(img, (9, 9), 3)
    return img


def make_sample(dst, count: int, seed: int = 0, corrupt: int = 0, broken_json: int = 0,
                min_side: int = 160, max_side: int = 640) -> SampleManifest:
    """Write a synthetic LabelMe dataset; the same arguments give the same bytes.

    Image i is drawn from its own generator seeded by (seed, i), so a bigger
    --count adds images without changing the first ones. Every 4th image is a
    PNG, every 5th sits in a subfolder, every 7th has no JSON. The last
    ``corrupt`` annotated images get garbage bytes and the ``broken_json``
    images before them get a truncated JSON.
    """
    if isinstance(dst, str):
        dst = common.open_storage(dst)
    if count < 0 or corrupt < 0 or broken_json < 0:
        raise common.UsageError("--count, --corrupt and --broken-json must be >= 0")
    if min_side < 32 or max_side < min_side:
        raise common.UsageError("sample sides must satisfy 32 <= min_side <= max_side")
    manifest = SampleManifest([], [], [], [])
    keys = []
    for i in range(count):
        folder = "cam1/" if i % 5 == 4 else ""
        ext = ".png" if i % 4 == 3 else ".jpg"
        keys.append((i, f"{folder}img_{i:05d}{ext}", i % 7 != 6))
    annotated = [k for _, k, has_json in keys if has_json]
    if corrupt + broken_json > len(annotated):
        raise common.UsageError(
            f"--corrupt {corrupt} + --broken-json {broken_json} exceed the {len(annotated)} "
            f"annotated images of a {count}-image sample"
        )
    bad_images = set(annotated[len(annotated) - corrupt:]) if corrupt else set()
    bad_json = set(annotated[len(annotated) - corrupt - broken_json:len(annotated) - corrupt])

    for i, key, has_json in keys:
        rng = np.random.default_rng([seed, i])
        w, h = int(rng.integers(min_side, max_side + 1)), int(rng.integers(min_side, max_side + 1))
        shapes = _sample_shapes(rng, w, h)
        img = _sample_image(rng, w, h, shapes)
        if key in bad_images:
            data = rng.integers(0, 256, size=200, dtype=np.uint8).tobytes()
            manifest.corrupt_images.append(key)
        else:
            data = encode_image(img, key)
        dst.write_bytes(key, data)
        manifest.images.append(key)
        if has_json:
            doc = {"version": "5.5.0", "flags": {}, "shapes": shapes,
                   "imagePath": PurePosixPath(key).name,
                   "imageData": base64.b64encode(data).decode("ascii") if i % 3 == 0 else None,
                   "imageHeight": h, "imageWidth": w}
            text = json.dumps(doc, indent=2)
            if key in bad_json:
                text = text[: len(text) // 2]  # truncated mid-write
                manifest.broken_json.append(key)
            elif key not in bad_images:
                manifest.annotated.append(key)
            dst.write_text(annotation_key(key), text)
    return manifest


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
