"""Server pieces without a server: config, CLI flags, streaming tool-call detection, schemas, errors, metrics."""
from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest

from herd.engine.request import CompletionOutput, SamplingParams
from herd.engine.structured import ResponseFormat, schema_problem
from herd.errors import HerdError
from herd.serve.app import validation_message
from herd.serve.turn import MAX_PARALLEL_CALLS, ChatPlan, ChoiceState, forced_call_format, partial_call
from herd.serve.config import (
    ModelSpec,
    default_id,
    load_config,
    parse_config,
    spec_from_arg,
    substitute_env,
)
from herd.serve.metrics import Metrics, parse_metrics
from herd.tokenizer.chat_format import ToolDefinition
from herd.tokenizer.prompter import Prompter
from herd.tokenizer.tokenizer import Llama3Tokenizer

# ---- config ----------------------------------------------------------------------------------


def test_yaml_config_with_env_substitution(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("""
server:
  port: ${env.PORT:=9000}
  api_keys: ["${env.KEY}", "${env.OTHER:+second}"]
  access_log: ${env.LOG:=false}
models:
  - smollm2-135m-instruct
  - {id: big, model: ./Llama-3.1-8B-Instruct, dtype: bfloat16, quantize: int8, engine: {max_num_seqs: "8", kv_cache_memory: 1000000, kv_cache_dtype: bfloat16}}
  - {id: all-MiniLM-L6-v2, type: embedding}
shields: [{shield_id: code-scanner, type: code-shield}]
""")
    c = load_config(cfg, {"KEY": "k1"})
    assert c.server.port == 9000 and c.server.api_keys == ("k1",) and c.server.access_log is False
    assert [m.id for m in c.models] == ["smollm2-135m-instruct", "big", "all-MiniLM-L6-v2"]
    big = c.models[1]
    assert big.ref == "./Llama-3.1-8B-Instruct" and big.engine.max_num_seqs == 8 and big.dtype == "bfloat16"
    assert big.quantize == "int8" and big.engine.kv_cache_dtype == "bfloat16"
    assert c.models[2].type == "embedding" and c.shields[0]["type"] == "code-shield"
    assert load_config(cfg, {"KEY": "k1", "OTHER": "x", "PORT": "1"}).server.api_keys == ("k1", "second")


@pytest.mark.parametrize("data,words", [
    ({"server": {"prot": 1}}, ["server", "'prot'", "known keys", "port"]),
    ({"models": [{"id": "a", "engine": {"blocks": 3}}]}, ["models[0].engine", "'blocks'"]),
    ({"models": [{"id": "a", "type": "vision"}]}, ["models[0].type", "llm, embedding"]),
    ({"models": [{"id": "a", "quantize": "int3"}]}, ["models[0].quantize", "int4"]),
    ({"server": {"port": "eighty"}}, ["server.port", "integer"]),
    ({"models": [{"id": "a"}, {"id": "a"}]}, ["'a'", "twice"]),
    ({"models": [{"id": "a", "engine": {"block_size": 3}}]}, ["block_size", "power of two"]),
    ({"models": [{"id": "a", "engine": {"kv_cache_dtype": "fp8"}}]}, ["kv_cache_dtype", "bfloat16"]),
    ([1, 2], ["mapping"]),
])
def test_config_errors_name_the_path(data, words):
    with pytest.raises(HerdError) as e:
        parse_config(data)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_env_substitution_rules():
    env = {"A": "1", "EMPTY": ""}
    assert substitute_env({"x": ["${env.A}", "${env.B:=d}", "${env.EMPTY:=d}", "${env.A:+on}", "${env.B:+on}"]},
                          env) == {"x": ["1", "d", "d", "on", ""]}
    with pytest.raises(HerdError, match="B is not set"):
        substitute_env("${env.B}", env)


def test_model_args_and_default_ids(tmp_path):
    assert spec_from_arg("llama=./models/Llama-3.1-8B") == ModelSpec(id="llama", model="./models/Llama-3.1-8B")
    assert spec_from_arg("org/name=/x").id == "org/name"
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert spec_from_arg(str(odd)).model == str(odd)
    assert default_id("./ckpt/Llama-3.1-8B-Instruct/") == "Llama-3.1-8B-Instruct"
    assert default_id("/m/model.Q4_K.gguf") == "model.Q4_K"
    assert default_id("random:llama3.2-1b") == "random:llama3.2-1b"


def _args(*argv: str) -> argparse.Namespace:
    from herd.cli.serve import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_cli_flags_build_the_config(tmp_path):
    from herd.cli.serve import build_config, byte_size

    c = build_config(_args(), {})
    assert [m.id for m in c.models][0] == "smollm2-135m-instruct" and c.server.port == 8321 and not c.server.api_keys
    c = build_config(_args("--model", "a=random:llama3.2-1b", "--model", "smollm2-135m-instruct", "--port", "0",
                           "--kv-cache-memory", "1GiB", "--embedding-model", "none", "--tool-format",
                           "python_list", "--quantize", "int4"), {"HERD_API_KEY": "env-key"})
    assert [m.id for m in c.models] == ["a", "smollm2-135m-instruct"]
    assert c.models[0].engine.kv_cache_memory == 2**30 and c.models[0].tool_prompt_format == "python_list"
    assert c.models[0].quantize == "int4" and c.models[1].quantize == "int4"
    assert c.server.api_keys == ("env-key",) and c.server.port == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {port: 1234, api_keys: [file-key]}\nmodels: [{id: m, model: random:llama3.2-1b}]\n")
    c = build_config(_args("--config", str(cfg), "--api-key", "cli-key"), {})
    assert c.server.port == 1234 and c.server.api_keys == ("cli-key",) and c.models[0].id == "m"
    cfg.write_text("server: {store_chat_completions: off}\nlimits: {max_waiting_requests: 5, request_timeout: 9}\n")
    c = build_config(_args("--config", str(cfg), "--cors-origin", "http://a", "--cors-origin", "http://b",
                           "--request-timeout", "30"), {})
    assert c.server.cors_origins == ("http://a", "http://b") and c.server.store_chat_completions == "off"
    assert c.limits.max_waiting_requests == 5 and c.limits.request_timeout == 30
    for bad, words in (({"limits": {"max_waiting_requests": 0}}, "limits.max_waiting_requests"),
                       ({"limits": {"retry_after": 0}}, "retry_after"),
                       ({"server": {"header_timeout": -1}}, "server.header_timeout"),
                       ({"limits": {"max_queue": 1}}, "'max_queue'")):
        with pytest.raises(HerdError, match=words):
            parse_config(bad)
    assert byte_size("512MiB") == 512 * 2**20 and byte_size("2GB") == 2 * 10**9
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size("lots")


# ---- streaming tool-call detection ----------------------------------------------------------


@pytest.fixture(scope="module")
def llama3() -> Prompter:
    return Prompter(Llama3Tokenizer.default())


def _plan(prompter: Prompter, tools: list[str], parse: bool = True) -> ChatPlan:
    model = SimpleNamespace(prompter=prompter, tokenizer=prompter.tokenizer)
    return ChatPlan(model, [1], SamplingParams(), [ToolDefinition(t) for t in tools], parse, "r")  # type: ignore


def _run(plan: ChatPlan, pieces: list[str], *, stop_id: int | None = None, reason: str = "stop"):
    """Feed text pieces as steps; returns (deltas, state)."""
    state, deltas, text, ids = ChoiceState(plan, 0), [], "", []
    for i, piece in enumerate(pieces):
        text += piece
        ids.append(i + 1)
        last = i == len(pieces) - 1
        out = CompletionOutput([1], token_ids=list(ids), text=text, delta_text=piece, delta_token_ids=[i + 1],
                               finish_reason=reason if last else None, stop_token_id=None)
        d = state.step(out)
        deltas.append(d)
    return deltas, state


def test_stream_recognises_a_call_as_soon_as_its_json_closes(llama3):
    pieces = ["<|python_tag|>", '{"type": "function", ', '"name": "get_weather", ', '"parameters": ',
              '{"city": "Paris"}', "}", ""]
    deltas, state = _run(_plan(llama3, ["get_weather"]), pieces)
    assert all(d.text == "" for d in deltas)
    first = next(i for i, d in enumerate(deltas) if d.tool_calls)
    assert first == 5  # the step whose text closed the JSON, before the end of generation
    assert deltas[first].tool_calls[0].arguments == {"city": "Paris"}
    assert deltas[-1].finish_reason == "tool_calls" and not deltas[-1].tool_calls
    assert state.message.tool_calls[0].call_id == deltas[first].tool_calls[0].call_id


def test_plain_text_streams_immediately(llama3):
    deltas, state = _run(_plan(llama3, ["get_weather"]), ["Hello", " there", "!"])
    assert [d.text for d in deltas] == ["Hello", " there", "!"] and deltas[-1].finish_reason == "stop"


def test_text_that_only_looks_like_a_call_comes_back_as_content(llama3):
    deltas, state = _run(_plan(llama3, ["get_weather"]), ["[1]", " is a", " list"], reason="length")
    assert [d.text for d in deltas[:-1]] == ["", ""] and deltas[-1].text == "[1] is a list"
    assert deltas[-1].finish_reason == "length" and not state.message.tool_calls


def test_malformed_or_unoffered_calls_are_text(llama3):
    deltas, _ = _run(_plan(llama3, ["get_weather"]), ['{"type": "function", "name": "get_weather", "par'])
    assert deltas[-1].text.startswith('{"type"') and deltas[-1].finish_reason == "stop"
    deltas, state = _run(_plan(llama3, ["get_weather"]),
                         ['{"type": "function", "name": "launch", "parameters": {}}'])
    assert not state.message.tool_calls and "launch" in deltas[-1].text


def test_without_tools_nothing_is_held_back(llama3):
    deltas, _ = _run(_plan(llama3, [], parse=False), ["{", '"a": 1}'])
    assert [d.text for d in deltas] == ["{", '"a": 1}']


def test_function_tag_and_jinja_json_calls(llama3):
    _, state = _run(_plan(llama3, ["get_weather"]), ["<function=get_weather>", '{"city": "Rome"}', "</function>"])
    assert state.message.tool_calls[0].arguments == {"city": "Rome"} and state.finish_reason == "tool_calls"
    jinja = SimpleNamespace(parse=Prompter.parse.__get__(SimpleNamespace(chat_format=None)), tokenizer=None)
    plan = _plan(llama3, ["get_weather"])
    plan.model = SimpleNamespace(prompter=jinja, tokenizer=llama3.tokenizer)
    _, state = _run(plan, ['<tool_call>\n{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}\n</tool_call>'])
    assert state.message.tool_calls[0].arguments == {"city": "Oslo"}


def _call(kind: str, name: str, args: dict) -> dict:
    return {"type": "function", "name": name, "parameters": args} if kind == "llama3" else \
        {"name": name, "arguments": args}


@pytest.mark.parametrize("kind", ["llama3", "jinja"])
def test_forced_call_schema_accepts_exactly_the_offered_calls(kind):
    tools = [ToolDefinition("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}},
                                                "required": ["city"]}),
             ToolDefinition("brave_search")]
    schema = forced_call_format(kind, tools, "required")[0]["json_schema"]["schema"]
    good = _call(kind, "get_weather", {"city": "X"})
    jsonschema.validate(good, schema)
    jsonschema.validate([good, _call(kind, "brave_search", {"query": "q"})], schema)  # parallel calls
    with pytest.raises(jsonschema.ValidationError):  # but not without end
        jsonschema.validate([good] * (MAX_PARALLEL_CALLS + 1), schema)
    key = "parameters" if kind == "llama3" else "arguments"
    for bad in ({**good, "name": "other"}, {**good, key: {}}, {**good, key: {"city": "X", "extra": 1}}, [],
                [good, {**good, "name": "other"}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    named = forced_call_format(kind, tools, "brave_search")[0]["json_schema"]["schema"]
    assert named["properties"]["name"] == {"const": "brave_search"}
    single = forced_call_format(kind, tools, "required", parallel=False)[0]["json_schema"]["schema"]
    jsonschema.validate(good, single)
    for one_only in (named, single):  # a named tool, or parallel_tool_calls false: exactly one call
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate([good], one_only)


def test_forced_call_schema_closes_nested_objects_unless_they_say_otherwise():
    params = {"type": "object", "required": ["trip"], "properties": {"trip": {
        "type": "object", "properties": {"to": {"type": "string"}, "legs": {"type": "array", "items": {
            "type": "object", "properties": {"day": {"type": "integer"}}}}},
        "required": ["to"]}, "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
        "free": {"type": "object"}}}
    schema = forced_call_format("jinja", [ToolDefinition("book", "", params)], "book")[0]["json_schema"]["schema"]
    ok = {"trip": {"to": "Oslo", "legs": [{"day": 1}]}, "extra": {"a": 1}, "free": {"anything": [1]}}
    jsonschema.validate({"name": "book", "arguments": ok}, schema)
    jsonschema.validate(ok, params)  # the tool's own schema agrees
    for bad in ({"trip": {"to": "Oslo", "x": 1}}, {"trip": {"to": "O", "legs": [{"day": 1, "night": 2}]}},
                {"trip": {"to": "O"}, "extra": {"a": "s"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "book", "arguments": bad}, schema)
    assert params["properties"]["trip"].get("additionalProperties") is None  # the caller's schema untouched


def test_a_tool_schema_that_cannot_compile_is_relaxed_and_said():
    params = {"type": "object", "required": ["tags", "ratio", "code"], "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "enum": ["a", "b"]},  # BFCL live_simple_71-35-0
        "ratio": {"type": "float"}, "code": {"type": "string", "pattern": "(?<=x)y"}, "n": {"type": "integer"}}}
    tools = [ToolDefinition("ok", "", {"type": "object", "properties": {}}), ToolDefinition("tagger", "", params)]
    fmt, notes = forced_call_format("jinja", tools, "required")
    assert ResponseFormat.from_openai(fmt).schema is not None and schema_problem(fmt["json_schema"]["schema"]) is None
    assert any(n.startswith("tools[1] (tagger): parameters.properties.tags: dropped 'enum'") for n in notes), notes
    assert any("properties.ratio: type 'float' read as 'number'" in n for n in notes)
    assert any("properties.code: dropped 'pattern'" in n for n in notes) and len(notes) == 3
    schema = fmt["json_schema"]["schema"]
    jsonschema.validate({"name": "tagger", "arguments": {"tags": ["z"], "ratio": 0.5, "code": "q"}}, schema)
    with pytest.raises(jsonschema.ValidationError):  # what still can be kept is kept
        jsonschema.validate({"name": "tagger", "arguments": {"tags": ["z"], "ratio": 0.5, "code": "q", "n": 1.5}},
                            schema)
    assert forced_call_format("jinja", tools, "ok")[1] == []  # only the offered tools that are forced are read


def test_parallel_tool_calls_false_keeps_the_first_call(llama3):
    jinja = SimpleNamespace(parse=Prompter.parse.__get__(SimpleNamespace(chat_format=None)), tokenizer=None)
    reply = ['[{"name": "get_weather", "arguments": {"city": "Oslo"}}, ', '{"name": "get_weather", '
             '"arguments": {"city": "Rome"}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]']  # a repeat
    for parallel, cities in ((True, ["Oslo", "Rome"]), (False, ["Oslo"])):
        plan = _plan(llama3, ["get_weather"])
        plan.model, plan.parallel = SimpleNamespace(prompter=jinja, tokenizer=llama3.tokenizer), parallel
        deltas, state = _run(plan, reply)
        assert [c.arguments["city"] for c in state.message.tool_calls] == cities
        assert [c.arguments["city"] for d in deltas for c in d.tool_calls] == cities


def test_a_forced_call_cut_off_by_max_tokens_is_a_partial_call(llama3):
    jinja = SimpleNamespace(parse=Prompter.parse.__get__(SimpleNamespace(chat_format=None)), tokenizer=None)
    plan = _plan(llama3, ["get_weather"])
    plan.model, plan.forced = SimpleNamespace(prompter=jinja, tokenizer=llama3.tokenizer), True
    deltas, state = _run(plan, ['{"name": "get_weather", ', '"arguments": {"city": "Oslo Oslo Oslo'], reason="length")
    assert state.finish_reason == "length" and not state.message.tool_calls
    assert state.partial_call == deltas[-1].partial_call == ("get_weather", '{"city": "Oslo Oslo Oslo')
    assert partial_call('[{"name": "a", "arguments": {}}, {"name": "b\\"c", "parameters": {"q": [1') == \
        ('b"c', '{"q": [1')
    assert partial_call('{"na') is None
    plan.forced = True  # a list of calls cut off: the complete ones are calls, the last one partial
    deltas, state = _run(plan, ['[{"name": "get_weather", "arguments": {"city": "Oslo"}}, ',
                                '{"name": "get_weather", "arguments": {"ci'], reason="length")
    assert [c.arguments for c in state.message.tool_calls] == [{"city": "Oslo"}] and state.finish_reason == "length"
    assert state.partial_call == ("get_weather", '{"ci') and not any(d.text for d in deltas)
    plan.parallel = False
    _, state = _run(plan, ['[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_w'],
                    reason="length")  # parallel calls off: the first call is the reply, and it is whole
    assert [c.arguments for c in state.message.tool_calls] == [{"city": "Oslo"}] and state.partial_call is None
    assert state.finish_reason == "tool_calls"
    plan.forced = False  # a reply that was not forced stays text
    _, state = _run(plan, ['{"name": "get_weather", ', '"arguments": {"city": "Oslo'], reason="length")
    assert state.partial_call is None and state.message.content.startswith('{"name"')


# ---- errors and metrics ----------------------------------------------------------------------


def test_validation_messages_name_the_field():
    msg, param = validation_message([{"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'",
                                      "type": "literal_error", "input": "wizard"}])
    assert param == "messages[0].role" and msg == "messages[0].role: Input should be 'user' (got \"wizard\")"
    msg, param = validation_message([{"loc": ("body", "prompt", "str"), "msg": "x", "type": "string_type",
                                      "input": 5},
                                     {"loc": ("body", "prompt", "list[str]"), "msg": "y", "type": "list_type",
                                      "input": 5}])
    assert param == "prompt" and msg.startswith("prompt: x")
    assert validation_message([{"loc": ("body", 12), "type": "json_invalid", "msg": "bad",
                                "ctx": {"error": "Expecting value"}}])[0].startswith("request body is not valid JSON")


def test_metrics_render_and_parse():
    m = Metrics()
    m.requests.inc(route="/v1/x", method="POST", status="200")
    m.ttft.observe(0.02, model="a")
    m.ttft.observe(50, model="a")
    registry = SimpleNamespace(llms=list)
    parsed = parse_metrics(m.render(registry))
    assert parsed['herd_http_requests_total{method="POST",route="/v1/x",status="200"}'] == 1
    assert parsed['herd_time_to_first_token_seconds_bucket{model="a",le="0.025"}'] == 1
    assert parsed['herd_time_to_first_token_seconds_bucket{model="a",le="+Inf"}'] == 2
    assert parsed['herd_time_to_first_token_seconds_count{model="a"}'] == 2


# ---- the embedding encoder -------------------------------------------------------------------


def test_minilm_matches_transformers_mean_pooling():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from herd.model.bert import load_encoder, minilm_dir

    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "word " * 400]
    enc = load_encoder(None)
    ours = enc.encode(texts)
    path = str(minilm_dir())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.abs(ours - ref).max() < 1e-5
    assert json.dumps(enc.tokenize(["hi"])) == "[[101, 7632, 102]]"
    with pytest.raises(HerdError, match="at most 256"):
        enc.tokenize(["word " * 400], "none")


def test_a_local_context_has_no_request_timeout():
    # one context serves a whole herd eval / sdg run (hours); the server's 600 s would cut it
    from herd.serve.generator import local_context

    assert local_context().deadline.at == float("inf")


def test_warning_headers_are_capped():
    # a request's tools set how many notes there are: the header names the first ones and counts the rest
    from herd.serve.generation import MAX_WARNINGS
    from herd.serve.generator import local_context

    ctx = local_context()
    assert ctx.headers() == {}
    ctx.warn(*(f'note "{i}"' for i in range(MAX_WARNINGS + 12)), 'note "0"')
    header = ctx.headers()["Warning"]
    assert header.count('299 herd "') == MAX_WARNINGS + 1 and header.startswith('299 herd "note \\"0\\""')
    assert header.endswith('299 herd "and 12 more"') and f'note \\"{MAX_WARNINGS}\\"' not in header
