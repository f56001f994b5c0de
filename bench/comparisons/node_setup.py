"""Node setup: install the pinned node requirements into a fresh venv, plain pip vs uv.

Both start with cold caches (fresh temp cache dirs) and ignore this
machine's pip/uv configuration (its local wheel mirrors), so they download
from PyPI like a new VM. "uv" is what ``cluster.render.node_setup_commands``
runs on every node: bootstrap the pinned uv (layout.UV_VERSION) with pip into
a tools venv, ``uv venv``, then ``uv pip sync --require-hashes`` of the
requirements file (``uv pip install`` for a single package spec), with
UV_PYTHON_DOWNLOADS=never and UV_NO_CONFIG=1. The bootstrap is timed and
counted in uv's total. Plain pip: ``python -m venv`` + ``pip install -r``
(pip checks the hashes too, since the file has them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.clusters import REPO, BenchError
from cluster import layout

NAME = "node_setup"
TITLE = "Node setup: install the pinned node requirements, pip vs uv (cold caches)"
COMMAND = "python -m bench --only node_setup"
REQUIREMENTS_FILE = REPO / "cluster" / "requirements-node.txt"
FALLBACK = f"ray[default]=={layout.RAY_VERSION}"


def base_python() -> str:
    """The interpreter behind this venv (a fresh venv must not inherit ours)."""
    return getattr(sys, "_base_executable", sys.executable)


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = str(tmp / "home")  # no user config of pip or uv
    env["XDG_CONFIG_HOME"] = str(tmp / "home" / ".config")
    return env


def _timed(cmd: list[str], env: dict, timeout: float, log) -> float:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{' '.join(cmd[:4])} ... exceeded {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                         + (proc.stderr or proc.stdout)[-2000:])
    return time.perf_counter() - t0


def _installed(python: str, env: dict, tmp: Path) -> dict:
    code = (
        "import importlib.metadata as m, json\n"
        "try:\n    import ray; v = ray.__version__\nexcept ImportError:\n    v = None\n"
        "print(json.dumps({'ray': v, 'dists': sorted(f\"{d.metadata['Name'].lower()"
        ".replace('_', '-')}=={d.version}\" for d in m.distributions())}))"
    )
    out = subprocess.run([python, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp)
    if out.returncode != 0:
        return {"ray": None, "error": out.stderr[-500:]}
    import json

    return json.loads(out.stdout)


def _measure(ctx, p, args: list[str], what: str) -> dict:
    py = base_python()
    tmp = Path(tempfile.mkdtemp(prefix="rgb-setup-", dir="/tmp"))
    try:
        env = _clean_env(tmp)
        (tmp / "home").mkdir()
        res: dict = {"installed": what}
        # plain pip
        t_venv = _timed([py, "-m", "venv", str(tmp / "pip-venv")], env, 120, ctx.log)
        ctx.log(f"pip: installing {what} ...")
        t_inst = _timed([str(tmp / "pip-venv/bin/pip"), "--isolated", "install", "-q",
                         "--disable-pip-version-check", "--cache-dir", str(tmp / "pip-cache"),
                         *args], env, p["timeout"], ctx.log)
        res["pip"] = {"venv": t_venv, "install": t_inst, "total": t_venv + t_inst}
        ctx.log(f"pip: {t_inst:.1f} s install (+{t_venv:.1f} s venv)")
        # uv as our node setup runs it
        t_boot = _timed([py, "-m", "venv", str(tmp / "tools")], env, 120, ctx.log)
        t_boot += _timed([str(tmp / "tools/bin/pip"), "--isolated", "install", "-q",
                          "--disable-pip-version-check", "--cache-dir", str(tmp / "pip-cache-uv"),
                          f"uv=={layout.UV_VERSION}"], env, p["timeout"], ctx.log)
        uv = str(tmp / "tools/bin/uv")
        uv_env = {**env, "UV_CACHE_DIR": str(tmp / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never",
                  "UV_NO_CONFIG": "1"}
        t_venv = _timed([uv, "venv", "-q", "--python", py, str(tmp / "uv-venv")],
                        uv_env, 120, ctx.log)
        ctx.log(f"uv: installing {what} ...")
        if args[0] == "-r":  # exactly what node_setup_commands runs
            uv_cmd = [uv, "pip", "sync", "-q", "--require-hashes", "--python",
                      str(tmp / "uv-venv/bin/python"), args[1]]
        else:
            uv_cmd = [uv, "pip", "install", "-q", "--python", str(tmp / "uv-venv/bin/python"),
                      *args]
        t_inst = _timed(uv_cmd, uv_env, p["timeout"], ctx.log)
        res["uv_command"] = " ".join(
            ["uv", *(c.replace(str(tmp), "$TMP").replace(f"{REPO}/", "")
                     for c in uv_cmd[1:] if c != "-q")])
        res["uv"] = {"bootstrap": t_boot, "venv": t_venv, "install": t_inst,
                     "total": t_boot + t_venv + t_inst}
        ctx.log(f"uv: {t_inst:.1f} s install (+{t_venv:.1f} s venv, {t_boot:.1f} s bootstrap)")
        a = _installed(str(tmp / "pip-venv/bin/python"), env, tmp)
        b = _installed(str(tmp / "uv-venv/bin/python"), env, tmp)
        pip_only = sorted(set(a.get("dists", [])) - set(b.get("dists", [])))
        uv_only = sorted(set(b.get("dists", [])) - set(a.get("dists", [])))
        res["ray_versions"] = {"pip": a.get("ray"), "uv": b.get("ray")}
        # pip itself (and setuptools) live in the pip venv only; not a difference in what Ray needs.
        res["only_pip"] = [d for d in pip_only if not d.startswith(("pip==", "setuptools=="))]
        res["only_uv"] = uv_only
        res["packages"] = len(b.get("dists", []))
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def standalone(ctx, p) -> dict:
    if p.get("spec"):  # quick mode: a tiny package, same procedure
        return {**_measure(ctx, p, [p["spec"]], p["spec"]), "notes": ["quick mode: tiny package"]}
    notes = []
    if REQUIREMENTS_FILE.is_file():
        what = str(REQUIREMENTS_FILE.relative_to(REPO))
        try:
            res = _measure(ctx, p, ["-r", str(REQUIREMENTS_FILE)], what)
            res["notes"] = notes
            return res
        except TimeoutError as e:
            ctx.log(f"{e}; measuring {FALLBACK} alone instead")
            notes.append(f"{what} took over {p['timeout']:.0f} s with one installer; "
                         f"measured {FALLBACK} alone instead")
    else:
        notes.append(f"{REQUIREMENTS_FILE.relative_to(REPO)} does not exist; measured {FALLBACK}")
    res = _measure(ctx, p, [FALLBACK], FALLBACK)
    res["notes"] = notes
    return res


def checks(data) -> dict:
    v = data["ray_versions"]
    same = not data["only_pip"] and not data["only_uv"]
    quick = "quick mode: tiny package" in data.get("notes", [])
    ok = v["pip"] == v["uv"] and (quick or v["pip"] == layout.RAY_VERSION)
    detail = f"both venvs import ray {v['pip']}" if v["pip"] else "no ray in this install"
    if same:
        detail += f"; identical package sets ({data['packages']} distributions)"
    else:
        detail += f"; package sets differ: only pip {data['only_pip']}, only uv {data['only_uv']}"
    return {"outputs_agree": bool(ok and same), "detail": detail}
