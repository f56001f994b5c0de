"""The provider VM's boot script, rendered for real and run by bash in a sandbox.

Each sandbox is a temp dir used as the VM's root (RAY_GCP_ROOT), a fake GCE
metadata server and a fake Secret Manager on 127.0.0.1, and recording stubs on
PATH for the commands that would change the real system (apt-get, groupadd,
uv/pip, visudo, logger, runuser). See tests/infra/fakes/ and infra/BOOT.md.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import inspect
import io
import json
import os
import secrets as pysecrets
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the fakes package, however pytest imports us

from fakes.gce import FakeMetadataServer, FakeSecretManager
from fakes.stubs import REAL_PYTHON, calls, install_stubs

from cluster import layout
from infra import boot

PROJECT = "demo-proj"
VERSION_NAMES = {
    layout.SECRET_SSH_PRIVATE_KEY: f"projects/{PROJECT}/secrets/ray-launcher-ssh-key/versions/3",
    layout.SECRET_RAY_AUTH_TOKEN: f"projects/{PROJECT}/secrets/ray-auth-token/versions/1",
    layout.SECRET_SA_KEY: f"projects/{PROJECT}/secrets/ray-provider-sa-key/versions/2",
}
CLUSTER_YAML = "cluster_name: ray-demo\nprovider:\n  type: external\n  module: cluster.x.Y\n"
REQUIREMENTS = (
    "# exported from uv.lock\n"
    f"ray[default]=={layout.RAY_VERSION} \\\n"
    "    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000\n"
    "google-api-python-client==2.202.0 \\\n"
    "    --hash=sha256:1111111111111111111111111111111111111111111111111111111111111111\n"
    "google-auth==2.62.2 \\\n"
    "    --hash=sha256:2222222222222222222222222222222222222222222222222222222222222222\n"
)


# The real, checked-in uv pins (what the bundle carries).
UV_PINS = (Path(__file__).parents[2] / layout.UV_REQUIREMENTS).read_text()


def make_bundle(
    requirements: str = REQUIREMENTS, marker: str = "bundle-v1", extra: dict | None = None
) -> str:
    """base64 of a deterministic tar.gz like the one infra/ puts in metadata."""
    files = {
        "cluster/__init__.py": f"BUNDLE = {marker!r}\n",
        "cluster/requirements-node.txt": requirements,
        layout.UV_REQUIREMENTS: UV_PINS,
        "workloads/__init__.py": "",
        "workloads/hello.py": "print('hello')\n",
        **(extra or {}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for d in ("cluster", "workloads"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def make_secrets() -> dict[str, bytes]:
    """Fresh random secret values, so a leak is recognisable anywhere."""
    tag = pysecrets.token_hex(12)
    return {
        layout.SECRET_SSH_PRIVATE_KEY: (
            "-----BEGIN OPENSSH PRIVATE KEY-----\n"
            f"sshkeymaterial{tag}\n-----END OPENSSH PRIVATE KEY-----\n"
        ).encode(),
        layout.SECRET_RAY_AUTH_TOKEN: f"raytoken{tag}".encode(),
        layout.SECRET_SA_KEY: json.dumps(
            {"type": "service_account", "private_key": f"sakeymaterial{tag}"}
        ).encode(),
    }


def secret_markers(values: dict[str, bytes]) -> list[bytes]:
    """The unique random part of each secret (what must never leak)."""
    tag = values[layout.SECRET_RAY_AUTH_TOKEN][len("raytoken") :]
    return [b"sshkeymaterial" + tag, b"raytoken" + tag, b"sakeymaterial" + tag]


@dataclass
class Sandbox:
    base: Path
    root: Path
    bin: Path
    state: Path
    script: Path
    metadata: FakeMetadataServer
    sm: FakeSecretManager
    values: dict[str, bytes]

    def p(self, vm_path: str) -> Path:
        """A VM path inside the sandbox root."""
        return self.root / vm_path.lstrip("/")

    def set_mode(self, mode: str) -> None:
        names = {
            k: VERSION_NAMES[k]
            for k in (layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN)
        }
        if mode == "key":
            names[layout.SECRET_SA_KEY] = VERSION_NAMES[layout.SECRET_SA_KEY]
        self.metadata.attributes[layout.META_CREDENTIAL_MODE] = mode
        self.metadata.attributes[layout.META_SECRETS] = json.dumps(names)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.base / "root-home"),
            "LANG": "C.UTF-8",
            "RAY_GCP_ROOT": str(self.root),
            "GCE_METADATA_HOST": self.metadata.address,
            "SECRETMANAGER_ENDPOINT": f"http://{self.sm.address}",
            "RAY_GCP_RETRY_BASE_DELAY": "0.01",
            # Temp files of the boot and its tools stay in the sandbox, where tests can look.
            "TMPDIR": str(self.base / "tmp"),
        }
        env.update(extra)
        return env

    def boot(self, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.script)],
            env=self.env(**extra_env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[list[str]]:
        return calls(self.state)


@pytest.fixture(scope="module")
def script_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rendered") / "startup-script.sh"
    path.write_text(boot.render_boot_script())
    return path


def new_sandbox(factory: pytest.TempPathFactory, script: Path, started: list, mode: str) -> Sandbox:
    base = factory.mktemp("vm")
    (base / "root-home").mkdir()
    values = make_secrets()
    metadata = FakeMetadataServer(
        {layout.META_CLUSTER_CONFIG: CLUSTER_YAML, layout.META_BUNDLE: make_bundle()}
    ).start()
    started.append(metadata)
    sm = FakeSecretManager({VERSION_NAMES[k]: v for k, v in values.items()}).start()
    started.append(sm)
    sb = Sandbox(base, base / "root", base / "bin", base / "state", script, metadata, sm, values)
    sb.root.mkdir()
    (base / "tmp").mkdir()
    install_stubs(sb.bin, sb.state)
    sb.set_mode(mode)
    return sb


@pytest.fixture
def make_sandbox(tmp_path_factory: pytest.TempPathFactory, script_path: Path):
    """make_sandbox(mode) -> a fresh, never booted Sandbox."""
    started: list = []
    yield lambda mode="metadata": new_sandbox(tmp_path_factory, script_path, started, mode)
    for server in started:
        server.stop()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, and for files content hash + mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = (
                    "file",
                    stat.S_IMODE(st.st_mode),
                    st.st_uid,
                    st.st_gid,
                    digest,
                    st.st_mtime_ns,
                )
    return out


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_not_ready(sb: Sandbox) -> None:
    assert not sb.p(boot.PROVIDER_READY).exists()
    assert not sb.p(layout.PROVIDER_SECRETS_DIR).exists()
    leftovers = [
        p for p in sb.root.rglob("*") if ".boot-staging" in p.name or p.name.endswith(".old")
    ]
    assert leftovers == []


# ---- rendering -------------------------------------------------------------------


def test_render_substitutes_every_placeholder_with_layout_values():
    text = boot.render_boot_script()
    assert "@@" not in text
    assert f"RAY_VERSION={layout.RAY_VERSION}\n" in text
    assert f"PYTHON_MINOR={layout.PYTHON_MINOR}\n" in text
    assert f"UV_VERSION={layout.UV_VERSION}\n" in text
    assert f"PROVIDER_VENV={layout.PROVIDER_VENV}\n" in text
    assert f"PROVIDER_SECRETS_DIR={layout.PROVIDER_SECRETS_DIR}\n" in text
    assert f"META_SECRETS={layout.META_SECRETS}\n" in text
    assert "SYSTEM_PACKAGES=(rsync python3-venv curl)\n" in text
    # Every keyword argument feeds a placeholder, and every placeholder has one (plus the
    # variable cluster/autostop.py reads its settings file from, which is not an argument).
    arguments = {name.upper() for name in inspect.signature(boot.render_boot_script).parameters}
    assert boot.template_placeholders() == arguments | {"AUTOSTOP_CONFIG_ENV"}
    assert "AUTOSTOP_CONFIG_ENV=RAY_GCP_AUTOSTOP_CONFIG\n" in text
    assert boot.render_boot_script(ray_version="9.9.9") != text


def test_every_file_of_the_pieces_dir_is_a_piece_or_an_include_exactly_once():
    files = sorted(p.name for p in boot.PIECES_DIR.iterdir() if p.name != "__pycache__")
    includes = [
        name
        for piece in boot.BOOT_PIECES
        for name in boot._INCLUDE.findall((boot.PIECES_DIR / piece).read_text())
    ]
    assert sorted([*boot.BOOT_PIECES, *includes]) == files
    text = boot.boot_template()
    assert "@@include" not in text
    # Each include lands inside a quoted here-document, as bash must read it verbatim.
    for name in includes:
        assert (boot.PIECES_DIR / name).read_text() in text
    assert text.startswith("#!/bin/bash\n")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ray_version", "2.60"),
        ("python_minor", "3"),
        ("provider_venv", "relative/venv"),
        ("provider_src", "/opt/ray gcp/src"),
        ("operator_group", "Ray Operators"),
        ("operator_ssh_key", "/home/x/key"),
        ("operator_auth_token", "~/elsewhere/token"),
        ("meta_secrets", "bad key!"),
        ("secret_sa_key", "$(reboot)"),
    ],
)
def test_render_rejects_bad_values_naming_the_argument(field: str, value: str):
    with pytest.raises(ValueError, match=field):
        boot.render_boot_script(**{field: value})


def test_rendered_script_parses_and_passes_shellcheck(script_path: Path):
    subprocess.run(["bash", "-n", str(script_path)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(script_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- a first boot, then a second one ----------------------------------------------


@pytest.fixture
def booted(make_sandbox) -> tuple[Sandbox, subprocess.CompletedProcess[str]]:
    """A sandbox after one successful boot in metadata mode (the test may change it)."""
    sb = make_sandbox("metadata")
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    return sb, result


@pytest.fixture(scope="module")
def first_boot(tmp_path_factory: pytest.TempPathFactory, script_path: Path):
    """Like ``booted`` but shared by the read-only tests of this module: do not change it."""
    started: list = []
    sb = new_sandbox(tmp_path_factory, script_path, started, "metadata")
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    yield sb, result
    for server in started:
        server.stop()


def test_first_boot_installs_secrets_root_only_0600(first_boot):
    sb, _ = first_boot
    secrets_dir = sb.p(layout.PROVIDER_SECRETS_DIR)
    assert mode_of(secrets_dir) == 0o700
    assert sorted(p.name for p in secrets_dir.iterdir()) == [
        layout.SECRET_RAY_AUTH_TOKEN,
        layout.SECRET_SSH_PRIVATE_KEY,
    ]
    for name in (layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN):
        path = secrets_dir / name
        assert path.read_bytes() == sb.values[name]
        assert mode_of(path) == 0o600
    # Exactly the named versions, fetched with the metadata server's token.
    assert sorted(sb.sm.accessed()) == sorted(
        VERSION_NAMES[k] for k in (layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN)
    )
    assert {r.headers["authorization"] for r in sb.sm.requests} == {f"Bearer {sb.metadata.token}"}
    assert sb.metadata.bad_flavor_requests == 0


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the sandbox boot runs as the test's user: root ownership shows only when tests run "
    "as root (as in the CI container); the refusal to run as non-root is tested below",
)
def test_first_boot_secrets_are_owned_by_root(first_boot):
    """BOOT.md: the secrets are root-owned. The boot runs as root (the VM's
    startup-script) and creates them itself, so root (uid 0, gid 0) owns them."""
    sb, _ = first_boot
    secrets_dir = sb.p(layout.PROVIDER_SECRETS_DIR)
    owned = [secrets_dir, *sorted(secrets_dir.iterdir())]
    assert len(owned) == 3
    assert {str(p): (p.stat().st_uid, p.stat().st_gid) for p in owned} == {
        str(p): (0, 0) for p in owned}


def test_boot_outside_a_sandbox_refuses_to_run_as_a_non_root_user(make_sandbox):
    """Root ownership of the secrets rests on this: as any other user (and no
    RAY_GCP_ROOT), the script stops before it reads metadata or writes a file.
    Run as `nobody` when the tests run as root; it cannot write /etc either way."""
    sb = make_sandbox("metadata")
    env = sb.env()
    del env["RAY_GCP_ROOT"]
    argv = ["bash", "-s"]  # the script on stdin: nobody cannot open files in pytest's tmp
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        env["HOME"] = "/nonexistent"
    with sb.script.open("rb") as script:
        result = subprocess.run(argv, env=env, stdin=script, capture_output=True, text=True,
                                timeout=60, check=False)
    assert result.returncode != 0
    failed = [line for line in result.stderr.splitlines()
              if line.startswith("ray-gcp-boot: FAILED")]
    assert len(failed) == 1 and "must run as root" in failed[0], result.stderr
    assert sb.metadata.requests == [] and sb.sm.requests == []
    assert not Path(layout.PROVIDER_SECRETS_DIR).exists()


def test_first_boot_writes_cluster_yaml_from_metadata(first_boot):
    sb, _ = first_boot
    path = sb.p(layout.PROVIDER_CLUSTER_YAML)
    assert path.read_text() == CLUSTER_YAML
    assert mode_of(path) == 0o644
    assert mode_of(sb.p(layout.PROVIDER_CONFIG_DIR)) == 0o755


def test_first_boot_installs_packages_uv_and_the_exact_pinned_venv(first_boot):
    sb, _ = first_boot
    recorded = sb.calls()
    apt = [c for c in recorded if c[0] == "apt-get"]
    assert apt[0][-2:] == ["-q", "update"]
    assert apt[1][apt[1].index("install") :] == [
        "install",
        "-y",
        "--no-install-recommends",
        "rsync",
        "python3-venv",
        "curl",
    ]
    tools = str(sb.p(boot.PROVIDER_TOOLS))
    assert ["python3-venv", "-m", "venv", tools] in recorded
    pip = [c for c in recorded if c[0] == "pip"]
    assert pip == [
        [
            "pip",
            "install",
            "--quiet",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(sb.p(layout.PROVIDER_ROOT) / ".boot-staging" / "src" / layout.UV_REQUIREMENTS),
        ]
    ]
    venv = str(sb.p(layout.PROVIDER_VENV))
    uv = [c[1:] for c in recorded if c[0] == "uv" and c[1:] != ["--version"]]
    assert uv[0] == ["venv", "--no-project", "--python", str(sb.bin / "python3"), venv]
    assert uv[1][:4] == ["pip", "sync", "--require-hashes", "--python"]
    assert uv[1][4] == f"{venv}/bin/python"
    assert len(uv) == 2
    # The file uv synced is byte for byte the bundle's pinned requirements.
    assert (sb.state / "synced-0.txt").read_text() == REQUIREMENTS
    marker = (sb.p(layout.PROVIDER_VENV) / ".ray-gcp-requirements").read_text()
    assert hashlib.sha256(REQUIREMENTS.encode()).hexdigest() in marker


def test_first_boot_puts_the_bundle_on_the_venv_sys_path(first_boot):
    sb, _ = first_boot
    src = sb.p(layout.PROVIDER_SRC)
    assert (src / "cluster" / "requirements-node.txt").read_text() == REQUIREMENTS
    assert mode_of(src / "cluster" / "__init__.py") == 0o644
    assert mode_of(src / "cluster") == 0o755
    venv_python = sb.p(layout.PROVIDER_VENV) / "bin" / "python"
    pth = list(sb.p(layout.PROVIDER_VENV).glob("lib/python*/site-packages/ray-gcp-src.pth"))
    assert len(pth) == 1 and pth[0].read_text() == f"{src}\n"
    out = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import cluster, workloads; print(cluster.BUNDLE, cluster.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=sb.base,
    ).stdout.split()
    assert out == ["bundle-v1", str(src / "cluster" / "__init__.py")]


def test_first_boot_writes_login_profile_and_operator_access(first_boot):
    sb, _ = first_boot
    venv_bin = f"{sb.p(layout.PROVIDER_VENV)}/bin"
    profile = sb.p(boot.LOGIN_PROFILE).read_text()
    assert f'PATH="{venv_bin}:$PATH"' in profile
    assert "export RAY_AUTH_MODE=token\n" in profile
    token_copy = layout.OPERATOR_AUTH_TOKEN.replace("~", "$HOME", 1)
    assert f'export RAY_AUTH_TOKEN_PATH="{token_copy}"\n' in profile
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in profile  # metadata mode: the VM's own SA
    helper = sb.p(boot.OPERATOR_HELPER)
    assert mode_of(helper) == 0o755
    sudoers = sb.p(boot.OPERATOR_SUDOERS)
    assert mode_of(sudoers) == 0o440
    rules = [line for line in sudoers.read_text().splitlines() if not line.startswith("#")]
    assert rules == [f'%{layout.OPERATOR_GROUP} ALL=(root) NOPASSWD: {helper} ""']
    assert ["groupadd", "--system", layout.OPERATOR_GROUP] in sb.calls()
    ready = sb.p(boot.PROVIDER_READY).read_text()
    assert f"ray={layout.RAY_VERSION} python={layout.PYTHON_MINOR}" in ready
    assert "credential-mode=metadata" in ready


def test_the_sandboxed_boot_left_the_real_system_alone(first_boot):
    for vm_path in (
        layout.PROVIDER_CONFIG_DIR,
        layout.PROVIDER_ROOT,
        boot.OPERATOR_SUDOERS,
        boot.LOGIN_PROFILE,
    ):
        assert not Path(vm_path).exists(), vm_path
    assert f"\n{layout.OPERATOR_GROUP}:" not in "\n" + Path("/etc/group").read_text()


def test_generated_helper_and_profile_pass_shellcheck(first_boot):
    sb, _ = first_boot
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for path, shell in ((boot.OPERATOR_HELPER, "bash"), (boot.LOGIN_PROFILE, "sh")):
        result = subprocess.run(
            ["shellcheck", "-s", shell, str(sb.p(path))],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout


def test_generated_sudoers_rule_passes_the_real_visudo(first_boot):
    sb, _ = first_boot
    visudo = shutil.which("visudo", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if visudo is None:
        pytest.skip("sudo is not installed here (apt-get install sudo), so no real visudo")
    result = subprocess.run(
        [visudo, "-c", "-f", str(sb.p(boot.OPERATOR_SUDOERS))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_second_boot_changes_nothing_and_reinstalls_nothing(booted):
    sb, _ = booted
    before = snapshot(sb.root)
    n_calls = len(sb.calls())
    second = sb.boot()
    assert second.returncode == 0, second.stderr
    after = snapshot(sb.root)
    ready = str(sb.p(boot.PROVIDER_READY).relative_to(sb.root))
    assert before.pop(ready)[:4] == after.pop(ready)[:4]  # rewritten last, same mode/owner
    assert after == before
    new = [c[0] for c in sb.calls()[n_calls:]]
    assert set(new) <= {"dpkg-query", "uv", "getent", "visudo", "systemctl"}, new
    # The timer is enabled again (a no-op), the unchanged units are not reloaded.
    systemctl = [c[1:] for c in sb.calls()[n_calls:] if c[0] == "systemctl"]
    assert systemctl == [["enable", "--now", f"{layout.AUTOSTOP_UNIT}.timer"]]
    assert ["uv", "--version"] == sb.calls()[-len(new) :][new.index("uv")][:2]
    assert [c for c in sb.calls()[n_calls:] if c[0] == "uv" and c[1] != "--version"] == []
    assert "already has exactly the pinned requirements" in second.stdout


def test_changed_requirements_resync_the_venv_in_place(booted):
    sb, _ = booted
    bumped = REQUIREMENTS + "tqdm==4.70.1 \\\n    --hash=sha256:" + "3" * 64 + "\n"
    sb.metadata.attributes[layout.META_BUNDLE] = make_bundle(bumped, marker="bundle-v2")
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    uv = [c[1:3] for c in sb.calls() if c[0] == "uv" and c[1] != "--version"]
    assert uv == [["venv", "--no-project"], ["pip", "sync"], ["pip", "sync"]]  # no new venv
    assert (sb.state / "synced-1.txt").read_text() == bumped
    assert "bundle-v2" in (sb.p(layout.PROVIDER_SRC) / "cluster" / "__init__.py").read_text()


def test_the_real_bundle_and_provider_metadata_boot(make_sandbox):
    """Contract with the other halves: cluster.bundle's bundle and infra's metadata items."""
    from cluster.bundle import REQUIREMENTS_PATH, build_bundle
    from infra.components.provider_vm import provider_metadata

    project = Path(__file__).resolve().parents[2]
    sb = make_sandbox("metadata")
    versions = {
        k: VERSION_NAMES[k] for k in (layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN)
    }
    sb.metadata.attributes = provider_metadata(
        startup_script=sb.script.read_text(),
        cluster_yaml=CLUSTER_YAML,
        bundle_b64=base64.b64encode(build_bundle(project)).decode(),
        secret_versions=versions,
        credential_mode="metadata",
    )
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    assert REQUIREMENTS_PATH == boot.BUNDLE_REQUIREMENTS
    assert (sb.state / "synced-0.txt").read_text() == (project / REQUIREMENTS_PATH).read_text()
    src = sb.p(layout.PROVIDER_SRC)
    out = subprocess.run(
        [
            str(sb.p(layout.PROVIDER_VENV) / "bin" / "python"),
            "-c",
            "import cluster.layout as l; print(l.RAY_VERSION, l.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=sb.base,
    ).stdout.split()
    assert out == [layout.RAY_VERSION, str(src / "cluster" / "layout.py")]


# ---- autostop: the timer, its settings file, ray-gcp-idle --------------------------------


def test_first_boot_installs_and_enables_the_autostop_timer(first_boot):
    """The default (no metadata key: 60 min): the service runs one check of the
    bundle's cluster/autostop.py with the venv's Python, the timer runs it every
    minute from 2 min after boot, and the boot enables it."""
    sb, result = first_boot
    unit = layout.AUTOSTOP_UNIT
    service = sb.p(f"{boot.SYSTEMD_UNIT_DIR}/{unit}.service").read_text()
    timer = sb.p(f"{boot.SYSTEMD_UNIT_DIR}/{unit}.timer").read_text()
    venv = sb.p(layout.PROVIDER_VENV)
    assert f"ExecStart={venv}/bin/python -I -u -m cluster.autostop vm-check\n" in service
    assert "Type=oneshot\n" in service
    assert f"ConditionPathExists={sb.p(boot.PROVIDER_READY)}\n" in service
    assert f"Environment=RAY_GCP_AUTOSTOP_CONFIG={sb.p(layout.PROVIDER_AUTOSTOP_CONFIG)}\n" in service
    for line in ("OnBootSec=2min", "OnUnitInactiveSec=1min", "WantedBy=timers.target"):
        assert f"{line}\n" in timer
    systemctl = [c[1:] for c in sb.calls() if c[0] == "systemctl"]
    assert systemctl == [["daemon-reload"], ["enable", "--now", f"{unit}.timer"]]
    assert (sb.state / "enabled" / f"{unit}.timer").exists()
    config = json.loads(sb.p(layout.PROVIDER_AUTOSTOP_CONFIG).read_text())
    assert config == {
        "idle_timeout_minutes": 60,
        "cluster_yaml": str(sb.p(layout.PROVIDER_CLUSTER_YAML)),
        "secrets_dir": str(sb.p(layout.PROVIDER_SECRETS_DIR)),
        "state_dir": str(sb.p(layout.PROVIDER_AUTOSTOP_STATE_DIR)),
        "ray": f"{venv}/bin/ray",
    }
    assert mode_of(sb.p(layout.PROVIDER_AUTOSTOP_STATE_DIR)) == 0o755
    assert mode_of(sb.p(layout.IDLE_STATUS_COMMAND)) == 0o755
    assert "[9/10] autostop (after 60 min idle)" in result.stdout
    profile = sb.p(boot.LOGIN_PROFILE).read_text()
    assert f'"{sb.p(layout.IDLE_STATUS_COMMAND)}" banner >&2' in profile


def test_autostop_units_pass_systemd_analyze_verify(first_boot):
    sb, _ = first_boot
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = [sb.p(f"{boot.SYSTEMD_UNIT_DIR}/{layout.AUTOSTOP_UNIT}.{kind}")
             for kind in ("service", "timer")]
    result = subprocess.run([analyze, "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_LEVEL": "warning"})
    # Only complaints about our two files count (verify also loads the host's units).
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if layout.AUTOSTOP_UNIT in line]
    assert ours == [], result.stdout + result.stderr


def test_idle_timeout_zero_disables_the_timer(booted):
    sb, _ = booted
    timer = f"{layout.AUTOSTOP_UNIT}.timer"
    assert (sb.state / "enabled" / timer).exists()
    sb.metadata.attributes[layout.META_IDLE_TIMEOUT] = "0"
    n = len(sb.calls())
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    assert "[9/10] autostop (off)" in result.stdout
    systemctl = [c[1:] for c in sb.calls()[n:] if c[0] == "systemctl"]
    assert systemctl == [["is-enabled", "--quiet", timer], ["disable", "--now", timer]]
    assert not (sb.state / "enabled" / timer).exists()
    assert json.loads(sb.p(layout.PROVIDER_AUTOSTOP_CONFIG).read_text())["idle_timeout_minutes"] == 0
    # And back on, with another timeout.
    sb.metadata.attributes[layout.META_IDLE_TIMEOUT] = "15"
    assert sb.boot().returncode == 0
    assert (sb.state / "enabled" / timer).exists()
    assert json.loads(sb.p(layout.PROVIDER_AUTOSTOP_CONFIG).read_text())["idle_timeout_minutes"] == 15


# ---- credential mode "key" ----------------------------------------------------------


@pytest.fixture(scope="module")
def key_first_boot(tmp_path_factory: pytest.TempPathFactory, script_path: Path):
    """One boot in credential mode "key", shared by read-only tests: do not change it."""
    started: list = []
    sb = new_sandbox(tmp_path_factory, script_path, started, "key")
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    yield sb, result
    for server in started:
        server.stop()


def test_key_mode_writes_sa_key_and_sets_google_application_credentials(key_first_boot):
    sb, _ = key_first_boot
    key = sb.p(layout.PROVIDER_SECRETS_DIR) / layout.SECRET_SA_KEY
    assert key.read_bytes() == sb.values[layout.SECRET_SA_KEY]
    assert mode_of(key) == 0o600
    sa_copy = boot.OPERATOR_SA_KEY.replace("~", "$HOME", 1)
    profile = sb.p(boot.LOGIN_PROFILE).read_text()
    assert f'export GOOGLE_APPLICATION_CREDENTIALS="{sa_copy}"\n' in profile
    assert "credential-mode=key" in sb.p(boot.PROVIDER_READY).read_text()
    assert VERSION_NAMES[layout.SECRET_SA_KEY] in sb.sm.accessed()


def test_key_mode_requires_the_sa_key_secret(make_sandbox):
    sb = make_sandbox("metadata")
    sb.metadata.attributes[layout.META_CREDENTIAL_MODE] = "key"
    result = sb.boot()
    assert result.returncode != 0
    assert f"lacks secret '{layout.SECRET_SA_KEY}'" in result.stderr
    assert_not_ready(sb)


# ---- operator access: the sudo helper and the login profile -----------------------


def add_operator(sb: Sandbox, user: str = "alice_example_com") -> Path:
    home = sb.base / "home" / user
    home.mkdir(parents=True)
    with open(sb.state / "passwd", "a") as f:
        f.write(f"{user}:x:1001:1001::{home}:/bin/bash\n")
    return home


def test_operators_get_private_copies_via_helper_and_login_profile(make_sandbox):
    sb = make_sandbox("key")
    assert sb.boot().returncode == 0
    home = add_operator(sb)
    result = subprocess.run(
        [str(sb.p(boot.OPERATOR_HELPER))],
        env=sb.env(SUDO_USER="alice_example_com"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    opdir = home / layout.OPERATOR_DIR.removeprefix("~/")
    assert mode_of(opdir) == 0o700
    copies = {
        layout.OPERATOR_SSH_KEY: layout.SECRET_SSH_PRIVATE_KEY,
        layout.OPERATOR_AUTH_TOKEN: layout.SECRET_RAY_AUTH_TOKEN,
        boot.OPERATOR_SA_KEY: layout.SECRET_SA_KEY,
    }
    for copy, name in copies.items():
        path = home / copy.removeprefix("~/")
        assert path.read_bytes() == sb.values[name]
        assert mode_of(path) == 0o600
    # The copies are written by the operator's own process (runuser), never by root.
    runs = [c for c in sb.calls() if c[0] == "runuser"]
    assert len(runs) == 3 and all(c[1:4] == ["-u", "alice_example_com", "--"] for c in runs)
    assert sorted(p.name for p in opdir.iterdir()) == sorted(
        Path(c).name for c in copies
    )  # no temp files left

    # At login the profile runs the helper through sudo for members of the group only.
    bob = add_operator(sb, "bob")
    install_stubs(sb.bin, sb.state, login=True)
    env = sb.env(HOME=str(bob), STUB_SUDO_USER="bob", STUB_ID_GROUPS=f"bob {layout.OPERATOR_GROUP}")
    login = f'. "{sb.p(boot.LOGIN_PROFILE)}"; env'
    out = subprocess.run(["sh", "-c", login], env=env, capture_output=True, text=True, check=True)
    variables = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    token_copy = bob / layout.OPERATOR_AUTH_TOKEN.removeprefix("~/")
    assert variables["RAY_AUTH_MODE"] == "token"
    assert variables["RAY_AUTH_TOKEN_PATH"] == str(token_copy)
    assert variables["GOOGLE_APPLICATION_CREDENTIALS"] == str(bob / boot.OPERATOR_SA_KEY[2:])
    assert variables["PATH"].startswith(f"{sb.p(layout.PROVIDER_VENV)}/bin:")
    assert token_copy.read_bytes() == sb.values[layout.SECRET_RAY_AUTH_TOKEN]
    assert ["sudo", "-n", str(sb.p(boot.OPERATOR_HELPER))] in sb.calls()
    n = len(sb.calls())
    env["STUB_ID_GROUPS"] = "bob"
    subprocess.run(["sh", "-c", login], env=env, capture_output=True, check=True)
    assert [c for c in sb.calls()[n:] if c[0] == "sudo"] == []

    # Back in metadata mode: the key and the variable go, so does the operator's copy.
    sb.set_mode("metadata")
    assert sb.boot().returncode == 0
    assert not (sb.p(layout.PROVIDER_SECRETS_DIR) / layout.SECRET_SA_KEY).exists()
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in sb.p(boot.LOGIN_PROFILE).read_text()
    subprocess.run(
        [str(sb.p(boot.OPERATOR_HELPER))],
        env=sb.env(SUDO_USER="alice_example_com"),
        check=True,
        capture_output=True,
    )
    assert not (home / boot.OPERATOR_SA_KEY.removeprefix("~/")).exists()


# ---- failures: loud, and nothing half-configured -----------------------------------


def assert_failed_loudly(
    result: subprocess.CompletedProcess[str], sb: Sandbox, *needles: str
) -> str:
    assert result.returncode != 0
    failed = [
        line for line in result.stderr.splitlines() if line.startswith("ray-gcp-boot: FAILED")
    ]
    assert len(failed) == 1, result.stderr
    for needle in needles:
        assert needle in failed[0]
    logged = [c for c in sb.calls() if c[0] == "logger"]
    assert logged and logged[-1][1:5] == ["-p", "user.err", "-t", "ray-gcp-boot"]
    assert logged[-1][-1] == failed[0].removeprefix("ray-gcp-boot: ")
    assert_not_ready(sb)
    return failed[0]


@pytest.mark.parametrize("status", [403, 404])
def test_secret_manager_refusal_fails_the_boot_and_installs_nothing(make_sandbox, status: int):
    sb = make_sandbox("metadata")
    refused = VERSION_NAMES[layout.SECRET_RAY_AUTH_TOKEN]
    sb.sm.failures[refused] = status
    result = sb.boot()
    line = assert_failed_loudly(
        result,
        sb,
        "step 'fetch metadata, bundle and secrets into staging'",
        f"'{layout.SECRET_RAY_AUTH_TOKEN}'",
        refused,
        f"HTTP {status}",
        "roles/secretmanager.secretAccessor",
    )
    assert "PERMISSION_DENIED" in line if status == 403 else "NOT_FOUND" in line
    # Nothing was installed: no cluster config, bundle, venv or package install.
    assert not sb.p(layout.PROVIDER_CLUSTER_YAML).exists()
    assert not sb.p(layout.PROVIDER_SRC).exists()
    assert not sb.p(layout.PROVIDER_VENV).exists()
    assert [c for c in sb.calls() if c[0] not in ("logger",)] == []


def test_metadata_token_failure_fails_the_boot(make_sandbox):
    sb = make_sandbox("metadata")
    sb.metadata.token_status = 404
    result = sb.boot()
    assert_failed_loudly(result, sb, "access token from the metadata server", "HTTP 404")
    assert sb.sm.requests == []


def test_failed_reboot_removes_previously_installed_credentials(booted):
    sb, _ = booted
    sb.sm.failures[VERSION_NAMES[layout.SECRET_SSH_PRIVATE_KEY]] = 403
    result = sb.boot()
    assert_failed_loudly(result, sb, f"'{layout.SECRET_SSH_PRIVATE_KEY}'", "HTTP 403")
    profile = sb.p(boot.LOGIN_PROFILE)  # kept: it warns operators at login
    out = subprocess.run(
        ["sh", "-c", f'. "{profile}"'], env=sb.env(), capture_output=True, text=True, check=False
    )
    assert "boot did not complete" in out.stderr
    add_operator(sb)  # and the sudo helper refuses to hand out anything
    helper = subprocess.run(
        [str(sb.p(boot.OPERATOR_HELPER))],
        env=sb.env(SUDO_USER="alice_example_com"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert helper.returncode != 0 and "boot has not completed" in helper.stderr
    # Fixed: the next boot recovers fully.
    del sb.sm.failures[VERSION_NAMES[layout.SECRET_SSH_PRIVATE_KEY]]
    assert sb.boot().returncode == 0
    assert sb.p(boot.PROVIDER_READY).exists()


def test_a_second_concurrent_boot_stops_and_touches_nothing(make_sandbox):
    sb = make_sandbox("metadata")
    secrets_dir = sb.p(layout.PROVIDER_SECRETS_DIR)
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "placeholder").write_text("installed by the running boot")
    fd = os.open(sb.p(layout.PROVIDER_CONFIG_DIR), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the lock the running boot holds
        result = sb.boot()
    finally:
        os.close(fd)
    assert result.returncode != 0
    assert "another boot of this script is running" in result.stderr
    assert (secrets_dir / "placeholder").exists()
    assert sb.metadata.requests == []


def test_transient_secret_manager_errors_are_retried(make_sandbox):
    sb = make_sandbox("metadata")
    sb.sm.transient[VERSION_NAMES[layout.SECRET_SSH_PRIVATE_KEY]] = 2
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    assert "retry 2/5" in result.stdout


def test_corrupted_payload_checksum_fails_the_boot(make_sandbox):
    sb = make_sandbox("metadata")
    sb.sm.corrupt_crc.add(VERSION_NAMES[layout.SECRET_SSH_PRIVATE_KEY])
    assert_failed_loudly(sb.boot(), sb, "dataCrc32c", "mismatch")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (layout.META_CREDENTIAL_MODE, "keys", "allowed values: 'metadata', 'key'"),
        (layout.META_SECRETS, "not json", "is not valid JSON"),
        (layout.META_SECRETS, json.dumps({layout.SECRET_SSH_PRIVATE_KEY: "x"}), "lacks secret"),
        (layout.META_BUNDLE, "!!!", "is not base64 of a tar.gz"),
        (
            layout.META_BUNDLE,
            make_bundle(REQUIREMENTS.replace(layout.RAY_VERSION, "2.59.0")),
            "pins ray==2.59.0, but cluster/layout.py RAY_VERSION is",
        ),
        (layout.META_CLUSTER_CONFIG, None, f"'{layout.META_CLUSTER_CONFIG}' is missing"),
        (layout.META_IDLE_TIMEOUT, "4", "allowed: 0 (autostop off) or a whole number of minutes"),
        (layout.META_IDLE_TIMEOUT, "60.5", f"metadata key '{layout.META_IDLE_TIMEOUT}' is '60.5'"),
    ],
)
def test_bad_metadata_fails_with_a_clear_message(make_sandbox, key, value, needle):
    sb = make_sandbox("metadata")
    if value is None:
        del sb.metadata.attributes[key]
    else:
        sb.metadata.attributes[key] = value
    assert_failed_loudly(sb.boot(), sb, needle)
    assert sb.sm.requests == []  # refused before any secret was read


# The bundle unpacks into <root>/opt/ray-gcp/.boot-staging/src, which the exit
# trap removes: an entry one level up would vanish with it, so these escape far
# enough (or absolutely) to land in the sandbox outside the VM's root, where the
# test can see whether it was written.
@pytest.mark.parametrize(
    "entry",
    [
        "../{marker}",
        "../../../../../{marker}",
        "cluster/../../../../../../{marker}",
        "workloads/./../../../../../../{marker}",
        "{base}/{marker}",
    ],
)
def test_bundle_entries_escaping_the_bundle_are_refused_and_written_nowhere(make_sandbox, entry):
    sb = make_sandbox("metadata")
    marker = f"escaped-{pysecrets.token_hex(6)}"
    name = entry.format(marker=marker, base=sb.base)
    sb.metadata.attributes[layout.META_BUNDLE] = make_bundle(extra={name: "planted\n"})
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(
            sb.metadata.attributes[layout.META_BUNDLE]))) as tar:
        assert name in tar.getnames()  # the entry really is in the bundle as written
    result = sb.boot()
    assert [str(p) for p in sb.base.rglob(f"*{marker}*")] == [], "an entry escaped the bundle"
    assert not Path("/", marker).exists()
    assert_failed_loudly(result, sb, "escapes the bundle")
    assert sb.sm.requests == []


def test_python_minor_mismatch_is_refused_before_anything_happens(make_sandbox):
    sb = make_sandbox("metadata")
    (sb.bin / "python3").write_text("#!/bin/bash\necho 3.12\n")
    result = sb.boot()
    assert_failed_loudly(
        result, sb, "python3 is Python 3.12", f"Python {layout.PYTHON_MINOR}", "Refusing"
    )
    assert sb.metadata.requests == [] and sb.sm.requests == []


# ---- no secret material outside the secrets' own files ------------------------------


def test_no_secret_material_in_any_output_of_a_boot_that_read_them(key_first_boot):
    """Everything a boot that held all three secrets produced: its stdout and
    stderr, every file it or its tools wrote anywhere in the sandbox (VM root,
    HOME, TMPDIR, the stubs' records of every command line and logger call),
    and every request it sent. Only the secrets' own files may hold them."""
    sb, result = key_first_boot
    markers = secret_markers(sb.values)
    secrets_dir = sb.p(layout.PROVIDER_SECRETS_DIR)
    # The run did hold each secret (else finding none below would prove nothing).
    for name, value in sb.values.items():
        assert (secrets_dir / name).read_bytes() == value
        assert any(m in value for m in markers)
    outputs = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
    for path in sb.base.rglob("*"):
        if path.is_file() and not path.is_symlink() and secrets_dir not in path.parents:
            outputs[str(path.relative_to(sb.base))] = path.read_bytes()
    assert "state/calls.jsonl" in outputs and any(k.startswith("root/") for k in outputs)
    for server in (sb.metadata, sb.sm):
        for i, request in enumerate(server.requests):
            outputs[f"{type(server).__name__} request {i}"] = json.dumps(
                [request.method, request.path, request.headers]).encode()
    leaked = sorted(where for where, data in outputs.items() if any(m in data for m in markers))
    assert leaked == [], f"secret material in {leaked}"


def test_fake_metadata_server_rejects_requests_without_the_flavor_header(make_sandbox):
    sb = make_sandbox()
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(
            f"http://{sb.metadata.address}/computeMetadata/v1/instance/attributes/"
            f"{layout.META_BUNDLE}",
            timeout=5,
        )
    assert err.value.code == 403


def test_stub_python_is_the_nodes_minor():
    out = subprocess.run(
        [REAL_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == layout.PYTHON_MINOR


# ---- ray-gcp:operators: listed users need no manual group step ----------------------


def test_listed_operators_join_the_group_at_first_login(make_sandbox):
    """A user in the metadata's operator list (not yet in ray-operators) gets the sudo rule,
    joins the group through the helper at first login, and gets the credentials; an
    unlisted non-member gets nothing."""
    sb = make_sandbox("metadata")
    sb.metadata.attributes[layout.META_OPERATORS] = json.dumps(
        ["alice_example_com", "carol_example_org"]
    )
    result = sb.boot()
    assert result.returncode == 0, result.stderr
    assert sb.p(f"{layout.PROVIDER_CONFIG_DIR}/operators").read_text() == (
        "alice_example_com\ncarol_example_org\n"
    )
    sudoers = sb.p(boot.OPERATOR_SUDOERS).read_text()
    helper = sb.p(boot.OPERATOR_HELPER)
    assert f'alice_example_com, carol_example_org ALL=(root) NOPASSWD: {helper} ""' in sudoers
    assert f'%{layout.OPERATOR_GROUP} ALL=(root) NOPASSWD: {helper} ""' in sudoers
    visudo = shutil.which("visudo", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if visudo:  # CI installs sudo (.ci/run); the user list must be valid sudoers syntax
        check = subprocess.run([visudo, "-c", "-f", str(sb.p(boot.OPERATOR_SUDOERS))],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr

    install_stubs(sb.bin, sb.state, login=True)
    login = f'. "{sb.p(boot.LOGIN_PROFILE)}"'
    for user, listed in (("alice_example_com", True), ("mallory", False)):
        home = add_operator(sb, user)
        env = sb.env(HOME=str(home), STUB_SUDO_USER=user, STUB_ID_GROUPS=user)
        n = len(sb.calls())
        subprocess.run(["sh", "-c", login], env=env, capture_output=True, check=True)
        made = sb.calls()[n:]
        token_copy = home / layout.OPERATOR_AUTH_TOKEN.removeprefix("~/")
        if listed:
            assert ["sudo", "-n", str(helper)] in made
            assert ["gpasswd", "-a", user, layout.OPERATOR_GROUP] in made
            assert token_copy.read_bytes() == sb.values[layout.SECRET_RAY_AUTH_TOKEN]
        else:
            assert [c for c in made if c[0] in ("sudo", "gpasswd")] == []
            assert not token_copy.exists()
    members = (sb.state / "members" / layout.OPERATOR_GROUP).read_text().split()
    assert members == ["alice_example_com"]


@pytest.mark.parametrize(
    "value", ['"alice"', '["Alice@example.com"]', '["-rf"]', '[1]', "not json"]
)
def test_a_bad_operator_list_fails_the_boot_naming_the_key(make_sandbox, value):
    sb = make_sandbox("metadata")
    sb.metadata.attributes[layout.META_OPERATORS] = value
    result = sb.boot()
    assert result.returncode != 0
    assert f"metadata key '{layout.META_OPERATORS}'" in result.stderr
    assert not sb.p(boot.PROVIDER_READY).exists()


def test_metadata_without_an_operator_list_means_no_listed_operators(make_sandbox):
    sb = make_sandbox("metadata")
    sb.metadata.attributes.pop(layout.META_OPERATORS, None)
    assert sb.boot().returncode == 0
    assert sb.p(f"{layout.PROVIDER_CONFIG_DIR}/operators").read_text() == ""
    sudoers = sb.p(boot.OPERATOR_SUDOERS).read_text()
    assert [line for line in sudoers.splitlines() if not line.startswith("#")] == [
        f'%{layout.OPERATOR_GROUP} ALL=(root) NOPASSWD: {sb.p(boot.OPERATOR_HELPER)} ""'
    ]


# ---- uv pinned by hash ------------------------------------------------------------------


def test_uv_pins_are_the_layout_version_with_both_linux_wheel_hashes():
    lines = [line.strip() for line in UV_PINS.splitlines() if not line.startswith("#")]
    text = " ".join(lines)
    assert text.startswith(f"uv=={layout.UV_VERSION} \\")
    hashes = [h for h in text.split() if h.startswith("--hash=sha256:")]
    assert len(hashes) == 2 and len(set(hashes)) == 2
    assert all(len(h.removeprefix("--hash=sha256:")) == 64 for h in hashes)
    assert "x86_64" in UV_PINS and "aarch64" in UV_PINS


@pytest.mark.parametrize(
    ("pins", "needle"),
    [
        (None, "lacks cluster/requirements-uv.txt"),
        ("uv==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n", "does not pin uv=="),
    ],
)
def test_a_bundle_without_the_pinned_uv_fails_the_boot(make_sandbox, pins, needle):
    sb = make_sandbox("metadata")
    if pins is None:
        bundle = make_bundle()
        raw = base64.b64decode(bundle)
        with tarfile.open(fileobj=io.BytesIO(raw)) as src:
            members = [(m, src.extractfile(m)) for m in src.getmembers()]
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as dst:
                for m, f in members:
                    if m.name != layout.UV_REQUIREMENTS:
                        dst.addfile(m, f)
        sb.metadata.attributes[layout.META_BUNDLE] = base64.b64encode(buf.getvalue()).decode()
    else:
        sb.metadata.attributes[layout.META_BUNDLE] = make_bundle(extra={layout.UV_REQUIREMENTS: pins})
    result = sb.boot()
    assert result.returncode != 0
    assert needle in result.stderr
    assert not sb.p(boot.PROVIDER_READY).exists()
