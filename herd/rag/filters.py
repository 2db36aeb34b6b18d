"""Metadata filters in the OpenAI shape, checked once and then evaluated in Python or compiled to SQL.

    {"type": "eq", "key": "lang", "value": "en"}                         # comparison: eq ne gt gte lt lte in nin
    {"type": "and", "filters": [{...}, {"type": "or", "filters": [...]}]}  # compound: and / or

A key names a top-level field of a chunk's metadata (its file's attributes, its page, ...). A chunk
without the key matches only `ne` and `nin` (as "not equal to anything given"). Numbers compare as
numbers, strings as strings; comparing a string field with a number (or the reverse) never matches.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from herd.errors import HerdError

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
Scalar = Union[str, int, float, bool]


@dataclass(frozen=True)
class Comparison:
    op: str
    key: str
    value: Any  # a scalar, or a list of scalars for in / nin


@dataclass(frozen=True)
class Compound:
    op: str
    filters: tuple[Filter, ...]


Filter = Union[Comparison, Compound]


def parse_filter(raw: Any, param: str = "filters") -> Filter | None:
    """Check and parse an OpenAI filter object (None stays None); a bad one is a HerdError naming where."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise HerdError(f"{param} must be an object with a type", param)
    kind = raw.get("type")
    if kind in COMPOUNDS:
        items = raw.get("filters")
        if not isinstance(items, list) or not items:
            raise HerdError(f"{param}.filters must be a non-empty list", f"{param}.filters")
        return Compound(kind, tuple(parse_filter(f, f"{param}.filters[{i}]") for i, f in enumerate(items)))
    if kind not in COMPARISONS:
        raise HerdError(f"{param}.type must be one of {', '.join(COMPARISONS + COMPOUNDS)}, got {kind!r}",
                        f"{param}.type")
    key, value = raw.get("key"), raw.get("value")
    if not isinstance(key, str) or not key:
        raise HerdError(f"{param}.key must be a non-empty string", f"{param}.key")
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
            raise HerdError(f"{param}.value must be a non-empty list of strings or numbers for {kind}",
                            f"{param}.value")
        return Comparison(kind, key, tuple(value))
    if not isinstance(value, (str, int, float, bool)):
        raise HerdError(f"{param}.value must be a string, number or boolean", f"{param}.value")
    if kind in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        raise HerdError(f"{param}.value: {kind} needs a number or a string", f"{param}.value")
    return Comparison(kind, key, value)


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return isinstance(a, str) == isinstance(b, str) and isinstance(a, (str, int, float))


def matches(f: Filter | None, metadata: Mapping[str, Any]) -> bool:
    """Whether a chunk's metadata passes the filter (the reference the SQL compilation is tested against)."""
    if f is None:
        return True
    if isinstance(f, Compound):
        results = (matches(x, metadata) for x in f.filters)
        return all(results) if f.op == "and" else any(results)
    if f.key not in metadata:
        return f.op in ("ne", "nin")
    got = metadata[f.key]
    if f.op in ("in", "nin"):
        found = any(_same_kind(got, v) and got == v for v in f.value)
        return found if f.op == "in" else not found
    if not _same_kind(got, f.value):
        return f.op == "ne"
    return {"eq": got == f.value, "ne": got != f.value, "gt": got > f.value, "gte": got >= f.value,
            "lt": got < f.value, "lte": got <= f.value}[f.op]


def _kind_sql(typed: str, value: Any) -> str:
    """SQL that is true when the JSON type `typed` evaluates to is the kind of `value` (see _same_kind)."""
    if isinstance(value, bool):
        return f"{typed} IN ('true', 'false')"
    if isinstance(value, str):
        return f"{typed} = 'text'"
    return f"{typed} IN ('integer', 'real')"


def to_sql(f: Filter | None, column: str = "metadata") -> tuple[str, list[Any]]:
    """(a WHERE expression, its parameters) over a JSON text column; the same answers as `matches`."""
    if f is None:
        return "1", []
    if isinstance(f, Compound):
        parts = [to_sql(x, column) for x in f.filters]
        joiner = " AND " if f.op == "and" else " OR "
        return "(" + joiner.join(p for p, _ in parts) + ")", [a for _, args in parts for a in args]
    if '"' in f.key or "\\" in f.key:  # a JSON path label cannot hold these: look the key up instead
        path = f.key
        expr = f"(SELECT value FROM json_each({column}) WHERE key = ?)"
        typed = f"(SELECT type FROM json_each({column}) WHERE key = ?)"
    else:
        path = "$." + json.dumps(f.key)  # a quoted JSON path label: spaces, dots and quotes are safe
        expr = f"json_extract({column}, ?)"
        typed = f"json_type({column}, ?)"
    if f.op in ("in", "nin"):
        ors, args = [], []
        for v in f.value:
            ors.append(f"({_kind_sql(typed, v)} AND {expr} = ?)")
            args += [path, path, _sql_value(v)]
        found = "(" + " OR ".join(ors) + ")"
        if f.op == "in":
            return found, args
        return f"({typed} IS NULL OR NOT {found})", [path, *args]
    kind = _kind_sql(typed, f.value)
    op = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.op]
    cond = f"({kind} AND {expr} {op} ?)"
    args = [path, path, _sql_value(f.value)]
    if f.op == "ne":  # missing key, or another kind, or a different value
        return f"({typed} IS NULL OR NOT {_kind_sql(typed, f.value)} OR {expr} != ?)", \
            [path, path, path, _sql_value(f.value)]
    return cond, args


def _sql_value(v: Any) -> Any:
    return int(v) if isinstance(v, bool) else v
