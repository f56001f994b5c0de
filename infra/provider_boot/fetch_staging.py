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


def parse_idle_timeout(text):
    """0 (autostop off) or whole minutes 5..10080: cluster/autostop.py's rule, repeated
    here because this script runs before the bundle is installed."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or not (
        int(value) == 0 or 5 <= int(value) <= 10080
    ):
        raise BootError(
            f"metadata key {E['_RG_META_IDLE_TIMEOUT']!r} is {value[:20]!r}; allowed: 0 "
            "(autostop off) or a whole number of minutes from 5 to 10080"
        )
    return int(value)


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
    # Older metadata (before ray-gcp:operators) has no such key: no listed operators.
    operators = parse_operators(optional_attribute(E["_RG_META_OPERATORS"], "[]"))
    # Older metadata (before ray-gcp:idleTimeoutMinutes) has no such key: the default.
    minutes = parse_idle_timeout(optional_attribute(E["_RG_META_IDLE_TIMEOUT"], "60"))

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
    with open(os.path.join(STAGE, "operators"), "w") as f:
        f.write("".join(u + "\n" for u in operators))
    with open(os.path.join(STAGE, "idle-timeout-minutes"), "w") as f:
        f.write(f"{minutes}\n")


try:
    main()
except BootError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
except Exception as exc:  # no traceback: locals could hold secret bytes
    print(f"unexpected {type(exc).__name__} while fetching", file=sys.stderr)
    sys.exit(1)
