#!/bin/bash
# ray-gcp: the provider VM's startup script (GCE metadata key `startup-script`).
#
# Template: infra/boot.py renders it, replacing each placeholder (a name between
# double at-signs) with a value from cluster/layout.py, so the VM and the Ray
# cluster config never disagree about a path or a version. It runs as root on EVERY boot and is idempotent: a rerun
# with unchanged metadata changes nothing on disk. It holds names and paths
# only, never secret material: secrets come from Secret Manager at boot.
# What it does, step by step, and the operator access model: infra/BOOT.md.
set -Eeuo pipefail
shopt -s inherit_errexit
umask 022

# ---- rendered from cluster/layout.py by infra/boot.py -----------------------
RAY_VERSION=@@RAY_VERSION@@
PYTHON_MINOR=@@PYTHON_MINOR@@
UV_VERSION=@@UV_VERSION@@
PROVIDER_ROOT=@@PROVIDER_ROOT@@
PROVIDER_VENV=@@PROVIDER_VENV@@
PROVIDER_SRC=@@PROVIDER_SRC@@
PROVIDER_TOOLS=@@PROVIDER_TOOLS@@
PROVIDER_CONFIG_DIR=@@PROVIDER_CONFIG_DIR@@
PROVIDER_CLUSTER_YAML=@@PROVIDER_CLUSTER_YAML@@
PROVIDER_SECRETS_DIR=@@PROVIDER_SECRETS_DIR@@
PROVIDER_READY=@@PROVIDER_READY@@
OPERATOR_GROUP=@@OPERATOR_GROUP@@
OPERATOR_HELPER=@@OPERATOR_HELPER@@
OPERATOR_SUDOERS=@@OPERATOR_SUDOERS@@
LOGIN_PROFILE=@@LOGIN_PROFILE@@
# Per-operator copies, relative to the operator's home (layout's "~/..." paths).
OPERATOR_DIR=@@OPERATOR_DIR@@
OPERATOR_SSH_KEY=@@OPERATOR_SSH_KEY@@
OPERATOR_AUTH_TOKEN=@@OPERATOR_AUTH_TOKEN@@
OPERATOR_SA_KEY=@@OPERATOR_SA_KEY@@
BUNDLE_REQUIREMENTS=@@BUNDLE_REQUIREMENTS@@
UV_REQUIREMENTS=@@UV_REQUIREMENTS@@
META_CLUSTER_CONFIG=@@META_CLUSTER_CONFIG@@
META_BUNDLE=@@META_BUNDLE@@
META_SECRETS=@@META_SECRETS@@
META_CREDENTIAL_MODE=@@META_CREDENTIAL_MODE@@
META_OPERATORS=@@META_OPERATORS@@
SECRET_SSH_PRIVATE_KEY=@@SECRET_SSH_PRIVATE_KEY@@
SECRET_RAY_AUTH_TOKEN=@@SECRET_RAY_AUTH_TOKEN@@
SECRET_SA_KEY=@@SECRET_SA_KEY@@
SYSTEM_PACKAGES=(@@SYSTEM_PACKAGES@@)

# ---- overridable so tests/infra/test_boot.py can run it in a sandbox ---------
# Every absolute path below is prefixed by ROOT; GCE_METADATA_HOST is the
# variable Google's client libraries honour too. Unset on a real VM.
ROOT=${RAY_GCP_ROOT:-}
# systemd may start the guest agent without HOME; pip and uv look for it.
export HOME=${HOME:-/root}
METADATA_HOST=${GCE_METADATA_HOST:-metadata.google.internal}
SECRETMANAGER_ENDPOINT=${SECRETMANAGER_ENDPOINT:-https://secretmanager.googleapis.com}
RETRY_BASE_DELAY=${RAY_GCP_RETRY_BASE_DELAY:-1}

CONFIG_DIR=$ROOT$PROVIDER_CONFIG_DIR
READY=$ROOT$PROVIDER_READY
SECRETS_DIR=$ROOT$PROVIDER_SECRETS_DIR
CLUSTER_YAML=$ROOT$PROVIDER_CLUSTER_YAML
VENV=$ROOT$PROVIDER_VENV
VENV_MARKER=$VENV/.ray-gcp-requirements
SRC=$ROOT$PROVIDER_SRC
SRC_MARKER=$SRC/.ray-gcp-bundle.sha256
TOOLS=$ROOT$PROVIDER_TOOLS
UV=$TOOLS/bin/uv
HELPER=$ROOT$OPERATOR_HELPER
SUDOERS=$ROOT$OPERATOR_SUDOERS
PROFILE=$ROOT$LOGIN_PROFILE
# OS Login usernames of the ray-gcp:operators users (metadata key META_OPERATORS).
OPERATORS_FILE=$CONFIG_DIR/operators
# Staging dirs sit next to their targets so the final install is a rename.
STAGE=$CONFIG_DIR/.boot-staging
SRC_STAGE=$ROOT$PROVIDER_ROOT/.boot-staging

TAG=ray-gcp-boot
STEP=start
FAIL_REASON=
HOLDS_LOCK=0

# ---- logging and failure ---------------------------------------------------------
step() {
  STEP=$2
  echo "$TAG: [$1/9] $2"
}

info() {
  echo "$TAG:   $*"
}

die() {
  FAIL_REASON=$*
  exit 1
}

on_error() {
  # Unexpected command failure (set -e): name the command; it holds no secrets.
  [ -n "$FAIL_REASON" ] || FAIL_REASON="command failed (line $1): $2"
}

on_exit() {
  local rc=$?
  [ "$HOLDS_LOCK" = 1 ] || { [ "$rc" = 0 ] || report_failure "$rc"; return; }
  # Interrupted between the two renames of a swap: put the previous tree back.
  if [ -e "$SRC.old" ] && [ ! -e "$SRC" ]; then mv "$SRC.old" "$SRC"; fi
  rm -rf "$STAGE" "$SRC_STAGE" "$SRC.old" "$SECRETS_DIR.old"
  if [ "$rc" != 0 ]; then
    # Fail closed: no READY marker and no credentials until a boot succeeds,
    # so a revoked or deleted secret version stops working at the next boot.
    rm -rf "$SECRETS_DIR" "$READY"
    report_failure "$rc"
  fi
}

report_failure() {
  local line
  line="FAILED in step '$STEP' (exit $1): ${FAIL_REASON:-see the messages above}"
  line+=" -- this VM is NOT ready: $READY is absent and no credentials are installed."
  line+=" Fix the cause, then rerun: sudo google_metadata_script_runner startup"
  echo "$TAG: $line" >&2
  logger -p user.err -t "$TAG" -- "$line" 2>/dev/null || true
}

trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT

# ---- 1. preflight ----------------------------------------------------------------
preflight() {
  step 1 "preflight"
  if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "must run as root (it is the VM's startup-script)"
  fi
  mkdir -p "$CONFIG_DIR" "$ROOT$PROVIDER_ROOT"
  chmod 755 "$CONFIG_DIR" "$ROOT$PROVIDER_ROOT"
  exec 9<"$CONFIG_DIR"
  flock -n 9 || die "another boot of this script is running (lock on $CONFIG_DIR)"
  HOLDS_LOCK=1
  # No stale marker: READY is written last, only by a boot that succeeded.
  rm -f "$READY"
  rm -rf "$STAGE" "$SRC_STAGE" "$SRC.old" "$SECRETS_DIR.old"

  SYSTEM_PYTHON=$(command -v python3) ||
    die "python3 not found; the provider VM needs a Debian 12 image (Python $PYTHON_MINOR)"
  local have
  have=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "cannot run $SYSTEM_PYTHON"
  if [ "$have" != "$PYTHON_MINOR" ]; then
    die "python3 is Python $have, but every Ray node runs Python $PYTHON_MINOR" \
      "(cluster/layout.py PYTHON_MINOR) and Ray refuses mixed minor versions;" \
      "use a Debian 12 image (python3 = 3.11) for the provider VM. Refusing to set up."
  fi
  info "python3 is Python $have ($SYSTEM_PYTHON)"
}

# ---- 2. fetch everything into staging dirs -------------------------------------
fetch_all() {
  _RG_STAGE=$STAGE _RG_SRC_STAGE=$SRC_STAGE \
  _RG_METADATA_HOST=$METADATA_HOST _RG_SECRETMANAGER_ENDPOINT=$SECRETMANAGER_ENDPOINT \
  _RG_RETRY_BASE_DELAY=$RETRY_BASE_DELAY _RG_RAY_VERSION=$RAY_VERSION \
  _RG_META_CLUSTER_CONFIG=$META_CLUSTER_CONFIG _RG_META_BUNDLE=$META_BUNDLE \
  _RG_META_SECRETS=$META_SECRETS _RG_META_CREDENTIAL_MODE=$META_CREDENTIAL_MODE \
  _RG_META_OPERATORS=$META_OPERATORS \
  _RG_SECRET_SSH_PRIVATE_KEY=$SECRET_SSH_PRIVATE_KEY \
  _RG_SECRET_RAY_AUTH_TOKEN=$SECRET_RAY_AUTH_TOKEN _RG_SECRET_SA_KEY=$SECRET_SA_KEY \
  _RG_BUNDLE_REQUIREMENTS=$BUNDLE_REQUIREMENTS \
    "$SYSTEM_PYTHON" - <<'PY'
"""Fetch metadata, the bundle and the secrets into staging dirs (stdlib only).

Errors name the metadata key or secret and the HTTP status, never a value.
"""
import base64
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import PurePosixPath

E = os.environ
STAGE = E["_RG_STAGE"]
SRC_STAGE = E["_RG_SRC_STAGE"]
RETRIES = 6
VERSION_NAME = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")


class BootError(Exception):
    pass


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def describe_error_body(body):
    try:
        err = json.loads(body)["error"]
        return f"{err.get('status', '')} {err.get('message', '')}".strip()
    except Exception:
        return body[:200].decode("utf-8", "replace").strip()


class HttpStatus(BootError):
    def __init__(self, what, code, detail):
        super().__init__(f"{what}: HTTP {code} {detail}".rstrip())
        self.code = code


def http_get(url, headers, what, use_proxy):
    handlers = [] if use_proxy else [urllib.request.ProxyHandler({})]
    opener = urllib.request.build_opener(*handlers)
    delay = float(E["_RG_RETRY_BASE_DELAY"])
    for attempt in range(1, RETRIES + 1):
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=20) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            failure = HttpStatus(what, exc.code, describe_error_body(exc.read()))
            transient = exc.code == 429 or exc.code >= 500
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            failure = BootError(f"{what}: cannot reach {url.split('/')[2]}: {reason}")
            transient = True
        if not transient or attempt == RETRIES:
            raise failure
        print(f"ray-gcp-boot:   {failure}; retry {attempt}/{RETRIES - 1}", flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 30)


METADATA = f"http://{E['_RG_METADATA_HOST']}/computeMetadata/v1/instance"
FLAVOR = {"Metadata-Flavor": "Google"}


def attribute(key):
    try:
        raw = http_get(f"{METADATA}/attributes/{key}", FLAVOR, f"metadata key {key!r}", False)
    except HttpStatus as exc:
        if exc.code == 404:
            raise BootError(
                f"instance metadata key {key!r} is missing; infra/ (pulumi up) sets it on "
                "the provider VM"
            ) from None
        raise
    return raw.decode("utf-8")


def optional_attribute(key, default):
    try:
        return attribute(key)
    except BootError:
        return default


# An OS Login POSIX username (Google's default: the email with [^a-z0-9] -> "_").
POSIX_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def parse_operators(text):
    key = E["_RG_META_OPERATORS"]
    try:
        users = json.loads(text)
    except ValueError:
        raise BootError(f"metadata key {key!r} is not valid JSON") from None
    if not isinstance(users, list) or not all(
        isinstance(u, str) and POSIX_USER.match(u) for u in users
    ):
        raise BootError(
            f"metadata key {key!r} must be a JSON list of usernames of [a-z0-9_.-] "
            "(at most 32 characters, not starting with a digit, '.' or '-')"
        )
    return sorted(set(users))


def write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def parse_secret_names(text, mode):
    try:
        names = json.loads(text)
    except ValueError:
        raise BootError(f"metadata key {E['_RG_META_SECRETS']!r} is not valid JSON") from None
    if not isinstance(names, dict):
        raise BootError(f"metadata key {E['_RG_META_SECRETS']!r} must be a JSON object")
    required = [E["_RG_SECRET_SSH_PRIVATE_KEY"], E["_RG_SECRET_RAY_AUTH_TOKEN"]]
    if mode == "key":
        required.append(E["_RG_SECRET_SA_KEY"])
    key = E["_RG_META_SECRETS"]
    for name in required:
        if name not in names:
            raise BootError(
                f"metadata key {key!r} lacks secret {name!r} (credential mode {mode!r} "
                f"needs: {', '.join(required)})"
            )
    for name, version in names.items():
        if name not in required:
            raise BootError(
                f"metadata key {key!r} names unexpected secret {name!r}; allowed in "
                f"credential mode {mode!r}: {', '.join(required)}"
            )
        if not isinstance(version, str) or not VERSION_NAME.match(version):
            raise BootError(
                f"metadata key {key!r}: secret {name!r} must be a Secret Manager version "
                "name 'projects/<project>/secrets/<id>/versions/<version>'"
            )
    return names


def check_requirements(text):
    path = E["_RG_BUNDLE_REQUIREMENTS"]
    want = E["_RG_RAY_VERSION"]
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    if pins.get("ray") != want:
        raise BootError(
            f"the bundle's {path} pins ray=={pins.get('ray', '<nothing>')}, but "
            f"cluster/layout.py RAY_VERSION is {want}; rebuild the bundle from uv.lock"
        )
    for needed in ("google-api-python-client", "google-auth"):
        if needed not in pins:
            raise BootError(
                f"the bundle's {path} does not pin {needed}, which Ray's GCP node provider "
                "imports"
            )


def unpack_bundle(text):
    key = E["_RG_META_BUNDLE"]
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz")
    except Exception as exc:
        raise BootError(
            f"metadata key {key!r} is not base64 of a tar.gz ({type(exc).__name__})"
        ) from None
    dest = os.path.join(SRC_STAGE, "src")
    os.makedirs(dest, mode=0o755)
    dirs = []
    with tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            parts = tuple(p for p in parts if p != ".")
            if not parts:
                continue
            if member.name.startswith("/") or ".." in parts:
                raise BootError(f"bundle member {member.name!r} escapes the bundle; refused")
            path = os.path.join(dest, *parts)
            if member.isdir():
                os.makedirs(path, mode=0o755, exist_ok=True)
                dirs.append((path, member.mtime))
            elif member.isfile():
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(tar.extractfile(member).read())
                os.chmod(path, 0o755 if member.mode & 0o111 else 0o644)
                os.utime(path, (member.mtime, member.mtime))
            else:
                raise BootError(
                    f"bundle member {member.name!r} is not a regular file or directory; refused"
                )
    for path, mtime in dirs:
        os.chmod(path, 0o755)
        os.utime(path, (mtime, mtime))
    requirements = os.path.join(dest, *E["_RG_BUNDLE_REQUIREMENTS"].split("/"))
    if not os.path.isfile(requirements):
        raise BootError(f"the bundle (metadata key {key!r}) lacks {E['_RG_BUNDLE_REQUIREMENTS']}")
    with open(requirements, encoding="utf-8") as f:
        check_requirements(f.read())
    with open(os.path.join(STAGE, "bundle.sha256"), "w") as f:
        f.write(hashlib.sha256(raw).hexdigest() + "\n")


def access_token():
    url = f"{METADATA}/service-accounts/default/token"
    what = "access token from the metadata server (is a service account attached?)"
    body = http_get(url, FLAVOR, what, False)
    try:
        return json.loads(body)["access_token"]
    except (ValueError, KeyError, TypeError):
        raise BootError(f"{what}: the answer has no access_token") from None


def access_secret(name, version, token):
    what = f"Secret Manager access to secret {name!r} ({version})"
    url = f"{E['_RG_SECRETMANAGER_ENDPOINT'].rstrip('/')}/v1/{version}:access"
    try:
        body = http_get(url, {"Authorization": f"Bearer {token}"}, what, True)
    except HttpStatus as exc:
        if exc.code in (401, 403, 404):
            raise BootError(
                f"{exc}; the provider VM's service account needs "
                "roles/secretmanager.secretAccessor on that secret, and the version must "
                "exist and be enabled"
            ) from None
        raise
    try:
        payload = json.loads(body)["payload"]
        data = base64.b64decode(payload["data"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise BootError(f"{what}: the answer has no base64 payload.data") from None
    expected = payload.get("dataCrc32c")
    if expected is not None and int(expected) != crc32c(data):
        raise BootError(f"{what}: payload checksum (dataCrc32c) mismatch; corrupted in transit")
    if not data.strip():
        raise BootError(f"{what}: the secret is empty")
    return data


def check_service_account_key(name, data):
    try:
        doc = json.loads(data)
        ok = isinstance(doc, dict) and doc.get("type") == "service_account"
    except ValueError:
        ok = False
    if not ok:
        raise BootError(f"secret {name!r} is not a service-account JSON key")


def main():
    mode_key = E["_RG_META_CREDENTIAL_MODE"]
    mode = attribute(mode_key).strip()
    if mode not in ("metadata", "key"):
        raise BootError(
            f"metadata key {mode_key!r} is {mode!r}; allowed values: 'metadata', 'key'"
        )
    names = parse_secret_names(attribute(E["_RG_META_SECRETS"]), mode)
    cluster_yaml = attribute(E["_RG_META_CLUSTER_CONFIG"])
    if not cluster_yaml.strip():
        raise BootError(f"metadata key {E['_RG_META_CLUSTER_CONFIG']!r} is empty")
    unpack_bundle(attribute(E["_RG_META_BUNDLE"]))
    print("ray-gcp-boot:   metadata and bundle fetched", flush=True)

    token = access_token()
    secrets_dir = os.path.join(STAGE, "secrets")
    os.mkdir(secrets_dir, 0o700)
    for name, version in sorted(names.items()):
        data = access_secret(name, version, token)
        if name == E["_RG_SECRET_SA_KEY"]:
            check_service_account_key(name, data)
        write_private(os.path.join(secrets_dir, name), data)
        print(f"ray-gcp-boot:   fetched secret {name} ({version})", flush=True)

    with open(os.path.join(STAGE, "cluster.yaml"), "w", encoding="utf-8") as f:
        f.write(cluster_yaml)
    with open(os.path.join(STAGE, "credential-mode"), "w") as f:
        f.write(mode + "\n")
    # Older metadata (before ray-gcp:operators) has no such key: no listed operators.
    operators = parse_operators(optional_attribute(E["_RG_META_OPERATORS"], "[]"))
    with open(os.path.join(STAGE, "operators"), "w") as f:
        f.write("".join(u + "\n" for u in operators))


try:
    main()
except BootError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
except Exception as exc:  # no traceback: locals could hold secret bytes
    print(f"unexpected {type(exc).__name__} while fetching", file=sys.stderr)
    sys.exit(1)
PY
}

fetch() {
  step 2 "fetch metadata, bundle and secrets into staging"
  mkdir -m 700 "$STAGE" "$SRC_STAGE"
  local error
  # The fetcher's progress goes to stdout (fd 3); its one-line error becomes the reason.
  exec 3>&1
  if ! error=$(fetch_all 2>&1 1>&3); then
    die "${error:-the fetch failed}"
  fi
  exec 3>&-
  CREDENTIAL_MODE=$(<"$STAGE/credential-mode")
  info "credential mode: $CREDENTIAL_MODE"
}

# ---- 3. system packages ----------------------------------------------------------
install_system_packages() {
  step 3 "system packages (${SYSTEM_PACKAGES[*]})"
  local missing=() pkg status
  # shellcheck disable=SC2016  # dpkg-query's own ${...} format syntax
  status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${SYSTEM_PACKAGES[@]}" 2>/dev/null) || true
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    grep -qx "$pkg installed" <<<"$status" || missing+=("$pkg")
  done
  if [ ${#missing[@]} = 0 ]; then
    info "already installed"
    return
  fi
  info "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # At first boot unattended-upgrades may hold the dpkg lock: wait for it.
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -q)
  "${apt[@]}" update
  "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

# ---- 4. uv, pinned ---------------------------------------------------------------
uv_version() {
  "$UV" --version 2>/dev/null | awk '{print $2}'
}

install_uv() {
  step 4 "uv $UV_VERSION"
  if [ -x "$UV" ] && [ "$(uv_version)" = "$UV_VERSION" ]; then
    info "already installed"
    return
  fi
  local pins=$SRC_STAGE/src/$UV_REQUIREMENTS
  [ -f "$pins" ] || die "the bundle lacks $UV_REQUIREMENTS (uv pinned by hash)"
  grep -qxF "uv==$UV_VERSION \\" "$pins" || die "$UV_REQUIREMENTS does not pin uv==$UV_VERSION"
  rm -rf "$TOOLS"
  "$SYSTEM_PYTHON" -m venv "$TOOLS"
  # The wheel must match one of the checked-in hashes (PyPI's Linux wheels).
  "$TOOLS/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --no-deps \
    --require-hashes -r "$pins"
  [ "$(uv_version)" = "$UV_VERSION" ] || die "$UV reports version '$(uv_version)', wanted $UV_VERSION"
}

# ---- 5. the venv: exactly the nodes' pinned requirements -----------------------
# Prints "<python minor> <ray version or none>" of the venv; fails if there is no venv.
venv_state() {
  "$VENV/bin/python" -c '
import importlib.metadata as m, sys
try:
    ray = m.version("ray")
except m.PackageNotFoundError:
    ray = "none"
print("%d.%d" % sys.version_info[:2], ray)' 2>/dev/null
}

install_venv() {
  step 5 "venv $PROVIDER_VENV (ray $RAY_VERSION, Python $PYTHON_MINOR)"
  local requirements=$SRC_STAGE/src/$BUNDLE_REQUIREMENTS want
  # The marker records which requirements file the venv was synced to.
  want="requirements-sha256=$(sha256sum "$requirements" | cut -d' ' -f1) python=$PYTHON_MINOR"
  local state
  state=$(venv_state) || state=
  if [ -f "$VENV_MARKER" ] && [ "$(<"$VENV_MARKER")" = "$want" ] &&
    [ "$state" = "$PYTHON_MINOR $RAY_VERSION" ]; then
    info "already has exactly the pinned requirements"
    return
  fi
  rm -f "$VENV_MARKER"
  export UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1 UV_NO_CACHE=1
  if [ "${state% *}" != "$PYTHON_MINOR" ]; then
    rm -rf "$VENV"
    "$UV" venv --no-project --python "$SYSTEM_PYTHON" "$VENV"
  fi
  local hashes=()
  if grep -q -- '--hash=' "$requirements"; then
    hashes=(--require-hashes)
  fi
  info "installing $BUNDLE_REQUIREMENTS with uv pip sync"
  "$UV" pip sync "${hashes[@]}" --python "$VENV/bin/python" "$requirements"
  state=$(venv_state) || state=
  [ "$state" = "$PYTHON_MINOR $RAY_VERSION" ] ||
    die "after the install the venv has (python, ray) '${state:-<no venv>}', wanted '$PYTHON_MINOR $RAY_VERSION'"
  printf '%s\n' "$want" >"$VENV_MARKER"
}

# ---- 6. the bundle: cluster/ and workloads/ on the venv's sys.path -------------
# Installs $1 as $3 with mode $2, only when content or mode differ (keeps mtimes).
install_file() {
  local src=$1 mode=$2 dest=$3
  if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" &&
    [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return
  fi
  install -m "$mode" "$src" "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
  info "wrote $dest"
}

install_src() {
  step 6 "bundle -> $PROVIDER_SRC"
  local want
  want=$(<"$STAGE/bundle.sha256")
  if [ -f "$SRC_MARKER" ] && [ "$(<"$SRC_MARKER")" = "$want" ]; then
    info "unchanged"
  else
    printf '%s\n' "$want" >"$SRC_STAGE/src/.ray-gcp-bundle.sha256"
    if [ -e "$SRC" ]; then mv "$SRC" "$SRC.old"; fi
    mv "$SRC_STAGE/src" "$SRC"
    rm -rf "$SRC.old"
    info "unpacked"
  fi
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  printf '%s\n' "$SRC" >"$STAGE/ray-gcp-src.pth"
  install_file "$STAGE/ray-gcp-src.pth" 0644 "$site/ray-gcp-src.pth"
}

# ---- 7. secrets: root-owned 0600 master copies, swapped in atomically ----------
secrets_unchanged() {
  [ -d "$SECRETS_DIR" ] && [ "$(stat -c %a "$SECRETS_DIR")" = 700 ] &&
    diff -r -q "$STAGE/secrets" "$SECRETS_DIR" >/dev/null 2>&1 &&
    [ -z "$(find "$SECRETS_DIR" -mindepth 1 \( ! -type f -o ! -perm 600 \) -print -quit)" ]
}

install_secrets() {
  step 7 "secrets -> $PROVIDER_SECRETS_DIR"
  if secrets_unchanged; then
    info "unchanged"
    return
  fi
  if [ -e "$SECRETS_DIR" ]; then mv "$SECRETS_DIR" "$SECRETS_DIR.old"; fi
  mv "$STAGE/secrets" "$SECRETS_DIR"
  rm -rf "$SECRETS_DIR.old"
  info "installed $(find "$SECRETS_DIR" -type f -printf '%f ')"
}

# ---- 8. cluster config, operator access, login environment ---------------------
write_helper() {
  # Runs as root through sudo. It never writes into the operator's home as
  # root: the operator's own process (runuser) writes the copies, so a
  # symlink planted there cannot redirect a root write.
  echo '#!/bin/bash'
  echo "# ray-gcp: installs the calling operator's own 0600 copies of the launcher"
  echo "# credentials. Written by the provider VM's boot script; see infra/BOOT.md."
  echo "# Usage: sudo $OPERATOR_HELPER   (root may name a USER: $OPERATOR_HELPER USER)"
  printf 'SECRETS_DIR=%q\nREADY=%q\nOPERATOR_DIR=%q\n' "$SECRETS_DIR" "$READY" "$OPERATOR_DIR"
  printf 'OPERATORS_FILE=%q\nOPERATOR_GROUP=%q\n' "$OPERATORS_FILE" "$OPERATOR_GROUP"
  printf 'COPIES=(%q %q %q %q %q %q)\n' \
    "$SECRET_SSH_PRIVATE_KEY" "$OPERATOR_SSH_KEY" "$SECRET_RAY_AUTH_TOKEN" "$OPERATOR_AUTH_TOKEN" \
    "$SECRET_SA_KEY" "$OPERATOR_SA_KEY"
  cat <<'HELPER'
set -euo pipefail
umask 077
fail() { echo "ray-gcp-operator-credentials: $*" >&2; exit 1; }
user=${1:-${SUDO_USER:-}}
[ -n "$user" ] || fail "run it through sudo, or as root name the operator: $0 USER"
[ -e "$READY" ] || fail "this VM's boot has not completed, so there are no credentials (sudo journalctl -u google-startup-scripts)"
entry=$(getent passwd "$user") || fail "unknown user '$user'"
home=$(printf '%s\n' "$entry" | cut -d: -f6)
[ -d "$home" ] || fail "the home directory of '$user' ($home) does not exist"
# A user listed in ray-gcp:operators joins the group now that OS Login knows them.
if [ -f "$OPERATORS_FILE" ] && grep -qxF -- "$user" "$OPERATORS_FILE"; then
  gpasswd -a "$user" "$OPERATOR_GROUP" >/dev/null
fi
for ((i = 0; i < ${#COPIES[@]}; i += 2)); do
  name=${COPIES[i]}
  dest=$home/${COPIES[i + 1]}
  if [ -f "$SECRETS_DIR/$name" ]; then
    [ -r "$SECRETS_DIR/$name" ] || fail "cannot read $SECRETS_DIR/$name; run it through sudo"
    # shellcheck disable=SC2016  # expanded by the operator's shell
    runuser -u "$user" -- /bin/sh -c 'umask 077 && mkdir -p "$1" && chmod 700 "$1" &&
      tmp=$(mktemp "$1/.incoming.XXXXXX") && cat >"$tmp" && mv -f "$tmp" "$2"' \
      sh "$home/$OPERATOR_DIR" "$dest" <"$SECRETS_DIR/$name"
  else
    # Not in this credential mode (e.g. no service-account key): drop stale copies.
    runuser -u "$user" -- rm -f "$dest"
  fi
done
echo "ray-gcp: launcher credentials installed for $user in $home/$OPERATOR_DIR" >&2
HELPER
}

write_sudoers() {
  echo "# ray-gcp: members of $OPERATOR_GROUP and the users listed in ray-gcp:operators may"
  echo "# install their own copies of the launcher credentials, nothing else (no arguments)."
  echo "# Written by the provider VM's boot script."
  echo "%$OPERATOR_GROUP ALL=(root) NOPASSWD: $HELPER \"\""
  local users
  users=$(paste -sd, "$STAGE/operators")
  if [ -n "$users" ]; then
    echo "${users//,/, } ALL=(root) NOPASSWD: $HELPER \"\""
  fi
}

write_profile() {
  echo "# ray-gcp: login environment for operators on the provider VM."
  echo "# Written by the provider VM's boot script on every boot; see infra/BOOT.md."
  echo "case \":\$PATH:\" in *\":$VENV/bin:\"*) ;; *) PATH=\"$VENV/bin:\$PATH\" ;; esac"
  echo "export PATH"
  echo "export RAY_GCP_CLUSTER_YAML=\"$CLUSTER_YAML\""
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=\"\$HOME/$OPERATOR_AUTH_TOKEN\""
  if [ "$CREDENTIAL_MODE" = key ]; then
    echo "export GOOGLE_APPLICATION_CREDENTIALS=\"\$HOME/$OPERATOR_SA_KEY\""
  fi
  echo "if [ ! -e \"$READY\" ]; then"
  echo "  echo \"ray-gcp: this VM's boot did not complete; no launcher credentials.\" \\"
  echo "    \"See: sudo journalctl -u google-startup-scripts\" >&2"
  echo "else"
  # Members of the group, and listed operators (the helper adds them to the group).
  echo "  case \" \$(id -nG 2>/dev/null) \" in"
  echo "  *\" $OPERATOR_GROUP \"*) _ray_gcp_operator=1 ;;"
  echo "  *) grep -qxF -- \"\$(id -un)\" \"$OPERATORS_FILE\" 2>/dev/null && _ray_gcp_operator=1 ;;"
  echo "  esac"
  echo "  if [ -n \"\${_ray_gcp_operator:-}\" ]; then"
  echo "    sudo -n \"$HELPER\" 2>/dev/null ||"
  echo "      echo \"ray-gcp: could not install your launcher credentials: sudo $HELPER\" >&2"
  echo "  fi"
  echo "  unset _ray_gcp_operator"
  echo "fi"
}

install_config() {
  step 8 "cluster config, operator access, login environment"
  install_file "$STAGE/cluster.yaml" 0644 "$CLUSTER_YAML"
  install_file "$STAGE/operators" 0644 "$OPERATORS_FILE"
  if ! getent group "$OPERATOR_GROUP" >/dev/null; then
    groupadd --system "$OPERATOR_GROUP"
    info "created group $OPERATOR_GROUP"
  fi
  mkdir -p "$(dirname "$HELPER")" "$(dirname "$SUDOERS")" "$(dirname "$PROFILE")"
  write_helper >"$STAGE/helper"
  install_file "$STAGE/helper" 0755 "$HELPER"
  write_sudoers >"$STAGE/sudoers"
  visudo -c -q -f "$STAGE/sudoers" || die "visudo rejects the generated sudoers rule"
  install_file "$STAGE/sudoers" 0440 "$SUDOERS"
  write_profile >"$STAGE/profile"
  install_file "$STAGE/profile" 0644 "$PROFILE"
}

# ---- 9. ready ----------------------------------------------------------------------
mark_ready() {
  step 9 "ready"
  {
    echo "ray-gcp provider VM boot completed $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "ray=$RAY_VERSION python=$PYTHON_MINOR uv=$UV_VERSION credential-mode=$CREDENTIAL_MODE"
    echo "bundle-sha256=$(<"$STAGE/bundle.sha256")"
  } >"$STAGE/READY"
  chmod 644 "$STAGE/READY"
  mv -f "$STAGE/READY" "$READY"
  info "next: ray up $PROVIDER_CLUSTER_YAML (members of $OPERATOR_GROUP get their credentials at login)"
}

preflight
fetch
install_system_packages
install_uv
install_venv
install_src
install_secrets
install_config
mark_ready
