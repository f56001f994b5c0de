"""Offline validation of Kubernetes manifests, as close to the API server as we can get.

* KubeRay custom resources: against the vendored ``openAPIV3Schema`` of the
  pinned KubeRay release (``kuberay_crds/``, see SOURCE.json), with the
  structural-schema rules of apiextensions.k8s.io/v1 made explicit for
  ``jsonschema``:

  - unknown fields: the API server silently *prunes* them (unless
    ``x-kubernetes-preserve-unknown-fields``). A pruned field is a setting
    that never reaches the operator, so here it is an error
    (``additionalProperties: false`` on every object with ``properties``);
  - ``x-kubernetes-int-or-string``: integer or string (the ``anyOf`` that
    controller-gen emits; added if absent); patterns apply to the string form;
  - ``nullable``: null is allowed where it says so, nowhere else;
  - ``format: int32|int64``: range-checked; ``date-time``: RFC 3339;
  - ``x-kubernetes-list-type: map|set``: map keys / items must be unique;
  - ``x-kubernetes-validations`` (CEL): not evaluated offline, so setting a
    field that carries CEL rules is reported as an error rather than passed;
  - object metadata: ``metadata.name`` a DNS-1123 subdomain, label keys and
    values valid (the API server checks these, not the CRD schema).

* Core objects: ``kubernetes-validate`` (strict: unknown fields fail) for the
  GKE minor ``cluster.layout.GKE_MINOR``, plus the same metadata checks.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft4Validator, ValidationError, validators

CRD_DIR = Path(__file__).resolve().parent / "kuberay_crds"
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def structural(schema: Any) -> Any:
    """A copy of an openAPIV3Schema with the structural rules spelled out for jsonschema."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: structural(v) for k, v in value.items()}
        elif key == "enum" or key == "default" or key == "example":
            out[key] = copy.deepcopy(value)
        else:
            out[key] = structural(value)
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield ValidationError(f"x-kubernetes-list-type=set: duplicate item {item!r}")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = json.dumps([item.get(k) for k in keys])
            if key in seen:
                yield ValidationError(
                    f"x-kubernetes-list-type=map: duplicate entry for keys {keys} = {key}"
                )
            seen.add(key)


def _cel(validator, rules, instance, schema):
    yield ValidationError(
        "field carries x-kubernetes-validations (CEL) that cannot be evaluated offline: "
        + "; ".join(r.get("message", r.get("rule", "?")) for r in rules)
    )


_format_checker = jsonschema.FormatChecker()


@_format_checker.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_format_checker.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@_format_checker.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if isinstance(value, str):
        datetime.datetime.fromisoformat(value)
    return True


StructuralValidator = validators.extend(
    Draft4Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel},
)


@functools.cache
def crd_validator(kind: str, version: str = "v1") -> Draft4Validator:
    data = json.loads((CRD_DIR / f"{PLURALS[kind]}.schema.json").read_text())
    schema = structural(data["versions"][version]["openAPIV3Schema"])
    StructuralValidator.check_schema(schema)
    return StructuralValidator(schema, format_checker=_format_checker)


def metadata_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server checks of ObjectMeta beyond the schema: names and labels."""
    errs = []

    def check_meta(meta: dict[str, Any], where: str) -> None:
        name = meta.get("name")
        if name is not None and (len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name)):
            errs.append(f"{where}.name {name!r}: not a DNS-1123 subdomain")
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, local = key.rpartition("/")
            if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
                errs.append(f"{where}.labels key {key!r}: bad prefix")
            if len(local) > 63 or not _QUALIFIED_NAME.match(local):
                errs.append(f"{where}.labels key {key!r}: bad name")
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                errs.append(f"{where}.labels[{key!r}] = {value!r}: bad label value")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "metadata" and isinstance(v, dict):
                    check_meta(v, f"{where}.metadata")
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(obj, obj.get("kind", "?"))
    return errs


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema and metadata error of a KubeRay custom resource ([] = valid)."""
    group, _, version = obj.get("apiVersion", "").partition("/")
    if group != "ray.io" or obj.get("kind") not in PLURALS:
        return [
            f"not a KubeRay resource: apiVersion={obj.get('apiVersion')} kind={obj.get('kind')}"
        ]
    v = crd_validator(obj["kind"], version)
    errs = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return errs + metadata_errors(obj)


def core_errors(obj: dict[str, Any], k8s_minor: str) -> list[str]:
    """Errors of a core Kubernetes object against that minor's OpenAPI schema (strict)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, k8s_minor, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"]
    return metadata_errors(obj)
