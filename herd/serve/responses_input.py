"""What a `POST /v1/responses` request brings, checked and made ready for the loop in herd/serve/responses.py:
input items as stored items (ids given) and as the herd `Message`s the model reads, the offered tools
(the caller's functions; web_search and file_search from the app's tool registry; MCP servers,
connected), tool_choice and
the text format. Every problem is a 400 naming the field as the client wrote it (`input[2].call_id`).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError
from herd.rag.filters import parse_filter
from herd.serve import protocol as p
from herd.serve.errors import bad_request
from herd.serve.generation import response_format_of
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition
from herd.tools.base import ToolRegistry

log = logging.getLogger("herd.serve")
WEB_SEARCH_GROUP, WEB_SEARCH_TOOL = "builtin::websearch", "web_search"
RAG_GROUP, RAG_TOOL, FILE_SEARCH_TOOL = "builtin::rag", "knowledge_search", "file_search"


def item_id(prefix: str) -> str:
    """An OpenAI-style item id: msg_…, fc_…, ws_…, mcp_…"""
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- input items -----------------------------------------------------------------------------


def _part_text(part: p.InputContentPart, where: str) -> str:
    if part.type not in ("input_text", "output_text", "text") or part.text is None:
        raise bad_request(f"{where}: content parts of type {part.type!r} are not supported (this server's models "
                          "read text only); send {'type': 'input_text', 'text': ...}", f"{where}.type")
    return part.text


def _content_text(content: str | list[p.InputContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    return "".join(_part_text(c, f"{where}[{j}]") for j, c in enumerate(content))


def message_item(text: str, role: str = "assistant", status: str = "completed",
                 id: str | None = None) -> dict[str, Any]:
    """A message item: input_text parts for user/system/developer, output_text for the assistant."""
    if role == "assistant":
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    else:
        part = {"type": "input_text", "text": text}
    return {"id": id or item_id("msg"), "type": "message", "role": role, "status": status, "content": [part]}


def input_items(items: list[Any]) -> list[dict[str, Any]]:
    """The request's input items as stored items (ids given where missing); a 400 names a bad one."""
    out = []
    for i, it in enumerate(items):
        where = f"input[{i}]"
        if isinstance(it, p.InputMessage):
            out.append(message_item(_content_text(it.content, f"{where}.content"), it.role, id=it.id))
        elif isinstance(it, p.FunctionCallInput):
            _arguments(it.arguments, f"{where}.arguments")
            out.append({"id": it.id or item_id("fc"), "type": "function_call", "call_id": it.call_id,
                        "name": it.name, "arguments": it.arguments, "status": "completed"})
        elif isinstance(it, p.FunctionCallOutputInput):
            out.append({"id": it.id or item_id("fco"), "type": "function_call_output", "call_id": it.call_id,
                        "output": _content_text(it.output, f"{where}.output"), "status": "completed"})
        else:  # web_search_call / file_search_call / mcp_list_tools / mcp_call of an earlier response
            if isinstance(it, p.McpCallInput):
                _arguments(it.arguments, f"{where}.arguments")
            out.append(it.model_dump(exclude_none=True))
    return out


def _arguments(raw: str, where: str) -> dict[str, Any]:
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise bad_request(f"{where} is not valid JSON: {e}", where) from None
    if not isinstance(args, dict):
        raise bad_request(f"{where} must be a JSON object, got {type(args).__name__}", where)
    return args


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        return str(error.get("message") or error.get("content") or json.dumps(error))
    return str(error)


def items_to_messages(items: list[dict[str, Any]]) -> list[Message]:
    """Stored items as the conversation the model reads. Consecutive calls join one assistant message;
    a web_search_call is context for the message after it (its results are not kept), mcp_list_tools is
    left out; an mcp_call is the call and its output."""
    messages: list[Message] = []

    def call(c: ToolCall) -> None:
        if messages and messages[-1].role == "assistant":
            messages[-1].tool_calls.append(c)
        else:
            messages.append(Message("assistant", "", [c]))

    for it in items:
        kind = it.get("type")
        if kind == "message":
            role = "system" if it["role"] == "developer" else it["role"]
            messages.append(Message(role, "".join(part.get("text", "") for part in it["content"])))
        elif kind == "function_call":
            call(ToolCall(it["call_id"], it["name"], json.loads(it["arguments"] or "{}")))
        elif kind == "function_call_output":
            messages.append(Message("tool", it["output"], call_id=it["call_id"]))
        elif kind == "mcp_call":
            call(ToolCall(it["id"], it["name"], json.loads(it["arguments"] or "{}")))
            output = it.get("output") if it.get("error") is None else f"error: {_error_text(it['error'])}"
            messages.append(Message("tool", output or "", call_id=it["id"]))
    return messages


def check_outputs(items: list[dict[str, Any]], first_new: int) -> None:
    """Every new function_call_output answers a function_call before it (as OpenAI checks)."""
    calls: set[str] = set()
    for i, it in enumerate(items):
        if it["type"] == "function_call":
            calls.add(it["call_id"])
        elif it["type"] == "function_call_output" and it["call_id"] not in calls:
            where = f"input[{i - first_new}].call_id"
            raise bad_request(f"{where}: no function_call with call_id {it['call_id']!r} comes before this "
                              "function_call_output (send the call too, or continue with previous_response_id)",
                              where)


# ---- tools -----------------------------------------------------------------------------------


@dataclass
class ServerTool:
    """A tool this server runs during a response: web search or file search (the app's registry) or an
    MCP server's; `target` is the registry's tool when its name differs, `args` are added to each call."""

    kind: str  # "web_search" | "file_search" | "mcp"
    registry: ToolRegistry
    server_label: str = ""
    target: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tools:
    """What a response offers the model: the caller's functions and the tools the server runs."""

    functions: list[ToolDefinition] = field(default_factory=list)
    server: dict[str, ServerTool] = field(default_factory=dict)
    server_defs: list[ToolDefinition] = field(default_factory=list)
    listed: list[dict[str, Any]] = field(default_factory=list)  # mcp_list_tools items
    groups: list[Any] = field(default_factory=list)  # MCP connections, closed at the end

    def check_new(self, definition: ToolDefinition, where: str) -> None:
        """400 when a tool of this name is already offered."""
        names = {d.tool_name for d in self.functions + self.server_defs}
        if definition.tool_name in names:
            raise bad_request(f"{where}: a tool named {definition.tool_name!r} is offered twice", where)

    async def close(self) -> None:
        for g in self.groups:
            try:
                await g.close()
            except Exception:  # closing one connection must not hide the answer
                log.exception("closing MCP tool group %s failed", getattr(g, "id", "?"))


async def offered_tools(req: p.ResponseCreateRequest, registry: ToolRegistry) -> Tools:
    """The request's tools: functions as they are, web_search from the registry, MCP servers connected."""
    tools = Tools()
    try:
        for i, t in enumerate(req.tools or ()):
            where = f"tools[{i}]"
            if isinstance(t, p.FunctionToolIn):
                d = ToolDefinition(t.name, t.description or "", dict(t.parameters or {"type": "object", "properties": {}}))
                tools.check_new(d, f"{where}.name")
                tools.functions.append(d)
            elif isinstance(t, p.WebSearchToolIn):
                _web_search(tools, registry, where)
            elif isinstance(t, p.FileSearchToolIn):
                _file_search(tools, registry, t, where)
            else:
                await _mcp(tools, t, where)
    except BaseException:
        await tools.close()
        raise
    return tools


def _web_search(tools: Tools, registry: ToolRegistry, where: str) -> None:
    if WEB_SEARCH_TOOL in tools.server:
        return
    try:
        group = registry.group(WEB_SEARCH_GROUP)
    except HerdError:
        raise bad_request(f"{where}: web_search needs the server's {WEB_SEARCH_GROUP} tool group, which this "
                          "server does not have", f"{where}.type") from None
    tool = next((t for t in group.list_tools() if t.name == WEB_SEARCH_TOOL), None)
    if tool is None:
        raise bad_request(f"{where}: the {WEB_SEARCH_GROUP} group has no {WEB_SEARCH_TOOL} tool", f"{where}.type")
    tools.check_new(tool.definition(), f"{where}.type")
    tools.server[tool.name] = ServerTool("web_search", registry)
    tools.server_defs.append(tool.definition())


def _file_search(tools: Tools, registry: ToolRegistry, t: p.FileSearchToolIn, where: str) -> None:
    """file_search over the request's vector stores, through the registry's builtin::rag group."""
    if FILE_SEARCH_TOOL in tools.server:
        raise bad_request(f"{where}: file_search is offered twice", f"{where}.type")
    try:
        registry.group(RAG_GROUP)
        filters = parse_filter(t.filters, f"{where}.filters")
    except HerdError as e:
        if e.param:
            raise bad_request(str(e), e.param) from None
        raise bad_request(f"{where}: file_search needs retrieval (the {RAG_GROUP} tool group), which this server "
                          "does not have (rag.enabled: false, or no embedding model)", f"{where}.type") from None
    del filters  # checked here; passed on as sent
    definition = ToolDefinition(FILE_SEARCH_TOOL, "Search the user's files for information relevant to the query.",
                                {"type": "object", "properties": {"query": {
                                    "type": "string", "description": "What to look for, as a question or keywords."}},
                                 "required": ["query"]})
    tools.check_new(definition, f"{where}.type")
    ranking = t.ranking_options or {}
    config = {"max_chunks": t.max_num_results, "mode": "hybrid", "filters": t.filters,
              "score_threshold": ranking.get("score_threshold")}
    tools.server[FILE_SEARCH_TOOL] = ServerTool("file_search", registry, target=RAG_TOOL, args={
        "vector_db_ids": list(t.vector_store_ids), "query_config": config})
    tools.server_defs.append(definition)


async def _mcp(tools: Tools, t: p.McpToolIn, where: str) -> None:
    if t.require_approval not in (None, "never"):
        raise bad_request(f"{where}.require_approval: herd runs MCP tools without asking; send "
                          "require_approval: 'never'", f"{where}.require_approval")
    if any(x.kind == "mcp" and x.server_label == t.server_label for x in tools.server.values()):
        raise bad_request(f"{where}.server_label: {t.server_label!r} is used twice", f"{where}.server_label")
    # the mcp SDK is only loaded when a request asks for it
    from herd.tools.mcp import MCPToolGroup

    try:
        headers = {**(t.headers or {}), **({"Authorization": f"Bearer {t.authorization}"} if t.authorization else {})}
        group = MCPToolGroup(f"mcp::{t.server_label}", url=t.server_url, headers=headers)
        tools.groups.append(group)
        await group.connect()
    except HerdError as e:
        raise bad_request(f"{where}.server_url: cannot list the tools of MCP server {t.server_label!r}: {e}",
                          f"{where}.server_url") from None
    allowed = t.allowed_tools.tool_names if isinstance(t.allowed_tools, p.McpToolFilter) else t.allowed_tools
    listed = [x for x in group.list_tools() if allowed is None or x.name in allowed]
    registry = ToolRegistry([group])
    for x in listed:
        tools.check_new(x.definition(), f"{where}.server_label")
        tools.server[x.name] = ServerTool("mcp", registry, t.server_label)
        tools.server_defs.append(x.definition())
    tools.listed.append({"id": item_id("mcpl"), "type": "mcp_list_tools", "server_label": t.server_label,
                         "tools": [{"name": x.name, "description": x.description, "input_schema": x.parameters,
                                    "annotations": None} for x in listed]})


def tools_echo(req: p.ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's tools as the response shows (and the store keeps) them: MCP credentials left out."""
    secret = {"headers", "authorization"}
    return [t.model_dump(exclude_none=True, exclude=secret if isinstance(t, p.McpToolIn) else None)
            for t in req.tools or ()]


def tool_choice_of(req: p.ResponseCreateRequest, tools: Tools) -> str:
    """ChatRequest's tool_choice: auto / none / required / a tool name."""
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice or "auto"
    if isinstance(choice, p.NamedFunctionChoice):
        name = choice.name
    elif isinstance(choice, p.HostedToolChoice):
        name = FILE_SEARCH_TOOL if choice.type == "file_search" else WEB_SEARCH_TOOL
    else:  # mcp: a named tool of that server, else any of its tools
        names = [n for n, t in tools.server.items() if t.kind == "mcp" and t.server_label == choice.server_label]
        if not names:
            raise bad_request(f"tool_choice: no tools of MCP server {choice.server_label!r} are offered",
                              "tool_choice.server_label")
        name = choice.name or (names[0] if len(names) == 1 else "required")
    offered = [d.tool_name for d in tools.functions + tools.server_defs]
    if name != "required" and name not in offered:
        raise bad_request(f"tool_choice names {name!r}, which is not among the offered tools "
                          f"({', '.join(offered) or 'none'})", "tool_choice")
    return name


def text_format(req: p.ResponseCreateRequest) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(ChatRequest.response_format in OpenAI chat shape, the `text` echoed in the response)."""
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None, {"format": {"type": "text"}}
    echo = {"format": fmt.model_dump(exclude_none=True, by_alias=True)}
    if fmt.type == "json_object":
        return {"type": "json_object"}, echo
    if fmt.schema_ is None:
        raise bad_request("text.format.schema is required for type json_schema", "text.format.schema")
    schema = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
    chat = {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}
    response_format_of(chat, "text.format")  # a schema the grammar cannot take is a 400 naming text.format
    return chat, echo
