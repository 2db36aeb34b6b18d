"""tool_choice auto end to end: the tiny overfit Llama-3-tokenizer model emits a Llama 3.1 JSON tool call
(`<|python_tag|>{...}<|eom_id|>`) that comes back parsed — OpenAI and Llama Stack, streamed and not."""
from __future__ import annotations

import json

from servekit import TINY_ID, WEATHER_QUESTION, WEATHER_TOOL

GREEDY = {"temperature": 0, "max_tokens": 40}


def test_auto_tool_call_non_stream(openai_client):
    r = openai_client.chat.completions.create(model=TINY_ID, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                              **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert r.usage.completion_tokens > 10


def test_auto_tool_call_stream(openai_client):
    chunks = list(openai_client.chat.completions.create(model=TINY_ID, messages=WEATHER_QUESTION,
                                                        tools=[WEATHER_TOOL], stream=True, **GREEDY))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == ""  # the <|python_tag|> and the JSON never leak out as text
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].type == "function"
    assert deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_returns_text(openai_client):
    r = openai_client.chat.completions.create(model=TINY_ID, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                              tool_choice="none", temperature=0, max_tokens=5)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ("stop", "length")


def test_tool_result_round_trip_is_accepted(openai_client):
    first = openai_client.chat.completions.create(model=TINY_ID, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                                  **GREEDY)
    call = first.choices[0].message.tool_calls[0]
    messages = [*WEATHER_QUESTION, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})}]
    r = openai_client.chat.completions.create(model=TINY_ID, messages=messages, tools=[WEATHER_TOOL],
                                              temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls") and r.usage.prompt_tokens > 100


def _native_tool() -> dict:
    fn = WEATHER_TOOL["function"]
    return {"tool_name": fn["name"], "description": fn["description"],
            "parameters": {"city": {"param_type": "string", "description": "The city", "required": True}}}


def test_llama_stack_native_tool_call(stack_client):
    kw = dict(model_id=TINY_ID, messages=WEATHER_QUESTION, tools=[_native_tool()],
              tool_config={"tool_choice": "auto", "tool_prompt_format": "json"},
              sampling_params={"strategy": {"type": "greedy"}, "max_tokens": 40})
    r = stack_client.inference.chat_completion(**kw)
    msg = r.completion_message
    assert msg.stop_reason == "end_of_message"
    (call,) = msg.tool_calls
    assert call.tool_name == "get_weather" and call.arguments == {"city": "Paris"} and call.call_id
    events = list(stack_client.inference.chat_completion(stream=True, **kw))
    assert events[0].event.event_type == "start" and events[-1].event.event_type == "complete"
    assert events[-1].event.stop_reason == "end_of_message"
    done = [e.event.delta for e in events if e.event.delta.type == "tool_call" and
            e.event.delta.parse_status == "succeeded"]
    assert len(done) == 1 and done[0].tool_call.tool_name == "get_weather"
    assert done[0].tool_call.arguments == {"city": "Paris"}
    assert not "".join(e.event.delta.text or "" for e in events if e.event.delta.type == "text")


def test_llama_stack_named_tool_in_every_prompt_format(stack_client):
    for fmt in ("json", "function_tag", "python_list"):
        r = stack_client.inference.chat_completion(
            model_id=TINY_ID, messages=WEATHER_QUESTION, tools=[_native_tool()],
            tool_config={"tool_choice": "get_weather", "tool_prompt_format": fmt},
            sampling_params={"strategy": {"type": "greedy"}, "max_tokens": 40})
        (call,) = r.completion_message.tool_calls
        assert call.tool_name == "get_weather" and isinstance(call.arguments.get("city"), str), fmt
