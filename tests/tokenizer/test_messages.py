"""The one message seam: to_messages() / to_tools() over OpenAI, Llama Stack and herd shapes, and their errors."""
from __future__ import annotations

import json
import uuid

import pytest

from herd.errors import HerdError
from herd.tokenizer.chat_format import ChatFormat
from herd.tokenizer.messages import (
    Message,
    ToolCall,
    ToolDefinition,
    openai_finish_reason,
    plain_text,
    to_messages,
    to_tools,
)
from herd.tokenizer.tokenizer import Llama3Tokenizer


@pytest.fixture(scope="module")
def cf() -> ChatFormat:
    return ChatFormat(Llama3Tokenizer.default())


# ---- OpenAI shapes ------------------------------------------------------------------------


def test_openai_messages() -> None:
    msgs = to_messages([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "q"}}},
            {"id": "call_3", "type": "function", "function": {"name": "noargs", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        {"role": "assistant", "content": "Done."},
    ])
    assert msgs[0] == Message("system", "Be brief.") and msgs[1] == Message("user", "Hi there")
    calls = msgs[2].tool_calls
    assert [(c.call_id, c.tool_name, c.arguments) for c in (calls[0], calls[2])] == [
        ("call_1", "get_weather", {"city": "Paris"}), ("call_3", "noargs", {})]
    assert calls[1].is_builtin and uuid.UUID(calls[1].call_id).version == 4
    assert msgs[2].content == "" and msgs[2].stop_reason is None
    assert msgs[3] == Message("tool", "21 C", call_id="call_1") and msgs[4] == Message("assistant", "Done.")


@pytest.mark.parametrize("bad,match,param", [
    ({"role": "user"}, "messages must be a list", "messages"),
    ([], "must not be empty", "messages"),
    ("hi", "messages must be a list", "messages"),
    (["hi"], r"messages\[0\] must be an object", "messages[0]"),
    ([{"role": "robot", "content": "x"}], r"messages\[0\].role", "messages[0].role"),
    ([{"role": "user", "content": 3}], r"messages\[0\].content must be", "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], r"content\[0\].*'image_url'",
     "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "audio"}]}], r"content\[0\].*'audio'", "messages[0].content[0].type"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{x"}}]}],
     r"tool_calls\[0\].function.arguments is not valid JSON", "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}],
     "must be a JSON object", "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}],
     r"tool_calls\[0\] must be", "messages[0].tool_calls[0].function.name"),
    ([{"role": "assistant", "tool_calls": {"a": 1}}], "tool_calls must be a list", "messages[0].tool_calls"),
    ([{"role": "user", "content": "ok"}, {"role": "assistant", "tool_calls": [{"tool_name": ""}]}],
     r"messages\[1\].tool_calls\[0\]", "messages[1].tool_calls[0].tool_name"),
])
def test_malformed_messages_name_the_field(bad: object, match: str, param: str) -> None:
    with pytest.raises(HerdError, match=match) as e:
        to_messages(bad)
    assert e.value.param == param and "\n" not in str(e.value)


def test_openai_tools() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = to_tools([
        {"type": "function", "function": {"name": "get_weather", "description": "W", "parameters": schema}},
        {"type": "function", "function": {"name": "ping"}},
        {"type": "brave_search"}, {"type": "wolfram_alpha"}, {"type": "code_interpreter"},
    ])
    assert tools[0] == ToolDefinition("get_weather", "W", schema) and tools[1] == ToolDefinition("ping")
    assert [t.tool_name for t in tools[2:]] == ["brave_search", "wolfram_alpha", "code_interpreter"]
    assert all(t.is_builtin for t in tools[2:]) and not tools[0].is_builtin
    assert to_tools(None) == [] and to_tools(tools) == tools  # ToolDefinitions pass through


@pytest.mark.parametrize("bad,match,param", [
    ({"type": "function"}, "tools must be a list", "tools"),
    ([{"type": "photogen"}], r"tools\[0\] must be .*'photogen'", "tools[0]"),
    ([{"type": "retrieval"}], r"tools\[0\]", "tools[0]"),
    ([{"type": "function", "function": {"description": "no name"}}], r"tools\[0\]", "tools[0].function"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"properties": [1]}}}], "JSON schema",
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "description must be a string",
     "tools[0].function.description"),
    (["f"], r"tools\[0\]", "tools[0]"),
    ([{"tool_name": "f", "parameters": {"x": 5}}], r"tools\[0\].parameters.x", "tools[0].parameters.x"),
])
def test_malformed_tools_name_the_field(bad: object, match: str, param: str) -> None:
    with pytest.raises(HerdError, match=match) as e:
        to_tools(bad)
    assert e.value.param == param


def test_to_openai_round_trip(cf: ChatFormat) -> None:
    m = cf.decode_assistant_message('<function=get_weather>{"city": "Paris"}</function><|eot_id|>')
    out = m.to_openai()
    assert out["content"] is None and out["tool_calls"][0]["type"] == "function"
    assert out["tool_calls"][0]["id"] == m.tool_calls[0].call_id
    assert json.loads(out["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert to_messages([out])[0].tool_calls == m.tool_calls
    assert openai_finish_reason(m) == "tool_calls"
    assert openai_finish_reason(Message("assistant", "x", stop_reason="out_of_tokens")) == "length"
    assert openai_finish_reason(Message("assistant", "x", stop_reason="end_of_turn")) == "stop"
    assert Message("assistant", "hi").to_openai() == {"role": "assistant", "content": "hi"}
    assert Message("tool", "r", call_id="c").to_openai() == {"role": "tool", "tool_call_id": "c", "content": "r"}
    assert Message("system", "s").to_openai() == {"role": "system", "content": "s"}


# ---- Llama Stack shapes, pydantic models, mixed lists ---------------------------------------


def test_llama_stack_messages() -> None:
    msgs = to_messages([
        {"role": "system", "content": "sys"},
        {"role": "user", "content": {"type": "text", "text": "native item"}, "context": [{"type": "text", "text": "doc"}]},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"call_id": "c", "tool_name": "brave_search", "arguments": {"query": "q"}}]},
        {"role": "ipython", "call_id": "c", "content": [{"type": "text", "text": "result"}, " and more"]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"call_id": "d", "tool_name": "f", "arguments": {}, "arguments_json": '{"a": 1}'},
            {"call_id": "e", "tool_name": "code_interpreter", "arguments": "print(1)"}]},
    ])
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert msgs[1] == Message("user", "native item", context="doc")
    assert msgs[2].stop_reason == "end_of_message" and msgs[2].tool_calls == [ToolCall("c", "brave_search", {"query": "q"})]
    assert msgs[3] == Message("tool", "result and more", call_id="c")
    assert [c.arguments for c in msgs[4].tool_calls] == [{"a": 1}, {"code": "print(1)"}]


def test_llama_stack_tools() -> None:
    tools = to_tools([
        {"tool_name": "get_weather", "description": "W", "parameters": {
            "city": {"param_type": "str", "description": "the city", "required": True},
            "days": {"param_type": "int", "required": False, "default": 1}}},
        {"tool_name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
        {"tool_name": "brave_search"},
    ])
    assert tools[0] == ToolDefinition("get_weather", "W", {
        "type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "the city"},
            "days": {"type": "integer", "description": "", "default": 1}}})
    assert tools[1].parameters["properties"] == {"q": {"type": "string"}} and tools[2].is_builtin


def test_pydantic_models_and_mixed_lists() -> None:
    from herd.serve import protocol as p

    req = p.ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]}]})
    native = p.StackMessage.model_validate({"role": "tool", "call_id": "1", "content": "r"})
    msgs = to_messages([*req.messages, native, Message("user", "again")])
    assert msgs == [Message("user", "Hi"), Message("assistant", "", [ToolCall("1", "f", {})]),
                    Message("tool", "r", call_id="1"), Message("user", "again")]


def test_lenient_reading_for_screens() -> None:
    """Shields read everything they can: images as <image>, unparsable arguments as text."""
    msgs = to_messages([
        {"role": "user", "content": [{"type": "text", "text": "look "}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
    ], lenient=True)
    assert msgs[0].content == "look <image>" and msgs[1].tool_calls[0].arguments == {"arguments": "{oops"}
    with pytest.raises(HerdError, match="image_url"):
        to_messages(msgs[:0] + [{"role": "user", "content": [{"type": "image_url"}]}])
    assert plain_text([{"type": "text", "text": "a"}, "b"]) == "ab" and plain_text(None) == ""
    with pytest.raises(HerdError) as e:
        plain_text(5, "input")
    assert e.value.param == "input"
