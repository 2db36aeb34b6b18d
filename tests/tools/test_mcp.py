"""MCP tool groups against a real MCP server (tests/tools/mcp_server.py, the SDK's MCPServer): as a stdio
subprocess, over streamable HTTP and over SSE on loopback."""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from toolfakes import MCP_SERVER, MCPServerProcess

from herd.errors import HerdError
from herd.tools.base import ToolRegistry
from herd.tools.builtin import (
    ToolSettings,
    connect_mcp_groups,
    default_registry,
    mcp_target,
)
from herd.tools.mcp import MCPToolGroup

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _children_running(script: str) -> list[int]:
    """Processes of this test whose command line ends with `script` (the stdio servers it started; the
    HTTP ones run `script http`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and [c for c in cmd if c][-1:] == [script.encode()]:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def http_server() -> Iterator[MCPServerProcess]:
    srv = MCPServerProcess("http")
    yield srv
    srv.stop()


def stdio_group(group_id: str = "mcp::test") -> MCPToolGroup:
    return MCPToolGroup(group_id, command=sys.executable, args=[str(MCP_SERVER)])


async def _exercise(group: MCPToolGroup) -> None:
    """What every transport must do: list the tools with their schemas, invoke, errors, images, state."""
    await group.connect()
    tools = {t.name: t for t in group.list_tools()}
    assert set(tools) == {"add", "shout", "refuse", "dot", "count"}
    add = tools["add"]
    assert add.description == "Add two integers." and add.toolgroup_id == group.id
    assert add.provider_id == "model-context-protocol"
    assert add.parameters["type"] == "object" and add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"

    registry = ToolRegistry([group])
    ok = await registry.invoke("add", {"a": 2, "b": 40})
    assert ok.ok and ok.content == "42"
    assert (await registry.invoke("shout", {"text": "llama"})).content == "LLAMA"
    refused = await registry.invoke("refuse", {"reason": "no way"})
    assert not refused.ok and refused.error_code == 2 and refused.error_message.endswith("refused: no way")
    bad = await registry.invoke("add", {"a": "two"})  # checked against the server's inputSchema first
    assert bad.error_code == 1 and "invalid arguments" in bad.error_message
    image = await registry.invoke("dot", {})
    (png,) = image.attachments
    assert png.mime_type == "image/png" and png.data.startswith(PNG_MAGIC)
    first, second = await registry.invoke("count", {}), await registry.invoke("count", {})
    assert int(second.content) == int(first.content) + 1  # one session, one server: its state carries over


def test_stdio_server_lists_and_invokes_and_is_stopped_on_close() -> None:
    async def main() -> None:
        group = stdio_group()
        await _exercise(group)
        assert len(_children_running(str(MCP_SERVER))) == 1
        await group.close()
        assert not group.connected

    asyncio.run(main())
    assert _children_running(str(MCP_SERVER)) == []


def test_streamable_http_server(http_server: MCPServerProcess) -> None:
    async def main() -> None:
        group = MCPToolGroup("mcp::http", url=http_server.url)
        try:
            await _exercise(group)
            assert group.endpoint == http_server.url
        finally:
            await group.close()

    asyncio.run(main())


def test_sse_server() -> None:
    srv = MCPServerProcess("sse")
    try:
        async def main() -> None:
            group = MCPToolGroup("mcp::sse", url=srv.url)
            await group.connect()
            try:
                assert (await group.invoke("add", {"a": 1, "b": 2})).content == "3"
            finally:
                await group.close()

        asyncio.run(main())
    finally:
        srv.stop()


def test_a_new_event_loop_reconnects(http_server: MCPServerProcess) -> None:
    group = MCPToolGroup("mcp::loops", url=http_server.url)
    asyncio.run(group.connect())  # that loop ends, and its connection with it
    assert [t.name for t in group.list_tools()][:1] == ["add"]  # the listing stays cached
    assert asyncio.run(group.invoke("add", {"a": 5, "b": 5})).content == "10"
    asyncio.run(group.close())


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/mcp"


def test_unreachable_servers_are_named() -> None:
    url = _dead_url()

    async def main() -> None:
        group = MCPToolGroup("mcp::down", url=url, connect_timeout=10)
        with pytest.raises(HerdError, match=f"MCP server {url} is unreachable"):
            await group.connect()
        result = await group.invoke("add", {"a": 1, "b": 1})  # a call reconnects, fails, and says why
        assert not result.ok and f"MCP server {url} is unreachable" in result.error_message
        crash = MCPToolGroup("mcp::crash", command=sys.executable,
                             args=["-c", "import sys; sys.stderr.write('no such module: foo\\n'); sys.exit(3)"])
        with pytest.raises(HerdError, match="is unreachable: .*its stderr ends: no such module: foo"):
            await crash.connect()
        await crash.close()

    asyncio.run(main())
    with pytest.raises(HerdError, match="either a url or a command"):
        MCPToolGroup("mcp::x")
    with pytest.raises(HerdError, match="must start with http"):
        MCPToolGroup("mcp::x", url="ftp://example.com/mcp")


def test_configured_servers_join_the_default_registry(http_server: MCPServerProcess) -> None:
    settings = ToolSettings(mcp_servers=(
        {"toolgroup_id": "mcp::stdio", "command": sys.executable, "args": [str(MCP_SERVER)]},
        {"toolgroup_id": "mcp::remote", "url": http_server.url},
        {"toolgroup_id": "mcp::gone", "url": _dead_url()}))

    async def main() -> None:
        registry = default_registry(settings, environ={})
        try:
            failed = await connect_mcp_groups(registry, timeout=20)
            assert list(failed) == ["mcp::gone"] and "is unreachable" in failed["mcp::gone"]
            assert registry.list_tools("mcp::gone") == []  # listed, with no tools
            assert [t.name for t in registry.list_tools("mcp::stdio")] == ["add", "shout", "refuse", "dot", "count"]
            # the same tool names in two groups: the registry answers with the first
            assert (await registry.invoke("add", {"a": 1, "b": 1})).content == "2"
            assert (await registry.group("mcp::remote").invoke("shout", {"text": "hi"})).content == "HI"
        finally:
            await registry.close()

    asyncio.run(main())


def test_command_line_targets() -> None:
    http = mcp_target("http://127.0.0.1:1/mcp", "mcp::a")
    assert http.url == "http://127.0.0.1:1/mcp" and http.command is None
    stdio = mcp_target(f"{sys.executable} '{MCP_SERVER}' --flag", "mcp::b")
    assert stdio.command == sys.executable and stdio.args == [str(MCP_SERVER), "--flag"]
    with pytest.raises(HerdError, match="--mcp"):
        mcp_target("python 'unclosed", "mcp::c")


def test_bad_mcp_config_entries_name_the_problem() -> None:
    with pytest.raises(HerdError, match=r"mcp_servers\[0\]: give either command"):
        ToolSettings(mcp_servers=({"toolgroup_id": "mcp::x"},))
    with pytest.raises(HerdError, match=r"mcp_servers\[1\]: toolgroup_id 'mcp::x' is used twice"):
        ToolSettings(mcp_servers=({"toolgroup_id": "mcp::x", "url": "http://a/mcp"},
                                  {"toolgroup_id": "mcp::x", "command": "srv"}))
    with pytest.raises(HerdError, match=r"mcp_servers\[0\]\.args: expected a list"):
        ToolSettings(mcp_servers=({"toolgroup_id": "mcp::x", "command": "srv", "args": "--flag"},))


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"

        async def main() -> None:
            group = MCPToolGroup("mcp::silent", url=url)
            with pytest.raises(HerdError, match=f"MCP server {url} is unreachable: TimeoutError: no answer within 1 s"):
                await group.connect(timeout=1)
            await asyncio.sleep(0.1)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert others == []  # the half-made connection was cancelled, not left running
            failed = await connect_mcp_groups(ToolRegistry([group]), timeout=1)
            assert "no answer within 1 s" in failed["mcp::silent"]

        asyncio.run(main())


def test_a_stdio_server_that_dies_is_an_error_then_restarted() -> None:
    import signal

    async def main() -> None:
        group = stdio_group("mcp::mortal")
        await group.connect()
        try:
            assert (await group.invoke("count", {})).content == "1"
            (pid,) = _children_running(str(MCP_SERVER))
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):  # the session notices the closed pipe
                if not group.connected:
                    break
                await asyncio.sleep(0.05)
            result = await group.invoke("count", {})
            # either the call saw the dead server (an error result), or it reconnected to a fresh one
            assert (not result.ok and "MCP server" in result.error_message) or result.content == "1"
            again = await group.invoke("count", {})
            assert again.ok and int(again.content) in (1, 2)  # a new server process: its count starts over
            assert _children_running(str(MCP_SERVER)) not in ([], [pid])
        finally:
            await group.close()

    asyncio.run(main())
    assert _children_running(str(MCP_SERVER)) == []
