"""The built-in tool groups and their settings: what `herd serve` (the `tools:` config section) and
`herd chat --tools` / `herd tools` offer.

    registry = default_registry(ToolSettings(search_corpus="./docs"))   # builtin::websearch,
    await connect_mcp_groups(registry)                                 # builtin::wolfram_alpha,
    await registry.invoke("web_search", {"query": "llama 3.1"})         # builtin::code_interpreter, MCP

Keys come from the settings or, when unset there, from the environment (BRAVE_API_KEY, TAVILY_API_KEY,
WOLFRAM_ALPHA_API_KEY). Llama 3.1's built-in tool names map to registry tools through BUILTIN_NAMES.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from herd.errors import HerdError
from herd.tools.base import ToolGroup, ToolRegistry
from herd.tools.code_interpreter import CodeInterpreterGroup, CodeInterpreterSettings
from herd.tools.mcp import MCPToolGroup
from herd.tools.websearch import (
    DEFAULT_MAX_RESULTS,
    BraveSearch,
    OfflineSearch,
    SearchBackend,
    TavilySearch,
    WebSearchGroup,
)
from herd.tools.wolfram import WolframAlphaGroup

log = logging.getLogger("herd.tools")

# Llama 3.1 built-in tool name (what the model calls) -> the registry's tool name
BUILTIN_NAMES = {"brave_search": "web_search", "wolfram_alpha": "wolfram_alpha", "code_interpreter": "code_interpreter"}
MCP_KEYS = {"toolgroup_id", "command", "args", "env", "url", "headers"}


@dataclass(frozen=True)
class ToolSettings:
    """The `tools:` section of the server config (and what `herd chat --tools` / `herd tools` build)."""

    search_backend: Literal["auto", "brave", "tavily", "offline"] = "auto"  # auto: brave, tavily, offline
    search_corpus: str | None = None  # a directory of .txt/.md/.html files for the offline backend
    search_index: str | None = None  # None: <herd_home>/search/<hash>.sqlite; ":memory:" keeps it in memory
    search_max_results: int = DEFAULT_MAX_RESULTS
    brave_api_key: str | None = None  # None: $BRAVE_API_KEY
    brave_base_url: str = "https://api.search.brave.com"
    tavily_api_key: str | None = None  # None: $TAVILY_API_KEY
    tavily_base_url: str = "https://api.tavily.com"
    wolfram_api_key: str | None = None  # None: $WOLFRAM_ALPHA_API_KEY
    wolfram_base_url: str = "https://api.wolframalpha.com"
    http_timeout: float = 15.0  # seconds for one search / Wolfram|Alpha call
    code_interpreter: CodeInterpreterSettings = field(default_factory=CodeInterpreterSettings)
    # a shield id (from the server's `shields:`, e.g. "code-shield") that screens the code the model
    # writes before the interpreter runs it; None: no screening
    code_shield: str | None = None
    # MCP servers: {toolgroup_id, command, args, env} (stdio) or {toolgroup_id, url, headers}
    mcp_servers: tuple[dict[str, Any], ...] = ()
    # whether HTTP clients may add MCP servers by URL (POST /v1/toolgroups; list-tools?mcp_endpoint):
    # the server then connects to URLs its clients name
    mcp_registration: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.search_max_results <= 50:
            raise HerdError(f"search_max_results must be in 1..50, got {self.search_max_results}")
        if self.http_timeout <= 0:
            raise HerdError(f"http_timeout must be > 0 seconds, got {self.http_timeout}")
        ids = set()
        for i, entry in enumerate(self.mcp_servers):
            check_mcp_entry(entry, f"mcp_servers[{i}]")
            if entry["toolgroup_id"] in ids:
                raise HerdError(f"mcp_servers[{i}]: toolgroup_id {entry['toolgroup_id']!r} is used twice")
            ids.add(entry["toolgroup_id"])

    def key(self, name: Literal["brave", "tavily", "wolfram"], environ: Mapping[str, str] | None = None) -> str | None:
        """An API key from the settings, else from its environment variable; None when neither has one."""
        env = os.environ if environ is None else environ
        value = getattr(self, f"{name}_api_key")
        var = {"brave": "BRAVE_API_KEY", "tavily": "TAVILY_API_KEY", "wolfram": "WOLFRAM_ALPHA_API_KEY"}[name]
        return value or env.get(var) or None


def check_mcp_entry(entry: Any, where: str) -> None:
    """An MCP server entry must be {toolgroup_id, command[, args, env]} or {toolgroup_id, url[, headers]}."""
    if not isinstance(entry, dict):
        raise HerdError(f"{where}: expected a mapping with toolgroup_id and command or url")
    unknown = sorted(set(entry) - MCP_KEYS)
    if unknown:
        raise HerdError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(MCP_KEYS))}")
    if not isinstance(entry.get("toolgroup_id"), str) or not entry["toolgroup_id"]:
        raise HerdError(f"{where}: toolgroup_id (a string) is required")
    if bool(entry.get("command")) == bool(entry.get("url")):
        raise HerdError(f"{where}: give either command (a stdio server) or url (an HTTP server)")
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise HerdError(f"{where}.args: expected a list of strings")
    for key in ("env", "headers"):
        value = entry.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            raise HerdError(f"{where}.{key}: expected a mapping of names to strings")


def mcp_group(entry: Mapping[str, Any]) -> MCPToolGroup:
    """An MCPToolGroup from a config entry (not connected yet)."""
    return MCPToolGroup(str(entry["toolgroup_id"]), url=entry.get("url"), command=entry.get("command"),
                        args=[str(a) for a in entry.get("args", [])],
                        env={k: str(v) for k, v in (entry.get("env") or {}).items()},
                        headers={k: str(v) for k, v in (entry.get("headers") or {}).items()})


def search_backend(settings: ToolSettings, environ: Mapping[str, str] | None = None) -> SearchBackend:
    """The backend `web_search` uses: the one named, or (auto) Brave, else Tavily, else offline."""
    choice = settings.search_backend
    brave, tavily = settings.key("brave", environ), settings.key("tavily", environ)
    timeout = settings.http_timeout
    if choice == "brave" or choice == "auto" and brave:
        if not brave:
            raise HerdError("tools.search_backend is brave but there is no Brave API key (tools.brave_api_key "
                            "or BRAVE_API_KEY)", "search_backend")
        return BraveSearch(brave, settings.brave_base_url, timeout)
    if choice == "tavily" or choice == "auto" and tavily:
        if not tavily:
            raise HerdError("tools.search_backend is tavily but there is no Tavily API key (tools.tavily_api_key "
                            "or TAVILY_API_KEY)", "search_backend")
        return TavilySearch(tavily, settings.tavily_base_url, timeout)
    return OfflineSearch(settings.search_corpus, settings.search_index)


def code_interpreter_group(settings: ToolSettings,
                           code_shield: Callable[[str], Awaitable[str | None]] | None = None) -> ToolGroup | None:
    """builtin::code_interpreter, or None (with a warning saying why) where it cannot run safely."""
    try:
        return CodeInterpreterGroup(settings.code_interpreter, code_shield=code_shield)
    except HerdError as e:
        log.warning("the code interpreter is not available: %s", e)
        return None


def default_registry(settings: ToolSettings | None = None, *,
                     code_shield: Callable[[str], Awaitable[str | None]] | None = None,
                     environ: Mapping[str, str] | None = None) -> ToolRegistry:
    """builtin::websearch, builtin::wolfram_alpha, builtin::code_interpreter (where it can run) and the
    configured MCP servers (not connected yet: `await connect_mcp_groups(registry)`)."""
    settings = settings or ToolSettings()
    registry = ToolRegistry()
    registry.register(WebSearchGroup(search_backend(settings, environ), max_results=settings.search_max_results))
    registry.register(WolframAlphaGroup(settings.key("wolfram", environ), settings.wolfram_base_url,
                                        timeout=settings.http_timeout))
    interpreter = code_interpreter_group(settings, code_shield)
    if interpreter is not None:
        registry.register(interpreter)
    for entry in settings.mcp_servers:
        registry.register(mcp_group(entry))
    return registry


async def connect_mcp_groups(registry: ToolRegistry, timeout: float | None = None) -> dict[str, str]:
    """Connect every MCP group of the registry at once; {group id: why} for those that could not connect
    (they stay registered, with no tools, and reconnect when invoked)."""
    groups = [g for g in registry.groups() if isinstance(g, MCPToolGroup) and not g.connected]

    async def one(g: MCPToolGroup) -> str | None:
        try:
            await g.connect(timeout)
        except HerdError as e:
            return str(e)
        return None

    errors = await asyncio.gather(*(one(g) for g in groups))
    failed = {g.id: e for g, e in zip(groups, errors) if e}
    for gid, why in failed.items():
        log.warning("tool group %s: %s", gid, why)
    return failed


def registry_tool_name(name: str) -> str:
    """The registry's tool for a Llama 3.1 built-in name (`brave_search` -> `web_search`); others unchanged."""
    return BUILTIN_NAMES.get(name, name)


def mcp_target(target: str, group_id: str) -> MCPToolGroup:
    """An MCPToolGroup from a command-line target: a URL (HTTP) or a command line (stdio, split like a shell)."""
    if target.startswith(("http://", "https://")):
        return MCPToolGroup(group_id, url=target)
    try:
        words = shlex.split(target)
    except ValueError as e:
        raise HerdError(f"--mcp {target!r}: {e}") from None
    if not words:
        raise HerdError("--mcp needs a URL or a command")
    return MCPToolGroup(group_id, command=words[0], args=words[1:])
