"""Google's discovery documents (shipped in google-api-python-client) as checkers.

- ``match_url(api, http_method, url)``: which REST method a raw HTTP request is,
  by the method's path template (``{var}``: one segment, ``{+var}``: any), the
  media upload/download paths included; path parameters are checked against
  their ``pattern``.
- ``validate(api, schema, value)``: every field of a request body against the
  named schema: unknown fields, JSON types, enum values, array items, maps.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import googleapiclient

DOCS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"


@functools.cache
def document(api: str) -> dict[str, Any]:
    """e.g. document('compute.v1')."""
    return json.loads((DOCS / f"{api}.json").read_text())


def _methods(resources: dict[str, Any]):
    for res in resources.values():
        yield from res.get("methods", {}).values()
        yield from _methods(res.get("resources", {}))


@functools.cache
def methods_by_id(api: str) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in _methods(document(api)["resources"])}


def check_call(api: str, method_id: str, kwargs: dict[str, Any]) -> list[str]:
    """Problems of a googleapiclient call (method id, keyword arguments) against the doc:
    unknown or missing parameters, parameter patterns, and the body's schema."""
    method = methods_by_id(api).get(method_id)
    if method is None:
        return [f"{method_id}: no such method in {api}"]
    params = method.get("parameters", {})
    problems = []
    for name, value in kwargs.items():
        if name == "body" or value is None:
            continue
        if name not in params:
            problems.append(f"{method_id}: unknown parameter {name}")
        elif params[name].get("pattern") and not re.match(params[name]["pattern"], str(value)):
            problems.append(f"{method_id}: {name}={value!r} !~ {params[name]['pattern']}")
    for name, spec in params.items():
        if spec.get("required") and kwargs.get(name) is None:
            problems.append(f"{method_id}: required parameter {name} missing")
    if "request" in method:
        if "body" not in kwargs:
            problems.append(f"{method_id}: no request body")
        else:
            problems += [f"{method_id} body {p}" for p in validate(api, method["request"], kwargs["body"])]
    elif kwargs.get("body") is not None:
        problems.append(f"{method_id}: takes no request body")
    return problems


def _template(path: str) -> re.Pattern[str]:
    out, pos = "", 0
    for m in re.finditer(r"\{(\+?)([^}]+)\}", path):
        out += re.escape(path[pos : m.start()])
        out += f"(?P<{m.group(2)}>.+)" if m.group(1) else f"(?P<{m.group(2)}>[^/]+)"
        pos = m.end()
    return re.compile("^" + out + re.escape(path[pos:]) + "$")


@functools.cache
def _routes(api: str) -> list[tuple[str, re.Pattern[str], dict[str, Any]]]:
    doc = document(api)
    base = "/" + doc["servicePath"].lstrip("/")
    routes = []
    for method in _methods(doc["resources"]):
        paths = [base + method["path"]]
        for proto in method.get("mediaUpload", {}).get("protocols", {}).values():
            paths.append(proto["path"])
        if method.get("useMediaDownloadService"):
            paths.append("/download" + base + method["path"])
        for p in paths:
            routes.append((method["httpMethod"], _template(p), method))
    return routes


class NoSuchMethod(AssertionError):
    pass


def match_url(api: str, http_method: str, url: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(method id, path params, query params) of a request; NoSuchMethod if none fits."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    near: list[str] = []
    for verb, pattern, method in _routes(api):
        m = pattern.match(parts.path)
        if verb != http_method.upper() or not m:
            continue
        params = {k: unquote(v) for k, v in m.groupdict().items()}
        bad = [
            f"{name}={value!r} does not match {method['parameters'][name]['pattern']}"
            for name, value in params.items()
            if method["parameters"][name].get("pattern")
            and not re.match(method["parameters"][name]["pattern"], value)
        ]
        if bad:
            near.append(f"{method['id']}: {'; '.join(bad)}")
            continue
        known = {**method.get("parameters", {}), **document(api).get("parameters", {})}
        unknown = [q for q in query if q not in known and q != "uploadType"]
        if unknown:
            raise NoSuchMethod(f"{method['id']}: unknown query parameters {unknown}")
        return method["id"], params, query
    raise NoSuchMethod(
        f"no {api} method for {http_method} {parts.path}" + "".join(f"\n  {n}" for n in near)
    )


_JSON_TYPES = {
    "string": str,
    "boolean": bool,
    "object": dict,
    "array": list,
}


def validate(api: str, schema: str | dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """Problems of value against a discovery schema (empty list: valid)."""
    doc = document(api)
    if isinstance(schema, str):
        schema = {"$ref": schema}
    if "$ref" in schema:
        schema = doc["schemas"][schema["$ref"]]
    problems: list[str] = []
    typ = schema.get("type")
    if typ == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                problems += validate(api, props[key], item, f"{where}.{key}")
            elif extra is not None:
                problems += validate(api, extra, item, f"{where}.{key}")
            else:
                problems.append(f"{where}.{key}: unknown field (allowed: {', '.join(sorted(props))})")
    elif typ == "array":
        if not isinstance(value, list):
            return [f"{where}: expected an array, got {type(value).__name__}"]
        for i, item in enumerate(value):
            problems += validate(api, schema["items"], item, f"{where}[{i}]")
    elif typ == "string":
        fmt = schema.get("format")
        if fmt in ("int64", "uint64") and isinstance(value, int) and not isinstance(value, bool):
            pass  # the client library sends JSON numbers for int64 as well
        elif not isinstance(value, str):
            return [f"{where}: expected a string, got {type(value).__name__} {value!r}"]
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    elif typ == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: expected an integer, got {type(value).__name__} {value!r}"]
    elif typ == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: expected a number, got {type(value).__name__}"]
    elif typ == "boolean":
        if not isinstance(value, bool):
            return [f"{where}: expected a boolean, got {type(value).__name__} {value!r}"]
    elif typ is not None and typ != "any":
        problems.append(f"{where}: unsupported schema type {typ}")
    return problems
