"""Validation errors in the settings' style: `field = value: problem (allowed: ...)`.

pydantic's own text (`String should match pattern '^[a-z]+...'`, a docs URL)
tells a user neither what they typed nor what would work. These helpers turn
a ValidationError into one line per problem that names the field (as the
user wrote it), the value and the allowed values, like infra/settings.py does
for the Pulumi settings.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


def clean(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`dict[str, NodeTypeSpec]` -> NodeTypeSpec)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _allowed(model: type[BaseModel], loc: Iterable[Any]) -> str | None:
    """A field's description of what it allows, following the error location down."""
    current: type[BaseModel] | None = model
    field = None
    for part in loc:
        if current is not None and isinstance(part, str) and part in current.model_fields:
            field = current.model_fields[part]
            current = _inner_model(field.annotation)
        elif current is None:
            return None
        # else: a dict key (a node type's name) or list index: stay on this model
    if field is None:
        return None
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("allowed") or field.description


def describe(err: Mapping[str, Any], model: type[BaseModel], *, prefix: str = "") -> str:
    """One line for one pydantic error of `model`."""
    loc = [p for p in err["loc"]]
    msg = clean(err["msg"])
    if not loc:
        # A check across fields: its message names them (and their values) itself.
        return f"{prefix}{msg}"
    name = prefix + ".".join(str(p) for p in loc)
    allowed = _allowed(model, loc)
    if err["type"] == "string_pattern_mismatch":
        msg = "malformed"  # the regex is for us; `allowed` says it in words
    value = err.get("input")
    if isinstance(value, Mapping):
        # A check across one object's fields: the message names them and their values.
        return f"{name}: {msg}"
    line = f"{name} = {value!r}: {msg}"
    # Our own checks (value_error) already say what is allowed; pydantic's do not.
    if allowed and err["type"] != "value_error" and "allowed" not in msg:
        line += f" (allowed: {allowed})"
    return line


def describe_all(e: ValidationError, model: type[BaseModel], *, prefix: str = "") -> list[str]:
    return [describe(err, model, prefix=prefix) for err in e.errors()]


def report(lines: list[str], what: str = "nothing was rendered") -> str:
    return f"invalid input ({what}):\n  " + "\n  ".join(lines)
