"""workloads/labelme_resize.py: geometry, LabelMe parsing and rescaling, image metrics."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from workloads import labelme_resize
from workloads.labelme_resize import ItemError, scale_shape, target_size


def png_b64(bitmap: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", bitmap)
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def b64_bitmap(text: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)


# ---------------------------------------------------------------- resize -----


@pytest.mark.parametrize(
    ("w", "h", "max_side", "expected"),
    [
        (4000, 3000, 1000, (1000, 750)),
        (3000, 4000, 1000, (750, 1000)),
        (500, 300, 1000, (500, 300)),  # never upscaled
        (1000, 1000, 1000, (1000, 1000)),
        (333, 1000, 100, (33, 100)),  # 33.3 rounds to 33
        (1001, 1, 1000, (1000, 1)),  # a side never collapses to 0
        (640, 479, 64, (64, 48)),  # 47.9 -> 48
    ],
)
def test_target_size_keeps_aspect_and_never_upscales(w, h, max_side, expected):
    assert target_size(w, h, max_side) == expected


def test_target_size_rejects_empty_images():
    with pytest.raises(ValueError, match="positive"):
        target_size(0, 10, 100)


# --------------------------------------------------------------- shapes ------

SX, SY = 0.5, 0.25


@pytest.mark.parametrize(
    ("shape_type", "points"),
    [
        ("polygon", [[10, 20], [30, 40], [50, 8]]),
        ("rectangle", [[10, 20], [30, 40]]),
        ("oriented_rectangle", [[0, 0], [20, 0], [20, 8], [0, 8]]),
        ("line", [[1.5, 2.5], [3, 4]]),
        ("linestrip", [[0, 0], [2, 4], [6, 8], [10, 12]]),
        ("point", [[7, 9]]),
        ("points", [[1, 1], [2, 2], [3, 3]]),
    ],
)
def test_point_shapes_scale_per_axis(shape_type, points):
    shape = {"label": "x", "shape_type": shape_type, "points": points, "flags": {"a": 1},
             "group_id": 3, "description": "d"}
    out = scale_shape(shape, SX, SY)
    assert out["points"] == [[x * SX, y * SY] for x, y in points]
    # everything else is kept
    assert {k: v for k, v in out.items() if k != "points"} == {
        k: v for k, v in shape.items() if k != "points"
    }
    assert shape["points"] == points  # the input is not modified


def test_shape_type_defaults_to_polygon_like_labelme():
    out = scale_shape({"label": "x", "points": [[2, 4], [6, 8], [10, 12]]}, 0.5, 0.5)
    assert out["points"] == [[1, 2], [3, 4], [5, 6]]


def test_circle_centre_scales_per_axis_and_radius_by_mean_factor():
    out = scale_shape({"shape_type": "circle", "points": [[100, 80], [130, 120]]}, 0.5, 0.4)
    (cx, cy), (px, py) = out["points"]
    assert (cx, cy) == (50, 32)
    s = (0.5 + 0.4) / 2
    assert (px, py) == pytest.approx((50 + 30 * s, 32 + 40 * s))
    assert np.hypot(px - cx, py - cy) == pytest.approx(50 * s)  # radius 50 -> 50*s


def test_mask_bitmap_is_resized_with_the_bbox():
    bitmap = np.zeros((20, 40), np.uint8)
    bitmap[:, :20] = 1  # left half set
    shape = {"shape_type": "mask", "points": [[10, 10], [49, 29]], "mask": png_b64(bitmap)}
    out = scale_shape(shape, 0.5, 0.5)
    assert out["points"] == [[5, 5], [24.5, 14.5]]
    small = b64_bitmap(out["mask"])
    assert small.shape == (10, 20)
    assert (small[:, :10] == 1).all() and (small[:, 10:] == 0).all()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"shape_type": "triangle", "points": [[0, 0]]},
         r"shapes\[0\]\.shape_type: 'triangle' is not a LabelMe shape type \(allowed: circle,"),
        ({"shape_type": "rectangle", "points": [[0, 0]]},
         r"a rectangle has exactly 2 points, got 1"),
        ({"shape_type": "circle", "points": [[0, 0], [1, 1], [2, 2]]},
         r"a circle has exactly 2 points, got 3"),
        ({"shape_type": "polygon", "points": [[0, 0]]}, r"a polygon has at least 2 points"),
        ({"shape_type": "point", "points": [[float("nan"), 0]]}, r"points\[0\]: expected \[x, y\]"),
        ({"shape_type": "point", "points": [[True, 0]]}, r"points\[0\]: expected \[x, y\]"),
        ({"shape_type": "point", "points": [["1", 0]]}, r"points\[0\]"),
        ({"shape_type": "line", "points": "0,0 1,1"}, r"points: expected a list"),
        ({"shape_type": "mask", "points": [[0, 0], [3, 3]]}, r"mask: a mask shape needs a base64"),
        ({"shape_type": "mask", "points": [[0, 0], [3, 3]], "mask": "@@@"}, r"not valid base64"),
        ({"shape_type": "mask", "points": [[0, 0], [3, 3]],
          "mask": base64.b64encode(b"not a png").decode()}, r"not a decodable PNG"),
        ("just a string", r"shapes\[0\]: expected an object"),
    ],
)
def test_bad_shapes_say_what_is_wrong(shape, message):
    with pytest.raises(ItemError, match=message):
        scale_shape(shape, 1, 1, "a.json: shapes[0]")


# ------------------------------------------------------------- LabelMe -------


def test_parse_labelme_reports_position_of_broken_json():
    with pytest.raises(ItemError, match=r"a\.json: invalid JSON \(.* at line 2 column \d+\)"):
        labelme_resize.parse_labelme(b'{"shapes": [\n  {"label": ', "a.json")


def test_an_unterminated_string_is_reported_without_a_doubled_at():
    with pytest.raises(ItemError) as e:
        labelme_resize.parse_labelme(b'{"label": "cat', "a.json")
    assert str(e.value) == (
        "a.json: invalid JSON (Unterminated string starting at line 1 column 11)"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "a LabelMe file is a JSON object, got list"),
        (b'{"shapes": {}}', "'shapes' must be a list, got dict"),
        (b'{"imageWidth": -3}', "'imageWidth' must be a positive integer, got -3"),
        (b'{"imageHeight": "480"}', "'imageHeight' must be a positive integer"),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
)
def test_parse_labelme_rejects_non_labelme(raw, message):
    with pytest.raises(ItemError, match=message):
        labelme_resize.parse_labelme(raw, "a.json")


def labelme_doc(w=200, h=100, image_data="abc"):
    return {
        "version": "5.5.0", "flags": {"reviewed": True}, "imagePath": "a.jpg",
        "imageData": image_data, "imageWidth": w, "imageHeight": h, "extra": [1],
        "shapes": [{"label": "r", "shape_type": "rectangle", "points": [[20, 10], [180, 90]]}],
    }


def test_rescale_annotation_updates_size_points_and_image_data():
    out = labelme_resize.rescale_annotation(labelme_doc(), 200, 100, 50, 25, b"NEWIMAGE", "a.json")
    assert (out["imageWidth"], out["imageHeight"]) == (50, 25)
    assert out["shapes"][0]["points"] == [[5, 2.5], [45, 22.5]]
    assert base64.b64decode(out["imageData"]) == b"NEWIMAGE"
    assert out["flags"] == {"reviewed": True} and out["extra"] == [1] and out["imagePath"] == "a.jpg"


def test_rescale_annotation_keeps_absent_image_data_absent():
    out = labelme_resize.rescale_annotation(labelme_doc(image_data=None), 200, 100, 50, 25, b"X", "a.json")
    assert out["imageData"] is None


def test_rescale_annotation_refuses_an_annotation_of_another_size():
    with pytest.raises(ItemError, match=r"imageWidth x imageHeight is 200x100 but the image is 300x100"):
        labelme_resize.rescale_annotation(labelme_doc(), 300, 100, 150, 50, b"", "a.json")


def test_errors_inside_shapes_name_file_and_index():
    doc = labelme_doc()
    doc["shapes"].append({"shape_type": "circle", "points": [[1, 1]]})
    with pytest.raises(ItemError, match=r"a\.json: shapes\[1\]\.points: a circle has exactly 2"):
        labelme_resize.rescale_annotation(doc, 200, 100, 50, 25, b"", "a.json")


# -------------------------------------------------------------- metrics ------


def test_quality_metrics_of_flat_and_detailed_images():
    flat = labelme_resize.quality_metrics(np.full((40, 60, 3), 100, np.uint8))
    assert flat == {"sharpness": 0.0, "brightness": 100.0, "contrast": 0.0,
                    "dark_fraction": 0.0, "bright_fraction": 0.0}
    board = ((np.indices((40, 60)).sum(axis=0) % 2) * 255).astype(np.uint8)
    m = labelme_resize.quality_metrics(board)
    assert m["sharpness"] > 10_000 and m["contrast"] == pytest.approx(127.5)
    assert m["dark_fraction"] == 0.5 and m["bright_fraction"] == 0.5


def test_quality_metrics_handle_alpha_and_16_bit():
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., :3] = 255
    assert labelme_resize.quality_metrics(bgra)["brightness"] == 255.0
    deep = np.full((8, 8), 65535, np.uint16)
    assert labelme_resize.quality_metrics(deep)["brightness"] == 255.0
