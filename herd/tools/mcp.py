"""MCP tool groups: the tools of a Model Context Protocol server, listed and invoked like any other.

A server is reached by URL (streamable HTTP; a URL ending in `/sse` uses the older SSE transport) or
started as a subprocess speaking stdio (`command` + `args`). `connect()` opens one session and lists the
server's tools (name, description, inputSchema -> Tool.parameters); invoking joins the text parts of the
result, turns images into attachments and `isError` into an error result.

The MCP SDK (2.x) runs a session inside an async context that must be entered and left by the same task,
so each connection is owned by a background task of the event loop that connected it; calls from that
loop share the session. A call from another loop (a new `asyncio.run`) or after the server went away
reconnects once.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import shlex
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from herd.errors import HerdError
from herd.tools.base import Attachment, Tool, ToolResult

log = logging.getLogger("herd.tools")
PROVIDER_ID = "model-context-protocol"


def describe_error(e: BaseException) -> str:
    """One line for an exception, looking inside anyio's exception groups for the real cause."""
    while getattr(e, "exceptions", None):  # an (anyio) exception group: its first cause
        e = e.exceptions[0]  # type: ignore[attr-defined]
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Connection:
    """A live MCP session owned by one background task (enters and leaves the SDK's context)."""

    def __init__(self, opener: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.client: Any = None
        self._ready: asyncio.Future[Any] = self.loop.create_future()
        self._stop = asyncio.Event()
        self._task = self.loop.create_task(self._own(opener))

    async def _own(self, opener: Any) -> None:
        try:
            async with opener() as client:
                self.client = client
                self._ready.set_result(client)
                await self._stop.wait()
        except Exception as e:  # noqa: BLE001 - for whoever waits for the connection, or logged
            if not self._ready.done():
                self._ready.set_exception(e)
                self._ready.exception()  # marked seen: a caller that gave up must not leave a warning
            else:
                log.warning("MCP connection ended: %s", describe_error(e))
        except BaseException:  # cancelled (closed, or the caller gave up): nobody waits any more
            if not self._ready.done():
                self._ready.cancel()
            raise
        finally:
            self.client = None

    async def wait_ready(self, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    @property
    def alive(self) -> bool:
        return self.client is not None and not self._task.done()

    def cancel(self) -> None:
        self._task.cancel()

    async def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception as e:  # noqa: BLE001 - closing a broken connection
            log.debug("MCP connection closed with %s", describe_error(e))


class MCPToolGroup:
    """The tools of one MCP server (by URL or a stdio command) as a tool group."""

    provider_id = PROVIDER_ID

    def __init__(self, group_id: str, *, url: str | None = None, command: str | None = None,
                 args: Sequence[str] = (), env: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                 connect_timeout: float = 30.0, call_timeout: float = 120.0) -> None:
        if bool(url) == bool(command):
            raise HerdError(f"MCP tool group {group_id!r}: give either a url or a command", "mcp_endpoint")
        if url and not url.startswith(("http://", "https://")):
            raise HerdError(f"MCP tool group {group_id!r}: url must start with http:// or https://, got {url!r}",
                            "mcp_endpoint")
        self.id = group_id
        self.url, self.command, self.args = url, command, list(args)
        self.env, self.headers = dict(env or {}), dict(headers or {})
        self.connect_timeout, self.call_timeout = connect_timeout, call_timeout
        self._tools: list[Tool] = []
        self._conn: _Connection | None = None
        self._stderr: Any = None
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self.last_error: str | None = None

    @property
    def endpoint(self) -> str:
        """The URL, or the command line of a stdio server."""
        return self.url or shlex.join([self.command or "", *self.args])

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.alive

    # ---- connecting ---------------------------------------------------------------------------
    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Any]:
        from mcp import Client

        async with AsyncExitStack() as stack:
            if self.command:
                from mcp.client.stdio import StdioServerParameters, stdio_client

                params = StdioServerParameters(command=self.command, args=self.args, env=self.env or None)
                transport: Any = stdio_client(params, errlog=self._errlog())
            elif self.url and self.url.rstrip("/").endswith("/sse"):
                from mcp.client.sse import sse_client

                transport = sse_client(self.url, headers=self.headers or None)
            else:
                from mcp.client.streamable_http import streamable_http_client

                http = None
                if self.headers:
                    import httpx2

                    http = await stack.enter_async_context(httpx2.AsyncClient(
                        headers=self.headers, timeout=httpx2.Timeout(30.0, read=300.0)))
                transport = streamable_http_client(self.url or "", http_client=http)
            client = await stack.enter_async_context(Client(transport, read_timeout_seconds=self.call_timeout,
                                                             cache=None))
            yield client

    def _errlog(self) -> Any:
        """Where a stdio server's stderr goes: a temporary file whose tail explains a failed start."""
        if self._stderr is None:
            self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        return self._stderr

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read()[-4000:].splitlines() if ln.strip()]
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends: {lines[-1].strip()[:300]}" if lines else ""

    async def connect(self, timeout: float | None = None) -> None:
        """Open the session and list the server's tools (cached); HerdError naming the endpoint when the
        server cannot be reached (within `timeout`, default connect_timeout) or does not speak MCP."""
        await self._drop()
        conn = _Connection(self._open)
        try:
            client = await conn.wait_ready(self.connect_timeout if timeout is None else timeout)
            tools = await asyncio.wait_for(self._list(client), self.call_timeout)
        except asyncio.CancelledError:
            conn.cancel()  # the caller gave up: the half-open connection must not live on
            raise
        except Exception as e:  # noqa: BLE001 - any failure to connect is the endpoint's problem
            await conn.close()
            self.last_error = f"MCP server {self.endpoint} is unreachable: {describe_error(e)}{self._stderr_tail()}"
            raise HerdError(self.last_error, "mcp_endpoint") from None
        self._conn, self._tools, self.last_error = conn, tools, None

    async def _list(self, client: Any) -> list[Tool]:
        tools, cursor = [], None
        for _ in range(100):  # pages; a server that never stops paging cannot hang us
            page = await client.list_tools(cursor=cursor)
            tools += [self._tool(t) for t in page.tools]
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    def _tool(self, t: Any) -> Tool:
        schema = t.input_schema if isinstance(t.input_schema, dict) else {}
        return Tool(t.name, t.description or "", {"type": "object", **schema}, toolgroup_id=self.id,
                    provider_id=self.provider_id, metadata={"endpoint": self.endpoint})

    async def _ensure(self) -> Any:
        """The live client of this event loop's connection, reconnecting when needed (once for all the
        calls waiting)."""
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            conn = self._conn
            if conn is None or not conn.alive or conn.loop is not loop:
                await self.connect()
                conn = self._conn
        assert conn is not None
        return conn.client

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.loop is asyncio.get_running_loop():
            await conn.close()
        elif conn.loop.is_running():  # another thread's loop: close it there
            asyncio.run_coroutine_threadsafe(conn.close(), conn.loop)
        # a closed loop took its tasks (and a stdio server's pipes) with it

    # ---- the ToolGroup protocol ----------------------------------------------------------------
    def list_tools(self) -> list[Tool]:
        return list(self._tools)

    async def invoke(self, tool_name: str, kwargs: dict[str, Any], *, session_id: str | None = None) -> ToolResult:
        try:
            client = await self._ensure()
        except HerdError as e:
            return ToolResult.error(str(e), endpoint=self.endpoint)
        try:
            result = await client.call_tool(tool_name, kwargs)
        except Exception as e:  # noqa: BLE001 - a protocol error or a dead server is the tool failing
            why = describe_error(e)
            if _connection_lost(e):  # the next call starts a new session (a new process for stdio)
                await self._drop()
                self.last_error = f"MCP server {self.endpoint} went away: {why}"
                why += "; the connection is reopened on the next call"
            return ToolResult.error(f"{tool_name} (MCP server {self.endpoint}): {why}", endpoint=self.endpoint)
        return to_result(result)

    async def end_session(self, session_id: str) -> None:
        return None

    async def close(self) -> None:
        await self._drop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _connection_lost(e: Exception) -> bool:
    """Whether a failed call means the session is gone (anything but an error the server answered with)."""
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    return not isinstance(e, MCPError) or e.code == CONNECTION_CLOSED


def to_result(result: Any) -> ToolResult:
    """An MCP CallToolResult as a ToolResult: text parts joined, images and audio as attachments,
    `isError` as the error message."""
    texts: list[str] = []
    attachments: list[Attachment] = []
    for i, block in enumerate(result.content or []):
        kind = getattr(block, "type", "")
        if kind == "text":
            texts.append(block.text)
        elif kind in ("image", "audio"):
            attachments.append(Attachment(block.mime_type, base64.b64decode(block.data), f"{kind}-{i + 1}"))
        elif kind == "resource":
            res = block.resource
            if getattr(res, "text", None) is not None:
                texts.append(res.text)
            elif getattr(res, "blob", None) is not None:
                attachments.append(Attachment(res.mime_type or "application/octet-stream",
                                              base64.b64decode(res.blob), str(res.uri)))
        elif kind == "resource_link":
            texts.append(f"[resource {block.uri}]")
    if not texts and result.structured_content is not None:
        texts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(texts)
    meta = {"structured_content": result.structured_content} if result.structured_content is not None else {}
    if result.is_error:
        return ToolResult(error_message=text or "the MCP tool reported an error", error_code=2, metadata=meta,
                          attachments=attachments)
    return ToolResult(text, metadata=meta, attachments=attachments)
