"""The tool runtime over HTTP: the logic of `/v1/toolgroups`, `/v1/tools` and `/v1/tool-runtime/*`
(routes: herd/serve/routes.py), the store of MCP groups registered over HTTP, and the start-up that
connects the MCP servers.

The registry (`app.state.tools`) holds the built-in groups and the configured MCP servers
(`tools.mcp_servers`); `POST /v1/toolgroups` with provider_id "model-context-protocol" adds an MCP
server by URL after connecting to it (400 naming the uri when it cannot), and keeps the record in
`<herd_home>/toolgroups.sqlite`, so that it is registered again when the server restarts (an unreachable
one is kept, listed with no tools, and reconnects when used). Unknown tools and groups are 404s; a tool's
own failure, bad arguments included, is a 200 with `error_message` set.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.home import StateFile
from herd.serve import protocol as p
from herd.serve.errors import APIError, bad_request, not_found
from herd.tools.base import (
    Tool,
    ToolGroup,
    ToolRegistry,
    ToolResult,
    UnknownToolError,
    UnknownToolGroupError,
)
from herd.tools.builtin import BUILTIN_NAMES, connect_mcp_groups
from herd.tools.mcp import PROVIDER_ID as MCP_PROVIDER
from herd.tools.mcp import MCPToolGroup

log = logging.getLogger("herd.serve")
FILENAME = "toolgroups.sqlite"
START_TIMEOUT = 10.0  # seconds each MCP server has to answer at start-up
# provider id -> Llama Stack provider type, for /v1/providers
PROVIDER_TYPES = {"brave-search": "remote::brave-search", "tavily-search": "remote::tavily-search",
                  "wolfram-alpha": "remote::wolfram-alpha", MCP_PROVIDER: "remote::model-context-protocol"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS toolgroups (
    toolgroup_id TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL,
    mcp_uri TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL
);
"""


class ToolGroupStore:
    """MCP tool groups registered over HTTP, in one SQLite file (each write one transaction: all or
    nothing). Blocking and thread-safe; async code calls it through `asyncio.to_thread`."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)  # path None: <herd_home>/toolgroups.sqlite

    def all(self) -> list[dict[str, Any]]:
        with self._state.read() as db:
            rows = db.execute("SELECT toolgroup_id, provider_id, mcp_uri, args FROM toolgroups ORDER BY created, "
                              "toolgroup_id").fetchall() if db else []
        return [{"toolgroup_id": g, "provider_id": pid, "mcp_uri": uri, "args": json.loads(args)}
                for g, pid, uri, args in rows]

    def save(self, toolgroup_id: str, provider_id: str, mcp_uri: str, args: dict[str, Any] | None) -> None:
        with self._state.write() as db:
            db.execute("INSERT OR REPLACE INTO toolgroups VALUES (?, ?, ?, ?, ?)",
                       (toolgroup_id, provider_id, mcp_uri, json.dumps(args or {}), int(time.time())))

    def delete(self, toolgroup_id: str) -> bool:
        with self._state.read() as db:  # nothing registered yet: no file to create
            if db is None:
                return False
            with db:
                return db.execute("DELETE FROM toolgroups WHERE toolgroup_id = ?", (toolgroup_id,)).rowcount > 0

    def close(self) -> None:
        self._state.close()


@dataclass
class ToolRuntime:
    """What the routes need besides the registry: the store, the groups registered over HTTP (their
    records) and the ids that come from the config (not deletable over HTTP)."""

    store: ToolGroupStore = field(default_factory=ToolGroupStore)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    configured: set[str] = field(default_factory=set)
    registration: bool = True  # tools.mcp_registration: clients may add MCP servers by URL

    def check_registration(self) -> None:
        if not self.registration:
            raise APIError(403, "adding MCP servers over HTTP is turned off on this server (tools.mcp_registration: "
                           "false); configure them under tools.mcp_servers", code="mcp_registration_disabled")


# ---- start-up --------------------------------------------------------------------------------


async def start(registry: ToolRegistry, runtime: ToolRuntime, timeout: float = START_TIMEOUT) -> None:
    """Register the persisted MCP groups again and connect every MCP group; one that does not answer
    is logged and stays listed with no tools."""
    try:
        records = await asyncio.to_thread(runtime.store.all)
    except sqlite3.Error as e:
        log.warning("tool groups: cannot read %s: %s", runtime.store.path, e)
        records = []
    known = {g.id for g in registry.groups()}
    for rec in records:
        gid = rec["toolgroup_id"]
        if gid in known:
            log.warning("tool group %s: the persisted registration is shadowed by the configured one", gid)
            continue
        try:
            registry.register(MCPToolGroup(gid, url=rec["mcp_uri"]))
        except HerdError as e:
            log.warning("tool group %s: not restored: %s", gid, e)
            continue
        runtime.records[gid] = rec
    await connect_mcp_groups(registry, timeout)


def provider_entries(registry: ToolRegistry) -> list[tuple[str, str]]:
    """(provider_id, provider_type) of the tool runtime's providers, MCP included (groups can be added)."""
    out = {g.provider_id: PROVIDER_TYPES.get(g.provider_id, f"inline::{g.provider_id}") for g in registry.groups()}
    out.setdefault(MCP_PROVIDER, PROVIDER_TYPES[MCP_PROVIDER])
    return list(out.items())


# ---- shapes ----------------------------------------------------------------------------------


def _param_type(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        for alt in prop.get("anyOf") or prop.get("oneOf") or []:
            if isinstance(alt, dict) and alt.get("type") not in (None, "null"):
                return str(alt["type"])
    return str(kind or "string")


def parameters(schema: Mapping[str, Any]) -> list[p.ToolParameterOut]:
    """A JSON schema's properties in Llama Stack's flat parameter form."""
    required = set(schema.get("required") or [])
    return [p.ToolParameterOut(name=name, parameter_type=_param_type(prop if isinstance(prop, dict) else {}),
                               description=str((prop or {}).get("description") or (prop or {}).get("title") or ""),
                               required=name in required, default=(prop or {}).get("default"))
            for name, prop in (schema.get("properties") or {}).items()]


def tool_resource(t: Tool) -> p.ToolResource:
    return p.ToolResource(identifier=t.name, provider_resource_id=t.name, provider_id=t.provider_id,
                          toolgroup_id=t.toolgroup_id, description=t.description, parameters=parameters(t.parameters),
                          metadata=t.metadata or None, input_schema=t.parameters)


def tool_def(t: Tool) -> p.ToolDefOut:
    return p.ToolDefOut(name=t.name, description=t.description, parameters=parameters(t.parameters),
                        metadata=t.metadata or None, input_schema=t.parameters)


def group_resource(g: ToolGroup, runtime: ToolRuntime) -> p.ToolGroupResource:
    rec = runtime.records.get(g.id)
    uri = g.url if isinstance(g, MCPToolGroup) and g.url else None
    return p.ToolGroupResource(identifier=g.id, provider_id=g.provider_id, provider_resource_id=g.id,
                               mcp_endpoint={"uri": uri} if uri else None, args=(rec or {}).get("args") or None)


def invocation(result: ToolResult) -> p.ToolInvocationOut:
    """A ToolResult as Llama Stack's ToolInvocationResult: images become image content items."""
    metadata = json.loads(json.dumps(result.metadata, default=str)) if result.metadata else {}
    images = [a for a in result.attachments if a.mime_type.startswith("image/")]
    others = [a for a in result.attachments if not a.mime_type.startswith("image/")]
    if others:
        metadata["attachments"] = [{"name": a.name, "mime_type": a.mime_type,
                                    "data": base64.b64encode(a.data).decode()} for a in others]
    content: str | list[dict[str, Any]] = result.content
    if images:
        content = ([{"type": "text", "text": result.content}] if result.content else []) + [
            {"type": "image", "image": {"data": base64.b64encode(a.data).decode()}} for a in images]
        metadata["images"] = [{"name": a.name, "mime_type": a.mime_type} for a in images]
    return p.ToolInvocationOut(content=content, error_message=result.error_message, error_code=result.error_code,
                               metadata=metadata or None)


# ---- the routes' logic -------------------------------------------------------------------------


def _group(registry: ToolRegistry, group_id: str) -> ToolGroup:
    try:
        return registry.group(group_id)
    except UnknownToolGroupError as e:
        raise not_found(str(e), param="toolgroup_id", code="toolgroup_not_found") from None


def _tool(registry: ToolRegistry, name: str) -> Tool:
    try:
        return registry.tool(name)
    except UnknownToolError as e:
        if name in BUILTIN_NAMES and BUILTIN_NAMES[name] != name:  # Llama 3.1's brave_search is web_search
            return _tool(registry, BUILTIN_NAMES[name])
        raise not_found(str(e), param="tool_name", code="tool_not_found") from None


async def _refresh(group: ToolGroup) -> None:
    """An MCP group that was unreachable gets one more try when it is asked for by name."""
    if isinstance(group, MCPToolGroup) and not group.connected:
        try:
            await group.connect()
        except HerdError as e:
            log.warning("tool group %s: %s", group.id, e)


def list_groups(registry: ToolRegistry, runtime: ToolRuntime) -> dict[str, Any]:
    return {"data": [p.dump(group_resource(g, runtime)) for g in registry.groups()]}


def get_group(registry: ToolRegistry, runtime: ToolRuntime, group_id: str) -> dict[str, Any]:
    return p.dump(group_resource(_group(registry, group_id), runtime))


async def register_group(registry: ToolRegistry, runtime: ToolRuntime, body: p.RegisterToolGroupRequest) -> None:
    """Register an MCP server (connected first); registering a group that exists with the same endpoint
    (or a built-in one) is a no-op."""
    gid = body.toolgroup_id
    existing = next((g for g in registry.groups() if g.id == gid), None)
    if body.provider_id != MCP_PROVIDER:
        if existing is not None and body.mcp_endpoint is None:
            return  # clients register builtin::websearch & co. at start: they are here already
        if gid.startswith("builtin::"):
            have = ", ".join(g.id for g in registry.groups() if g.id.startswith("builtin::"))
            raise bad_request(f"built-in tool group {gid!r} is not available on this server (available: {have})",
                              param="toolgroup_id")
        raise bad_request(f"provider_id {body.provider_id!r} cannot register tool groups here; use "
                          f"{MCP_PROVIDER!r} with mcp_endpoint.uri", param="provider_id")
    if body.mcp_endpoint is None:
        raise bad_request(f"mcp_endpoint.uri is required with provider_id {MCP_PROVIDER!r}", param="mcp_endpoint")
    uri = body.mcp_endpoint.uri
    if isinstance(existing, MCPToolGroup) and existing.url == uri:
        await _refresh(existing)
        return
    runtime.check_registration()
    if existing is not None:
        raise APIError(409, f"tool group {gid!r} is already registered (with {_endpoint(existing)}); delete it "
                       "first", param="toolgroup_id", code="toolgroup_exists")
    try:
        group = MCPToolGroup(gid, url=uri)
    except HerdError as e:
        raise bad_request(str(e), param="mcp_endpoint.uri") from None
    try:
        await group.connect()
        registry.register(group)
    except HerdError as e:
        await group.close()
        raise bad_request(str(e), param="mcp_endpoint.uri") from None
    await asyncio.to_thread(runtime.store.save, gid, MCP_PROVIDER, uri, body.args)
    runtime.records[gid] = {"toolgroup_id": gid, "provider_id": MCP_PROVIDER, "mcp_uri": uri, "args": body.args}


def _endpoint(g: ToolGroup) -> str:
    return g.endpoint if isinstance(g, MCPToolGroup) else f"provider {g.provider_id}"


async def unregister_group(registry: ToolRegistry, runtime: ToolRuntime, group_id: str) -> None:
    group = _group(registry, group_id)
    if not isinstance(group, MCPToolGroup):
        raise bad_request(f"tool group {group_id!r} is built in and cannot be deleted", param="toolgroup_id")
    if group_id in runtime.configured:
        raise bad_request(f"tool group {group_id!r} comes from the server config (tools.mcp_servers); remove it "
                          "there", param="toolgroup_id")
    await registry.unregister(group_id)
    await asyncio.to_thread(runtime.store.delete, group_id)
    runtime.records.pop(group_id, None)


async def list_tools(registry: ToolRegistry, toolgroup_id: str | None) -> dict[str, Any]:
    if toolgroup_id:
        await _refresh(_group(registry, toolgroup_id))
        return {"data": [p.dump(tool_resource(t)) for t in registry.list_tools(toolgroup_id)]}
    return {"data": [p.dump(tool_resource(t)) for t in registry.list_tools()]}


def get_tool(registry: ToolRegistry, tool_name: str) -> dict[str, Any]:
    return p.dump(tool_resource(_tool(registry, tool_name)))


def mcp_uri_of(query: Mapping[str, str]) -> str | None:
    """The `mcp_endpoint` of a query string: `mcp_endpoint[uri]=...` (how llama-stack-client sends it),
    `mcp_endpoint.uri=...`, or `mcp_endpoint=<uri or JSON object>`."""
    for key in ("mcp_endpoint[uri]", "mcp_endpoint.uri"):
        if query.get(key):
            return query[key]
    raw = query.get("mcp_endpoint")
    if not raw:
        return None
    if raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except ValueError:
            raise bad_request("mcp_endpoint: not valid JSON", param="mcp_endpoint") from None
        if not isinstance(value, dict) or not isinstance(value.get("uri"), str):
            raise bad_request("mcp_endpoint: expected {\"uri\": ...}", param="mcp_endpoint")
        return value["uri"]
    return raw


async def runtime_list_tools(registry: ToolRegistry, runtime: ToolRuntime, query: Mapping[str, str]) -> dict[str, Any]:
    """Tools of a group, of an MCP endpoint (a registered one, else asked once without registering), or all."""
    uri = mcp_uri_of(query)
    if uri:
        known = next((g for g in registry.groups() if isinstance(g, MCPToolGroup) and g.url == uri), None)
        if known is not None:
            await _refresh(known)
            return {"data": [p.dump(tool_def(t)) for t in known.list_tools()]}
        runtime.check_registration()
        try:
            probe = MCPToolGroup("mcp::probe", url=uri, connect_timeout=START_TIMEOUT)
            try:
                await probe.connect()
                tools = probe.list_tools()
            finally:
                await probe.close()
        except HerdError as e:
            raise bad_request(str(e), param="mcp_endpoint.uri") from None
        return {"data": [p.dump(tool_def(t)) for t in tools]}
    group_id = query.get("tool_group_id") or query.get("toolgroup_id")
    if group_id:
        await _refresh(_group(registry, group_id))
    tools = registry.list_tools(group_id) if group_id else registry.list_tools()
    return {"data": [p.dump(tool_def(t)) for t in tools]}


async def invoke(registry: ToolRegistry, body: p.InvokeToolRequest) -> dict[str, Any]:
    """Run a tool: 404 for an unknown tool, otherwise the tool's result (its failures included)."""
    tool = _tool(registry, body.tool_name)
    result = await registry.invoke(tool.name, body.kwargs, session_id=body.session_id)
    return p.dump(invocation(result))
