"""The tool runtime over HTTP, driven by the real llama-stack-client against real `herd serve` processes:
`/v1/toolgroups`, `/v1/tools`, `/v1/tool-runtime/list-tools|invoke` with the built-in tools (offline search
corpus from the YAML config, Brave through a fake API, Wolfram|Alpha's offline fallback, the sandboxed code
interpreter with a session), MCP servers (configured over stdio, registered over HTTP, persisted across
restarts) and the errors (404, 400, a tool's failure as a 200)."""
from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sympy
from servekit import ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from toolfakes import BRAVE_KEY, MCP_SERVER, FakeAPI, MCPServerProcess, brave

MCP = "model-context-protocol"
KEYS = ("BRAVE_API_KEY", "TAVILY_API_KEY", "WOLFRAM_ALPHA_API_KEY")


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The server's environment: its own HERD_HOME, and no search / Wolfram keys unless given (an empty
    key is no key, so the machine's own keys cannot pick a backend for these tests)."""
    return {"HERD_HOME": str(home), **dict.fromkeys(KEYS, ""), **extra}


def _client(srv: ServerProcess) -> Any:
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=srv.url, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def mcp_http() -> Iterator[MCPServerProcess]:
    srv = MCPServerProcess("http")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the offline search corpus and a stdio MCP server (tools prefixed io_) from its config."""
    tmp = tmp_path_factory.mktemp("tool_runtime")
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "herd.md").write_text("# Herd\nHerd serves Llama models on port 8321 with the Llama Stack API.\n")
    (docs / "alpaca.txt").write_text("Alpacas\nAlpacas are smaller than llamas and hum.\n")
    cfg = tmp / "server.yaml"
    cfg.write_text(f"""
tools:
  search_backend: offline
  search_corpus: {docs}
  mcp_servers:
    - {{toolgroup_id: "mcp::stdio", command: {sys.executable}, args: ["{MCP_SERVER}"],
       env: {{HERD_TEST_MCP_PREFIX: io_}}}}
""")
    srv = ServerProcess("--config", str(cfg), "--embedding-model", "none", env=_env(tmp / "home"))
    srv.docs = docs  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.output()[-3000:]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return _client(server)


def test_groups_tools_and_providers_are_listed(client: Any, server: ServerProcess) -> None:
    groups = {g.identifier: g for g in client.toolgroups.list()}
    assert {"builtin::websearch", "builtin::wolfram_alpha", "mcp::stdio"} <= set(groups)
    assert groups["builtin::websearch"].provider_id == "offline-search"
    assert groups["mcp::stdio"].provider_id == MCP and groups["mcp::stdio"].type == "tool_group"
    tools = {t.identifier: t for t in client.tools.list()}
    web = tools["web_search"]
    assert web.toolgroup_id == "builtin::websearch" and web.type == "tool"
    assert [(p.name, p.parameter_type, p.required) for p in web.parameters] == [("query", "string", True)]
    assert [t.identifier for t in client.tools.list(toolgroup_id="mcp::stdio")] == [
        "io_add", "io_shout", "io_refuse", "io_dot", "io_count"]
    add = client.tools.get("io_add")
    assert [(p.name, p.parameter_type, p.required) for p in add.parameters] == [("a", "integer", True),
                                                                              ("b", "integer", True)]
    defs = client.tool_runtime.list_tools(tool_group_id="builtin::wolfram_alpha")
    assert [d.name for d in defs] == ["wolfram_alpha"] and defs[0].parameters[0].name == "query"
    assert {d.name for d in client.tool_runtime.list_tools()} >= {"web_search", "wolfram_alpha", "io_add"}
    providers = {p.provider_id: p for p in client.providers.list()}
    assert providers["offline-search"].api == "tool_runtime" and providers[MCP].api == "tool_runtime"


def test_web_search_reads_the_configured_corpus(client: Any, server: ServerProcess) -> None:
    r = client.tool_runtime.invoke_tool(tool_name="web_search", kwargs={"query": "which port does herd use"})
    assert r.error_message is None
    body = json.loads(r.content)
    assert body["backend"] == "offline"
    assert body["results"][0]["url"] == str((server.docs / "herd.md").resolve())  # type: ignore[attr-defined]
    assert "port 8321" in body["results"][0]["snippet"]
    via_builtin_name = client.tool_runtime.invoke_tool(tool_name="brave_search", kwargs={"query": "alpacas hum"})
    assert json.loads(via_builtin_name.content)["results"][0]["title"] == "Alpacas"


def test_wolfram_alpha_offline_integral(client: Any) -> None:
    r = client.tool_runtime.invoke_tool(tool_name="wolfram_alpha", kwargs={"query": "integrate x^2 sin(x) dx"})
    assert r.error_message is None and "computed offline by sympy; no Wolfram|Alpha key" in r.content
    x = sympy.Symbol("x")
    assert sympy.simplify(sympy.diff(sympy.sympify(r.metadata["result"]), x) - x**2 * sympy.sin(x)) == 0


def _has_code_interpreter(client: Any) -> bool:
    return "builtin::code_interpreter" in {g.identifier for g in client.toolgroups.list()}


def test_code_interpreter_keeps_state_per_session(client: Any) -> None:
    if not _has_code_interpreter(client):
        pytest.skip("the server has no code interpreter (no sandbox isolation here)")
    run = client.tool_runtime.invoke_tool
    first = run(tool_name="code_interpreter", kwargs={"code": "x = 41"}, extra_body={"session_id": "sess-a"})
    assert first.error_message is None
    second = run(tool_name="code_interpreter", kwargs={"code": "print(x + 1)"}, extra_body={"session_id": "sess-a"})
    assert second.content.strip() == "42"
    other = run(tool_name="code_interpreter", kwargs={"code": "print(x)"}, extra_body={"session_id": "sess-b"})
    assert other.error_message and "NameError" in other.error_message


def test_code_interpreter_figures_come_back_as_image_content(client: Any) -> None:
    if not _has_code_interpreter(client):
        pytest.skip("the server has no code interpreter (no sandbox isolation here)")
    pytest.importorskip("matplotlib")
    import base64

    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nprint('plotted')"
    r = client.tool_runtime.invoke_tool(tool_name="code_interpreter", kwargs={"code": code})
    assert r.error_message is None, r.error_message
    text, image = r.content
    assert text.type == "text" and "plotted" in text.text
    assert image.type == "image" and base64.b64decode(image.image.data).startswith(b"\x89PNG\r\n\x1a\n")


def test_mcp_server_registered_over_http(client: Any, mcp_http: MCPServerProcess) -> None:
    client.toolgroups.register(toolgroup_id="mcp::web", provider_id=MCP, mcp_endpoint={"uri": mcp_http.url})
    group = client.toolgroups.get("mcp::web")
    assert group.mcp_endpoint.uri == mcp_http.url and group.provider_id == MCP
    names = [t.identifier for t in client.tools.list(toolgroup_id="mcp::web")]
    assert names == ["add", "shout", "refuse", "dot", "count"]
    assert client.tool_runtime.invoke_tool(tool_name="add", kwargs={"a": 20, "b": 22}).content == "42"
    refused = client.tool_runtime.invoke_tool(tool_name="refuse", kwargs={"reason": "nope"})
    assert refused.error_message.endswith("refused: nope") and refused.error_code == 2
    dot = client.tool_runtime.invoke_tool(tool_name="dot", kwargs={})
    (item,) = dot.content
    assert item.type == "image" and item.image.data
    # registering again with the same endpoint is a no-op; another endpoint under the same id is a conflict
    client.toolgroups.register(toolgroup_id="mcp::web", provider_id=MCP, mcp_endpoint={"uri": mcp_http.url})
    from llama_stack_client import ConflictError

    with pytest.raises(ConflictError, match="already registered"):
        client.toolgroups.register(toolgroup_id="mcp::web", provider_id=MCP,
                                   mcp_endpoint={"uri": mcp_http.url + "/other"})
    # list-tools of an endpoint: registered or not (then it is asked once)
    assert [d.name for d in client.tool_runtime.list_tools(mcp_endpoint={"uri": mcp_http.url})] == names
    client.toolgroups.unregister("mcp::web")
    assert "mcp::web" not in {g.identifier for g in client.toolgroups.list()}
    assert [d.name for d in client.tool_runtime.list_tools(mcp_endpoint={"uri": mcp_http.url})] == names


def test_configured_stdio_mcp_server_is_invoked(client: Any) -> None:
    assert client.tool_runtime.invoke_tool(tool_name="io_shout", kwargs={"text": "hi"}).content == "HI"
    a = int(client.tool_runtime.invoke_tool(tool_name="io_count", kwargs={}).content)
    b = int(client.tool_runtime.invoke_tool(tool_name="io_count", kwargs={}).content)
    assert b == a + 1  # one server process for the whole server


def test_errors(client: Any, server: ServerProcess) -> None:
    from llama_stack_client import BadRequestError, NotFoundError

    with pytest.raises(NotFoundError, match="tool 'nope' not found"):
        client.tools.get("nope")
    with pytest.raises(NotFoundError, match="tool 'nope' not found"):
        client.tool_runtime.invoke_tool(tool_name="nope", kwargs={})
    with pytest.raises(NotFoundError, match="tool group 'mcp::none' not found"):
        client.toolgroups.get("mcp::none")
    with pytest.raises(NotFoundError, match="tool group 'mcp::none' not found"):
        client.tools.list(toolgroup_id="mcp::none")
    with pytest.raises(BadRequestError, match="built in and cannot be deleted"):
        client.toolgroups.unregister("builtin::websearch")
    with pytest.raises(BadRequestError, match="comes from the server config"):
        client.toolgroups.unregister("mcp::stdio")
    dead = "http://127.0.0.1:9/mcp"
    with pytest.raises(BadRequestError, match=f"MCP server {dead} is unreachable"):
        client.toolgroups.register(toolgroup_id="mcp::dead", provider_id=MCP, mcp_endpoint={"uri": dead})
    with pytest.raises(BadRequestError, match="mcp_endpoint.uri is required"):
        client.toolgroups.register(toolgroup_id="mcp::x", provider_id=MCP)
    client.toolgroups.register(toolgroup_id="builtin::websearch", provider_id="brave-search")  # already there
    # the tool's own failures: a 200 with the error
    bad = client.tool_runtime.invoke_tool(tool_name="web_search", kwargs={})
    assert bad.error_code == 1 and "'query' is a required property" in bad.error_message
    r = client.tool_runtime.with_raw_response.invoke_tool(tool_name="wolfram_alpha", kwargs={"query": "population"})
    assert r.http_response.status_code == 200 and "cannot compute offline" in r.parse().error_message
    import httpx

    not_object = httpx.post(f"{server.url}/v1/tool-runtime/invoke", json={"tool_name": "web_search", "kwargs": [1]})
    assert not_object.status_code == 400 and not_object.json()["error"]["param"] == "kwargs"


def test_brave_and_mcp_registrations_survive_a_restart(tmp_path: Path, mcp_http: MCPServerProcess) -> None:
    fake = FakeAPI(brave)
    cfg = tmp_path / "server.yaml"
    cfg.write_text(f"tools: {{brave_base_url: '{fake.url}'}}\n")
    home = tmp_path / "home"
    args = ("--config", str(cfg), "--embedding-model", "none")
    try:
        first = ServerProcess(*args, env=_env(home, BRAVE_API_KEY=BRAVE_KEY))
        try:
            c = _client(first)
            r = c.tool_runtime.invoke_tool(tool_name="web_search", kwargs={"query": "guanaco"})
            assert json.loads(r.content)["results"][0]["title"] == "guanaco - Wikipedia"
            assert fake.seen[-1].headers["x-subscription-token"] == BRAVE_KEY
            assert fake.seen[-1].query["q"] == ["guanaco"]
            c.toolgroups.register(toolgroup_id="mcp::kept", provider_id=MCP, mcp_endpoint={"uri": mcp_http.url},
                                  args={"note": "persisted"})
        finally:
            assert first.stop() == 0
        rows = sqlite3.connect(home / "toolgroups.sqlite").execute(
            "SELECT toolgroup_id, mcp_uri FROM toolgroups").fetchall()
        assert rows == [("mcp::kept", mcp_http.url)]

        second = ServerProcess(*args, env=_env(home))
        try:
            c = _client(second)
            group = c.toolgroups.get("mcp::kept")
            assert group.mcp_endpoint.uri == mcp_http.url and group.args == {"note": "persisted"}
            assert c.tool_runtime.invoke_tool(tool_name="shout", kwargs={"text": "kept"}).content == "KEPT"
        finally:
            assert second.stop() == 0
    finally:
        fake.close()


def test_an_unreachable_persisted_group_is_kept_without_tools(tmp_path: Path) -> None:
    mcp = MCPServerProcess("http")
    home = tmp_path / "home"
    args = ("--embedding-model", "none")
    try:
        first = ServerProcess(*args, env=_env(home))
        try:
            _client(first).toolgroups.register(toolgroup_id="mcp::flaky", provider_id=MCP,
                                               mcp_endpoint={"uri": mcp.url})
        finally:
            first.stop()
    finally:
        mcp.stop()
    second = ServerProcess(*args, env=_env(home))
    try:
        c = _client(second)
        assert "mcp::flaky" in {g.identifier for g in c.toolgroups.list()}
        assert [t for t in c.tools.list() if t.toolgroup_id == "mcp::flaky"] == []
        assert f"MCP server {mcp.url} is unreachable" in second.output()
        c.toolgroups.unregister("mcp::flaky")
        assert sqlite3.connect(home / "toolgroups.sqlite").execute("SELECT count(*) FROM toolgroups").fetchone() == (0,)
    finally:
        assert second.stop() == 0


def test_serve_search_corpus_flag(tmp_path: Path) -> None:
    import argparse

    from herd.cli.serve import add_serve_parser, build_config
    from herd.errors import HerdError

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    cfg = tmp_path / "server.yaml"
    cfg.write_text("tools: {search_max_results: 2}\n")
    c = build_config(parser.parse_args(["serve", "--config", str(cfg), "--search-corpus", str(tmp_path)]), {})
    assert c.tools.search_corpus == str(tmp_path) and c.tools.search_backend == "offline"
    assert c.tools.search_max_results == 2  # the rest of the config's tools section stays
    with pytest.raises(HerdError, match="--search-corpus .*: not a directory"):
        build_config(parser.parse_args(["serve", "--search-corpus", str(tmp_path / "nope")]), {})


def test_mcp_registration_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from herd.serve.app import create_app
    from herd.serve.config import parse_config
    from herd.serve.models import ModelRegistry

    monkeypatch.setenv("HERD_HOME", str(tmp_path))
    app = create_app(ModelRegistry([]), parse_config({"tools": {"mcp_registration": False}}))
    with TestClient(app) as c:
        r = c.post("/v1/toolgroups", json={"toolgroup_id": "mcp::x", "provider_id": MCP,
                                           "mcp_endpoint": {"uri": "http://127.0.0.1:9/mcp"}})
        assert r.status_code == 403 and "tools.mcp_registration: false" in r.json()["error"]["message"]
        probe = c.get("/v1/tool-runtime/list-tools", params={"mcp_endpoint[uri]": "http://127.0.0.1:9/mcp"})
        assert probe.status_code == 403
        assert c.post("/v1/toolgroups", json={"toolgroup_id": "builtin::websearch",
                                              "provider_id": "brave-search"}).status_code == 200
    assert not (tmp_path / "toolgroups.sqlite").exists()
