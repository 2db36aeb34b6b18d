"""Stored chat completions (OpenAI's `store: true`, Llama Stack 0.2's inference store): one SQLite file
under Herd's home, the stream-to-completion assembly, and the logic of the routes that list, get and
delete them (the routes: herd/serve/routes.py).

The setting `server.store_chat_completions` decides what is kept: "requested" (a request's `store: true`,
as OpenAI), "all" (every chat completion unless it says `store: false`, as Llama Stack 0.2) or "off"
(nothing; the routes answer an empty list and 404s). An unknown `after` cursor is a 400 naming `after`.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from herd.home import StateFile
from herd.serve import protocol as p
from herd.serve.config import ServerSettings
from herd.serve.errors import bad_request, not_found

log = logging.getLogger("herd.serve")
FILENAME = "chat_completions.sqlite"
DEFAULT_LIMIT, MAX_LIMIT = 20, 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_completions (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    model TEXT NOT NULL,
    completion TEXT NOT NULL,      -- the ChatCompletion JSON, as returned to the client
    input_messages TEXT NOT NULL,  -- the request's messages, as the client sent them
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS chat_completions_by_created ON chat_completions (created, id);
"""
_COLUMNS = "completion, input_messages, metadata"


def _stored(row: tuple[str, str, str]) -> dict[str, Any]:
    completion, messages, metadata = row
    return {**json.loads(completion), "input_messages": json.loads(messages), "metadata": json.loads(metadata)}


class ChatCompletionStore:
    """Chat completions in one SQLite file (WAL, one transaction per write). The methods block and are
    thread-safe: async code calls them through `asyncio.to_thread`."""

    def __init__(self, path: str | Path | None = None, *, store_all: bool = False) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)  # path None: <herd_home>/chat_completions.sqlite
        self.store_all = store_all

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ChatCompletionStore | None:
        """The server's store; None when `store_chat_completions` is "off"."""
        mode = settings.store_chat_completions
        return None if mode == "off" else cls(store_all=mode == "all")

    def wants(self, requested: bool | None) -> bool:
        """Whether a request with this `store` field is kept."""
        return self.store_all if requested is None else requested

    def save(self, completion: dict[str, Any], input_messages: list[dict[str, Any]],
             metadata: dict[str, str] | None = None) -> None:
        """Keep one finished completion with the messages it answered (replaces one with the same id)."""
        row = (completion["id"], int(completion["created"]), completion["model"], json.dumps(completion),
               json.dumps(input_messages), json.dumps(metadata or {}))
        with self._state.write() as db:
            db.execute(f"INSERT OR REPLACE INTO chat_completions (id, created, model, {_COLUMNS}) "
                       "VALUES (?, ?, ?, ?, ?, ?)", row)

    def get(self, completion_id: str) -> dict[str, Any] | None:
        """The stored completion with `input_messages` and `metadata`; None if there is none."""
        with self._state.read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM chat_completions WHERE id = ?",
                             (completion_id,)).fetchone() if db else None
        return _stored(row) if row else None

    def list(self, *, after: str | None = None, limit: int = DEFAULT_LIMIT, model: str | None = None,
             order: str = "desc", metadata: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], bool]:
        """A page ordered by (created, id), and whether more follow; LookupError for an unknown `after`."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc, got {order!r}")
        where: list[str] = []
        args: list[Any] = []
        if model:
            where.append("model = ?")
            args.append(model)
        for key, value in (metadata or {}).items():
            where.append("EXISTS (SELECT 1 FROM json_each(chat_completions.metadata) WHERE key = ? AND value = ?)")
            args += [key, value]
        with self._state.read() as db:
            cursor = db.execute("SELECT created, id FROM chat_completions WHERE id = ?",
                                (after,)).fetchone() if db and after is not None else None
            if after is not None and cursor is None:
                raise LookupError(after)
            if db is None:
                return [], False
            if cursor is not None:  # keyset paging: stable while rows are added or deleted
                where.append(f"(created, id) {'<' if order == 'desc' else '>'} (?, ?)")
                args += cursor
            sql = (f"SELECT {_COLUMNS} FROM chat_completions {'WHERE ' + ' AND '.join(where) if where else ''} "
                   f"ORDER BY created {order}, id {order} LIMIT ?")
            rows = db.execute(sql, [*args, limit + 1]).fetchall()
        return [_stored(r) for r in rows[:limit]], len(rows) > limit

    def delete(self, completion_id: str) -> bool:
        """Forget one completion; False if it was not stored."""
        with self._state.read() as db:  # nothing stored yet: no file to create
            if db is None:
                return False
            with db:
                return db.execute("DELETE FROM chat_completions WHERE id = ?", (completion_id,)).rowcount > 0

    def close(self) -> None:
        """Close the file (it reopens on next use)."""
        self._state.close()


async def save_completion(store: ChatCompletionStore, completion: dict[str, Any],
                          req: p.ChatCompletionRequest) -> None:
    """Store a finished completion from async code (in a worker thread); a failure is logged, never raised,
    so storing cannot fail the user's request."""
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    try:
        await asyncio.to_thread(store.save, completion, messages, req.metadata)
    except Exception:
        log.exception("could not store chat completion %s", completion.get("id"))


class StreamAssembler:
    """Rebuilds the ChatCompletion a stream of chat.completion.chunk dicts spelled out."""

    def __init__(self) -> None:
        self.head: dict[str, Any] | None = None
        self.choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one chunk in."""
        self.head = self.head or chunk
        for c in chunk.get("choices") or ():
            st = self.choices.setdefault(c["index"], {"text": [], "calls": {}, "finish_reason": None,
                                                      "logprobs": None, "violation": None})
            delta = c.get("delta") or {}
            st["text"].append(delta.get("content") or "")
            for call in delta.get("tool_calls") or ():
                out = st["calls"].setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                fn = call.get("function") or {}
                out["id"] = call.get("id") or out["id"]
                out["name"] += fn.get("name") or ""
                out["arguments"] += fn.get("arguments") or ""
            if c.get("logprobs") is not None:
                st["logprobs"] = (st["logprobs"] or []) + (c["logprobs"].get("content") or [])
            st["finish_reason"] = c.get("finish_reason") or st["finish_reason"]
            st["violation"] = c.get("safety_violation") or st["violation"]

    def completion(self, usage: p.Usage) -> dict[str, Any]:
        """The ChatCompletion dict, as the same request without `stream` would have answered."""
        assert self.head is not None, "no chunks"
        choices = []
        for index, st in sorted(self.choices.items()):
            calls = [p.ToolCallOut(id=c["id"], function=p.FunctionCallOut(name=c["name"], arguments=c["arguments"]))
                     for _, c in sorted(st["calls"].items())]
            text = "".join(st["text"])
            logprobs = p.ChoiceLogprobs(content=st["logprobs"]) if st["logprobs"] is not None else None
            choices.append(p.ChatChoice(
                index=index, message=p.ChatMessageOut(content=(text or None) if calls else text, tool_calls=calls or None),
                finish_reason=st["finish_reason"], logprobs=logprobs, safety_violation=st["violation"]))
        violation = next((st["violation"] for st in self.choices.values() if st["violation"]), None)
        return p.dump(p.ChatCompletion(id=self.head["id"], created=self.head["created"], model=self.head["model"],
                                       choices=choices, usage=usage, safety_violation=violation))


# ---- the routes' logic (routes: herd/serve/routes.py, under /v1 and /v1/openai/v1) ----------


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                "How many to return.")
_ORDER_DESC = _query("order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
                     "By creation time (then id); `desc`: newest first.")
_ORDER_ASC = _query("order", {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
                    "`asc`: in the order they were sent.")
LIST_PARAMS = [  # for the OpenAPI document (the routes parse these by hand)
    _LIMIT, _ORDER_DESC,
    _query("after", {"type": "string"}, "Cursor: the last id of the previous page (an unknown id is a 400)."),
    _query("model", {"type": "string"}, "Only completions by this model."),
    _query("metadata", {"type": "object", "additionalProperties": {"type": "string"}},
           "Only completions whose metadata has these pairs: `metadata[key]=value`.", style="deepObject", explode=True),
]
MESSAGE_PARAMS = [_LIMIT, _ORDER_ASC, _query("after", {"type": "string"}, "Cursor: the last message id seen.")]

def page_args(q: Mapping[str, str], default_order: str) -> tuple[int, str, str | None]:
    """`limit` (1..MAX_LIMIT), `order` (asc / desc) and the `after` cursor of a list request; 400s name them."""
    raw = q.get("limit")
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}", "limit")
    order = q.get("order") or default_order
    if order not in ("asc", "desc"):
        raise bad_request(f"order must be 'asc' or 'desc', got {order!r}", "order")
    return limit, order, q.get("after") or None


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return p.dump(p.CursorPage(data=data, first_id=data[0]["id"] if data else "",
                               last_id=data[-1]["id"] if data else "", has_more=has_more))


async def get_completion(store: ChatCompletionStore | None, completion_id: str) -> dict[str, Any]:
    """One stored chat completion, with its `input_messages` and `metadata`; 404 when there is none."""
    found = await asyncio.to_thread(store.get, completion_id) if store else None
    if found is None:
        raise not_found(f"no stored chat completion {completion_id!r} (completions are stored with `store: true`)",
                        "completion_id")
    return found


async def list_completions(store: ChatCompletionStore | None, q: Mapping[str, str]) -> dict[str, Any]:
    """Stored chat completions, newest first, each with its `input_messages` and `metadata`."""
    limit, order, after = page_args(q, "desc")
    metadata = {k[len("metadata["):-1]: v for k, v in q.items() if k.startswith("metadata[") and k.endswith("]")}
    if store is None:
        return _page([], False)
    try:
        rows, more = await asyncio.to_thread(store.list, after=after, limit=limit, model=q.get("model") or None,
                                             order=order, metadata=metadata)
    except LookupError:
        raise bad_request(f"after: no stored chat completion {after!r}", "after") from None
    return _page(rows, more)


async def list_messages(store: ChatCompletionStore | None, completion_id: str,
                        q: Mapping[str, str]) -> dict[str, Any]:
    """The input messages of a stored chat completion, as a page (ids `<completion_id>-<n>`)."""
    limit, order, after = page_args(q, "asc")
    messages = []
    for i, m in enumerate((await get_completion(store, completion_id))["input_messages"]):
        parts = m.get("content") if isinstance(m.get("content"), list) else None
        text = "".join(part.get("text") or "" for part in parts) if parts is not None else m.get("content")
        messages.append({**m, "id": f"{completion_id}-{i}", "content": text, "content_parts": parts})
    if order == "desc":
        messages.reverse()
    if after is not None:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise bad_request(f"after: no message {after!r} in chat completion {completion_id!r}", "after")
        messages = messages[ids.index(after) + 1:]
    return _page(messages[:limit], len(messages) > limit)


async def delete_completion(store: ChatCompletionStore | None, completion_id: str) -> dict[str, Any]:
    """Delete a stored chat completion; 404 when there is none."""
    if not (store and await asyncio.to_thread(store.delete, completion_id)):
        raise not_found(f"no stored chat completion {completion_id!r}", "completion_id")
    return p.dump(p.ChatCompletionDeleted(id=completion_id))
