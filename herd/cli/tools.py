"""`herd tools`: list the tool runtime's tools and invoke one (web search, Wolfram|Alpha, the code
interpreter, MCP servers), without a model or a server."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  herd tools list
  herd tools list --json --mcp "python my_mcp_server.py"
  herd tools invoke web_search --args '{"query": "llama 3.1 context length"}' --search-corpus ./docs
  herd tools invoke wolfram_alpha --args '{"query": "integrate x^2 sin(x) dx"}'
  herd tools invoke code_interpreter --args '{"code": "print(2 ** 100)"}'
  herd tools invoke add --args '{"a": 1, "b": 2}' --mcp http://127.0.0.1:8000/mcp
Keys come from the environment: BRAVE_API_KEY or TAVILY_API_KEY (web_search; without either it searches
--search-corpus offline), WOLFRAM_ALPHA_API_KEY (wolfram_alpha; without it sympy/pint compute what they
can exactly). --config FILE reads the `tools:` section of a `herd serve` config.
exit status (invoke): 0 the tool answered, 1 the tool returned an error, 2 bad input (JSON, unknown tool)
"""


def add_tools_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `herd tools` (list, invoke) on the main parser's subparsers."""
    p = sub.add_parser("tools", help="list the built-in and MCP tools, invoke one", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="The tool runtime of herd's agents and server: web_search, wolfram_alpha, "
                       "code_interpreter and the tools of MCP servers.")
    actions = p.add_subparsers(dest="tools_action", metavar="ACTION")
    ls = actions.add_parser("list", help="the tool groups and their tools with parameters", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ls)
    ls.add_argument("--json", action="store_true", help="print the groups and tools as JSON")
    inv = actions.add_parser("invoke", help="run one tool and print its result", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    inv.add_argument("name", metavar="NAME", help="the tool (web_search, wolfram_alpha, code_interpreter, an MCP "
                     "tool; brave_search is web_search)")
    inv.add_argument("--args", default="{}", metavar="JSON", help="the arguments as a JSON object (@FILE reads a "
                     "file; default {})")
    inv.add_argument("--session", default=None, metavar="S",
                     help="session id for stateful tools (the code interpreter keeps state within one process)")
    inv.add_argument("--json", action="store_true",
                     help="print the result as the HTTP API does: {content, error_message, error_code, metadata}")
    inv.add_argument("--save-attachments", default=None, metavar="DIR",
                     help="write the files the tool attached (e.g. matplotlib figures) into DIR")
    _common(inv)
    p.set_defaults(handler=cmd_tools, tools_parser=p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search-corpus", default=None, metavar="DIR",
                   help="web_search searches the .txt/.md/.html files of DIR (offline; no key needed)")
    p.add_argument("--mcp", action="append", default=[], metavar="URL_OR_COMMAND",
                   help="also the tools of an MCP server: its URL, or the command that starts it (stdio); "
                   "repeatable")
    p.add_argument("--config", default=None, metavar="FILE", help="a `herd serve` YAML config: its tools: section")


def _settings(args: argparse.Namespace) -> Any:
    from herd.tools.builtin import ToolSettings

    settings = ToolSettings()
    if args.config:
        from herd.serve.config import load_config

        settings = load_config(args.config).tools
    if args.search_corpus:
        settings = dataclasses.replace(settings, search_corpus=args.search_corpus, search_backend="offline")
    return settings


async def _registry(args: argparse.Namespace) -> Any:
    """The built-in tools (from --config / --search-corpus) and each --mcp server, connected (an MCP server
    that cannot be reached is the user's error: one line, exit 2)."""
    from herd.tools.builtin import default_registry, mcp_target
    from herd.tools.mcp import MCPToolGroup

    registry = default_registry(_settings(args))
    try:
        for i, target in enumerate(args.mcp, 1):
            registry.register(mcp_target(target, f"mcp::{i}" if len(args.mcp) > 1 else "mcp::cli"))
        for group in registry.groups():
            if isinstance(group, MCPToolGroup):
                await group.connect()
    except BaseException:
        await registry.close()
        raise
    return registry


def _arguments(text: str) -> dict[str, Any]:
    from herd.errors import HerdError

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise HerdError(f"--args {text}: cannot read the file ({e.strerror})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise HerdError(f"--args is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise HerdError(f"--args must be a JSON object, got {type(value).__name__}")
    return value


def _signature(tool: Any) -> str:
    props = tool.parameters.get("properties") or {}
    required = set(tool.parameters.get("required") or [])
    return ", ".join(f"{n}: {(s or {}).get('type', 'any')}{'' if n in required else '?'}" for n, s in props.items())


def _print_list(registry: Any, as_json: bool) -> None:
    groups = registry.groups()
    if as_json:
        print(json.dumps({"toolgroups": [
            {"identifier": g.id, "provider_id": g.provider_id,
             "tools": [{"name": t.name, "description": t.description, "parameters": t.parameters}
                       for t in g.list_tools()]} for g in groups]}, indent=2))
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("group", "tool", "parameters", "description")
        for g in groups:
            for t in g.list_tools():
                table.add_row(g.id, t.name, _signature(t), t.description)
        Console().print(table)
        return
    for g in groups:
        print(f"{g.id}  ({g.provider_id})")
        for t in g.list_tools():
            print(f"  {t.name}({_signature(t)})  {t.description}")


def _print_result(args: argparse.Namespace, name: str, result: Any) -> int:
    if args.save_attachments and result.attachments:
        out = Path(args.save_attachments)
        out.mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(result.attachments, 1):
            (out / Path(a.name or f"attachment-{i}").name).write_bytes(a.data)
    if args.json:
        body = {"content": result.content, "error_message": result.error_message, "error_code": result.error_code,
                "metadata": result.metadata, "attachments": [
                    {"name": a.name, "mime_type": a.mime_type, "bytes": len(a.data)} for a in result.attachments]}
        print(json.dumps(body, indent=2, default=str))
    else:
        if result.content:
            print(result.content)
        for a in result.attachments:
            print(f"[attached {a.name or 'file'}: {a.mime_type}, {len(a.data)} bytes]")
    if not result.ok:
        code = f" (code {result.error_code})" if result.error_code is not None else ""
        print(f"herd tools: {name} failed{code}: {result.error_message}", file=sys.stderr)
        return 1
    return 0


async def _run(args: argparse.Namespace) -> int:
    registry = await _registry(args)
    try:
        if args.tools_action == "list":
            _print_list(registry, args.json)
            return 0
        from herd.tools.base import UnknownToolError
        from herd.tools.builtin import registry_tool_name

        kwargs = _arguments(args.args)
        try:
            name = registry.tool(args.name).name
        except UnknownToolError:
            name = registry.tool(registry_tool_name(args.name)).name  # brave_search -> web_search
        result = await registry.invoke(name, kwargs, session_id=args.session)
        return _print_result(args, name, result)
    finally:
        await registry.close()


def cmd_tools(args: argparse.Namespace) -> int:
    """`herd tools list|invoke`."""
    if args.tools_action is None:
        args.tools_parser.print_help(sys.stderr)
        return 2
    if args.tools_action == "invoke":
        _arguments(args.args)  # bad JSON: one line, exit 2, before anything starts
    return asyncio.run(_run(args))
