"""Render the provider VM's startup script from the pieces in infra/provider_boot/.

The script is one bash file on the VM (GCE runs one ``startup-script``), kept
here as one piece per concern (``BOOT_PIECES``, in the order they run), which
``boot_template()`` joins; ``@@include NAME@@`` lines pull in files verbatim
(the Python fetcher, which bash runs from a quoted here-document).

Pure: text in, text out. Every value comes from ``cluster/layout.py`` unless a
keyword argument overrides it, and is checked before it reaches the script, so
a bad value fails here with the argument's name rather than at boot on the VM.
The rendered script holds names and paths only, never secret material; it
fetches the secrets from Secret Manager at boot. See infra/BOOT.md.

Usage (in the Pulumi program)::

    from infra.boot import render_boot_script
    metadata = {"startup-script": render_boot_script(), ...}
"""

from __future__ import annotations

import re
import shlex
import string
from pathlib import Path

from cluster import layout
from cluster.autostop import CONFIG_ENV as AUTOSTOP_CONFIG_ENV

PIECES_DIR = Path(__file__).with_name("provider_boot")
# The boot script's pieces, in the order they are joined (and run).
BOOT_PIECES = (
    "settings.sh",  # rendered values, sandbox overrides, derived paths
    "failure.sh",  # logging, the FAILED line, fail-closed exit trap
    "preflight.sh",  # 1. root, lock, Python minor
    "fetch.sh",  # 2. metadata, bundle, secrets into staging (runs fetch_staging.py)
    "install.sh",  # 3-5. system packages, pinned uv, the pinned venv
    "bundle_and_secrets.sh",  # 6-7. the bundle and the secrets swapped in
    "access.sh",  # 8. cluster config, operator helper, sudoers, login profile
    "autostop.sh",  # 9. the autostop timer (ray-gcp:idleTimeoutMinutes), ray-gcp-idle
    "ready.sh",  # 10. READY
    "main.sh",  # the steps, in order
)
_INCLUDE = re.compile(r"^@@include ([A-Za-z0-9_.-]+)@@\n", re.MULTILINE)

# Paths the boot script owns that cluster/layout.py does not name; derived
# from layout's names so they move with them.
PROVIDER_TOOLS = layout.PROVIDER_TOOLS  # a venv holding the pinned uv
PROVIDER_READY = f"{layout.PROVIDER_CONFIG_DIR}/READY"  # written last by a boot that succeeded
OPERATOR_HELPER = f"{layout.PROVIDER_ROOT}/sbin/ray-gcp-operator-credentials"
OPERATOR_SUDOERS = "/etc/sudoers.d/ray-gcp-operators"  # no dot: sudo skips such names
LOGIN_PROFILE = "/etc/profile.d/ray-gcp.sh"
SYSTEMD_UNIT_DIR = "/etc/systemd/system"
# The per-operator copy of the service-account key (credential mode "key").
OPERATOR_SA_KEY = layout.OPERATOR_SA_KEY
# Inside the bundle (metadata key layout.META_BUNDLE): the nodes' exact pins.
BUNDLE_REQUIREMENTS = layout.NODE_REQUIREMENTS
# Ray's file sync needs rsync; python3-venv bootstraps uv; curl for operators.
SYSTEM_PACKAGES = ("rsync", "python3-venv", "curl")

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_PYTHON_MINOR = re.compile(r"^3\.\d+$")
_ABS_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
_HOME_PATH = re.compile(r"^~(/[A-Za-z0-9._-]+)+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_GROUP = re.compile(r"^[a-z_][a-z0-9_-]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_REL_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class _BootTemplate(string.Template):
    """``@@NAME@@`` placeholders: bash's own ``$`` and ``@`` stay untouched."""

    delimiter = "@@"
    flags = 0  # case-sensitive: only upper-case names are placeholders
    pattern = r"""
        @@(?:
          (?P<escaped>(?!)) |
          (?P<named>[A-Z][A-Z0-9_]*)@@ |
          (?P<braced>(?!)) |
          (?P<invalid>)
        )
    """


def _check(field: str, value: str, rule: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not rule.match(value):
        raise ValueError(f"render_boot_script: {field}={value!r} is invalid; allowed: {allowed}")
    return value


def _home_relative(field: str, value: str, operator_dir: str) -> str:
    """'~/.ray-gcp/x' -> '.ray-gcp/x' (the scripts prefix the operator's $HOME)."""
    _check(field, value, _HOME_PATH, "a path under the operator's home, like '~/.ray-gcp/x'")
    if field != "operator_dir" and not value.startswith(operator_dir + "/"):
        raise ValueError(
            f"render_boot_script: {field}={value!r} is invalid; allowed: a path inside "
            f"operator_dir {operator_dir!r}"
        )
    return value[2:]


def render_boot_script(
    *,
    ray_version: str = layout.RAY_VERSION,
    python_minor: str = layout.PYTHON_MINOR,
    uv_version: str = layout.UV_VERSION,
    provider_root: str = layout.PROVIDER_ROOT,
    provider_venv: str = layout.PROVIDER_VENV,
    provider_src: str = layout.PROVIDER_SRC,
    provider_tools: str = PROVIDER_TOOLS,
    provider_config_dir: str = layout.PROVIDER_CONFIG_DIR,
    provider_cluster_yaml: str = layout.PROVIDER_CLUSTER_YAML,
    provider_secrets_dir: str = layout.PROVIDER_SECRETS_DIR,
    provider_ready: str = PROVIDER_READY,
    operator_group: str = layout.OPERATOR_GROUP,
    operator_helper: str = OPERATOR_HELPER,
    operator_sudoers: str = OPERATOR_SUDOERS,
    login_profile: str = LOGIN_PROFILE,
    autostop_config: str = layout.PROVIDER_AUTOSTOP_CONFIG,
    autostop_state_dir: str = layout.PROVIDER_AUTOSTOP_STATE_DIR,
    autostop_unit: str = layout.AUTOSTOP_UNIT,
    idle_status_command: str = layout.IDLE_STATUS_COMMAND,
    systemd_unit_dir: str = SYSTEMD_UNIT_DIR,
    operator_dir: str = layout.OPERATOR_DIR,
    operator_ssh_key: str = layout.OPERATOR_SSH_KEY,
    operator_auth_token: str = layout.OPERATOR_AUTH_TOKEN,
    operator_sa_key: str = OPERATOR_SA_KEY,
    bundle_requirements: str = BUNDLE_REQUIREMENTS,
    uv_requirements: str = layout.UV_REQUIREMENTS,
    meta_cluster_config: str = layout.META_CLUSTER_CONFIG,
    meta_bundle: str = layout.META_BUNDLE,
    meta_secrets: str = layout.META_SECRETS,
    meta_credential_mode: str = layout.META_CREDENTIAL_MODE,
    meta_operators: str = layout.META_OPERATORS,
    meta_idle_timeout: str = layout.META_IDLE_TIMEOUT,
    secret_ssh_private_key: str = layout.SECRET_SSH_PRIVATE_KEY,
    secret_ray_auth_token: str = layout.SECRET_RAY_AUTH_TOKEN,
    secret_sa_key: str = layout.SECRET_SA_KEY,
    system_packages: tuple[str, ...] = SYSTEM_PACKAGES,
) -> str:
    """Return the complete ``startup-script`` text for the provider VM.

    Raises ValueError naming the argument when a value is not of the allowed form.
    """
    v = "a version like '2.60.0'"
    p = "an absolute path of [A-Za-z0-9._-] segments"
    n = "a name of [A-Za-z0-9_-]"
    values = {
        "RAY_VERSION": _check("ray_version", ray_version, _VERSION, v),
        "PYTHON_MINOR": _check("python_minor", python_minor, _PYTHON_MINOR, "'3.<minor>'"),
        "UV_VERSION": _check("uv_version", uv_version, _VERSION, v),
        "PROVIDER_ROOT": _check("provider_root", provider_root, _ABS_PATH, p),
        "PROVIDER_VENV": _check("provider_venv", provider_venv, _ABS_PATH, p),
        "PROVIDER_SRC": _check("provider_src", provider_src, _ABS_PATH, p),
        "PROVIDER_TOOLS": _check("provider_tools", provider_tools, _ABS_PATH, p),
        "PROVIDER_CONFIG_DIR": _check("provider_config_dir", provider_config_dir, _ABS_PATH, p),
        "PROVIDER_CLUSTER_YAML": _check(
            "provider_cluster_yaml", provider_cluster_yaml, _ABS_PATH, p
        ),
        "PROVIDER_SECRETS_DIR": _check("provider_secrets_dir", provider_secrets_dir, _ABS_PATH, p),
        "PROVIDER_READY": _check("provider_ready", provider_ready, _ABS_PATH, p),
        "OPERATOR_GROUP": _check(
            "operator_group", operator_group, _GROUP, "a group name of [a-z0-9_-]"
        ),
        "OPERATOR_HELPER": _check("operator_helper", operator_helper, _ABS_PATH, p),
        "OPERATOR_SUDOERS": _check("operator_sudoers", operator_sudoers, _ABS_PATH, p),
        "LOGIN_PROFILE": _check("login_profile", login_profile, _ABS_PATH, p),
        "AUTOSTOP_CONFIG": _check("autostop_config", autostop_config, _ABS_PATH, p),
        "AUTOSTOP_STATE_DIR": _check("autostop_state_dir", autostop_state_dir, _ABS_PATH, p),
        "AUTOSTOP_UNIT": _check("autostop_unit", autostop_unit, _NAME, n),
        "IDLE_STATUS_COMMAND": _check(
            "idle_status_command", idle_status_command, _ABS_PATH, p
        ),
        "SYSTEMD_UNIT_DIR": _check("systemd_unit_dir", systemd_unit_dir, _ABS_PATH, p),
        # Not an argument: the variable cluster/autostop.py reads its settings file from.
        "AUTOSTOP_CONFIG_ENV": AUTOSTOP_CONFIG_ENV,
        "OPERATOR_DIR": _home_relative("operator_dir", operator_dir, operator_dir),
        "OPERATOR_SSH_KEY": _home_relative("operator_ssh_key", operator_ssh_key, operator_dir),
        "OPERATOR_AUTH_TOKEN": _home_relative(
            "operator_auth_token", operator_auth_token, operator_dir
        ),
        "OPERATOR_SA_KEY": _home_relative("operator_sa_key", operator_sa_key, operator_dir),
        "BUNDLE_REQUIREMENTS": _check(
            "bundle_requirements", bundle_requirements, _REL_PATH, "a relative path"
        ),
        "UV_REQUIREMENTS": _check(
            "uv_requirements", uv_requirements, _REL_PATH, "a relative path"
        ),
        "META_CLUSTER_CONFIG": _check("meta_cluster_config", meta_cluster_config, _NAME, n),
        "META_BUNDLE": _check("meta_bundle", meta_bundle, _NAME, n),
        "META_SECRETS": _check("meta_secrets", meta_secrets, _NAME, n),
        "META_CREDENTIAL_MODE": _check("meta_credential_mode", meta_credential_mode, _NAME, n),
        "META_OPERATORS": _check("meta_operators", meta_operators, _NAME, n),
        "META_IDLE_TIMEOUT": _check("meta_idle_timeout", meta_idle_timeout, _NAME, n),
        "SECRET_SSH_PRIVATE_KEY": _check(
            "secret_ssh_private_key", secret_ssh_private_key, _NAME, n
        ),
        "SECRET_RAY_AUTH_TOKEN": _check("secret_ray_auth_token", secret_ray_auth_token, _NAME, n),
        "SECRET_SA_KEY": _check("secret_sa_key", secret_sa_key, _NAME, n),
    }
    if not system_packages:
        raise ValueError("render_boot_script: system_packages is empty; allowed: Debian names")
    for pkg in system_packages:
        _check("system_packages", pkg, _PACKAGE, "Debian package names")
    secrets = [secret_ssh_private_key, secret_ray_auth_token, secret_sa_key]
    if len(set(secrets)) != len(secrets):
        raise ValueError(f"render_boot_script: the secret names {secrets} must differ")
    quoted = {k: shlex.quote(val) for k, val in values.items()}
    quoted["SYSTEM_PACKAGES"] = " ".join(shlex.quote(pkg) for pkg in system_packages)
    # substitute() raises KeyError on a placeholder without a value and
    # ValueError on a malformed one, so nothing unsubstituted can get through.
    return _BootTemplate(boot_template()).substitute(quoted)


def boot_template() -> str:
    """The pieces joined in order, includes expanded: the template before substitution."""

    def include(match: re.Match[str]) -> str:
        return (PIECES_DIR / match.group(1)).read_text(encoding="utf-8")

    return "".join(
        _INCLUDE.sub(include, (PIECES_DIR / piece).read_text(encoding="utf-8"))
        for piece in BOOT_PIECES
    )


def template_placeholders() -> set[str]:
    """The @@NAME@@ placeholders of the boot script's pieces (for tests and docs)."""
    return set(re.findall(r"@@([A-Z][A-Z0-9_]*)@@", boot_template()))
