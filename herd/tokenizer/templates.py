"""Jinja chat templates for non-Llama-3 models (from tokenizer_config.json or GGUF), rendered as HF does.

Rendering follows `transformers`' `apply_chat_template(..., tokenize=False)`: a sandboxed
environment with trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson`
that does not HTML-escape, the `{% generation %}` tag, and messages whose None-valued keys
are dropped. Also a tolerant parser for the JSON tool calls such models write.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herd.errors import HerdError
from herd.tokenizer.chat_format import Message, ToolCall, ToolDefinition, new_call_id
from herd.tokenizer.tokenizer import Tokenizer


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker) renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON types, so the sandbox only ever sees dict/list/str/numbers."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):  # subclasses (enums, numpy scalars, ...) back to the base type
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


def message_to_template_dict(message: Message | Mapping[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it (tool calls with dict arguments; None-valued keys dropped)."""
    if isinstance(message, Message):
        d: dict[str, Any] = {"role": "tool" if message.role == "ipython" else message.role, "content": message.content}
        if message.tool_calls:
            d["tool_calls"] = [
                {"id": c.call_id, "type": "function", "function": {"name": c.tool_name, "arguments": c.arguments}}
                for c in message.tool_calls
            ]
        if message.call_id is not None:
            d["tool_call_id"] = message.call_id
        message = d
    if not isinstance(message, Mapping):
        raise HerdError(f"chat messages must be dicts or Messages, got {type(message).__name__}")
    return {k: _plain(v) for k, v in message.items() if v is not None}


def _tool_to_template_dict(tool: ToolDefinition | Mapping[str, Any]) -> Any:
    if isinstance(tool, ToolDefinition):
        fn = {"name": tool.tool_name, "description": tool.description, "parameters": tool.parameters}
        return {"type": "function", "function": fn}
    if not isinstance(tool, Mapping):
        raise HerdError(f"tools must be dicts (JSON schemas) or ToolDefinitions, got {type(tool).__name__}")
    return _plain(tool)


class ChatTemplate:
    """A Hugging Face-style Jinja chat template, rendered in a sandbox exactly as transformers does."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        """Compile `source`; special tokens (bos_token, eos_token, pad_token, ...) become template variables."""
        if not isinstance(source, str) or not source.strip():
            raise HerdError("chat template is empty")
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise HerdError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None
        self.source = source
        tokens = {"bos_token": bos_token, "eos_token": eos_token, **(special_tokens or {})}
        self.special_tokens = {k: v for k, v in tokens.items() if v is not None}

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> ChatTemplate:
        """The template a checkpoint carries, with its BOS/EOS/PAD token texts as variables."""
        if not tokenizer.chat_template:
            raise HerdError("this model's tokenizer carries no chat template")
        ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id}
        special = {name: tokenizer.decode([i]) for name, i in ids.items() if i is not None}
        return cls(tokenizer.chat_template, special_tokens=special)

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        tools: Sequence[ToolDefinition | Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text; template errors (including raise_exception) become HerdError."""
        if not messages:
            raise HerdError("cannot apply a chat template to an empty conversation")
        chat = [message_to_template_dict(m) for m in messages]
        tool_dicts = None if tools is None else [_tool_to_template_dict(t) for t in tools]
        variables = {**self.special_tokens, **_plain(kwargs)}
        try:
            return self._template.render(
                messages=chat,
                tools=tool_dicts,
                documents=None if documents is None else _plain(list(documents)),
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as e:
            raise HerdError(f"chat template error: {e.message or type(e).__name__}") from None
        except Exception as e:  # a template is untrusted code; any failure is a bad-input error
            raise HerdError(f"chat template failed: {type(e).__name__}: {e}") from None


# ---- tool calls in non-Llama output -------------------------------------------------------

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _call_from_obj(obj: Any, name_only_ok: bool) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict) and obj.get("type", "function") == "function":
        obj = obj["function"]  # OpenAI shape
    name = obj.get("name")
    key = "arguments" if "arguments" in obj else "parameters"
    if not isinstance(name, str) or not name or (key not in obj and not name_only_ok):
        return None
    args = obj.get(key, {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            return None
    return ToolCall(new_call_id(), name, args) if isinstance(args, dict) else None


def _calls_from_json(text: str, name_only_ok: bool) -> list[ToolCall] | None:
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        obj = json.loads(fenced.group(1) if fenced else text)
    except (json.JSONDecodeError, RecursionError):
        return None
    objs = obj if isinstance(obj, list) else [obj]
    calls = [_call_from_obj(o, name_only_ok) for o in objs]
    return calls if calls and all(c is not None for c in calls) else None  # type: ignore[return-value]


def parse_json_tool_calls(text: str) -> list[ToolCall] | None:
    """Tool calls written as JSON ({"name", "arguments"|"parameters"}, lists, <tool_call> blocks); never raises."""
    try:
        if not isinstance(text, str):
            return None
        if "<tool_call>" in text:
            calls: list[ToolCall] = []
            for block in _TOOL_CALL_BLOCK.findall(text):
                found = _calls_from_json(block, name_only_ok=True)
                if found is None:
                    return None
                calls += found
            return calls or None
        return _calls_from_json(text, name_only_ok=False)
    except Exception:  # tolerant by contract: model output is arbitrary text
        return None
