"""workloads/labelme_sample.py: the synthetic LabelMe dataset."""

from __future__ import annotations

import json

import pytest

from workloads import common, labelme_sample
from workloads.labelme_resize import (
    SHAPE_POINTS,
    ItemError,
    annotation_key,
    decode_image,
    parse_labelme,
)

# --------------------------------------------------------------- sample ------


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sample_is_deterministic_and_stable_under_growth(tmp_path):
    m1 = labelme_sample.make_sample(str(tmp_path / "a"), 12, seed=7, corrupt=1, broken_json=2)
    labelme_sample.make_sample(str(tmp_path / "b"), 12, seed=7, corrupt=1, broken_json=2)
    labelme_sample.make_sample(str(tmp_path / "c"), 12, seed=8, corrupt=1, broken_json=2)
    labelme_sample.make_sample(str(tmp_path / "d"), 20, seed=7)
    a, b, c, d = (tree_bytes(tmp_path / x) for x in "abcd")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert all(d[k] == a[k] for k in ("img_00000.jpg", "img_00000.json", "img_00003.png"))
    assert len(m1.images) == 12 and len(m1.corrupt_images) == 1 and len(m1.broken_json) == 2
    assert "cam1/img_00004.jpg" in m1.images and "img_00006.json" not in a  # layout + no-JSON case
    for key in m1.annotated:  # valid LabelMe whose sizes match the image
        doc = json.loads(a[annotation_key(key)])
        img = decode_image(a[key], key)
        assert (doc["imageWidth"], doc["imageHeight"]) == (img.shape[1], img.shape[0])
        assert {s["shape_type"] for s in doc["shapes"]} == set(SHAPE_POINTS)
    for key in m1.broken_json:
        with pytest.raises(ItemError):
            parse_labelme(a[annotation_key(key)], key)
    for key in m1.corrupt_images:
        with pytest.raises(ItemError):
            decode_image(a[key], key)


def test_sample_refuses_more_bad_items_than_annotated_images(tmp_path):
    with pytest.raises(common.UsageError, match="exceed"):
        labelme_sample.make_sample(str(tmp_path), 3, corrupt=2, broken_json=2)
