"""A tiny MCP server for the tests, built with the SDK's MCPServer (FastMCP in mcp 1.x).

    python mcp_server.py            # stdio
    python mcp_server.py http       # streamable HTTP on a free loopback port; prints "listening on URL"
    python mcp_server.py sse        # the older SSE transport, likewise
$HERD_TEST_MCP_PREFIX, when set, is put before every tool name (two servers, distinct tools).
"""
from __future__ import annotations

import asyncio
import base64
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

mcp = MCPServer("herd-test", log_level="ERROR")
calls = {"n": 0}
PREFIX = os.environ.get("HERD_TEST_MCP_PREFIX", "")


def tool(fn):
    return mcp.tool(name=PREFIX + fn.__name__)(fn)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


@tool
def refuse(reason: str) -> str:
    """Always fails with the reason (an MCP tool error, isError true)."""
    raise ToolError(f"refused: {reason}")


@tool
def dot() -> Image:
    """A 1x1 PNG image."""
    return Image(data=PNG, format="png")


@tool
def count() -> int:
    """How many times this tool was called in this server process (state lives in the server)."""
    calls["n"] += 1
    return calls["n"]


async def serve(kind: str) -> None:
    import uvicorn

    app = mcp.streamable_http_app() if kind == "http" else mcp.sse_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    path = "/mcp" if kind == "http" else "/sse"
    print(f"listening on http://127.0.0.1:{port}{path}", flush=True)
    await task


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "stdio":
        mcp.run()
    else:
        asyncio.run(serve(mode))
