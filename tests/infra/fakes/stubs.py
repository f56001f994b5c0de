"""Recording stand-ins for the system commands the provider boot script runs.

``install_stubs(bin_dir, state_dir)`` writes executables that go first on the
boot script's PATH. Each appends one JSON line ``[command, arg, ...]`` to
``state_dir/calls.jsonl`` and emulates just enough of the real command for the
script's checks: systemctl enables units as files in ``state_dir/enabled``;
apt-get "installs" into a fake dpkg database that dpkg-query
reads; groupadd creates groups getent then finds; ``python3 -m venv`` makes a
tools dir whose pip "installs" a uv stub of the requested version; that uv
creates a REAL venv (``python -m venv --without-pip``, so ``.pth`` files and
``import cluster`` work) and ``uv pip sync`` records the requirements file and
"installs" a ray dist-info of the pinned version. Nothing touches the real /etc.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The interpreter running the tests: python3 3.11, whatever the host's python3 is.
REAL_PYTHON = sys.executable

_COMMON = """#!{python} -IS
import json, os, re, shutil, subprocess, sys
from pathlib import Path
STATE = Path({state!r})
REAL_PYTHON = {python!r}
NAME = {name!r}
ARGS = sys.argv[1:]
with open(STATE / "calls.jsonl", "a") as _f:
    _f.write(json.dumps([NAME, *ARGS]) + "\\n")
"""

_BODIES = {
    "apt-get": """
if "install" in ARGS:
    for pkg in ARGS[ARGS.index("install") + 1:]:
        if not pkg.startswith("-"):
            (STATE / "dpkg").mkdir(exist_ok=True)
            (STATE / "dpkg" / pkg).touch()
""",
    # dpkg-query -W -f='${Package} ${db:Status-Status}\n' PKG...
    "dpkg-query": """
missing = 0
for pkg in [a for a in ARGS[1:] if not a.startswith("-")]:
    if (STATE / "dpkg" / pkg).exists():
        print(pkg, "installed")
    else:
        print(f"dpkg-query: no packages found matching {pkg}", file=sys.stderr)
        missing = 1
sys.exit(missing)
""",
    "getent": """
db, key = ARGS[0], ARGS[1]
if db == "group" and (STATE / "groups" / key).exists():
    print(f"{key}:x:997:")
    sys.exit(0)
if db == "passwd" and (STATE / "passwd").exists():
    for line in (STATE / "passwd").read_text().splitlines():
        if line.split(":")[0] == key:
            print(line)
            sys.exit(0)
sys.exit(2)
""",
    "groupadd": """
(STATE / "groups").mkdir(exist_ok=True)
(STATE / "groups" / ARGS[-1]).touch()
""",
    "visudo": """
# Like `visudo -c -q -f FILE`: every rule line must look like a sudoers rule.
path = Path(ARGS[ARGS.index("-f") + 1])
for line in path.read_text().splitlines():
    if line and not line.startswith("#"):
        who = r'(%[a-z_][a-z0-9_-]*|[a-z_][a-z0-9_.-]*(, [a-z_][a-z0-9_.-]*)*)'
        if not re.match(who + r' ALL=\\(root\\) NOPASSWD: /\\S+ ""$', line):
            print(f"{path}: syntax error near line {line!r}", file=sys.stderr)
            sys.exit(1)
""",
    "logger": "",
    # systemctl daemon-reload | enable --now U | disable --now U | is-enabled --quiet U:
    # enabled units are files in state/enabled/.
    "systemctl": """
enabled = STATE / "enabled"
enabled.mkdir(exist_ok=True)
unit = ARGS[-1]
if ARGS[0] == "is-enabled":
    sys.exit(0 if (enabled / unit).exists() else 1)
elif ARGS[0] == "enable":
    (enabled / unit).touch()
elif ARGS[0] == "disable":
    (enabled / unit).unlink(missing_ok=True)
elif ARGS != ["daemon-reload"]:
    sys.exit(f"systemctl stub: unexpected arguments {ARGS}")
""",
    # gpasswd -a USER GROUP: records the membership (state/members/GROUP, one user a line).
    "gpasswd": """
if ARGS[0] == "-a":
    user, group = ARGS[1], ARGS[2]
    if not (STATE / "groups" / group).exists():
        sys.exit(f"gpasswd: group '{group}' does not exist")
    members = STATE / "members" / group
    members.parent.mkdir(exist_ok=True)
    known = members.read_text().split() if members.exists() else []
    if user not in known:
        members.write_text("".join(u + "\\n" for u in [*known, user]))
else:
    sys.exit(f"gpasswd stub: unexpected arguments {ARGS}")
""",
    "runuser": """
# runuser -u USER -- CMD...: the sandbox runs everything as the test's user.
os.execvp(ARGS[3], ARGS[3:])
""",
    "sudo": """
# sudo -n CMD...: run CMD as if sudo had set SUDO_USER.
env = dict(os.environ, SUDO_USER=os.environ["STUB_SUDO_USER"])
os.execvpe(ARGS[1], ARGS[1:], env)
""",
    "id": """
if ARGS == ["-nG"]:
    print(os.environ["STUB_ID_GROUPS"])
elif ARGS == ["-un"]:
    print(os.environ["STUB_SUDO_USER"])
else:
    os.execv("/usr/bin/id", ["id", *ARGS])
""",
    # Used as <tools>/bin/pip: `pip install ... uv==X` leaves a uv stub of version X.
    "pip": """
pins = [a for a in ARGS if a.startswith("uv==")]
if "-r" in ARGS:
    text = Path(ARGS[ARGS.index("-r") + 1]).read_text()
    if "--require-hashes" in ARGS and "--hash=sha256:" not in text:
        sys.exit("pip stub: --require-hashes but the file has no hashes")
    pins = re.findall(r"^(uv==\\S+)", text, re.M)
if ARGS[:1] == ["install"] and pins:
    version = pins[0].split("==", 1)[1]
    uv = Path(sys.argv[0]).parent / "uv"
    shutil.copy(STATE / "uv-stub", uv)
    uv.chmod(0o755)
    (uv.parent / "uv-version").write_text(version)
""",
    # `python3 -m venv DIR` (bootstraps the tools venv): a dir with the pip stub.
    "python3-venv": """
bindir = Path(ARGS[-1]) / "bin"
bindir.mkdir(parents=True)
shutil.copy(STATE / "pip-stub", bindir / "pip")
""",
    "uv": """
if ARGS == ["--version"]:
    print("uv " + (Path(sys.argv[0]).parent / "uv-version").read_text() + " (stub)")
elif ARGS[0] == "venv":
    subprocess.run([REAL_PYTHON, "-m", "venv", "--without-pip", ARGS[-1]], check=True)
elif ARGS[:2] == ["pip", "sync"]:
    python = ARGS[ARGS.index("--python") + 1]
    requirements = Path(ARGS[-1]).read_text()
    n = len(list(STATE.glob("synced-*.txt")))
    (STATE / f"synced-{n}.txt").write_text(requirements)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    for old in Path(site).glob("ray-*.dist-info"):
        shutil.rmtree(old)
    ray = re.search(r"^ray(\\[[^\\]]*\\])?==([^\\s;\\\\]+)", requirements, re.M)
    if ray:
        info = Path(site) / f"ray-{ray.group(2)}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: ray\\nVersion: {ray.group(2)}\\n")
else:
    sys.exit(f"uv stub: unexpected arguments {ARGS}")
""",
}

_PYTHON3_WRAPPER = """#!/bin/bash
# python3 for the boot script: the tests' interpreter, except `-m venv`.
if [ "${{1:-}}" = -m ] && [ "${{2:-}}" = venv ]; then
  exec {state}/python3-venv-stub "$@"
fi
exec {python} "$@"
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def stub_text(name: str, state_dir: Path) -> str:
    return _COMMON.format(python=REAL_PYTHON, state=str(state_dir), name=name) + _BODIES[name]


def install_stubs(bin_dir: Path, state_dir: Path, *, login: bool = False) -> None:
    """Write the stubs into ``bin_dir``; ``login`` adds ``sudo`` and ``id`` stubs."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    names = [
        "apt-get", "dpkg-query", "getent", "groupadd", "gpasswd", "visudo", "logger", "runuser",
        "systemctl",
    ]
    if login:
        names += ["sudo", "id"]
    for name in names:
        _write(bin_dir / name, stub_text(name, state_dir))
    _write(state_dir / "pip-stub", stub_text("pip", state_dir))
    _write(state_dir / "uv-stub", stub_text("uv", state_dir))
    _write(state_dir / "python3-venv-stub", stub_text("python3-venv", state_dir))
    _write(bin_dir / "python3", _PYTHON3_WRAPPER.format(state=state_dir, python=REAL_PYTHON))


def calls(state_dir: Path) -> list[list[str]]:
    """Every recorded stub call, in order: ``[command, arg, ...]``."""
    log = state_dir / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
