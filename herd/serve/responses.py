"""The OpenAI Responses API: `POST /v1/responses` (JSON or the `response.*` event stream), retrieve, delete
and the input-item pages, with responses kept in SQLite under Herd's home (the routes: herd/serve/routes.py).

A response is a small agent loop over the served model, reached only through the `Generator` protocol
(`ServedGenerator`): input items become herd `Message`s; caller `function` tools end the response with
`function_call` items; `web_search` (the tool registry's builtin::websearch group), `file_search` (its
builtin::rag group, over vector stores; `include: ["file_search_call.results"]` keeps the results in the
item) and `mcp` servers run here, their results go back to the model, which runs again, up to `max_infer_iters` turns (a herd
extension, default 10). One code path makes the events; a non-streamed response is their last state.

`previous_response_id` continues a stored response: its input items and output items come first (its
`instructions` do not carry over, as OpenAI). `store` defaults to true; `store: false` keeps nothing.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatDelta, ChatRequest, Generator
from herd.home import StateFile
from herd.serve import protocol as p
from herd.serve.errors import APIError, bad_request, not_found
from herd.serve.generation import first_then_rest, until_disconnected
from herd.serve.stored import DEFAULT_LIMIT, MAX_LIMIT, page_args
from herd.serve.responses_input import (
    Tools,
    check_outputs,
    input_items,
    item_id,
    items_to_messages,
    message_item,
    offered_tools,
    text_format,
    tool_choice_of,
    tools_echo,
)
from herd.tokenizer.messages import Message, ToolCall
from herd.tools.base import ToolRegistry, ToolResult

log = logging.getLogger("herd.serve")
FILENAME = "responses.sqlite"


# ---- storage ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    response TEXT NOT NULL,     -- the response object, as returned
    input_items TEXT NOT NULL   -- everything the model read: earlier responses' items, then this input
);
"""


class ResponseStore:
    """Responses in one SQLite file (WAL, one transaction per write). The methods block and are thread-safe:
    async code calls them through `asyncio.to_thread`."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)  # path None: <herd_home>/responses.sqlite

    def save(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Keep one finished response with the items it read."""
        row = (response["id"], int(response["created_at"]), response["model"], json.dumps(response),
               json.dumps(input_items))
        with self._state.write() as db:
            db.execute("INSERT OR REPLACE INTO responses (id, created_at, model, response, input_items) "
                       "VALUES (?, ?, ?, ?, ?)", row)

    def get(self, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """(the response, its input items), or None."""
        with self._state.read() as db:
            row = db.execute("SELECT response, input_items FROM responses WHERE id = ?",
                             (response_id,)).fetchone() if db else None
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def delete(self, response_id: str) -> bool:
        """Forget one response; False if it was not stored."""
        with self._state.read() as db:  # nothing stored yet: no file to create
            if db is None:
                return False
            with db:
                return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        self._state.close()


async def _stored(store: ResponseStore, response_id: str, param: str = "response_id"
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    found = await asyncio.to_thread(store.get, response_id)
    if found is None:
        raise not_found(f"no stored response {response_id!r} (responses created with `store: false` are not kept)",
                        param)
    return found


# ---- one response: the model loop as events --------------------------------------------------


@dataclass
class Plan:
    """A checked request: everything the loop needs."""

    id: str
    req: p.ResponseCreateRequest
    model_id: str
    context: list[dict[str, Any]]  # the items the model reads (kept as the response's input items)
    messages: list[Message]
    tools: Tools
    tool_choice: str
    response_format: dict[str, Any] | None
    text: dict[str, Any]  # the `text` field echoed
    created_at: int = field(default_factory=lambda: int(time.time()))


class ResponseRun:
    """One response being made: its output items, its token counts, and the events that spell them out."""

    def __init__(self, plan: Plan, gen: Generator, store: ResponseStore | None, stream: bool) -> None:
        self.plan, self.gen, self.store, self.stream = plan, gen, store, stream
        self.messages = list(plan.messages)
        self.output: list[dict[str, Any]] = []
        self.seq = 0
        self.status = "in_progress"
        self.incomplete: str | None = None
        self.error: dict[str, str] | None = None
        self.input_tokens = self.output_tokens = self.server_calls = 0
        self.last: ChatDelta | None = None
        self.finished = False
        self._first: AsyncIterator[ChatDelta] | None = None

    # ---- the model ----------------------------------------------------------------------------
    def _budget(self) -> int | None:
        """How many more server-side tool calls max_tool_calls allows (None: no cap)."""
        cap = self.plan.req.max_tool_calls
        return None if cap is None else max(0, cap - self.server_calls)

    def request(self, turn: int) -> ChatRequest:
        """Turn `turn`'s ChatRequest; tool_choice forces only the first turn, as OpenAI."""
        req, tools = self.plan.req, self.plan.tools
        offered = tools.functions + (tools.server_defs if self._budget() != 0 else [])
        left = None if req.max_output_tokens is None else req.max_output_tokens - self.output_tokens
        return ChatRequest(list(self.messages), tools=offered, tool_choice=self.plan.tool_choice if turn == 0 else
                           "auto", response_format=self.plan.response_format, max_tokens=left,
                           temperature=req.temperature, top_p=req.top_p,
                           # one more server-side call allowed: a list of calls could only be cut short
                           parallel_tool_calls=req.parallel_tool_calls is not False and self._budget() != 1)

    async def start(self) -> None:
        """Run the first turn up to its first delta, so that bad input is a 4xx before any event."""
        _, self._first = await first_then_rest(self.gen.chat(self.request(0)))

    # ---- events and the response object ---------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        e = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return e

    def response(self) -> dict[str, Any]:
        """The response object as it stands."""
        plan, req = self.plan, self.plan.req
        choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else req.tool_choice
        usage = None if self.status == "in_progress" else p.ResponseUsage(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens)
        return p.dump(p.ResponseObject(
            id=plan.id, created_at=plan.created_at, status=self.status, model=plan.model_id,
            output=copy.deepcopy(self.output), instructions=req.instructions,
            previous_response_id=req.previous_response_id,
            tools=tools_echo(req), tool_choice=choice or "auto",
            parallel_tool_calls=req.parallel_tool_calls is not False, temperature=req.temperature, top_p=req.top_p,
            max_output_tokens=req.max_output_tokens, max_tool_calls=req.max_tool_calls, text=plan.text, usage=usage,
            error=self.error, incomplete_details={"reason": self.incomplete} if self.incomplete else None,
            metadata=req.metadata or {}, store=req.store))

    def added(self, item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Append an output item: (its index, the output_item.added event)."""
        self.output.append(item)
        index = len(self.output) - 1
        return index, self.event("response.output_item.added", output_index=index, item=copy.deepcopy(item))

    def done(self, index: int) -> dict[str, Any]:
        return self.event("response.output_item.done", output_index=index, item=copy.deepcopy(self.output[index]))

    # ---- the loop -------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The whole response as OpenAI's stream events: created, in_progress, the items, then completed /
        incomplete (or failed, when a later turn fails in a stream; outside a stream the error is raised)."""
        yield self.event("response.created", response=self.response())
        yield self.event("response.in_progress", response=self.response())
        try:
            for item in self.plan.tools.listed:
                index, added = self.added(item)
                yield added
                yield self.event("response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index)
                yield self.event("response.mcp_list_tools.completed", item_id=item["id"], output_index=index)
                yield self.done(index)
            for turn in range(self.plan.req.max_infer_iters):
                stream, self._first = self._first or self.gen.chat(self.request(turn)), None
                async for e in self.model_turn(stream):
                    yield e
                async for e in self.after_turn(turn):
                    yield e
                if self.finished:
                    break
        except (APIError, HerdError, RuntimeError) as e:
            if not self.stream:
                raise
            self.status = "failed"
            self.error = {"code": getattr(e, "code", None) or "server_error", "message": str(e)}
            yield self.event("response.failed", response=self.response())
            return
        self.status = "incomplete" if self.incomplete else "completed"
        final = self.response()
        if self.store is not None and self.plan.req.store:
            await save_response(self.store, final, self.plan.context)
        yield self.event(f"response.{self.status}", response=final)

    async def model_turn(self, stream: AsyncIterator[ChatDelta]) -> AsyncIterator[dict[str, Any]]:
        """One model turn: its text as a message item, streamed (tool calls are handled after it)."""
        text: list[str] = []
        index: int | None = None
        last: ChatDelta | None = None
        async with aclosing(stream):  # type: ignore[type-var]
            async for d in stream:
                if d.text:
                    if index is None:
                        index, added = self.added(message_item("", status="in_progress") | {"content": []})
                        yield added
                        yield self._part("response.content_part.added", index, "")
                    text.append(d.text)
                    yield self.event("response.output_text.delta", item_id=self.output[index]["id"],
                                     output_index=index, content_index=0, delta=d.text, logprobs=[])
                if d.done:
                    last = d
        if last is None or last.message is None:
            raise RuntimeError(f"model {self.gen.model_id!r} ended its turn without a final message")
        self.last = last
        self.input_tokens += last.prompt_tokens
        self.output_tokens += last.completion_tokens
        if index is None and last.message.tool_calls:
            return
        if index is None:  # an empty answer is still a message
            index, added = self.added(message_item("", status="in_progress") | {"content": []})
            yield added
            yield self._part("response.content_part.added", index, "")
        whole = "".join(text)
        yield self.event("response.output_text.done", item_id=self.output[index]["id"], output_index=index,
                         content_index=0, text=whole, logprobs=[])
        yield self._part("response.content_part.done", index, whole)
        self.output[index].update(content=[_text_part(whole)],
                                  status="incomplete" if last.finish_reason == "length" else "completed")
        yield self.done(index)

    def _part(self, kind: str, index: int, text: str) -> dict[str, Any]:
        return self.event(kind, item_id=self.output[index]["id"], output_index=index, content_index=0,
                          part=_text_part(text))

    async def after_turn(self, turn: int) -> AsyncIterator[dict[str, Any]]:
        """Run the server's tool calls and emit the caller's; decide whether the loop goes on."""
        assert self.last is not None and self.last.message is not None
        msg, tools = self.last.message, self.plan.tools
        if not msg.tool_calls:
            self.incomplete = "max_output_tokens" if self.last.finish_reason == "length" else None
            self.finished = True
            return
        calls = msg.tool_calls if self.plan.req.parallel_tool_calls is not False else msg.tool_calls[:1]
        budget = self._budget()
        server = [c for c in calls if c.tool_name in tools.server]
        server = server if budget is None else server[:budget]  # calls past max_tool_calls are ignored
        client = [c for c in calls if c.tool_name not in tools.server]
        kept = [c for c in calls if c in server or c in client]
        self.messages.append(Message("assistant", msg.content, tool_calls=kept, stop_reason=msg.stop_reason))
        for c in server:
            async for e in self.server_call(c):
                yield e
        for c in client:
            for e in self.function_call(c):
                yield e
        req = self.plan.req
        if client:
            self.finished = True  # the caller runs its functions and continues with previous_response_id
        elif turn + 1 >= req.max_infer_iters:
            self.incomplete, self.finished = "max_infer_iters", True
        elif req.max_output_tokens is not None and self.output_tokens >= req.max_output_tokens:
            self.incomplete, self.finished = "max_output_tokens", True

    def function_call(self, c: ToolCall) -> list[dict[str, Any]]:
        """A call of a caller's function: a function_call item (arguments as one delta)."""
        args = json.dumps(c.arguments, ensure_ascii=False)
        item = {"id": item_id("fc"), "type": "function_call", "call_id": c.call_id, "name": c.tool_name,
                "arguments": "", "status": "in_progress"}
        index, added = self.added(item)
        events = [added,
                  self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                             delta=args),
                  self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             name=c.tool_name, arguments=args)]
        item.update(arguments=args, status="completed")
        return [*events, self.done(index)]

    async def server_call(self, c: ToolCall) -> AsyncIterator[dict[str, Any]]:
        """Run a web_search or MCP tool here; its item, its events, and its result for the model."""
        tool = self.plan.tools.server[c.tool_name]
        args = json.dumps(c.arguments, ensure_ascii=False)
        if tool.kind == "web_search":
            item = {"id": item_id("ws"), "type": "web_search_call", "status": "in_progress",
                    "action": {"type": "search", "query": str(c.arguments.get("query", ""))}}
            kind, steps = "response.web_search_call", ("in_progress", "searching")
        elif tool.kind == "file_search":
            item = {"id": item_id("fs"), "type": "file_search_call", "status": "in_progress",
                    "queries": [str(c.arguments.get("query", ""))], "results": None}
            kind, steps = "response.file_search_call", ("in_progress", "searching")
        else:
            item = {"id": item_id("mcp"), "type": "mcp_call", "server_label": tool.server_label, "name": c.tool_name,
                    "arguments": args, "output": None, "error": None, "status": "in_progress"}
            kind, steps = "response.mcp_call", ("in_progress",)
        index, added = self.added(item)
        yield added
        for step in steps:
            yield self.event(f"{kind}.{step}", item_id=item["id"], output_index=index)
        if tool.kind == "mcp":
            yield self.event("response.mcp_call_arguments.delta", item_id=item["id"], output_index=index, delta=args)
            yield self.event("response.mcp_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=args)
        result = await tool.registry.invoke(tool.target or c.tool_name, {**c.arguments, **tool.args},
                                            session_id=self.plan.id)
        self.server_calls += 1
        _record(item, result, "file_search_call.results" in (self.plan.req.include or ()))
        finished = "completed" if result.ok or tool.kind == "web_search" else "failed"
        yield self.event(f"{kind}.{finished}", item_id=item["id"], output_index=index)
        yield self.done(index)
        self.messages.append(Message("tool", result.text(), call_id=c.call_id))


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _record(item: dict[str, Any], result: ToolResult, file_results: bool = False) -> None:
    """A tool's result into its item: sources of a web search; results of a file search (when the request
    included them); output or error of an MCP call."""
    if item["type"] == "file_search_call":
        item["status"] = "completed" if result.ok else "failed"
        if file_results:
            item["results"] = result.metadata.get("results", [])
    elif item["type"] == "web_search_call":
        item["status"] = "completed" if result.ok else "failed"
        try:
            urls = [r["url"] for r in json.loads(result.content).get("results", []) if r.get("url")]
        except (ValueError, AttributeError, TypeError):
            urls = []
        if urls:
            item["action"]["sources"] = [{"type": "url", "url": u} for u in urls]
    elif result.ok:
        item.update(output=result.text(), status="completed")
    else:
        item.update(error={"type": "mcp_tool_execution_error", "content": result.text()}, status="failed")


async def save_response(store: ResponseStore, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """Store a finished response (in a worker thread); a failure is logged, never raised."""
    try:
        await asyncio.to_thread(store.save, response, items)
    except Exception:
        log.exception("could not store response %s", response.get("id"))


# ---- the routes' logic (routes: herd/serve/routes.py, under /v1 and /v1/openai/v1) ----------


async def plan_response(req: p.ResponseCreateRequest, model_id: str, tools: ToolRegistry,
                        store: ResponseStore) -> Plan:
    """Check the request and gather what the model reads: earlier items, this input, the tools."""
    context: list[dict[str, Any]] = []
    if req.previous_response_id:
        previous, items = await _stored(store, req.previous_response_id, "previous_response_id")
        context = items + previous["output"]
    first_new = len(context)
    context += input_items(req.input)
    check_outputs(context, first_new)
    messages = items_to_messages(context)
    if not any(m.role != "system" for m in messages):
        raise bad_request("input must hold at least one message (or continue with previous_response_id)", "input")
    if req.instructions:
        messages.insert(0, Message("system", req.instructions))
    response_format, text = text_format(req)
    offered = await offered_tools(req, tools)
    try:
        choice = tool_choice_of(req, offered)
        if choice not in ("auto", "none") and response_format is not None:
            raise bad_request("text.format cannot be combined with a tool_choice that forces a call", "text.format")
        if choice == "required" and not offered.functions + offered.server_defs:
            raise bad_request("tool_choice 'required' needs tools; this request offers none", "tool_choice")
    except BaseException:
        await offered.close()
        raise
    return Plan(item_id("resp"), req, model_id, context, messages, offered, choice, response_format, text)


async def create_response(req: p.ResponseCreateRequest, models: Any, tools: ToolRegistry, store: ResponseStore,
                          ctx: Any) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """POST /v1/responses: the response object, or (stream) an async iterator of its events."""
    from herd.serve.generator import ServedGenerator

    model = models.llm(req.model)
    ctx.precheck(model.id)
    plan = await plan_response(req, model.id, tools, store)
    run = ResponseRun(plan, ServedGenerator(model, ctx), store, req.stream)
    try:
        await run.start()
    except BaseException:
        await plan.tools.close()
        raise
    events = _closing(run.events(), plan.tools)
    if req.stream:
        return events
    return await until_disconnected(ctx.is_disconnected, _last_response(events))


async def _closing(events: AsyncIterator[dict[str, Any]], tools: Tools) -> AsyncIterator[dict[str, Any]]:
    try:
        async with aclosing(events):  # type: ignore[type-var]
            async for e in events:
                yield e
    finally:
        await tools.close()


async def _last_response(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] | None = None
    async with aclosing(events):  # type: ignore[type-var]
        async for e in events:
            if "response" in e:
                final = e["response"]
    assert final is not None
    return final


async def sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """OpenAI's response stream: `event: <type>` and `data: <json>` per event (no [DONE])."""
    last = -1
    try:
        async for e in events:
            last = e["sequence_number"]
            yield f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n".encode()
    except Exception as e:  # the status is sent: the stream can only say what went wrong
        log.exception("error while streaming a response")
        body = {"type": "error", "code": getattr(e, "code", None) or "server_error", "message": str(e),
                "param": getattr(e, "param", None), "sequence_number": last + 1}
        yield f"event: error\ndata: {json.dumps(body)}\n\n".encode()


async def get_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    """GET /v1/responses/{id}: the stored response object."""
    return (await _stored(store, response_id))[0]


async def delete_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    """DELETE /v1/responses/{id}."""
    if not await asyncio.to_thread(store.delete, response_id):
        raise not_found(f"no stored response {response_id!r}", "response_id")
    return p.dump(p.ResponseDeleted(id=response_id))


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ITEM_PARAMS = [  # for the OpenAPI document (the route parses these by hand)
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
           "How many items to return."),
    _query("order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
           "`desc`: the last input item first; `asc`: in the order the model read them."),
    _query("after", {"type": "string"}, "Cursor: the last item id of the previous page."),
]


async def list_input_items(store: ResponseStore, response_id: str, q: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/responses/{id}/input_items: what the model read (earlier responses' items too), paged."""
    limit, order, after = page_args(q, "desc")
    items = (await _stored(store, response_id))[1]
    items = items[::-1] if order == "desc" else items
    if after:
        ids = [it.get("id") for it in items]
        if after not in ids:
            raise bad_request(f"after: no item {after!r} in the input of response {response_id!r}", "after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return p.dump(p.ResponseItemPage(data=page, first_id=page[0]["id"] if page else "",
                                     last_id=page[-1]["id"] if page else "", has_more=len(items) > limit))
