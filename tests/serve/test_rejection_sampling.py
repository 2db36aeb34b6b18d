"""Rejection sampling (herd/train/rejection.py) against the shared real server through the OpenAI-compatible
Generator (herd/generator_http.py): N samples per prompt, verified, the best kept as SFT data and
best-vs-worst as preference pairs that herd's own data readers accept; plus the verifiers on their own."""
from __future__ import annotations

import asyncio
import json

import pytest
from servekit import API_KEY, SMOL_ID, TINY_ID, WEATHER_QUESTION, WEATHER_TOOL

from herd.errors import HerdError
from herd.generator import ChatRequest, complete
from herd.generator_http import OpenAIGenerator
from herd.tokenizer.messages import Message, ToolCall, to_messages, to_tools
from herd.tokenizer.prompter import Prompter
from herd.tokenizer.tokenizer import Llama3Tokenizer
from herd.train.data import chat_examples, preference_examples
from herd.train.rejection import (
    VERIFIERS,
    exact_match,
    json_schema,
    read_prompts,
    regex_match,
    rejection_sample,
    tool_call_match,
    write_jsonl,
)


def test_verifiers():
    reply = Message("assistant", " Paris. ")
    assert exact_match({"answer": "paris"}, reply) == 1.0 and exact_match({"answer": ["Lyon"]}, reply) == 0.0
    assert regex_match({"pattern": r"^\s*Par"}, reply) == 1.0 and regex_match({"pattern": "Rome"}, reply) == 0.0
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    assert json_schema({"schema": schema}, Message("assistant", '{"x": 3}')) == 1.0
    assert json_schema({"schema": schema}, Message("assistant", '{"x": "3"}')) == 0.0
    assert json_schema({"schema": schema}, Message("assistant", "x=3")) == 0.0
    calls = Message("assistant", "", [ToolCall("1", "b", {"k": 1}), ToolCall("2", "a", {})])
    assert tool_call_match({"expected_tool_calls": [{"name": "a"}, {"name": "b", "arguments": {"k": 1}}]}, calls) == 1.0
    assert tool_call_match({"expected_tool_calls": [{"name": "a"}]}, calls) == 0.0
    with pytest.raises(HerdError, match="answer"):
        exact_match({}, reply)


def test_the_http_generator_speaks_to_a_real_server(server):
    gen = OpenAIGenerator(server.v1, TINY_ID, api_key=API_KEY)
    request = ChatRequest([Message("user", WEATHER_QUESTION[0]["content"])],
                          to_tools([WEATHER_TOOL]),
                          "required", temperature=0.0, max_tokens=40)
    result = asyncio.run(complete(gen, request))
    assert [c.tool_name for c in result.message.tool_calls] == ["get_weather"]
    assert result.finish_reason == "tool_calls" and result.prompt_tokens > 0 and result.completion_tokens > 0
    bad = OpenAIGenerator(server.v1, "no-such-model", api_key=API_KEY)
    with pytest.raises(HerdError, match="404"):
        asyncio.run(complete(bad, ChatRequest([Message("user", "hi")])))


def test_rejection_sampling_keeps_verified_answers(server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"messages": WEATHER_QUESTION, "tools": [WEATHER_TOOL],
             "expected_tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
            {"messages": [{"role": "user", "content": "What is the weather in Paris today?"}], "tools": [WEATHER_TOOL],
             "expected_tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_prompts(prompts)
    gen = OpenAIGenerator(server.v1, TINY_ID, api_key=API_KEY)
    done = []
    result = asyncio.run(rejection_sample(gen, records, tool_call_match, n=4, temperature=1.0, max_tokens=40,
                                          seed=7, progress=done.append))
    assert result.prompts == 2 and result.samples == 8 and len(done) == 2
    assert result.kept == len(result.sft) == sum(s >= 1.0 for s in result.scores) >= 1
    for row in result.sft:  # what is kept passes the verifier again, as a herd Message
        assert tool_call_match(rows[0], to_messages(row["messages"])[-1]) == 1.0 and row["score"] == 1.0
    sft, prefs = tmp_path / "sft.jsonl", tmp_path / "prefs.jsonl"
    assert write_jsonl(sft, result.sft) == result.kept and write_jsonl(prefs, result.pairs) == len(result.pairs)
    prompter = Prompter(Llama3Tokenizer.default())  # the tiny model speaks Llama 3.1's format
    assert len(list(chat_examples(sft, prompter))) == result.kept
    assert len(list(preference_examples(prefs, prompter))) == len(result.pairs)
    for pair in result.pairs:  # the chosen answer verifies, the rejected one does not
        assert tool_call_match(rows[0], to_messages(pair["chosen"])[0]) == 1.0
        assert tool_call_match(rows[0], to_messages(pair["rejected"])[0]) == 0.0


def test_exact_match_on_the_embedded_model(server):
    gen = OpenAIGenerator(server.v1, SMOL_ID, api_key=API_KEY)
    records = [{"messages": [{"role": "user", "content": "What is the capital of France? Answer with one word."}],
                "answer": ["Paris"]}]
    result = asyncio.run(rejection_sample(gen, records, VERIFIERS["exact"], n=3, temperature=0.2, max_tokens=8))
    assert result.samples == 3 and result.scores[0] in (0.0, 1.0)
    assert result.kept == (1 if result.scores[0] == 1.0 else 0)
