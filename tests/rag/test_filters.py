"""Metadata filters: the SQL compilation gives the same answers as the Python reference on random
metadata and random OpenAI-shaped filters, and bad filters are errors that say where."""
from __future__ import annotations

import json
import random
import sqlite3

import pytest

from herd.errors import HerdError
from herd.rag.filters import COMPARISONS, matches, parse_filter, to_sql

KEYS = ["lang", "year", "score", "draft", "odd key's \"name\""]
VALUES = ["en", "fr", "de", 2023, 2024, 2025, 0.5, 1.5, True, False, "2024"]


def _random_meta(rng: random.Random) -> dict:
    return {k: rng.choice(VALUES + [None]) for k in KEYS if rng.random() < 0.7}


def _random_filter(rng: random.Random, depth: int = 0) -> dict:
    if depth < 2 and rng.random() < 0.35:
        return {"type": rng.choice(["and", "or"]),
                "filters": [_random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    op = rng.choice(COMPARISONS)
    key = rng.choice(KEYS)
    if op in ("in", "nin"):
        value = rng.sample([v for v in VALUES if not isinstance(v, bool)], rng.randint(1, 3))
    elif op in ("gt", "gte", "lt", "lte"):
        value = rng.choice([v for v in VALUES if not isinstance(v, bool)])
    else:
        value = rng.choice(VALUES)
    return {"type": op, "key": key, "value": value}


def test_sql_agrees_with_the_python_reference():
    rng = random.Random(7)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, metadata TEXT)")
    metas = [_random_meta(rng) for _ in range(300)]
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, json.dumps(m)) for i, m in enumerate(metas)])
    checked = nonempty = 0
    for _ in range(400):
        f = parse_filter(_random_filter(rng))
        where, args = to_sql(f)
        got = {r for (r,) in db.execute(f"SELECT id FROM t WHERE {where}", args)}
        want = {i for i, m in enumerate(metas) if matches(f, m)}
        assert got == want, f
        checked += 1
        nonempty += bool(want) and len(want) < len(metas)
    assert checked == 400 and nonempty > 150  # most filters select a proper, non-empty subset


def test_semantics_of_missing_keys_and_kinds():
    meta = {"lang": "en", "year": 2024, "draft": False}
    assert matches(parse_filter({"type": "eq", "key": "lang", "value": "en"}), meta)
    assert not matches(parse_filter({"type": "eq", "key": "year", "value": "2024"}), meta)  # a string is not a number
    assert matches(parse_filter({"type": "ne", "key": "missing", "value": 1}), meta)
    assert not matches(parse_filter({"type": "gt", "key": "missing", "value": 1}), meta)
    assert matches(parse_filter({"type": "gte", "key": "year", "value": 2024}), meta)
    assert not matches(parse_filter({"type": "eq", "key": "draft", "value": 0}), meta)  # a bool is not a number
    assert matches(parse_filter({"type": "nin", "key": "lang", "value": ["fr", "de"]}), meta)
    both = {"type": "and", "filters": [{"type": "eq", "key": "lang", "value": "en"},
                                       {"type": "or", "filters": [{"type": "lt", "key": "year", "value": 2000},
                                                                  {"type": "eq", "key": "draft", "value": False}]}]}
    assert matches(parse_filter(both), meta)


@pytest.mark.parametrize("raw, where", [
    ({"type": "like", "key": "a", "value": 1}, "filters.type"),
    ({"type": "eq", "value": 1}, "filters.key"),
    ({"type": "eq", "key": "a", "value": {"x": 1}}, "filters.value"),
    ({"type": "in", "key": "a", "value": []}, "filters.value"),
    ({"type": "and", "filters": []}, "filters.filters"),
    ({"type": "or", "filters": [{"type": "eq", "key": "a"}]}, "filters.filters[0].value"),
    ("lang = en", "filters"),
])
def test_bad_filters_name_the_place(raw, where):
    with pytest.raises(HerdError) as e:
        parse_filter(raw)
    assert e.value.param == where
