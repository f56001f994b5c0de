"""The provider VM's three large inputs are the same bytes in every process.

The startup script, the bundle and the cluster YAML are metadata of the
provider VM: if any byte of them depended on the process that ran `pulumi up`
(hash seed, clock, time zone, the order the file system lists a directory), each
`pulumi up` would rewrite the VM's metadata unnoticed. Calling the functions
twice in one process cannot show that, so this test runs the whole program
(infra.offline.run_program, as the language host runs it) in a separate
interpreter that differs from the test process in all of these:

- PYTHONHASHSEED (2 there; the test process draws its own);
- TZ (Pacific/Kiritimati, UTC+14) and SOURCE_DATE_EPOCH (set there);
- the clock: its time.time()/time_ns() run three years and some seconds ahead
  (a sitecustomize shim; no faketime here);
- file order: it reads a copy of the project whose files were created in
  reverse order, and its shim shuffles every os.listdir/os.scandir result.

Its three values must equal the test process's own run (the `default`
scenario) and the digests in the reviewed inventory
(tests/infra/inventory/default.yaml). The child reports what its shim
changed, so the test also shows that the two processes really differed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from test_infra_inventory import INVENTORY_DIR, LARGE_VM_INPUTS, vm_input_digests

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = "gcp:compute/instance:Instance"
THREE_YEARS = 3 * 365 * 24 * 3600 + 12345.678

SHIM = textwrap.dedent(
    """
    # sitecustomize written by tests/infra/test_vm_inputs_reproducible.py
    import os, random, time

    _shift = float(os.environ["REPRO_CLOCK_SHIFT"])
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _shift
    time.time_ns = lambda: _time_ns() + int(_shift * 1e9)

    _rng = random.Random(os.environ["REPRO_LISTING_SEED"])
    _listdir, _scandir = os.listdir, os.scandir


    def listdir(path="."):
        names = _listdir(path)
        _rng.shuffle(names)
        return names


    class _Shuffled:
        def __init__(self, it):
            with it:
                self._entries = list(it)
            _rng.shuffle(self._entries)
            self._iter = iter(self._entries)

        def __iter__(self):
            return self

        def __next__(self):
            return next(self._iter)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def close(self):
            pass


    def scandir(path="."):
        return _Shuffled(_scandir(path))


    os.listdir, os.scandir = listdir, scandir
    """
)

CHILD = textwrap.dedent(
    """
    import json, os, sys, time

    from infra import offline

    rec = offline.run_program(offline.engine_config({}))
    assert rec["error"] is None, rec["error"]
    (vm,) = [r for r in rec["resources"] if r["type"] == "gcp:compute/instance:Instance"]
    json.dump({
        "project_root": str(offline.PROJECT_ROOT),
        "metadata": {k: vm["inputs"]["metadata"][k] for k in json.loads(sys.argv[1])},
        "hash_of_a_string": hash("ray-gcp"),
        "clock": time.time(),
        "listing": [n for n in os.listdir(os.path.join(str(offline.PROJECT_ROOT), "cluster"))
                    if n != "__pycache__"],
    }, sys.stdout)
    """
)


def copy_in_reverse_order(src: Path, dst: Path) -> None:
    """The project's program, cluster/ and workloads/, each file created in reverse order."""
    for top in ("infra", "cluster", "workloads"):
        files = sorted(
            p for p in (src / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
        )
        for path in reversed(files):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    shutil.copy2(src / "Pulumi.yaml", dst / "Pulumi.yaml")


def start_child(tmp: Path, name: str, project: Path, env: dict[str, str]) -> subprocess.Popen:
    shim = tmp / f"shim-{name}"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "TZ",
                                                             "SOURCE_DATE_EPOCH")}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(LARGE_VM_INPUTS)],
        cwd=tmp,
        env={**base, "PYTHONPATH": os.pathsep.join([str(shim), str(project)]), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_startup_script_bundle_and_cluster_yaml_are_the_same_bytes_in_two_processes(
    tmp_path, default
):
    copy = tmp_path / "project-copy"
    copy_in_reverse_order(ROOT, copy)
    child = start_child(tmp_path, "other", copy, {
        "PYTHONHASHSEED": "2", "TZ": "Pacific/Kiritimati", "SOURCE_DATE_EPOCH": "1",
        "REPRO_CLOCK_SHIFT": str(THREE_YEARS), "REPRO_LISTING_SEED": "other"})
    out, err = child.communicate(timeout=180)
    assert child.returncode == 0, err[-3000:]
    other = json.loads(out)
    here = {
        "project_root": str(ROOT),
        "metadata": {k: default.one(INSTANCE)["inputs"]["metadata"][k] for k in LARGE_VM_INPUTS},
        "hash_of_a_string": hash("ray-gcp"),
        "clock": time.time(),
        # Bytecode caches depend on PYTHONDONTWRITEBYTECODE and earlier runs, not on us.
        "listing": [n for n in os.listdir(ROOT / "cluster") if n != "__pycache__"],
    }

    # The two processes really differed (hash seed, clock, file order, project copy).
    assert other["project_root"] == str(copy)
    assert here["hash_of_a_string"] != other["hash_of_a_string"]
    assert other["clock"] - here["clock"] > THREE_YEARS - 600
    assert here["listing"] != other["listing"]
    assert sorted(here["listing"]) == sorted(other["listing"])

    digests = {"here": vm_input_digests(here["metadata"]),
               "other": vm_input_digests(other["metadata"])}
    for key in LARGE_VM_INPUTS:
        assert digests["here"][key] == digests["other"][key], (
            f"metadata {key} differs between processes")

    # ... and they are the bytes the reviewed inventory snapshot names.
    reviewed = yaml.safe_load((INVENTORY_DIR / "default.yaml").read_text())
    (vm,) = [r for r in reviewed["resources"] if r["type"] == INSTANCE]
    for name, digest in digests.items():
        assert digest == {key: vm["inputs"]["metadata"][key] for key in LARGE_VM_INPUTS}, (
            f"process {name}: the VM inputs differ from tests/infra/inventory/default.yaml")
