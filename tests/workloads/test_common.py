"""workloads/common.py: storage (local and GCS emulator), summaries."""

from __future__ import annotations

import os
import pickle
import stat

import pytest

from workloads import common


def test_local_storage_round_trip_and_listing(tmp_path):
    s = common.open_storage(str(tmp_path / "root"))
    assert isinstance(s, common.LocalStorage)
    assert list(s.list()) == []  # a missing folder lists as empty
    s.write_bytes("b/c.bin", b"\x00\x01")
    s.write_text("a.txt", "hello")
    s.write_json("j/x.json", {"b": 1, "a": [2]})
    assert sorted(s.list()) == ["a.txt", "b/c.bin", "j/x.json"]
    assert list(s.list("b")) == ["b/c.bin"]
    assert s.read_bytes("b/c.bin") == b"\x00\x01"
    assert s.read_text("j/x.json") == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert s.exists("a.txt") and not s.exists("nope.txt")
    assert s.join("a.txt") == str(tmp_path / "root" / "a.txt")
    assert stat.S_IMODE(os.stat(s.path("a.txt")).st_mode) == 0o644


def test_local_write_replaces_atomically_and_hides_temps(tmp_path):
    s = common.LocalStorage(tmp_path)
    s.write_text("f.txt", "old")
    (tmp_path / ".tmp-abandoned").write_text("half")  # a writer killed mid-write
    s.write_text("f.txt", "new")
    assert s.read_text("f.txt") == "new"
    assert list(s.list()) == ["f.txt"]
    assert s.remove_stale_temps() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../../b", "a//b", "./a"])
def test_keys_cannot_escape_the_root(tmp_path, key):
    with pytest.raises(ValueError, match="invalid storage key"):
        common.LocalStorage(tmp_path).write_bytes(key, b"")


@pytest.mark.parametrize(
    ("url", "message"),
    [("", "empty storage location"), ("s3://bucket/x", "unsupported storage location"),
     ("gs://", "has no bucket name")],
)
def test_open_storage_rejects_unknown_locations(url, message):
    with pytest.raises(common.UsageError, match=message):
        common.open_storage(url)


def test_gcs_url_parsing_and_pickling_keep_the_emulator(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    s = common.open_storage("gs://bkt/some/prefix/")
    assert (s.bucket_name, s.prefix, s.url) == ("bkt", "some/prefix", "gs://bkt/some/prefix")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    copy = pickle.loads(pickle.dumps(s))  # as shipped to a task on another node
    assert copy.emulator_host == "http://127.0.0.1:1" and copy.url == s.url
    assert pickle.loads(pickle.dumps(common.GCSStorage("b"))).emulator_host == ""


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("{t}/in", "{t}/out", False),
        ("{t}/in", "{t}/in", True),
        ("{t}/in", "{t}/in/out", True),
        ("{t}/in/sub", "{t}/in", True),
        ("{t}/in", "{t}/input", False),
        ("gs://b/in", "gs://b/out", False),
        ("gs://b/in", "gs://b/in/out", True),
        ("gs://b/in", "gs://b/input", False),
        ("gs://b", "gs://b/out", True),
        ("gs://b/in", "gs://c/in", False),
        ("gs://b/in", "{t}/in", False),
    ],
)
def test_overlapping(tmp_path, a, b, overlap):
    sa, sb = (common.open_storage(x.format(t=tmp_path)) for x in (a, b))
    assert common.overlapping(sa, sb) is overlap


def test_summary_line():
    shape = common.ClusterShape(nodes=4, cpus=6.0, gpus=0.0)
    assert common.format_summary(shape, processed=10, skipped=2, failed=1, seconds=3.14159) == (
        "This cluster consists of 4 nodes, 6 CPUs; processed 10, skipped 2, failed 1 in 3.1 s"
    )
    assert common.ClusterShape(1, 1.0, 1.0).describe() == "1 node, 1 CPU, 1 GPU"
    assert common.ClusterShape(2, 0.5, 0).describe() == "2 nodes, 0.5 CPUs"


def test_bigger_keeps_the_peak():
    small, large = common.ClusterShape(1, 0, 0), common.ClusterShape(3, 4, 0)
    assert common.bigger(None, small) == small
    assert common.bigger(large, small) == large and common.bigger(small, large) == large


def test_gcs_storage_against_the_emulator(emulated_gcs):
    s = common.open_storage(f"gs://{emulated_gcs}/unit/prefix")
    s.write_bytes("x/a.bin", b"\x01\x02")
    s.write_text("b.txt", "hi")
    assert sorted(s.list()) == ["b.txt", "x/a.bin"]
    assert list(s.list("x")) == ["x/a.bin"]
    assert s.read_bytes("x/a.bin") == b"\x01\x02" and s.read_text("b.txt") == "hi"
    assert s.exists("b.txt") and not s.exists("c.txt")
    with pytest.raises(FileNotFoundError, match="gs://ray-gcp-test/unit/prefix/c.txt"):
        s.read_bytes("c.txt")
    s.write_text("b.txt", "replaced")
    assert s.read_text("b.txt") == "replaced"
    # a sibling prefix sharing the first letters is not listed
    common.open_storage(f"gs://{emulated_gcs}/unit/prefix2").write_text("z.txt", "z")
    assert sorted(s.list()) == ["b.txt", "x/a.bin"]
