"""workloads/annotate.py: items, the Ray task, results.jsonl, the command line."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from workloads import annotate, common, labelme_sample
from workloads.labelme_resize import encode_image

from .conftest import REPO
from .test_labelme_resize import labelme_doc

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
    storage.write_bytes(key, encode_image(img, key))


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


def test_relative_paths_are_resolved_on_the_driver_before_tasks_get_them(tmp_path, monkeypatch):
    """A task runs in another directory (a worker's), so `--input in` must reach it as the
    driver's absolute path: the storages run() opens are pickled (as Ray ships them to the
    task) and used from another working directory."""
    monkeypatch.chdir(tmp_path)
    labelme_sample.make_sample("in", 3)
    src, dst = common.open_storage("in"), common.open_storage("out")  # as run() opens them
    items, _ = annotate.discover(src.list())
    shipped = pickle.dumps((src, dst))
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    monkeypatch.chdir(worker_dir)
    outcomes = annotate.process_batch(items, *pickle.loads(shipped), 64)
    assert [o["ok"] for o in outcomes] == [True] * len(items), outcomes
    assert (tmp_path / "out" / annotate.done_key(items[0].image)).is_file()
    assert not (worker_dir / "out").exists()


def test_annotate_copied_alone_runs_from_the_bundle(tmp_path):
    """`ray submit cluster.yaml .../annotate.py` copies only this file to the head's home and
    runs it there; the modules it imports (labelme_resize, labelme_sample, common) come from
    the bundle on the node venv's sys.path (cluster/render.py's .pth), here PYTHONPATH."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(os.path.join(REPO, "workloads", "annotate.py"), home / "annotate.py")
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run(
        [sys.executable, "annotate.py", "--make-sample", "sample", "--count", "3"],
        cwd=home, env=env, capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote 3 images" in out.stdout and (home / "sample" / "img_00000.jpg").is_file()
