"""Run as files, the drivers hand Ray functions and classes from `workloads.<module>`.

`ray job submit -- python workloads/annotate.py ...` runs the script as
`__main__`. What it defines there would be pickled *by value* (a copy of
`__main__` unpickled on every worker); each script therefore re-imports itself
as `workloads.<module>` before running, so Ray pickles by reference (README:
"Ray pickles them by reference ... (tested)").

The test runs each script exactly that way, as a file in a fresh interpreter,
with a small `sitecustomize` probe on PYTHONPATH. The probe replaces
`ray.init` by a no-op (no cluster is needed) and `ray.remote` by a recorder:
the first time the driver *uses* what it gave `ray.remote` (`.options()` or
`.remote()`), the probe writes that object's `__module__`, `__qualname__` and
Ray's cloudpickle of it to a file and ends the process. A script that runs its
own `__main__` copy (no re-import) hands over `__main__.process_batch`, which
cloudpickle ships by value: the test fails.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    # sitecustomize written by tests/workloads/test_pickle_by_reference.py
    import json, os

    import ray
    from ray import cloudpickle

    _OUT = os.environ["PICKLE_PROBE_OUT"]


    def _report(obj):
        blob = cloudpickle.dumps(obj)
        record = {
            "module": obj.__module__,
            "qualname": obj.__qualname__,
            "pickle_bytes": len(blob),
            "pickle_mentions_main": b"__main__" in blob,
            "pickle_mentions_module": obj.__module__.encode() in blob,
        }
        with open(_OUT, "w") as f:
            json.dump(record, f)
        os._exit(0)


    class _Recorded:
        def __init__(self, obj):
            self._obj = obj

        def options(self, *args, **kwargs):
            _report(self._obj)

        def remote(self, *args, **kwargs):
            _report(self._obj)


    def _remote(*args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return _Recorded(args[0])
        return lambda obj: _Recorded(obj)


    ray.init = lambda *args, **kwargs: None
    ray.remote = _remote
    """
)


def run_as_file(tmp_path: Path, script: str, *args: str) -> dict:
    """`python workloads/<script> args` from the project root, as a job would run it."""
    shim = tmp_path / "probe"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "probe.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)]),
        "PICKLE_PROBE_OUT": str(out),
        "RAY_ADDRESS": "",
    }
    proc = subprocess.run(
        [sys.executable, f"workloads/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.exists(), (
        f"workloads/{script} never used what it gave ray.remote "
        f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    return json.loads(out.read_text())


def one_image_input(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    (src / "a.png").write_bytes(buf.getvalue())
    return src


def assert_by_reference(record: dict, module: str, qualname: str) -> None:
    assert (record["module"], record["qualname"]) == (module, qualname), record
    # By reference: the pickle names the module and the object, and nothing more.
    assert record["pickle_mentions_module"] and not record["pickle_mentions_main"], record
    assert record["pickle_bytes"] < 300, record


def test_annotate_run_as_a_file_ships_process_batch_by_reference(tmp_path):
    src = one_image_input(tmp_path)
    record = run_as_file(
        tmp_path, "annotate.py", "--input", str(src), "--output", str(tmp_path / "out"),
        "--no-progress",
    )
    assert_by_reference(record, "workloads.annotate", "process_batch")


def test_serve_run_as_a_file_ships_the_model_actor_by_reference(tmp_path):
    record = run_as_file(tmp_path, "serve.py", "--actors", "1", "--port", "0")
    assert_by_reference(record, "workloads.serve", "AnomalyModel")


def test_tree_reduce_run_as_a_file_ships_its_tasks_by_reference(tmp_path):
    record = run_as_file(tmp_path, "tree_reduce.py")
    assert_by_reference(record, "workloads.tree_reduce", "map_chunk")
