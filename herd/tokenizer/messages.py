"""Chat messages, tool calls and tool definitions, and the one way into them.

`to_messages()` is the only converter: the server, the shields, the prompt formats and the agents
all call it. It takes, mixed in one list:
- herd `Message` objects (passed through);
- OpenAI chat messages: `{role: system|developer|user|assistant|tool, content: str | [text parts],
  tool_calls: [{id, type, function: {name, arguments: JSON string | object}}], tool_call_id}`;
- Llama Stack messages: `{role: system|user|assistant|tool|ipython, content: InterleavedContent
  (str | {type: text, text} | a list of those), context, call_id, stop_reason,
  tool_calls: [{call_id, tool_name, arguments: object | str, arguments_json}]}`;
- pydantic models of either (their `model_dump()`).
`to_tools()` does the same for tool definitions (OpenAI functions and built-ins, Llama Stack tool
definitions, `ToolDefinition`). Bad input is a `HerdError` whose `param` names the field
(`messages[2].content[0].type`), in the caller's terms.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from herd.errors import HerdError

Role = Literal["system", "user", "assistant", "tool", "ipython"]
StopReason = Literal["end_of_turn", "end_of_message", "out_of_tokens"]

BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "photogen", "code_interpreter")  # names the model knows
PROMPT_BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "code_interpreter")  # the ones a request may enable
IMAGE_TYPES = ("image", "image_url", "input_image")
_STOP_REASONS = ("end_of_turn", "end_of_message", "out_of_tokens")
_JSON_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
               "number": "number", "bool": "boolean", "boolean": "boolean", "list": "array", "array": "array",
               "dict": "object", "object": "object"}


def new_call_id() -> str:
    """A fresh tool-call id (uuid4 string)."""
    return str(uuid.uuid4())


@dataclass
class ToolCall:
    """One tool call made by the assistant; builtin tools take {"query"} or {"code"}."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        """True for brave_search / wolfram_alpha / photogen / code_interpreter."""
        return self.tool_name in BUILTIN_TOOLS

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `tool_calls[i]` shape (arguments as a JSON string)."""
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.tool_name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass
class ToolDefinition:
    """A tool offered to the model; `parameters` is a JSON schema ({"type":"object","properties":...})."""

    tool_name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        """True for the built-in tools (rendered on the "Tools:" line, not as custom functions)."""
        return self.tool_name in BUILTIN_TOOLS


@dataclass
class Message:
    """One chat message; `tool`/`ipython` carry tool results, `context` is appended to user content."""

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: StopReason | None = None
    context: str | None = None
    call_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat message shape (assistant: content None when only tool calls)."""
        if self.role == "assistant":
            out: dict[str, Any] = {"role": "assistant", "content": self.content}
            if self.tool_calls:
                out["content"] = self.content or None
                out["tool_calls"] = [t.to_openai() for t in self.tool_calls]
            return out
        if self.role in ("tool", "ipython"):
            return {"role": "tool", "tool_call_id": self.call_id, "content": self.content}
        return {"role": self.role, "content": self.content}


def openai_finish_reason(message: Message) -> str:
    """OpenAI `finish_reason` for a decoded assistant message: tool_calls, stop or length."""
    if message.tool_calls:
        return "tool_calls"
    return "length" if message.stop_reason == "out_of_tokens" else "stop"


# ---- into messages ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A pydantic model as its dict (fields left unset dropped); anything else as is."""
    dump = getattr(value, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) and not isinstance(value, type) else value


def plain_text(content: Any, where: str = "content", *, lenient: bool = False) -> str:
    """Message content as text: a string, a {type: text} part, or a list of those (parts are joined).
    Image parts are refused, or read as "<image>" when `lenient` (what a content screen needs)."""
    content = _plain(content)
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        kind = content.get("type")
        if kind == "text" and isinstance(content.get("text"), str):
            return content["text"]
        if kind in IMAGE_TYPES and lenient:
            return "<image>"  # as Llama Stack's interleaved_content_as_str
        if kind in IMAGE_TYPES:
            raise HerdError(f"{where}: {kind!r} parts are not supported (this server's models read text only); "
                            "send {'type': 'text', 'text': ...}", f"{where}.type")
        raise HerdError(f"{where}: unsupported content part of type {kind!r} (send {{'type': 'text', 'text': str}})",
                        f"{where}.type")
    if isinstance(content, (list, tuple)):
        return "".join(plain_text(c, f"{where}[{i}]", lenient=lenient) for i, c in enumerate(content))
    raise HerdError(f"{where} must be a string or a list of text parts, got {type(content).__name__}", where)


def _arguments(raw: Any, name: str, where: str, lenient: bool) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except (json.JSONDecodeError, RecursionError) as e:
            if name == "code_interpreter":  # Llama 3's code calls are code, not JSON
                return {"code": raw}
            if lenient:  # kept as text: still visible to the shields
                return {"arguments": raw}
            raise HerdError(f"{where} is not valid JSON: {e}", where) from None
    if isinstance(raw, Mapping):
        return dict(raw)
    if lenient:
        return {"arguments": raw}
    raise HerdError(f"{where} must be a JSON object, got {type(raw).__name__}", where)


def _tool_call(raw: Any, where: str, lenient: bool) -> ToolCall:
    raw = _plain(raw)
    if not isinstance(raw, Mapping):
        raise HerdError(f"{where} must be an object", where)
    fn = raw.get("function")
    if fn is not None:  # OpenAI: {id, type, function: {name, arguments}}
        fn = _plain(fn)
        name = fn.get("name") if isinstance(fn, Mapping) else None
        args, args_where, call_id = (fn.get("arguments", "{}") if isinstance(fn, Mapping) else None,
                                     f"{where}.function.arguments", raw.get("id"))
        if not isinstance(name, str) or not name:
            raise HerdError(f"{where} must be {{'type': 'function', 'function': {{'name': str, 'arguments': str}}}}",
                            f"{where}.function.name")
    else:  # Llama Stack: {call_id, tool_name, arguments, arguments_json}
        name, args, args_where, call_id = raw.get("tool_name"), raw.get("arguments"), f"{where}.arguments", \
            raw.get("call_id")
        if (args is None or args == {}) and isinstance(raw.get("arguments_json"), str):
            args = raw["arguments_json"]
        if not isinstance(name, str) or not name:
            raise HerdError(f"{where} must be {{'type': 'function', 'function': {{'name': str, 'arguments': str}}}} "
                            "or {'tool_name': str, 'arguments': {...}}", f"{where}.tool_name")
    return ToolCall(call_id if isinstance(call_id, str) and call_id else new_call_id(), name,
                    _arguments(args, name, args_where, lenient))


def _message(m: Any, where: str, lenient: bool) -> Message:
    if isinstance(m, Message):
        return m
    m = _plain(m)
    if not isinstance(m, Mapping):
        raise HerdError(f"{where} must be an object with 'role' and 'content', got {type(m).__name__}", where)
    role = m.get("role")
    text = plain_text(m.get("content"), f"{where}.content", lenient=lenient)
    if role in ("system", "developer"):
        return Message("system", text)
    if role == "user":
        context = m.get("context")
        return Message("user", text, context=None if context is None else
                       plain_text(context, f"{where}.context", lenient=lenient))
    if role == "assistant":
        calls = m.get("tool_calls") or []
        if not isinstance(calls, (list, tuple)):
            raise HerdError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
        stop = m.get("stop_reason")
        return Message("assistant", text, [_tool_call(c, f"{where}.tool_calls[{j}]", lenient) for j, c in
                                           enumerate(calls)], stop_reason=stop if stop in _STOP_REASONS else None)
    if role in ("tool", "ipython"):
        call_id = m.get("tool_call_id", m.get("call_id"))
        return Message("tool", text, call_id=call_id if isinstance(call_id, str) else None)
    raise HerdError(f"{where}.role must be system, developer, user, assistant or tool, got {role!r}", f"{where}.role")


def to_messages(messages: Any, *, lenient: bool = False, param: str = "messages") -> list[Message]:
    """OpenAI or Llama Stack messages (dicts or pydantic models) and herd Messages, as herd Messages.

    `lenient` is for screening text, not for prompting: image parts read as "<image>" and tool-call
    arguments that are not a JSON object are kept as text instead of being refused."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise HerdError(f"{param} must be a list of messages, got {type(messages).__name__}", param)
    if not messages:
        raise HerdError(f"{param} must not be empty: send at least one message", param)
    return [_message(m, f"{param}[{i}]", lenient) for i, m in enumerate(messages)]


# ---- into tool definitions ----------------------------------------------------------------


def _stack_schema(params: Any, where: str) -> dict[str, Any]:
    """Llama Stack's {name: {param_type, description, required, default}} as a JSON schema."""
    if not isinstance(params, Mapping):
        raise HerdError(f"{where} must be an object of {{param_type, description, required}}", where)
    props, required = {}, []
    for name, p in params.items():
        p = _plain(p)
        if not isinstance(p, Mapping):
            raise HerdError(f"{where}.{name} must be an object with param_type", f"{where}.{name}")
        prop: dict[str, Any] = {"description": p.get("description") or ""}
        kind = str(p.get("param_type", "string")).lower()
        if kind in _JSON_TYPES:
            prop["type"] = _JSON_TYPES[kind]
        if p.get("default") is not None:
            prop["default"] = p["default"]
        props[name] = prop
        if p.get("required", True):
            required.append(name)
    return {"type": "object", "properties": props, "required": required}


def _tool(t: Any, where: str) -> ToolDefinition:
    if isinstance(t, ToolDefinition):
        return t
    t = _plain(t)
    kind = t.get("type") if isinstance(t, Mapping) else None
    if isinstance(t, Mapping) and "tool_name" in t:  # Llama Stack
        name = t.get("tool_name")
        if not isinstance(name, str) or not name:
            raise HerdError(f"{where}.tool_name must be a non-empty string", f"{where}.tool_name")
        if name in BUILTIN_TOOLS:
            return ToolDefinition(name)
        schema = t.get("input_schema") or _stack_schema(t.get("parameters") or {}, f"{where}.parameters")
        return ToolDefinition(name, t.get("description") or "", dict(schema))
    if kind in PROMPT_BUILTIN_TOOLS:
        return ToolDefinition(kind)
    fn = _plain(t.get("function")) if kind == "function" else None
    if kind == "function" and fn is None:
        raise HerdError(f"{where}.function is required for type 'function': {{'name': str, 'description': str, "
                        "'parameters': {JSON schema}}", f"{where}.function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise HerdError(f"{where} must be {{'type': 'function', 'function': {{'name': ...}}}} or one of "
                        f"{', '.join(PROMPT_BUILTIN_TOOLS)}, got type {kind!r}",
                        f"{where}.function" if kind == "function" else where)
    params = fn.get("parameters") or {}
    if not isinstance(params, Mapping) or not isinstance(params.get("properties", {}), Mapping):
        raise HerdError(f"{where}.function.parameters must be a JSON schema object with 'properties'",
                        f"{where}.function.parameters")
    desc = fn.get("description") or ""
    if not isinstance(desc, str):
        raise HerdError(f"{where}.function.description must be a string", f"{where}.function.description")
    return ToolDefinition(fn["name"], desc, dict(params))


def to_tools(tools: Any, param: str = "tools") -> list[ToolDefinition]:
    """OpenAI tools ({"type": "function", "function": {...}} and built-ins like {"type": "brave_search"}),
    Llama Stack tool definitions ({tool_name, description, parameters | input_schema}) and
    ToolDefinitions, as ToolDefinitions; None or [] gives []."""
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise HerdError(f"{param} must be a list, got {type(tools).__name__}", param)
    return [_tool(t, f"{param}[{i}]") for i, t in enumerate(tools)]
