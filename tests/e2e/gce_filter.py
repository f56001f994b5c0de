"""Compute Engine's list ``filter`` expressions, as the fake API evaluates them.

The grammar of Google's list filters (AIP-160) as far as Compute Engine
clients use it: comparisons ``field = value``, ``field != value`` and the
"has" operator ``field:value`` (``field:*``: the field is present), joined by
``AND``/``OR`` (``OR`` binds tighter, as in AIP-160), negated by ``NOT`` or a
leading ``-``, grouped by parentheses; juxtaposed terms are ANDed. Values are
bare words or double-quoted strings. Fields are dotted paths into the
resource (``labels.ray-node-type``, ``status``).

Ray's ``GCPCompute.list_instances`` sends, for example::

    ((labels.ray-node-type = worker)) AND ((status = RUNNING) OR (status = STAGING))
    AND (labels.ray-cluster-name = ray-gcp) AND (NOT labels.tpu_cores:*)

Anything outside the grammar raises ``FilterError`` (the fake answers 400, as
GCE does for an invalid filter).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lp>\() | (?P<rp>\)) | (?P<op>!=|=|:) | (?P<star>\*)
      | "(?P<quoted>(?:[^"\\]|\\.)*)"
      | (?P<word>-?[A-Za-z0-9_.\-/@]+)
    )""",
    re.VERBOSE,
)

Predicate = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    """Not a filter expression Compute Engine accepts."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"invalid filter at offset {pos}: {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "word" and value in ("AND", "OR", "NOT"):
            kind = value
        out.append((kind, value))
        pos = m.end()
    return out


def _field(resource: dict[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            got = self.tokens[self.i][1] if self.i < len(self.tokens) else "end of filter"
            raise FilterError(f"invalid filter: expected {kind}, got {got!r}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def conjunction(self) -> Predicate:
        terms = [self.disjunction()]
        while self.peek() not in (None, "rp"):
            if self.peek() == "AND":
                self.i += 1
            terms.append(self.disjunction())
        return lambda r: all(t(r) for t in terms)

    def disjunction(self) -> Predicate:
        terms = [self.unary()]
        while self.peek() == "OR":
            self.i += 1
            terms.append(self.unary())
        return lambda r: any(t(r) for t in terms)

    def unary(self) -> Predicate:
        if self.peek() == "NOT":
            self.i += 1
            inner = self.unary()
            return lambda r: not inner(r)
        if self.peek() == "lp":
            self.i += 1
            inner = self.conjunction()
            self.take("rp")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        name = self.take("word")
        negate = name.startswith("-")
        name = name.removeprefix("-")
        op = self.take("op")
        if self.peek() == "star" and op == ":":
            self.i += 1
            test: Predicate = lambda r: _field(r, name) is not None
        else:
            kind = self.peek()
            if kind not in ("word", "quoted"):
                raise FilterError(f"invalid filter: {name} {op} needs a value")
            value = self.take(kind)

            def test(r: dict[str, Any], op: str = op, value: str = value) -> bool:
                got = _field(r, name)
                text = None if got is None else str(got).lower() if isinstance(got, bool) else str(got)
                if op == "=":
                    return text == value
                if op == "!=":
                    return text != value
                return text is not None and value in text  # ":" on a string: contains

        return (lambda r: not test(r)) if negate else test


def compile_filter(text: str | None) -> Predicate:
    """A predicate over resources; an empty filter matches everything."""
    if not text or not text.strip():
        return lambda r: True
    parser = _Parser(_tokens(text))
    predicate = parser.conjunction()
    if parser.peek() is not None:
        raise FilterError(f"invalid filter: unbalanced ')' in {text!r}")
    return predicate
