"""default_registry: the built-in groups from ToolSettings (and the `tools:` section of a server config),
Llama 3.1's built-in names, the code interpreter inside it (a real sandboxed kernel), and what happens
where the code interpreter cannot run."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from herd.errors import HerdError
from herd.serve.config import load_config
from herd.tools.builtin import (
    BUILTIN_NAMES,
    ToolSettings,
    default_registry,
    registry_tool_name,
)
from herd.tools.code_interpreter import CodeInterpreterSettings, isolation_available


def test_default_registry_offers_the_three_builtin_groups(tmp_path: Path) -> None:
    registry = default_registry(ToolSettings(search_corpus=str(tmp_path), search_index=":memory:"), environ={})
    ids = [g.id for g in registry.groups()]
    assert ids[:2] == ["builtin::websearch", "builtin::wolfram_alpha"]
    assert ("builtin::code_interpreter" in ids) == (isolation_available() is not None)
    for builtin, name in BUILTIN_NAMES.items():
        if name == "code_interpreter" and "builtin::code_interpreter" not in ids:
            continue
        tool = registry.tool(registry_tool_name(builtin))
        assert tool.name == name and tool.parameters["type"] == "object"
    assert registry_tool_name("brave_search") == "web_search" and registry_tool_name("get_weather") == "get_weather"
    # a group id stands for its tools
    assert [t.name for t in registry.tools_for(["builtin::websearch", "wolfram_alpha"])] == ["web_search",
                                                                                            "wolfram_alpha"]
    asyncio.run(registry.close())


@pytest.mark.skipif(isolation_available() is None, reason="no sandbox isolation on this machine")
def test_code_interpreter_in_the_registry_keeps_session_state_and_takes_the_code_shield(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    screened: list[str] = []

    async def shield(code: str) -> str | None:
        screened.append(code)
        return "refused: writes files" if "open(" in code else None

    async def main() -> None:
        registry = default_registry(ToolSettings(), code_shield=shield, environ={})
        try:
            await registry.invoke("code_interpreter", {"code": "x = 41"}, session_id="s1")
            result = await registry.invoke("code_interpreter", {"code": "print(x + 1)"}, session_id="s1")
            assert result.ok and result.content.strip() == "42"
            other = await registry.invoke("code_interpreter", {"code": "print(x)"}, session_id="s2")
            assert not other.ok and "NameError" in other.error_message
            refused = await registry.invoke("code_interpreter", {"code": f"open({str(marker)!r}, 'w')"},
                                            session_id="s1")
            assert not refused.ok and "refused: writes files" in refused.error_message
            missing = await registry.invoke("code_interpreter", {}, session_id="s1")
            assert missing.error_code == 1
        finally:
            await registry.close()

    asyncio.run(main())
    assert not marker.exists() and len(screened) == 4


def test_without_isolation_the_code_interpreter_is_left_out_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HERD_SANDBOX_FORCE_UNAVAILABLE", "1")
    with caplog.at_level(logging.WARNING, logger="herd.tools"):
        registry = default_registry(ToolSettings(), environ={})
    assert [g.id for g in registry.groups()] == ["builtin::websearch", "builtin::wolfram_alpha"]
    assert "the code interpreter is not available" in caplog.text and "isolation: none" in caplog.text
    unsafe = default_registry(ToolSettings(code_interpreter=CodeInterpreterSettings(isolation="none")), environ={})
    assert "builtin::code_interpreter" in [g.id for g in unsafe.groups()]  # the explicit opt-out


def test_settings_are_checked() -> None:
    with pytest.raises(HerdError, match="search_max_results must be in 1..50"):
        ToolSettings(search_max_results=0)
    with pytest.raises(HerdError, match="http_timeout"):
        ToolSettings(http_timeout=0)


def test_the_tools_section_of_a_server_config(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpacas\nAlpacas hum.\n")
    cfg = tmp_path / "server.yaml"
    cfg.write_text(f"""
tools:
  search_corpus: {docs}
  search_index: ":memory:"
  search_max_results: 3
  wolfram_api_key: ${{env.TEST_WOLFRAM_KEY:=}}
  code_interpreter: {{timeout_s: 5, memory_mb: 512}}
  mcp_servers:
    - {{toolgroup_id: mcp::files, command: some-mcp-server, args: [--root, /data]}}
""")
    tools = load_config(cfg, environ={}).tools
    assert tools.search_corpus == str(docs) and tools.search_max_results == 3 and tools.wolfram_api_key is None
    assert tools.code_interpreter.timeout_s == 5.0 and tools.code_interpreter.memory_mb == 512
    assert tools.mcp_servers == ({"toolgroup_id": "mcp::files", "command": "some-mcp-server",
                                  "args": ["--root", "/data"]},)
    assert load_config(cfg, environ={"TEST_WOLFRAM_KEY": "abc"}).tools.key("wolfram", {}) == "abc"
    registry = default_registry(tools, environ={})
    assert registry.group("builtin::websearch").max_results == 3
    assert registry.group("mcp::files").endpoint == "some-mcp-server --root /data"
    cfg.write_text("tools: {search_backend: google}\n")
    with pytest.raises(HerdError, match="tools.search_backend: expected one of auto, brave, tavily, offline"):
        load_config(cfg)
    cfg.write_text("tools: {searchcorpus: ./docs}\n")
    with pytest.raises(HerdError, match="unknown key 'searchcorpus'"):
        load_config(cfg)
