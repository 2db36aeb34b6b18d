"""The OpenAI-compatible routes, driven by the official `openai` client against a real `herd serve`."""
from __future__ import annotations

import base64
import json

import jsonschema
import numpy as np
import openai
import pytest
from servekit import API_KEY, EMBED_ID, SMOL_ID, TINY_ID, WEATHER_QUESTION, WEATHER_TOOL

GREEDY = {"temperature": 0}


def test_chat_non_stream_has_content_and_usage(openai_client):
    r = openai_client.chat.completions.create(
        model=SMOL_ID, messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, **GREEDY)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == SMOL_ID and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream_and_ends_with_usage(openai_client):
    kw = dict(model=SMOL_ID, messages=[{"role": "user", "content": "Name a color."}], max_tokens=8, **GREEDY)
    full = openai_client.chat.completions.create(**kw)
    chunks = list(openai_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_ends_with_done_sentinel(http):
    body = {"model": SMOL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_validates_against_the_schema(openai_client, choice):
    # SmolLM2's chat template ignores tools; the grammar still makes its reply a valid call
    r = openai_client.chat.completions.create(model=SMOL_ID, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                              tool_choice=choice, max_tokens=40, **GREEDY)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.tool_calls and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_forced_tool_call_streams_as_tool_call_deltas(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model=SMOL_ID, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=40,
        stream=True, **GREEDY))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(args), WEATHER_TOOL["function"]["parameters"])
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_cut_off_by_max_tokens_comes_back_as_far_as_it_got(openai_client, stream):
    kw = dict(model=SMOL_ID, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="required", **GREEDY)
    whole = openai_client.chat.completions.create(max_tokens=40, **kw).choices[0].message.tool_calls[0].function
    if stream:
        chunks = list(openai_client.chat.completions.create(max_tokens=15, stream=True, **kw))
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        name, args = deltas[0].function.name, "".join(d.function.arguments or "" for d in deltas)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    else:
        choice = openai_client.chat.completions.create(max_tokens=15, **kw).choices[0]
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        name, args, finish = choice.message.tool_calls[0].function.name, \
            choice.message.tool_calls[0].function.arguments, choice.finish_reason
    # the greedy call, cut where max_tokens ran out: OpenAI's finish_reason "length" with a partial call
    assert finish == "length" and name == whole.name == "get_weather"
    assert args and whole.arguments.startswith(args) and args != whole.arguments


def test_a_tool_schema_the_grammar_cannot_compile_is_relaxed_with_a_warning(http):
    tool = {"type": "function", "function": {"name": "tag_photo", "parameters": {
        "type": "object", "required": ["tags", "city"], "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "enum": ["sea", "sky"]},  # unsatisfiable
            "city": {"type": "string"}}}}}
    r = http.post("/v1/chat/completions", json={"model": SMOL_ID, "messages": WEATHER_QUESTION, "tools": [tool],
                                                "tool_choice": "required", "max_tokens": 40, "temperature": 0,
                                                "parallel_tool_calls": False})
    assert r.status_code == 200, r.text
    assert "tools[0] (tag_photo): parameters.properties.tags: dropped 'enum'" in r.headers["warning"]
    assert r.headers["warning"].startswith('299 herd "')
    call = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls", call
    args = json.loads(call["arguments"])
    assert call["name"] == "tag_photo" and set(args) == {"tags", "city"}
    assert all(isinstance(t, str) for t in args["tags"]) and isinstance(args["city"], str)
    plain = http.post("/v1/chat/completions", json={"model": SMOL_ID, "messages": WEATHER_QUESTION, "max_tokens": 2})
    assert "warning" not in plain.headers


def test_forced_tool_call_on_a_llama3_model(openai_client):
    r = openai_client.chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": "Hello"}],
                                              tools=[WEATHER_TOOL], tool_choice="required", max_tokens=40,
                                              **GREEDY)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_response_format_json_schema_output_validates(openai_client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name", "age"],
              "additionalProperties": False}
    r = openai_client.chat.completions.create(
        model=SMOL_ID, messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}, **GREEDY)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls, r.choices[0].message
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_chat_logprobs_n_and_seed(openai_client):
    kw = dict(model=SMOL_ID, messages=[{"role": "user", "content": "Say a word."}], max_tokens=4, n=2, seed=7,
              temperature=1.0, logprobs=True, top_logprobs=2)
    a, b = (openai_client.chat.completions.create(**kw) for _ in range(2))
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]
    lp = a.choices[0].logprobs.content
    assert lp and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lp)
    assert "".join(t.token for t in lp) == a.choices[0].message.content


def test_completions_echo_logprobs_and_stream(openai_client):
    r = openai_client.completions.create(model=SMOL_ID, prompt="The capital of France is", max_tokens=4,
                                         echo=True, logprobs=2, **GREEDY)
    c = r.choices[0]
    assert r.object == "text_completion" and c.text.startswith("The capital of France is")
    assert len(c.logprobs.tokens) == r.usage.completion_tokens and len(c.logprobs.top_logprobs[0]) == 2
    stream = openai_client.completions.create(model=SMOL_ID, prompt="The capital of France is", max_tokens=4,
                                              stream=True, **GREEDY)
    assert "The capital of France is" + "".join(ch.choices[0].text for ch in stream) == c.text
    two = openai_client.completions.create(model=SMOL_ID, prompt=["One, two,", "A, B,"], max_tokens=3, **GREEDY)
    assert sorted(ch.index for ch in two.choices) == [0, 1] and two.usage.prompt_tokens > 4


def test_embeddings_paraphrases_are_closer_than_unrelated(openai_client):
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    r = openai_client.embeddings.create(model=EMBED_ID, input=texts)
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2] + 0.3
    assert r.usage.prompt_tokens > 10 and r.model == EMBED_ID
    b64 = openai_client.embeddings.with_raw_response.create(model=EMBED_ID, input=texts[0],
                                                            encoding_format="base64")
    raw = json.loads(b64.text)["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(raw), dtype="<f4"), v[0], atol=1e-6)


def test_models_list_and_retrieve_with_slash_in_id(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert ids == [SMOL_ID, TINY_ID, EMBED_ID]
    m = openai_client.models.retrieve(TINY_ID)
    assert m.id == TINY_ID and m.owned_by == "herd"


def test_openai_error_types(server, openai_client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gpt-4o", messages=WEATHER_QUESTION)
    assert SMOL_ID in str(e.value) and TINY_ID in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=SMOL_ID, messages=WEATHER_QUESTION, max_tokens=100_000)
    assert "max_tokens" in str(e.value) and "100000" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=SMOL_ID, messages=WEATHER_QUESTION, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model=SMOL_ID, input="x")


def test_llama_stack_0_2_openai_prefix(server):
    c = openai.OpenAI(base_url=f"{server.url}/v1/openai/v1", api_key=API_KEY, max_retries=0)
    r = c.chat.completions.create(model=SMOL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert r.usage.completion_tokens > 0 and [m.id for m in c.models.list()][0] == SMOL_ID
