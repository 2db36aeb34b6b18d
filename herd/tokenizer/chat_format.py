"""The Llama 3.x prompt format: messages + tools -> prompt text/ids; completion -> message + tool calls.

Everything about the format lives here (see LLAMA31.md section 3). The llama-models 0.3.0
`ChatFormat` is the oracle for token ids; the system-prompt text follows llama-models'
`LLama31Interface.system_messages` (3.1, json/function_tag) and llama-stack's prompt adapter
(3.2 python_list). Deliberate differences from the oracle are listed in `ChatFormat`'s notes.
"""
from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, get_args

from herd.errors import HerdError
from herd.tokenizer.messages import (
    BUILTIN_TOOLS,
    Message,
    Role,
    StopReason,
    ToolCall,
    ToolDefinition,
    new_call_id,
)
from herd.tokenizer.tokenizer import Tokenizer

ToolPromptFormat = Literal["json", "function_tag", "python_list"]

KNOWLEDGE_CUTOFF = "December 2023"
PYTHON_TAG = "<|python_tag|>"


# ---- system-prompt pieces (text identical to the llama-models / llama-stack generators) ---


@dataclass(frozen=True)
class _Param:
    name: str
    type: str
    description: str
    required: bool
    default: Any


def _params(tool: ToolDefinition) -> list[_Param]:
    schema = tool.parameters or {}
    required = set(schema.get("required") or [])
    out = []
    for name, p in (schema.get("properties") or {}).items():
        p = p if isinstance(p, dict) else {}
        kind = p.get("type", "any")
        kind = " or ".join(map(str, kind)) if isinstance(kind, list) else str(kind)
        out.append(_Param(name, kind, p.get("description") or "", name in required, p.get("default")))
    return out


def _jinja_tojson(obj: Any) -> str:
    # Jinja's built-in `tojson` (what the reference templates use): sorted keys, HTML-safe.
    s = json.dumps(obj, sort_keys=True)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")


def builtin_tools_prompt(tools: Sequence[ToolDefinition]) -> str:
    """'Environment: ipython\\n' plus 'Tools: a, b' for builtins other than code_interpreter ('' if no tools)."""
    if not tools:
        return ""
    names = [t.tool_name for t in tools if t.is_builtin and t.tool_name != "code_interpreter"]
    return "Environment: ipython\n" + (f"Tools: {', '.join(names)}" if names else "")


def date_prompt(today: date) -> str:
    """The knowledge-cutoff and today lines, e.g. 'Today Date: 21 September 2024'."""
    return f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {today.strftime('%d %B %Y')}"


def json_tools_prompt(tools: Sequence[ToolDefinition]) -> str:
    """The 3.1 JSON custom-tool instructions (sent as a user message after the system message)."""
    blocks = []
    for t in tools:
        params = _params(t)
        props = ",\n".join(
            f'                {{\n                    "{p.name}": {{\n                        "type": "object",\n'
            f'                        "description": "{p.description}"\n                    }}\n                }}'
            for p in params
        )
        blocks.append(
            f'{{\n    "type": "function",\n    "function": {{\n        "name": "{t.tool_name}",\n'
            f'        "description": "{t.description}",\n        "parameters": {{\n'
            f'            "type": "object",\n            "properties": [{chr(10) + props if props else ""}\n'
            f'            ],\n            "required": {_jinja_tojson([p.name for p in params if p.required])}\n'
            "        }\n    }\n}\n"
        )
    return (
        "Answer the user's question by making use of the following functions if needed.\n"
        "If none of the function can be used, please say so.\nHere is a list of functions in JSON format:\n"
        + "".join(blocks)
        + "\nReturn function calls in JSON format."
    )


def function_tag_tools_prompt(tools: Sequence[ToolDefinition]) -> str:
    """The 3.1 `<function=...>` custom-tool instructions (sent as a user message after the system message)."""
    parts = ["You have access to the following functions:\n\n"]
    for t in tools:
        params = {
            p.name: {"param_type": p.type, "description": p.description, "required": p.required} for p in _params(t)
        }
        parts.append(
            f"Use the function '{t.tool_name}' to '{t.description}':\n"
            f'{{"name": "{t.tool_name}", "description": "{t.description}", "parameters": {_jinja_tojson(params)}}}\n\n'
        )
    parts.append(
        "Think very carefully before calling functions.\n"
        "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
        '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
        "Reminder:\n"
        "- If looking for real time information use relevant functions before falling back to brave_search\n"
        "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
        "- Required parameters MUST be specified\n- Only call one function at a time\n"
        "- Put the entire function call reply on one line"
    )
    return "".join(parts)


def python_list_tools_prompt(tools: Sequence[ToolDefinition]) -> str:
    """The Llama 3.2/3.3 pythonic custom-tool system prompt (llama-stack's default wording)."""
    entries = []
    for t in tools:
        params = _params(t)
        props = ",\n".join(
            f'                "{p.name}": {{\n                    "type": "{p.type}",\n'
            f'                    "description": "{p.description}"'
            + (f',\n                    "default": "{p.default}"' if p.default else "")
            + "\n                }"
            for p in params
        )
        entries.append(
            f'{{\n        "name": "{t.tool_name}",\n        "description": "{t.description}",\n'
            f'        "parameters": {{\n            "type": "dict",\n'
            f'            "required": {_jinja_tojson([p.name for p in params if p.required])},\n'
            f'            "properties": {{{chr(10) + props if props else ""}\n            }}\n        }}\n    }}'
        )
    return (
        "You are a helpful assistant. You have access to functions, but you should only use them if they are "
        "required.\nYou are an expert in composing functions. You are given a question and a set of possible "
        "functions.\nBased on the question, you may or may not need to make one function/tool call to achieve "
        "the purpose.\n\nIf you decide to invoke any of the function(s), you MUST put it in the format of "
        "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
        "If you decide to invoke a function, you SHOULD NOT include any other text in the response. besides "
        "the function call in the above format.\nFor a boolean parameter, be sure to use `True` or `False` "
        "(capitalized) for the value.\n\n\nHere is a list of functions in JSON format that you can invoke.\n\n"
        "[\n    " + ",\n    ".join(entries) + "\n]\n\nYou can answer general questions or invoke tools when "
        "necessary.\nIn addition to tool calls, you should also augment your responses by using the tool outputs."
    )


def tool_response_text(
    status: Literal["success", "failure"], stdout: str | None = None, stderr: str | None = None
) -> str:
    """ToolResponseGenerator text: 'completed'/'failed' plus [stdout]...[/stdout] / [stderr]...[/stderr]."""
    text = "completed" if status == "success" else "failed"
    text += f"\n[stdout]{stdout}[/stdout]" if stdout else ""
    return text + (f"\n[stderr]{stderr}[/stderr]" if stderr else "")


def _check_format(tool_prompt_format: str) -> None:
    if tool_prompt_format not in get_args(ToolPromptFormat):
        raise HerdError(f"tool_prompt_format must be json, function_tag or python_list, got {tool_prompt_format!r}")


def _tool_choice_prompt(tool_choice: str, tools: Sequence[ToolDefinition]) -> str:
    if tool_choice in ("auto", "none"):
        return ""
    if tool_choice == "required":
        return "You MUST use one of the provided functions/tools to answer the user query."
    if tool_choice not in {t.tool_name for t in tools}:
        raise HerdError(f"tool_choice {tool_choice!r} names no offered tool")
    return f"You MUST use the tool `{tool_choice}` to answer the user query."


def compose_dialog(
    messages: Sequence[Message],
    tools: Sequence[ToolDefinition] | None = None,
    tool_prompt_format: ToolPromptFormat = "json",
    *,
    today: date | None = None,
    tool_choice: str = "auto",
) -> list[Message]:
    """Messages with the Llama system prompt composed in: tools, dates, custom-tool instructions."""
    _check_format(tool_prompt_format)
    tools = [] if tool_choice == "none" else list(tools or [])
    rest = list(messages)
    instruction = rest.pop(0).content if rest and rest[0].role == "system" else None
    custom = [t for t in tools if not t.is_builtin]
    choice = _tool_choice_prompt(tool_choice, tools)
    if tool_prompt_format == "python_list":  # Llama 3.2/3.3: everything in the system prompt, no dates
        builtin = [t for t in tools if t.is_builtin]
        sys = builtin_tools_prompt(builtin) + "\n" if builtin else ""
        sys += python_list_tools_prompt(custom) + "\n" if custom else ""
        sys += instruction or ""
        sys = (sys + ("\n" + choice if choice else "")).strip("\n")
        return ([Message("system", sys)] if sys else []) + rest
    sys = builtin_tools_prompt(tools) + "\n" if tools else ""
    sys += date_prompt(today or date.today())
    sys += "\n\n" + instruction if instruction else ""
    sys += ("\n" + choice if choice else "") + "\n"
    out = [Message("system", sys)]
    if custom:
        gen = json_tools_prompt if tool_prompt_format == "json" else function_tag_tools_prompt
        out.append(Message("user", gen(custom)))
    return out + rest


# ---- tool-call text -----------------------------------------------------------------------


def _py_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # == '"v"' for plain strings, as the reference writes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_py_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_py_value(str(k))}: {_py_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _py_call(call: ToolCall) -> str:
    return f"{call.tool_name}({', '.join(f'{k}={_py_value(v)}' for k, v in call.arguments.items())})"


def encode_tool_call(call: ToolCall, tool_prompt_format: ToolPromptFormat = "json") -> str:
    """The text of one tool call as the model writes it (without <|python_tag|>)."""
    if call.tool_name == "code_interpreter":
        if not isinstance(call.arguments.get("code"), str):
            raise HerdError("a code_interpreter tool call needs a string 'code' argument")
        return call.arguments["code"]
    if call.is_builtin:
        if "query" not in call.arguments:
            raise HerdError(f"a {call.tool_name} tool call needs a 'query' argument")
        return f'{call.tool_name}.call(query="{call.arguments["query"]}")'
    if tool_prompt_format == "json":
        return json.dumps({"type": "function", "name": call.tool_name, "parameters": call.arguments})
    if tool_prompt_format == "function_tag":
        return f"<function={call.tool_name}>{json.dumps(call.arguments)}</function>"
    _check_format(tool_prompt_format)
    return f"[{_py_call(call)}]"


# ---- parsing the model's output -----------------------------------------------------------

_FUNCTION_TAG = re.compile(r"<function=(?P<name>[^>]+)>")
_FUNCTION_TAG_ARGS = re.compile(r"<function=(?P<name>[^}]+)>(?P<args>{.*?})")  # the reference's looser form
_BUILTIN_CALL = re.compile(r'\b(?P<name>\w+)\.call\(query="(?P<query>[^"]*)"\)')


def _loads_dict(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _function_tag_calls(body: str) -> list[tuple[str, dict[str, Any]]] | None:
    found = []
    for m in _FUNCTION_TAG.finditer(body):
        rest, args = body[m.end() :], None
        if rest.lstrip().startswith("{"):  # raw_decode handles nested objects, unlike the reference regex
            try:
                obj, _ = json.JSONDecoder().raw_decode(rest.lstrip())
                args = obj if isinstance(obj, dict) else None
            except (json.JSONDecodeError, RecursionError):
                loose = _FUNCTION_TAG_ARGS.match(body, m.start())
                args = _loads_dict(loose.group("args").replace("'", '"')) if loose else None
        if args is not None:
            found.append((m.group("name").strip(), args))
    return found or None


def _json_call(obj: Any) -> tuple[str, dict[str, Any]] | None:
    """A call from {"type": "function", "name", "parameters"} (or "arguments"); None if not call-shaped."""
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # the OpenAI shape, sometimes echoed from the tool list
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    key = "parameters" if "parameters" in obj else "arguments"
    if obj.get("type") != "function" and key not in obj:
        return None  # plain JSON data that happens to have a "name", not a call
    args = obj.get(key, {})
    if isinstance(args, str):
        args = _loads_dict(args)
    return (obj["name"], args) if isinstance(args, dict) else None


def _json_calls(body: str) -> list[tuple[str, dict[str, Any]]] | None:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return None
    calls = [_json_call(o) for o in (obj if isinstance(obj, list) and obj else [obj])]
    return None if None in calls else calls  # type: ignore[return-value]


def _python_list_calls(body: str) -> list[tuple[str, dict[str, Any]]] | None:
    try:
        with warnings.catch_warnings():  # model text may hold invalid escapes: not our warning to show
            warnings.simplefilter("ignore")
            tree = ast.parse(body.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for el in tree.body.elts:
        if not isinstance(el, ast.Call) or not isinstance(el.func, ast.Name) or el.args:
            return None
        if any(k.arg is None for k in el.keywords):
            return None
        try:  # the JSON round trip turns tuples into lists and rejects sets, bytes, complex, ...
            args = json.loads(json.dumps({k.arg: ast.literal_eval(k.value) for k in el.keywords}))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        calls.append((el.func.id, args))
    return calls


def _custom_calls(body: str) -> list[tuple[str, dict[str, Any]]] | None:
    if "<function=" in body:
        return _function_tag_calls(body)
    return _json_calls(body) or _python_list_calls(body)


def _as_builtin(name: str, args: dict[str, Any]) -> dict[str, Any]:
    # A builtin called in a custom format: the reference keeps only the first value, as the query.
    if name == "code_interpreter" or "query" in args or not args:
        return args
    return {"query": next(iter(args.values()))}


def parse_tool_calls(body: str, ipython: bool) -> list[ToolCall]:
    """Tool calls in an assistant body (after <|python_tag|> / end tokens are stripped); [] if none."""
    found = _custom_calls(body)
    if found:
        return [ToolCall(new_call_id(), n, _as_builtin(n, a) if n in BUILTIN_TOOLS else a) for n, a in found]
    m = _BUILTIN_CALL.search(body)
    if m:
        return [ToolCall(new_call_id(), m.group("name"), {"query": m.group("query")})]
    if ipython and not body.lstrip().startswith(("{", "[")):  # a malformed JSON call / call list stays text
        return [ToolCall(new_call_id(), "code_interpreter", {"code": body})]
    return []


# ---- the format ---------------------------------------------------------------------------

_Segment = tuple[bool, str]  # (is_special_token, text)
_END_TOKENS = {"<|eot_id|>": "end_of_turn", "<|eom_id|>": "end_of_message", "<|end_of_text|>": "end_of_turn"}


class ChatFormat:
    """Llama 3.x dialogs to prompt text/ids, and completions back to messages.

    Ids equal llama-models 0.3.0 `ChatFormat.encode_dialog_prompt` on the same messages, except:
    (1) builtin tool calls (brave_search/wolfram_alpha/photogen) are prefixed with <|python_tag|>
    like code_interpreter, as the model emits them (LLAMA31.md judgment; 0.3.0 tags code only);
    (2) an assistant message with stop_reason None ends in <|eom_id|> iff its first call is a builtin;
    (3) several python_list calls are written as one list `[f(..), g(..)]`, and dict arguments as
    Python dict literals. Special-token text inside message content is always encoded as plain text.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        """Wrap a tokenizer with the Llama 3 special tokens."""
        if not tokenizer.is_llama3():
            raise HerdError("ChatFormat needs a Llama 3 vocabulary; use herd.tokenizer.templates for other models")
        self.tokenizer = tokenizer

    # -- encoding

    @staticmethod
    def _header(role: str) -> list[_Segment]:
        role = "ipython" if role == "tool" else role
        return [(True, "<|start_header_id|>"), (False, role), (True, "<|end_header_id|>"), (False, "\n\n")]

    @staticmethod
    def _message_segments(message: Message, tool_prompt_format: ToolPromptFormat) -> list[_Segment]:
        if message.role not in get_args(Role):
            raise HerdError(f"message role must be one of {', '.join(get_args(Role))}, got {message.role!r}")
        segs = ChatFormat._header(message.role)
        calls = message.tool_calls if message.role == "assistant" else []
        builtin_call = bool(calls) and calls[0].is_builtin
        if builtin_call:
            segs.append((True, PYTHON_TAG))
        segs.append((False, message.content))
        if message.role == "user" and message.context is not None:
            segs += [(False, "\n\n"), (False, message.context)]
        if calls and tool_prompt_format == "python_list" and not any(c.is_builtin for c in calls):
            segs.append((False, "[" + ", ".join(_py_call(c) for c in calls) + "]"))
        else:
            segs += [(False, encode_tool_call(c, tool_prompt_format)) for c in calls]
        eom = message.role == "assistant" and (
            message.stop_reason == "end_of_message" or (message.stop_reason is None and builtin_call)
        )
        return segs + [(True, "<|eom_id|>" if eom else "<|eot_id|>")]

    def _dialog_segments(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None,
        tool_prompt_format: ToolPromptFormat,
        today: date | None,
        tool_choice: str,
        add_generation_prompt: bool,
        compose_system: bool,
    ) -> list[_Segment]:
        if compose_system:
            messages = compose_dialog(messages, tools, tool_prompt_format, today=today, tool_choice=tool_choice)
        elif tools:
            raise HerdError("tools need compose_system=True (the tool prompt is part of the system prompt)")
        _check_format(tool_prompt_format)
        segs: list[_Segment] = [(True, "<|begin_of_text|>")]
        for m in messages:
            segs += self._message_segments(m, tool_prompt_format)
        return segs + (self._header("assistant") if add_generation_prompt else [])

    def _ids(self, segs: Sequence[_Segment]) -> list[int]:
        ids: list[int] = []
        for special, text in segs:
            ids += [self.tokenizer.special_tokens[text]] if special else self.tokenizer.encode(text)
        return ids

    def encode_dialog_prompt(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        tool_prompt_format: ToolPromptFormat = "json",
        *,
        today: date | None = None,
        tool_choice: str = "auto",
        add_generation_prompt: bool = True,
        compose_system: bool = True,
    ) -> list[int]:
        """Prompt ids; compose_system=False encodes the messages exactly as given (no dates, no tools)."""
        args = (tools, tool_prompt_format, today, tool_choice, add_generation_prompt, compose_system)
        return self._ids(self._dialog_segments(messages, *args))

    def render_dialog(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        tool_prompt_format: ToolPromptFormat = "json",
        *,
        today: date | None = None,
        tool_choice: str = "auto",
        add_generation_prompt: bool = True,
        compose_system: bool = True,
    ) -> str:
        """The prompt text whose pieces `encode_dialog_prompt` encodes (same arguments, same result)."""
        args = (tools, tool_prompt_format, today, tool_choice, add_generation_prompt, compose_system)
        return "".join(text for _, text in self._dialog_segments(messages, *args))

    def encode_message(self, message: Message, tool_prompt_format: ToolPromptFormat = "json") -> list[int]:
        """Ids of one message: header, content, tool calls, end token."""
        return self._ids(self._message_segments(message, tool_prompt_format))

    # -- decoding

    def decode_assistant_message(
        self, ids_or_text: Sequence[int] | str, stop_reason_default: StopReason = "out_of_tokens"
    ) -> Message:
        """Parse a completion (ids or text) into an assistant Message with tool calls; never raises."""
        text = ids_or_text if isinstance(ids_or_text, str) else self.tokenizer.decode(list(ids_or_text))
        return decode_assistant_text(text, stop_reason_default)


def decode_assistant_text(text: str, stop_reason_default: StopReason = "out_of_tokens") -> Message:
    """LLAMA31.md §3 decoding of completion text: header, python_tag, end token, custom/builtin/code calls."""
    content = text.strip(" ")
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    content = content[len(header) :] if content.startswith(header) else content
    prefix, ipython = "", False
    if PYTHON_TAG in content:  # normally at the start; text before a mid-message tag is kept as content
        prefix, _, content = content.partition(PYTHON_TAG)
        ipython = True
    stop_reason: StopReason = stop_reason_default
    for token, reason in _END_TOKENS.items():
        if content.endswith(token):
            content, stop_reason = content[: -len(token)], reason  # type: ignore[assignment]
            break
    try:
        calls = parse_tool_calls(content, ipython)
    except Exception:  # the parsers already guard; this keeps the never-raise promise absolute
        calls = []
    if calls:
        return Message("assistant", prefix.strip(), tool_calls=calls, stop_reason=stop_reason)
    return Message("assistant", prefix + content, stop_reason=stop_reason)
