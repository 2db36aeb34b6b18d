"""The tool runtime's contract: tools, tool groups, results, and the registry that invokes them.

A tool group (`builtin::code_interpreter`, `builtin::websearch`, an MCP server, ...) lists tools, each
with a JSON-schema `parameters` object, and invokes them. `ToolRegistry.invoke(name, kwargs)` finds the
tool, checks the arguments against its schema, and runs it; it never raises for the tool's own failure
(bad arguments, a timeout, a non-zero exit, a refused network call): those come back as a `ToolResult`
with `error_message` / `error_code` set, which the agent loop shows the model like any other result.
Unknown names are the caller's error: `UnknownToolError` / `UnknownToolGroupError` (HTTP 404).

Sessions: a stateful tool (the code interpreter keeps a Python process per session) keys its state by
the `session_id` passed to `invoke`; `end_session(session_id)` releases it.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from herd.errors import HerdError
from herd.tokenizer.messages import ToolDefinition

log = logging.getLogger("herd.tools")


class UnknownToolError(HerdError):
    """No registered tool has this name."""


class UnknownToolGroupError(HerdError):
    """No tool group has this id."""


@dataclass
class Attachment:
    """A file a tool produced (a matplotlib figure as PNG, ...): bytes plus a MIME type."""

    mime_type: str
    data: bytes
    name: str = ""


@dataclass
class ToolResult:
    """What a tool returns: text for the model, an error the model can read, attachments, metadata."""

    content: str = ""
    error_message: str | None = None
    error_code: int | None = None  # 1 bad arguments, 2 the tool failed, 124 timeout, or the process exit code
    metadata: dict[str, Any] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error_message is None

    def text(self) -> str:
        """The result as the model reads it (an ipython / tool message): content, then the error if any."""
        parts = [self.content] if self.content else []
        if self.error_message:
            parts.append(f"error: {self.error_message}")
        if self.attachments:
            parts.append(", ".join(f"[attached {a.name or a.mime_type}]" for a in self.attachments))
        return "\n".join(parts)

    @classmethod
    def error(cls, message: str, code: int = 2, **metadata: Any) -> ToolResult:
        return cls(error_message=message, error_code=code, metadata=dict(metadata))


@dataclass
class Tool:
    """One tool: its name (unique across the registry), description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    toolgroup_id: str = ""
    provider_id: str = "herd"
    metadata: dict[str, Any] = field(default_factory=dict)

    def definition(self) -> ToolDefinition:
        """As the chat format offers it to a model."""
        return ToolDefinition(self.name, self.description, self.parameters)


@runtime_checkable
class ToolGroup(Protocol):
    """A set of tools with one provider (builtin, MCP server, ...)."""

    id: str  # "builtin::code_interpreter", "mcp::files", ...
    provider_id: str

    def list_tools(self) -> list[Tool]:
        """The group's tools (may be cached; MCP groups ask their server once)."""

    async def invoke(self, tool_name: str, kwargs: dict[str, Any], *, session_id: str | None = None) -> ToolResult:
        """Run one tool; a failure of the tool itself is a ToolResult with error_message, never an exception."""

    async def end_session(self, session_id: str) -> None:
        """Release what the group keeps for a session (a no-op for stateless groups)."""

    async def close(self) -> None:
        """Release everything (processes, connections)."""


def check_arguments(tool: Tool, kwargs: Any) -> str | None:
    """Why `kwargs` does not fit the tool's JSON schema (None when it does)."""
    if not isinstance(kwargs, dict):
        return f"arguments of {tool.name} must be a JSON object, not {type(kwargs).__name__}"
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with herd's dependencies
        missing = [k for k in tool.parameters.get("required", []) if k not in kwargs]
        return f"{tool.name}: missing required argument(s) {', '.join(missing)}" if missing else None
    validator = jsonschema.Draft202012Validator(tool.parameters or {"type": "object"})
    errors = sorted(validator.iter_errors(kwargs), key=lambda e: list(e.path))
    if not errors:
        return None
    e = errors[0]
    where = ".".join(str(p) for p in e.path)
    return f"{tool.name}: invalid arguments{' at ' + where if where else ''}: {e.message}"


class ToolRegistry:
    """The tool groups a process (the server, `herd chat --tools`) offers, and the one way to invoke them."""

    def __init__(self, groups: Iterable[ToolGroup] = ()) -> None:
        self._groups: dict[str, ToolGroup] = {}
        for g in groups:
            self.register(g)

    # ---- groups -------------------------------------------------------------------------------
    def register(self, group: ToolGroup, *, replace: bool = False) -> None:
        if group.id in self._groups and not replace:
            raise HerdError(f"tool group {group.id!r} is already registered", "toolgroup_id")
        self._groups[group.id] = group

    async def unregister(self, group_id: str) -> None:
        group = self.group(group_id)
        del self._groups[group_id]
        await group.close()

    def group(self, group_id: str) -> ToolGroup:
        try:
            return self._groups[group_id]
        except KeyError:
            known = ", ".join(sorted(self._groups)) or "none"
            raise UnknownToolGroupError(f"tool group {group_id!r} not found (registered: {known})",
                                        "toolgroup_id") from None

    def groups(self) -> list[ToolGroup]:
        return list(self._groups.values())

    # ---- tools --------------------------------------------------------------------------------
    def list_tools(self, toolgroup_id: str | None = None) -> list[Tool]:
        groups = [self.group(toolgroup_id)] if toolgroup_id else self.groups()
        return [t for g in groups for t in g.list_tools()]

    def tool(self, name: str) -> Tool:
        for g in self._groups.values():
            for t in g.list_tools():
                if t.name == name:
                    return t
        known = ", ".join(sorted(t.name for t in self.list_tools())) or "none"
        raise UnknownToolError(f"tool {name!r} not found (available: {known})", "tool_name")

    def tools_for(self, names: Sequence[str]) -> list[Tool]:
        """Tools by name or by group id (a group id stands for all its tools), in order, without repeats."""
        out: dict[str, Tool] = {}
        for n in names:
            if n in self._groups:
                out.update((t.name, t) for t in self._groups[n].list_tools())
            else:
                t = self.tool(n)
                out[t.name] = t
        return list(out.values())

    async def invoke(self, name: str, kwargs: Any, *, session_id: str | None = None) -> ToolResult:
        """Run a tool. Unknown tool: UnknownToolError. Everything the tool does wrong: a ToolResult."""
        tool = self.tool(name)
        problem = check_arguments(tool, kwargs)
        if problem is not None:
            return ToolResult.error(problem, code=1)
        try:
            return await self._groups[tool.toolgroup_id].invoke(name, kwargs, session_id=session_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a tool's bug must not take the agent (or the server) down
            log.exception("tool %s failed", name)
            return ToolResult.error(f"{name} failed: {type(e).__name__}: {e}")

    async def end_session(self, session_id: str) -> None:
        for g in self._groups.values():
            try:
                await g.end_session(session_id)
            except Exception:  # noqa: BLE001 - releasing one group's state must not stop the others
                log.exception("tool group %s: ending session %s failed", g.id, session_id)

    async def close(self) -> None:
        for g in list(self._groups.values()):
            try:
                await g.close()
            except Exception:  # noqa: BLE001
                log.exception("tool group %s: close failed", g.id)
