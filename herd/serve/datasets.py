"""Llama Stack 0.2 datasets: `/v1/datasets` (register, list, get, unregister) and `/v1/datasetio`
(`iterrows/{id}`, `append-rows/{id}`), kept in `<herd_home>/datasets.sqlite` (rows included), so they
survive a restart and feed post-training and evaluation.

A dataset comes from rows (`{"type": "rows", "rows": [...]}`) or a URI the server can read without a
network: a path or `file://` URI of a JSONL, JSON (a list of objects) or CSV file inside
`<herd_home>/datasets/` (relative paths are taken from there; the server reads no other file for a client),
or a `data:` URL (base64 or percent-encoded, of the same formats). The rows are read and checked at registration against the
purpose (`post-training/messages`: a `messages` list; `post-training/preference`: `prompt`, `chosen` and
`rejected`, for DPO; `eval/question-answer`: `question` and `answer`; `eval/messages-answer`: `messages` and `answer`), so a bad dataset is a 400 naming the row, and then kept.
Remote URIs (http, huggingface) are a 400: Herd fetches nothing.
"""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from herd.home import StateFile
from herd.serve.errors import APIError, bad_request, not_found

FILENAME = "datasets.sqlite"
PURPOSES = {"post-training/messages": ("messages",), "post-training/preference": ("prompt", "chosen", "rejected"),
            "eval/question-answer": ("question", "answer"), "eval/messages-answer": ("messages", "answer")}
MAX_ROWS = 1_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_rows (
    dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (dataset_id, idx)
);
"""


class DatasetStore:
    """Datasets and their rows in one SQLite file (each write one transaction). Blocking, thread-safe."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)

    def add(self, dataset_id: str, purpose: str, source: dict[str, Any], metadata: dict[str, Any],
            rows: list[dict[str, Any]]) -> None:
        with self._state.write() as db:
            if db.execute("SELECT 1 FROM datasets WHERE id = ?", (dataset_id,)).fetchone():
                raise APIError(409, f"dataset {dataset_id!r} is already registered; unregister it first",
                               param="dataset_id", code="conflict")
            db.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?)",
                       (dataset_id, purpose, json.dumps(source), json.dumps(metadata), int(time.time())))
            db.executemany("INSERT INTO dataset_rows VALUES (?, ?, ?)",
                           ((dataset_id, i, json.dumps(r)) for i, r in enumerate(rows)))

    def get(self, dataset_id: str) -> dict[str, Any] | None:
        with self._state.read() as db:
            row = db.execute("SELECT id, purpose, source, metadata FROM datasets WHERE id = ?",
                             (dataset_id,)).fetchone() if db else None
        return None if row is None else _resource(row)

    def all(self) -> list[dict[str, Any]]:
        with self._state.read() as db:
            rows = db.execute("SELECT id, purpose, source, metadata FROM datasets ORDER BY created, id").fetchall() \
                if db else []
        return [_resource(r) for r in rows]

    def delete(self, dataset_id: str) -> bool:
        with self._state.read() as db:
            if db is None:
                return False
            with db:
                return db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,)).rowcount > 0

    def rows(self, dataset_id: str, start: int, limit: int | None) -> tuple[list[dict[str, Any]], bool]:
        with self._state.read() as db:
            found = db.execute("SELECT idx, row FROM dataset_rows WHERE dataset_id = ? AND idx >= ? ORDER BY idx "
                               "LIMIT ?", (dataset_id, start, -1 if limit is None else limit + 1)).fetchall() \
                if db else []
        more = limit is not None and len(found) > limit
        return [json.loads(r) for _, r in found[:limit]], more

    def append(self, dataset_id: str, rows: list[dict[str, Any]]) -> int:
        with self._state.write() as db:
            start = db.execute("SELECT coalesce(max(idx) + 1, 0) FROM dataset_rows WHERE dataset_id = ?",
                               (dataset_id,)).fetchone()[0]
            db.executemany("INSERT INTO dataset_rows VALUES (?, ?, ?)",
                           ((dataset_id, start + i, json.dumps(r)) for i, r in enumerate(rows)))
            return start + len(rows)

    def close(self) -> None:
        self._state.close()


def _resource(row: tuple[str, str, str, str]) -> dict[str, Any]:
    ident, purpose, source, metadata = row
    return {"identifier": ident, "provider_id": "localfs", "provider_resource_id": ident, "type": "dataset",
            "purpose": purpose, "source": json.loads(source), "metadata": json.loads(metadata)}


# ---- reading sources ------------------------------------------------------------------------------------


def _parse(data: bytes, kind: str, where: str) -> list[dict[str, Any]]:
    """Rows of JSONL / JSON / CSV bytes."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"{where}: not UTF-8 text", "source") from None
    if kind == "csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    if kind == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise bad_request(f"{where}: not valid JSON ({e.msg})", "source") from None
        if not isinstance(value, list):
            raise bad_request(f"{where}: a JSON dataset is a list of objects", "source")
        return value
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise bad_request(f"{where}: line {n} is not valid JSON ({e.msg})", "source") from None
    return rows


def _kind(name: str) -> str:
    """csv / json / jsonl from a file name or a MIME type."""
    n = name.lower()
    return "csv" if n.endswith("csv") else "json" if n.endswith((".json", "/json")) else "jsonl"


def read_source(source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a `{"type": "rows", ...}` or `{"type": "uri", ...}` source (local or data: URIs only)."""
    kind = source.get("type")
    if kind == "rows":
        rows = source.get("rows")
        if not isinstance(rows, list):
            raise bad_request("source.rows must be a list of objects", "source.rows")
        return rows
    if kind != "uri" or not isinstance(source.get("uri"), str) or not source["uri"]:
        raise bad_request("source must be {type: rows, rows: [...]} or {type: uri, uri: ...}", "source")
    uri: str = source["uri"]
    if uri.startswith("data:"):
        head, _, payload = uri.partition(",")
        data = base64.b64decode(payload) if ";base64" in head else urllib.parse.unquote_to_bytes(payload)
        return _parse(data, _kind(head[5:].split(";")[0]), "source.uri (data:)")
    if uri.startswith("file://"):
        uri = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
    elif "://" in uri:
        raise bad_request(f"source.uri {uri[:80]!r}: herd reads local paths, file:// and data: URIs only (it "
                          "fetches nothing from the network)", "source.uri")
    from herd.home import herd_home

    allowed = (herd_home(create=False) / "datasets").resolve()
    path = Path(uri).expanduser()
    path = (allowed / path if not path.is_absolute() else path).resolve()
    if not path.is_relative_to(allowed):  # clients must not read the server's other files through a dataset
        raise bad_request(f"source.uri: the server reads dataset files only from {allowed} (put the file there, "
                          "or send the rows or a data: URI)", "source.uri")
    if not path.is_file():
        raise bad_request(f"source.uri: no such file {path.name!r} in {allowed}", "source.uri")
    return _parse(path.read_bytes(), _kind(path.name), f"source.uri {path.name}")


def check_rows(rows: list[Any], purpose: str, param: str = "rows") -> list[dict[str, Any]]:
    """Every row an object with the purpose's columns (messages a non-empty list)."""
    if len(rows) > MAX_ROWS:
        raise bad_request(f"{param}: {len(rows)} rows; the limit is {MAX_ROWS}", param)
    need = PURPOSES[purpose]
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise bad_request(f"{param}[{i}] must be an object", f"{param}[{i}]")
        missing = [c for c in need if c not in r]
        if missing:
            raise bad_request(f"{param}[{i}] lacks {', '.join(missing)} (purpose {purpose} needs "
                              f"{', '.join(need)})", f"{param}[{i}]")
        if "messages" in need and (not isinstance(r["messages"], list) or not r["messages"]):
            raise bad_request(f"{param}[{i}].messages must be a non-empty list of messages", f"{param}[{i}].messages")
    return rows


# ---- the routes' logic ---------------------------------------------------------------------------------------


async def register(store: DatasetStore, body: Any) -> dict[str, Any]:
    """POST /v1/datasets."""
    if body.purpose not in PURPOSES:
        raise bad_request(f"purpose must be one of {', '.join(PURPOSES)}, got {body.purpose!r}", "purpose")
    dataset_id = body.dataset_id or f"dataset-{uuid.uuid4().hex[:12]}"
    rows = await asyncio.to_thread(read_source, body.source)
    check_rows(rows, body.purpose, "source.rows" if body.source.get("type") == "rows" else "source")
    source = body.source if body.source.get("type") == "uri" else {"type": "rows", "rows": []}  # rows kept apart
    await asyncio.to_thread(store.add, dataset_id, body.purpose, dict(source), dict(body.metadata or {}), rows)
    return await get(store, dataset_id)


async def get(store: DatasetStore, dataset_id: str) -> dict[str, Any]:
    found = await asyncio.to_thread(store.get, dataset_id)
    if found is None:
        ids = ", ".join(d["identifier"] for d in await asyncio.to_thread(store.all)) or "none"
        raise not_found(f"dataset {dataset_id!r} not found (registered: {ids})", "dataset_id")
    return found


async def list_all(store: DatasetStore) -> dict[str, Any]:
    return {"data": await asyncio.to_thread(store.all)}


async def unregister(store: DatasetStore, dataset_id: str) -> None:
    if not await asyncio.to_thread(store.delete, dataset_id):
        raise not_found(f"dataset {dataset_id!r} not found", "dataset_id")


def _int(q: Mapping[str, str], name: str, default: int | None, low: int) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw!r}", name) from None
    if value < low:
        raise bad_request(f"{name} must be >= {low}, got {value}", name)
    return value


async def iterrows(store: DatasetStore, dataset_id: str, q: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/datasetio/iterrows/{id}?start_index=&limit= (limit -1 or absent: all)."""
    await get(store, dataset_id)
    start = _int(q, "start_index", 0, 0)
    limit = _int(q, "limit", None, -1)
    rows, more = await asyncio.to_thread(store.rows, dataset_id, start or 0, None if limit in (None, -1) else limit)
    return {"data": rows, "has_more": more}


async def append_rows(store: DatasetStore, dataset_id: str, rows: list[Any]) -> None:
    """POST /v1/datasetio/append-rows/{id}: rows checked against the dataset's purpose, added at its end."""
    found = await get(store, dataset_id)
    check_rows(rows, found["purpose"])
    await asyncio.to_thread(store.append, dataset_id, rows)
