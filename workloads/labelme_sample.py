"""A synthetic LabelMe dataset for demos, tests and benchmarks (annotate.py --make-sample).

Generated images (gradients, noise, drawn shapes, some blurred) with matching
LabelMe JSONs covering every shape type (a ``mask`` included), JPEG and PNG, a
``cam1/`` subfolder, some images without JSON and some with embedded
``imageData``; optionally corrupt images and truncated JSONs. Image *i* comes
from a generator seeded by ``(seed, i)``: the same arguments give the same
bytes, and a larger count keeps the first images.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

import cv2
import numpy as np

from workloads import common
from workloads.labelme_resize import annotation_key, encode_image


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
