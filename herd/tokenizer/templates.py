"""Jinja chat templates for non-Llama-3 models (from tokenizer_config.json or GGUF), rendered as HF does.

Rendering follows `transformers`' `apply_chat_template(..., tokenize=False)`: a sandboxed
environment with trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson`
that does not HTML-escape, the `{% generation %}` tag, and messages whose None-valued keys
are dropped. Also a tolerant parser for the JSON tool calls such models write.

Templates that ignore tools. Many small models' templates (SmolLM2-Instruct's among them) never
read the `tools` variable, so transformers renders the same prompt with or without tools and the
model never learns they exist. Whether a template reads `tools` is decided from its AST
(`jinja2.meta.find_undeclared_variables`), never from the model's name. A template that reads it is
rendered exactly as transformers does. For one that does not, `ChatTemplate.render`:

* injects a tool prompt when tools are offered (and tool_choice is not "none"): the block below is
  appended to the first message's content when that is a system message (after a blank line), or
  else sent as a new leading system message (which replaces a template's built-in default system
  prompt; should the template reject a system message, the block goes in front of the first user
  message instead). Each tool is one line of JSON, the OpenAI shape the `tools` variable would hold::

      # Tools

      You can call the following tools. Each tool is described by a JSON schema:
      {"type": "function", "function": {"name": "get_weather", "description": ..., "parameters": {...}}}

      To call a tool, reply with nothing but a JSON object: {"name": <tool name>, "arguments": <the
      arguments as a JSON object>}. To call several tools at once, reply with a JSON list of such
      objects. The result of each call is sent back to you in a later message. If no tool is needed,
      answer in plain text.

  (that last paragraph, `TOOL_PROMPT_USAGE`, is a single line in the prompt; it is wrapped here),

  with tool_choice "required" one more line, `You must call at least one of these tools.`, and with a
  tool's name, `You must call the tool `NAME`.`;
* renders an assistant message's tool calls as content: the same JSON the model was asked to write
  (`{"name": ..., "arguments": {...}}`, a list for several calls) after any text content;
* keeps a `tool` message (herd's `ipython`) as role "tool" when the template renders that role
  (probed once by rendering a sample tool message and looking for its content in the output:
  SmolLM2's template renders any role generically), and otherwise sends it as a user message
  `Tool result (NAME):` then a newline and the result (consecutive results merged into one message,
  blank-line separated; plain `Tool result:` when the call's tool name is unknown).

`parse_json_tool_calls` reads the reply back (bare JSON, a list, or <tool_call> blocks).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herd.errors import HerdError
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition, new_call_id
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


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`value` (plain JSON data) with fn applied to every string value (keys are left alone)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


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


# ---- tools for templates that ignore them ---------------------------------------------------

TOOL_PROMPT_INTRO = "# Tools\n\nYou can call the following tools. Each tool is described by a JSON schema:"
TOOL_PROMPT_USAGE = (
    'To call a tool, reply with nothing but a JSON object: {"name": <tool name>, "arguments": <the arguments '
    'as a JSON object>}. To call several tools at once, reply with a JSON list of such objects. The result of '
    "each call is sent back to you in a later message. If no tool is needed, answer in plain text."
)
TOOL_RESULT_PREFIX = "Tool result"


def tool_prompt(tools: Sequence[ToolDefinition | Mapping[str, Any]], tool_choice: str = "auto") -> str:
    """The system-prompt block that offers `tools` to a model whose template ignores them."""
    dicts = [_tool_to_template_dict(t) for t in tools]
    lines = [json.dumps(d, ensure_ascii=False) for d in dicts]
    text = f"{TOOL_PROMPT_INTRO}\n" + "\n".join(lines) + f"\n\n{TOOL_PROMPT_USAGE}"
    if tool_choice in ("auto", "none"):
        return text
    if tool_choice == "required":
        return text + "\nYou must call at least one of these tools."
    names = {_tool_name(d) for d in dicts}
    if tool_choice not in names:
        raise HerdError(f"tool_choice {tool_choice!r} names no offered tool")
    return text + f"\nYou must call the tool `{tool_choice}`."


def _tool_name(tool: Any) -> Any:
    if isinstance(tool, Mapping):
        fn = tool.get("function")
        return fn.get("name") if isinstance(fn, Mapping) else tool.get("name")
    return None


def tool_calls_json(tool_calls: Sequence[Mapping[str, Any]]) -> str:
    """Template-dict tool calls as the JSON a model is asked to write: one object, or a list of them."""
    objs = []
    for call in tool_calls:
        fn = call.get("function") if isinstance(call.get("function"), Mapping) else call
        args = fn.get("arguments", {})
        if isinstance(args, str):  # OpenAI sends arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except (json.JSONDecodeError, RecursionError):
                pass
        objs.append({"name": fn.get("name"), "arguments": args})
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return json.dumps(content, ensure_ascii=False)


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
            variables = meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as e:
            raise HerdError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None
        self.source = source
        # a template that never reads `tools` gets them as a system-prompt block instead (module docstring)
        self.uses_tools = "tools" in variables
        self._renders_tool_role: bool | None = None
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
        tool_choice: str = "auto",
        literal: Callable[[str], str] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text; template errors (including raise_exception) become HerdError.

        A template that reads `tools` is rendered as transformers does. One that does not gets the
        tool prompt (when tools are offered and tool_choice is not "none") and its tool calls and
        results rewritten as the module docstring describes; tool_choice only shapes that prompt.
        `literal` is applied to every string the messages and tools carry before rendering
        (Tokenizer.mark_literal: their special-token text is then encoded as plain text).
        """
        if not messages:
            raise HerdError("cannot apply a chat template to an empty conversation")
        chat = [message_to_template_dict(m) for m in messages]
        tool_dicts = None if tools is None else [_tool_to_template_dict(t) for t in tools]
        if literal is not None:
            chat = _map_strings(chat, literal)
            tool_dicts = _map_strings(tool_dicts, literal)
        variables = {
            "tools": tool_dicts,
            "documents": None if documents is None else _plain(list(documents)),
            "add_generation_prompt": add_generation_prompt,
            **self.special_tokens,
            **_plain(kwargs),
        }
        if self.uses_tools:
            return self._render(chat, variables)
        chat = self._tool_history(chat)
        if not tool_dicts or tool_choice == "none":
            return self._render(chat, variables)
        block = tool_prompt(tool_dicts, tool_choice)
        first = chat[0]
        if first.get("role") == "system" and isinstance(first.get("content", ""), str):
            content = first.get("content", "")
            return self._render([{**first, "content": f"{content}\n\n{block}" if content else block}, *chat[1:]],
                                variables)
        try:
            return self._render([{"role": "system", "content": block}, *chat], variables)
        except HerdError:  # a template without system messages: put the block in the first user turn
            for i, m in enumerate(chat):
                if m.get("role") == "user":
                    merged = {**m, "content": f"{block}\n\n{_text(m.get('content'))}"}
                    return self._render([*chat[:i], merged, *chat[i + 1:]], variables)
            raise

    def _render(self, chat: list[dict[str, Any]], variables: dict[str, Any]) -> str:
        try:
            return self._template.render(messages=chat, **variables)
        except jinja2.TemplateError as e:
            raise HerdError(f"chat template error: {e.message or type(e).__name__}") from None
        except Exception as e:  # a template is untrusted code; any failure is a bad-input error
            raise HerdError(f"chat template failed: {type(e).__name__}: {e}") from None

    @property
    def renders_tool_role(self) -> bool:
        """Whether a role "tool" message comes out with its content (probed once, by rendering one)."""
        if self._renders_tool_role is None:
            probe = "herd-tool-result-probe-7f3a"
            chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "{}"},
                    {"role": "tool", "content": probe}]
            try:
                out = self._render(chat, {"tools": None, "documents": None, "add_generation_prompt": True,
                                          **self.special_tokens})
                self._renders_tool_role = probe in out
            except HerdError:
                self._renders_tool_role = False
        return self._renders_tool_role

    def _tool_history(self, chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tool calls and results rewritten for a template that knows nothing of them."""
        names: dict[Any, Any] = {}
        out: list[dict[str, Any]] = []
        for m in chat:
            role = m.get("role")
            if role == "assistant" and m.get("tool_calls"):
                calls = [c for c in m["tool_calls"] if isinstance(c, Mapping)] \
                    if isinstance(m["tool_calls"], list) else []
                for c in calls:
                    if isinstance(c.get("function"), Mapping):
                        names[c.get("id")] = c["function"].get("name")
                text = _text(m.get("content"))
                call_json = tool_calls_json(calls) if calls else ""
                m = {k: v for k, v in m.items() if k != "tool_calls"}
                m["content"] = f"{text}\n{call_json}" if text else call_json
            elif role == "tool":
                if self.renders_tool_role:
                    m = {**m, "content": m.get("content", "")}
                else:
                    name = m.get("name") or names.get(m.get("tool_call_id"))
                    label = f"{TOOL_RESULT_PREFIX} ({name})" if isinstance(name, str) and name else TOOL_RESULT_PREFIX
                    result = f"{label}:\n{_text(m.get('content'))}"
                    if out and out[-1].get("role") == "user" and out[-1].get("_herd_tool_result"):
                        out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{result}"}
                        continue
                    m = {"role": "user", "content": result, "_herd_tool_result": True}
            out.append(m)
        return [{k: v for k, v in m.items() if k != "_herd_tool_result"} for m in out]


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
