"""The unit of work every annotate/granularity variant runs, so only the execution differs.

``process_chunk`` is a thin loop over ``workloads.annotate.process_item`` (the
per-image function the real driver's Ray tasks run). Sequential, Pool and Ray
all call it; each sets OpenCV to one thread first, as ``annotate.process_batch``
does, so no variant gets hidden extra parallelism from OpenCV's thread pool.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workloads import annotate, common


def item_dicts(items: list[annotate.Item]) -> list[dict]:
    return [{"image": it.image, "annotation": it.annotation} for it in items]


def items_from(dicts: list[dict]) -> list[annotate.Item]:
    return [annotate.Item(d["image"], d["annotation"]) for d in dicts]


def discover(src_dir: str) -> list[annotate.Item]:
    items, failures = annotate.discover(common.LocalStorage(src_dir).list())
    if failures:
        raise RuntimeError(f"sample in {src_dir} has unusable items: {failures[:3]}")
    return items


def process_chunk(items: list[annotate.Item], src_dir: str, dst_dir: str, max_side: int) -> list:
    """Process items with annotate.process_item; one outcome dict per item."""
    import cv2

    cv2.setNumThreads(0)
    src, dst = common.LocalStorage(src_dir), common.LocalStorage(dst_dir)
    return [annotate.process_item(it, src, dst, max_side) for it in items]


def chunks(items: list, size: int) -> list[list]:
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def canonical_rows(outcomes: list[dict]) -> dict:
    """key -> row without the 'node' field (which legitimately differs), or the failure reason."""
    out = {}
    for o in outcomes:
        if o["ok"]:
            row = dict(o["row"])
            row.pop("node", None)
            out[o["key"]] = row
        else:
            out[o["key"]] = {"failed": o["reason"]}
    return out


def digest_rows(rows: dict) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def digest_outputs(dst_dir: str) -> str:
    """sha256 over every output image and JSON (not the _done records, which name the node)."""
    root = Path(dst_dir)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith(annotate.DONE_PREFIX + "/") or p.name.startswith(".tmp-"):
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()
