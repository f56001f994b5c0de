"""One LabelMe image and its annotation, resized: the pure library under annotate.py.

- ``target_size``: the size with the longest side at most ``max_side``, aspect
  kept, never upscaled;
- ``scale_shape`` / ``rescale_annotation``: every LabelMe shape type's points
  scaled per axis (pixel-corner coordinates, so the image corners map onto the
  new corners), circles kept round, mask bitmaps resized, imageWidth/Height and
  embedded imageData updated;
- ``parse_labelme``: the JSON object of a LabelMe file, or ``ItemError``
  saying where it is broken;
- ``decode_image`` / ``encode_image`` / ``resize_image`` / ``quality_metrics``:
  OpenCV decoding (EXIF orientation for JPEG, alpha and 16 bits kept for PNG),
  INTER_AREA resizing and the sharpness, brightness and contrast metrics.

No I/O, no Ray: ``ItemError`` is what one bad item raises, and the caller
records it and goes on.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import PurePosixPath

import cv2
import numpy as np

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


def annotation_key(image_key: str) -> str:
    """The LabelMe JSON of an image: the same stem in the same folder."""
    return str(PurePosixPath(image_key).with_suffix(".json"))


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
