"""Pure parts of workloads/annotate.py: geometry, LabelMe parsing, items, results, sample."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from workloads import annotate, common
from workloads.annotate import ItemError, scale_shape, target_size

from .conftest import REPO


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
        annotate.parse_labelme(b'{"shapes": [\n  {"label": ', "a.json")


def test_an_unterminated_string_is_reported_without_a_doubled_at():
    with pytest.raises(ItemError) as e:
        annotate.parse_labelme(b'{"label": "cat', "a.json")
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
        annotate.parse_labelme(raw, "a.json")


def labelme_doc(w=200, h=100, image_data="abc"):
    return {
        "version": "5.5.0", "flags": {"reviewed": True}, "imagePath": "a.jpg",
        "imageData": image_data, "imageWidth": w, "imageHeight": h, "extra": [1],
        "shapes": [{"label": "r", "shape_type": "rectangle", "points": [[20, 10], [180, 90]]}],
    }


def test_rescale_annotation_updates_size_points_and_image_data():
    out = annotate.rescale_annotation(labelme_doc(), 200, 100, 50, 25, b"NEWIMAGE", "a.json")
    assert (out["imageWidth"], out["imageHeight"]) == (50, 25)
    assert out["shapes"][0]["points"] == [[5, 2.5], [45, 22.5]]
    assert base64.b64decode(out["imageData"]) == b"NEWIMAGE"
    assert out["flags"] == {"reviewed": True} and out["extra"] == [1] and out["imagePath"] == "a.jpg"


def test_rescale_annotation_keeps_absent_image_data_absent():
    out = annotate.rescale_annotation(labelme_doc(image_data=None), 200, 100, 50, 25, b"X", "a.json")
    assert out["imageData"] is None


def test_rescale_annotation_refuses_an_annotation_of_another_size():
    with pytest.raises(ItemError, match=r"imageWidth x imageHeight is 200x100 but the image is 300x100"):
        annotate.rescale_annotation(labelme_doc(), 300, 100, 150, 50, b"", "a.json")


def test_errors_inside_shapes_name_file_and_index():
    doc = labelme_doc()
    doc["shapes"].append({"shape_type": "circle", "points": [[1, 1]]})
    with pytest.raises(ItemError, match=r"a\.json: shapes\[1\]\.points: a circle has exactly 2"):
        annotate.rescale_annotation(doc, 200, 100, 50, 25, b"", "a.json")


# -------------------------------------------------------------- metrics ------


def test_quality_metrics_of_flat_and_detailed_images():
    flat = annotate.quality_metrics(np.full((40, 60, 3), 100, np.uint8))
    assert flat == {"sharpness": 0.0, "brightness": 100.0, "contrast": 0.0,
                    "dark_fraction": 0.0, "bright_fraction": 0.0}
    board = ((np.indices((40, 60)).sum(axis=0) % 2) * 255).astype(np.uint8)
    m = annotate.quality_metrics(board)
    assert m["sharpness"] > 10_000 and m["contrast"] == pytest.approx(127.5)
    assert m["dark_fraction"] == 0.5 and m["bright_fraction"] == 0.5


def test_quality_metrics_handle_alpha_and_16_bit():
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., :3] = 255
    assert annotate.quality_metrics(bgra)["brightness"] == 255.0
    deep = np.full((8, 8), 65535, np.uint16)
    assert annotate.quality_metrics(deep)["brightness"] == 255.0


# ---------------------------------------------------------------- items ------


def test_discover_pairs_same_stem_json_and_reports_collisions():
    keys = ["a.jpg", "a.json", "b.PNG", "sub/c.jpeg", "sub/c.json", "sub/d.jpg", "orphan.json",
            "e.jpg", "e.png", "e.json", "notes.txt", "_done/a.jpg.json", "results.jsonl"]
    items, failures = annotate.discover(keys)
    assert items == [
        annotate.Item("a.jpg", "a.json"),
        annotate.Item("b.PNG", None),
        annotate.Item("sub/c.jpeg", "sub/c.json"),
        annotate.Item("sub/d.jpg", None),
    ]
    assert sorted(f["key"] for f in failures) == ["e.jpg", "e.png"]
    assert "share one stem" in failures[0]["reason"]


def write_image(storage, key, w, h, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    storage.write_bytes(key, annotate.encode_image(img, key))


class RecordingStorage(common.LocalStorage):
    """A local folder that also records the order of writes."""

    def __init__(self, root):
        super().__init__(root)
        self.writes = []

    def write_bytes(self, key, data):
        self.writes.append(key)
        super().write_bytes(key, data)


def test_process_item_writes_image_then_json_then_completion_record(tmp_path):
    src, dst = common.LocalStorage(tmp_path / "in"), RecordingStorage(tmp_path / "out")
    write_image(src, "sub/a.png", 300, 120)
    src.write_text("sub/a.json", json.dumps(labelme_doc(300, 120)))
    r = annotate.process_item(annotate.Item("sub/a.png", "sub/a.json"), src, dst, 150)
    assert r["ok"], r
    assert dst.writes == ["sub/a.png", "sub/a.json", "_done/sub/a.png.json"]
    img = cv2.imread(str(dst.path("sub/a.png")))
    assert img.shape[:2] == (60, 150)
    doc = json.loads(dst.read_text("sub/a.json"))
    assert (doc["imageWidth"], doc["imageHeight"]) == (150, 60)
    assert doc["shapes"][0]["points"] == [[10, 5], [90, 45]]
    assert base64.b64decode(doc["imageData"]) == dst.read_bytes("sub/a.png")
    row = json.loads(dst.read_text("_done/sub/a.png.json"))
    assert row == r["row"]
    assert (row["width"], row["height"], row["out_width"], row["out_height"]) == (300, 120, 150, 60)
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_small_image_is_copied_unchanged(tmp_path):
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    write_image(src, "s.jpg", 40, 30)
    r = annotate.process_item(annotate.Item("s.jpg", None), src, dst, 100)
    assert r["ok"] and r["row"]["out_width"] == 40
    assert dst.read_bytes("s.jpg") == src.read_bytes("s.jpg")


@pytest.mark.parametrize(
    ("image", "annotation", "reason"),
    [
        (b"\x00garbage", None, "a.jpg: not a decodable image (8 bytes"),
        (b"", None, "a.jpg: not a decodable image (0 bytes"),
        (None, b'{"shapes": [', "a.json: invalid JSON"),
    ],
)
def test_a_bad_item_is_recorded_and_writes_nothing(tmp_path, image, annotation, reason):
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    if image is None:
        write_image(src, "a.jpg", 50, 50)
    else:
        src.write_bytes("a.jpg", image)
    if annotation is not None:
        src.write_bytes("a.json", annotation)
    item = annotate.Item("a.jpg", "a.json" if annotation is not None else None)
    r = annotate.process_item(item, src, dst, 20)
    assert r == {"key": "a.jpg", "ok": False, "reason": pytest.approx(r["reason"])}
    assert r["reason"].startswith(reason)
    assert list(dst.list()) == []


def test_missing_local_file_explains_shared_storage(tmp_path):
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    r = annotate.process_item(annotate.Item("gone.jpg", None), src, dst, 20)
    assert not r["ok"] and "must be visible to every node" in r["reason"]


def test_process_batch_returns_one_result_per_item_in_order(tmp_path):
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    write_image(src, "a.jpg", 64, 64)
    src.write_bytes("b.jpg", b"broken")
    write_image(src, "c.jpg", 64, 32)
    items = [annotate.Item(k, None) for k in ("a.jpg", "b.jpg", "c.jpg")]
    out = annotate.process_batch(items, src, dst, 32)
    assert [(o["key"], o["ok"]) for o in out] == [("a.jpg", True), ("b.jpg", False), ("c.jpg", True)]


def test_ray_ships_the_task_function_by_reference():
    """Workers import workloads.annotate instead of unpickling a copy of __main__."""
    from ray import cloudpickle

    blob = cloudpickle.dumps(annotate.process_batch)
    assert len(blob) < 200 and b"workloads.annotate" in blob
    assert pickle.loads(pickle.dumps(annotate.Item("a.jpg", None))) == annotate.Item("a.jpg", None)


# -------------------------------------------------------------- results ------


def test_results_file_dedupes_and_survives_a_torn_line(tmp_path):
    dst = common.LocalStorage(tmp_path)
    (tmp_path / annotate.RESULTS_KEY).write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "wid')
    rf = annotate.ResultsFile(dst)
    assert rf.keys == {"a", "b"}
    assert rf.add({"key": "b", "v": 2}) is False
    assert rf.add({"key": "c", "v": 3}) is True
    assert rf.add({"key": "c", "v": 4}) is False
    rf.close()
    lines = (tmp_path / annotate.RESULTS_KEY).read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]


# --------------------------------------------------------------- sample ------


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sample_is_deterministic_and_stable_under_growth(tmp_path):
    m1 = annotate.make_sample(str(tmp_path / "a"), 12, seed=7, corrupt=1, broken_json=2)
    annotate.make_sample(str(tmp_path / "b"), 12, seed=7, corrupt=1, broken_json=2)
    annotate.make_sample(str(tmp_path / "c"), 12, seed=8, corrupt=1, broken_json=2)
    annotate.make_sample(str(tmp_path / "d"), 20, seed=7)
    a, b, c, d = (tree_bytes(tmp_path / x) for x in "abcd")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert all(d[k] == a[k] for k in ("img_00000.jpg", "img_00000.json", "img_00003.png"))
    assert len(m1.images) == 12 and len(m1.corrupt_images) == 1 and len(m1.broken_json) == 2
    assert "cam1/img_00004.jpg" in m1.images and "img_00006.json" not in a  # layout + no-JSON case
    for key in m1.annotated:  # valid LabelMe whose sizes match the image
        doc = json.loads(a[annotate.annotation_key(key)])
        img = annotate.decode_image(a[key], key)
        assert (doc["imageWidth"], doc["imageHeight"]) == (img.shape[1], img.shape[0])
        assert {s["shape_type"] for s in doc["shapes"]} == set(annotate.SHAPE_POINTS)
    for key in m1.broken_json:
        with pytest.raises(ItemError):
            annotate.parse_labelme(a[annotate.annotation_key(key)], key)
    for key in m1.corrupt_images:
        with pytest.raises(ItemError):
            annotate.decode_image(a[key], key)


def test_sample_refuses_more_bad_items_than_annotated_images(tmp_path):
    with pytest.raises(common.UsageError, match="exceed"):
        annotate.make_sample(str(tmp_path), 3, corrupt=2, broken_json=2)


# ------------------------------------------------------------------ CLI ------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--input and --output are required"),
        (["--input", "{tmp}/in", "--output", "{tmp}/in/out"], "overlaps --input"),
        (["--input", "{tmp}/missing", "--output", "{tmp}/out"], "is not a folder"),
        (["--input", "s3://b/x", "--output", "{tmp}/out"], "unsupported storage location"),
        (["--input", "{tmp}/in", "--output", "{tmp}/out", "--item-delay", "-1"], "must be >= 0"),
    ],
)
def test_usage_errors_exit_2_before_touching_ray(tmp_path, capsys, argv, message):
    (tmp_path / "in").mkdir()
    code = annotate.main([a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_numbers_are_argparse_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        annotate.main(["--input", "a", "--output", "b", "--max-side", "0"])
    assert e.value.code == 2 and "--max-side must be >= 1, got 0" in capsys.readouterr().err


def test_script_runs_as_a_file_and_documents_itself(tmp_path):
    """`python workloads/annotate.py` from elsewhere, without the package on sys.path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    help_text = subprocess.run(
        [sys.executable, os.path.join(REPO, "workloads", "annotate.py"), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout
    for words in ("--max-side", "--batch-size", "--make-sample", "gs://", "_summary.json",
                  "Exit status", "--connect-timeout"):
        assert words in help_text
    # Every exit status the script uses is listed, 3 (no cluster) included.
    exit_doc = " ".join(help_text.split("Exit status:", 1)[1].split("\n\n", 1)[0].split())
    assert exit_doc.startswith("0 if every image was processed or skipped, 1 if some failed, "
                               "2 for usage errors, 3 if the Ray cluster cannot be reached")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "workloads", "annotate.py"),
         "--make-sample", str(tmp_path / "s"), "--count", "3", "--corrupt", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert "wrote 3 images (2 with valid LabelMe JSON, 1 corrupt images, 0 broken JSONs)" in out


def test_results_on_gcs_are_uploaded_periodically_and_reloaded(emulated_gcs):
    dst = common.open_storage(f"gs://{emulated_gcs}/results-test")
    rf = annotate.ResultsFile(dst, flush_seconds=0)  # upload on every add
    rf.add({"key": "a"})
    rf.add({"key": "b"})
    assert dst.read_text(annotate.RESULTS_KEY) == '{"key": "a"}\n{"key": "b"}\n'
    rf.close()
    again = annotate.ResultsFile(dst, flush_seconds=3600)
    assert again.keys == {"a", "b"}
    assert again.add({"key": "a"}) is False and again.add({"key": "c"}) is True
    assert dst.read_text(annotate.RESULTS_KEY).count("\n") == 2  # not uploaded yet
    again.close()  # ... but always at the end
    assert [json.loads(x)["key"] for x in dst.read_text(annotate.RESULTS_KEY).splitlines()] == [
        "a", "b", "c"]


def test_a_second_driver_on_the_same_local_output_is_refused(tmp_path):
    first = annotate.ResultsFile(common.LocalStorage(tmp_path))
    try:
        with pytest.raises(common.UsageError, match="another annotate run is writing to"):
            annotate.ResultsFile(common.LocalStorage(tmp_path))
    finally:
        first.close()
    annotate.ResultsFile(common.LocalStorage(tmp_path)).close()  # free again
