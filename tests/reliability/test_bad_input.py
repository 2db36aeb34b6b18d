"""The bad-input table: for every text route and every kind of bad request, the status and a message that
names the field or the limit. Never a 5xx. Extends the cases of tests/serve/test_serve_errors.py (CASES)
and test_serve_hardening.py (SURROGATE_CASES), which are imported, not copied."""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from reliability_support import (
    API_KEY,
    AUTH,
    EMBED_ID,
    SMOL_ID,
    build_tiny_llama3,
    main_config,
    report,
    running_server,
    serve_test_module,
    statuses_line,
)

pytestmark = pytest.mark.reliability

ERRORS_CASES = serve_test_module("test_serve_errors").CASES
SURROGATE_CASES = serve_test_module("test_serve_hardening").SURROGATE_CASES

CHAT, COMP, EMB = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
S_CHAT, S_COMP, S_EMB = "/v1/inference/chat-completion", "/v1/inference/completion", "/v1/inference/embeddings"
SHIELD, MOD = "/v1/safety/run-shield", "/v1/moderations"
USER = [{"role": "user", "content": "Hi"}]
LONG = "hello " * 12000  # ~12k tokens: past SmolLM2's 8192 and MiniLM's 256
OVERSIZED = object()  # stands for a JSON body one byte over server.max_request_bytes (8 MiB), built when sent

# a valid body per POST route; bad cases replace or add fields
OK = {
    CHAT: {"model": SMOL_ID, "messages": USER, "max_tokens": 2},
    COMP: {"model": SMOL_ID, "prompt": "Hi", "max_tokens": 2},
    EMB: {"model": EMBED_ID, "input": "Hi"},
    S_CHAT: {"model_id": SMOL_ID, "messages": USER, "sampling_params": {"max_tokens": 2}},
    S_COMP: {"model_id": SMOL_ID, "content": "Hi", "sampling_params": {"max_tokens": 2}},
    S_EMB: {"model_id": EMBED_ID, "contents": ["Hi"]},
    SHIELD: {"shield_id": "code-shield", "messages": USER},
    MOD: {"input": "Hi"},
    "/v1/models": {"model_id": SMOL_ID},
}


def body(path: str, **fields: Any) -> dict[str, Any]:
    return {**OK[path], **fields}


def sp(**fields: Any) -> dict[str, Any]:
    return {"sampling_params": {"max_tokens": 2, **fields}}


# (name, method, path, body: dict | raw bytes | None, extra headers, status, words in the message, param)
Case = tuple[str, str, str, Any, "dict[str, str] | None", int, list[str], "str | None"]
MORE: list[Case] = [
    # malformed JSON and wrong types, on every route with a body
    *[(f"malformed json {p}", "POST", p, b'{"model": "x", ', None, 400, ["not valid JSON"], None) for p in OK],
    ("prompt wrong type", "POST", COMP, body(COMP, prompt=5), None, 400, ["prompt"], "prompt"),
    ("input wrong type", "POST", EMB, body(EMB, input={"a": 1}), None, 400, ["input"], "input"),
    ("stack messages wrong type", "POST", S_CHAT, body(S_CHAT, messages="hi"), None, 400, ["messages"], "messages"),
    ("stack content wrong type", "POST", S_COMP, body(S_COMP, content=5), None, 400, ["content"], "content"),
    ("stack contents wrong type", "POST", S_EMB, body(S_EMB, contents=5), None, 400, ["contents"], "contents"),
    ("shield messages wrong type", "POST", SHIELD, body(SHIELD, messages=5), None, 400, ["messages"], "messages"),
    ("moderation input wrong type", "POST", MOD, body(MOD, input=5), None, 400, ["input"], "input"),
    ("stack temperature wrong type", "POST", S_CHAT, body(S_CHAT, **sp(strategy={"type": "top_p", "temperature": "x"})),
     None, 400, ["temperature"], "sampling_params.strategy.temperature"),
    ("stream wrong type", "POST", CHAT, body(CHAT, stream="yes"), None, 400, ["stream"], "stream"),
    # not JSON: 415, on every route with a body
    *[(f"text/plain {p}", "POST", p, json.dumps(OK[p]).encode(), {"Content-Type": "text/plain"}, 415,
       ["application/json"], None) for p in OK],
    # oversized bodies: 413, on every route with a body
    *[(f"body over 8 MiB {p}", "POST", p, OVERSIZED, None, 413, ["limit"], None) for p in OK],
    ("headers over 16 KiB", "GET", "/v1/models", None, {"X-Big": "a" * 20000}, 431, ["header"], None),
    # unknown models and shields: 404 listing what exists
    ("unknown model completions", "POST", COMP, body(COMP, model="nope"), None, 404, ["nope", SMOL_ID], "model"),
    ("unknown model embeddings", "POST", EMB, body(EMB, model="nope"), None, 404, ["nope", EMBED_ID], "model"),
    ("unknown model stack chat", "POST", S_CHAT, body(S_CHAT, model_id="nope"), None, 404, ["nope", SMOL_ID],
     "model_id"),
    ("unknown model stack completion", "POST", S_COMP, body(S_COMP, model_id="nope"), None, 404, ["nope"],
     "model_id"),
    ("unknown model stack embeddings", "POST", S_EMB, body(S_EMB, model_id="nope"), None, 404, ["nope"], "model_id"),
    ("unknown shield", "POST", SHIELD, body(SHIELD, shield_id="nope"), None, 404, ["shield 'nope'", "code-shield"],
     "shield_id"),
    ("unknown chat shield", "POST", CHAT, body(CHAT, input_shields=["nope"]), None, 404, ["nope"], "input_shields"),
    # NaN, infinities and huge numbers
    ("NaN top_p", "POST", CHAT, b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}'
     % SMOL_ID.encode(), None, 400, ["top_p"], "top_p"),
    ("Infinity presence_penalty", "POST", COMP, b'{"model": "%s", "prompt": "x", "presence_penalty": Infinity}'
     % SMOL_ID.encode(), None, 400, ["presence_penalty"], "presence_penalty"),
    ("-Infinity stack temperature", "POST", S_CHAT, b'{"model_id": "%s", "messages": [{"role": "user", "content": '
     b'"x"}], "sampling_params": {"strategy": {"type": "top_p", "temperature": -Infinity}}}' % SMOL_ID.encode(),
     None, 400, ["temperature"], "sampling_params.strategy.temperature"),
    ("1e400 temperature", "POST", CHAT, b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], '
     b'"temperature": 1e400}' % SMOL_ID.encode(), None, 400, ["temperature"], "temperature"),
    ("huge max_tokens", "POST", CHAT, body(CHAT, max_tokens=10**30), None, 400, ["max_tokens"], "max_tokens"),
    ("huge n", "POST", COMP, body(COMP, n=10**20), None, 400, ["n"], "n"),
    ("huge token id", "POST", COMP, body(COMP, prompt=[1, 2**70]), None, 400, ["prompt"], "prompt"),
    ("huge stack max_tokens", "POST", S_COMP, body(S_COMP, **sp(max_tokens=10**30)), None, 400, ["max_tokens"],
     "sampling_params.max_tokens"),
    ("huge dimensions", "POST", EMB, body(EMB, dimensions=10**12), None, 400, ["dimensions"], "dimensions"),
    ("huge top_logprobs", "POST", CHAT, body(CHAT, logprobs=True, top_logprobs=10**9), None, 400, ["top_logprobs"],
     "top_logprobs"),
    # empty lists and strings
    ("empty prompt list", "POST", COMP, body(COMP, prompt=[]), None, 400, ["prompt"], "prompt"),
    ("empty stack messages", "POST", S_CHAT, body(S_CHAT, messages=[]), None, 400, ["messages"], "messages"),
    ("empty stack contents", "POST", S_EMB, body(S_EMB, contents=[]), None, 400, ["contents"], "contents"),
    ("empty shield messages", "POST", SHIELD, body(SHIELD, messages=[]), None, 400, ["messages"], "messages"),
    ("empty moderation input", "POST", MOD, body(MOD, input=[]), None, 400, ["input"], "input"),
    ("empty model", "POST", CHAT, body(CHAT, model=""), None, 400, ["model"], "model"),
    # prompts and inputs over the context
    ("over-long completion prompt", "POST", COMP, body(COMP, prompt=LONG), None, 400, ["tokens", "8192"], "prompt"),
    ("over-long token-id prompt", "POST", COMP, body(COMP, prompt=[1] * 9000), None, 400, ["tokens", "8192"],
     "prompt"),
    ("over-long stack chat", "POST", S_CHAT, body(S_CHAT, messages=[{"role": "user", "content": LONG}]), None, 400,
     ["tokens", "8192"], None),
    ("over-long stack completion", "POST", S_COMP, body(S_COMP, content=LONG), None, 400, ["tokens", "8192"], None),
    ("over-long max_tokens", "POST", COMP, body(COMP, max_tokens=9000), None, 400, ["max_tokens", "8192"],
     "max_tokens"),
    ("over-long embedding input", "POST", EMB, body(EMB, input=["ok", LONG]), None, 400, ["input[1]", "256"], "input"),
    ("over-long stack embedding", "POST", S_EMB, body(S_EMB, contents=[LONG]), None, 400, ["256"], "contents"),
    # per-request caps (limits.*, the defaults)
    ("17 stop strings", "POST", CHAT, body(CHAT, stop=[f"s{i}" for i in range(17)]), None, 400,
     ["limits.max_stop_strings", "16"], "stop"),
    ("17 completion stop strings", "POST", COMP, body(COMP, stop=[f"s{i}" for i in range(17)]), None, 400,
     ["limits.max_stop_strings"], "stop"),
    ("17 stack stop strings", "POST", S_COMP, body(S_COMP, **sp(stop=[f"s{i}" for i in range(17)])), None, 400,
     ["limits.max_stop_strings"], "sampling_params.stop"),
    ("129 prompts", "POST", COMP, body(COMP, prompt=["a"] * 129), None, 400, ["limits.max_completion_prompts", "128"],
     "prompt"),
    ("17 prompts x n=16", "POST", COMP, body(COMP, prompt=["a"] * 17, n=16), None, 400,
     ["limits.max_sequences_per_request", "256"], "n"),
    ("2049 embedding inputs", "POST", EMB, body(EMB, input=["a"] * 2049), None, 400,
     ["limits.max_embedding_inputs", "2048"], "input"),
    ("2049 stack contents", "POST", S_EMB, body(S_EMB, contents=["a"] * 2049), None, 400,
     ["limits.max_embedding_inputs"], "contents"),
    # response_format
    ("response_format not an object", "POST", CHAT, body(CHAT, response_format="json"), None, 400,
     ["response_format"], "response_format"),
    ("json_schema without schema", "POST", CHAT, body(CHAT, response_format={"type": "json_schema"}), None, 400,
     ["response_format"], None),
    ("json_schema schema not an object", "POST", CHAT, body(CHAT, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": 5}}), None, 400, ["response_format"], None),
    ("completion bad response_format", "POST", COMP, body(COMP, response_format={"type": "xml"}), None, 400,
     ["response_format"], "response_format"),
    ("stack bad response_format", "POST", S_CHAT, body(S_CHAT, response_format={"type": "xml"}), None, 400,
     ["response_format"], "response_format"),
    # keys, routes and methods
    ("no API key", "POST", CHAT, body(CHAT), {"Authorization": ""}, 401, ["API key"], None),
    ("wrong API key", "GET", "/v1/models", None, {"Authorization": "Bearer wrong"}, 401, ["API key"], None),
    ("unknown route GET", "GET", "/v1/nope", None, None, 404, ["/v1/nope"], None),
    ("unknown route outside /v1", "POST", "/nope", {}, None, 404, ["/nope"], None),
    ("unknown stored completion", "GET", "/v1/chat/completions/chatcmpl-nope", None, None, 404, ["chatcmpl-nope"],
     None),
    ("unknown shield get", "GET", "/v1/shields/nope", None, None, 404, ["nope"], None),
    ("GET completions", "GET", COMP, None, None, 405, ["GET", "POST"], None),
    ("PUT embeddings", "PUT", EMB, body(EMB), None, 405, ["PUT", "POST"], None),
    ("DELETE models", "DELETE", "/v1/models", None, None, 405, ["DELETE", "GET"], None),
    ("POST health", "POST", "/v1/health", {}, None, 405, ["POST", "GET"], None),
    ("PATCH stack chat", "PATCH", S_CHAT, body(S_CHAT), None, 405, ["PATCH", "POST"], None),
]


def _imported() -> list[Case]:
    out: list[Case] = [(n, m, p, b, None, s, w, prm) for n, m, p, b, s, w, prm in ERRORS_CASES]
    for path, template, param in SURROGATE_CASES:
        raw = template.encode().replace(b"X", b"\\ud800")
        out.append((f"lone surrogate {path} {param}", "POST", path, raw, None, 400, ["surrogate", param], param))
    return out


ALL = _imported() + MORE
ALLOWED = {"GET completions": "POST", "PUT embeddings": "POST", "DELETE models": "GET", "POST health": "GET",
           "PATCH stack chat": "POST", "wrong method": "POST"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("bad_input")
    with running_server(main_config(build_tiny_llama3(tmp / "tiny")), tmp / "server.yaml",
                        env={"HERD_TEST_API_KEY": API_KEY}) as srv:
        yield srv


def _send(c: httpx.Client, method: str, path: str, data: Any, headers: dict[str, str] | None) -> httpx.Response:
    h = {**AUTH, **(headers or {})}
    if data is OVERSIZED:
        data = b'{"x": "' + b"a" * (8 * 2**20 + 1 - len(b'{"x": ""}')) + b'"}'
    if isinstance(data, bytes):
        h.setdefault("Content-Type", "application/json")
        return c.request(method, path, content=data, headers=h)
    return c.request(method, path, json=data, headers=h) if data is not None else c.request(method, path, headers=h)


def test_bad_input_table(server):
    rows: list[tuple[str, str, str, int, float]] = []
    wrong: list[str] = []
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for name, method, path, data, headers, status, words, param in ALL:
            t = time.monotonic()
            r = _send(c, method, path, data, headers)
            dt = time.monotonic() - t
            statuses[r.status_code] += 1
            rows.append((name, method, path, r.status_code, dt))
            problems = []
            if r.status_code != status:
                problems.append(f"status {r.status_code}, expected {status}")
            try:
                err = r.json()["error"]
                message = err["message"]
            except (ValueError, KeyError, TypeError):
                problems.append("no {'error': {'message'}} body")
                err, message = {}, ""
            problems += [f"{w!r} not in the message" for w in words if w not in message]
            if param is not None and err.get("param") != param:
                problems.append(f"param {err.get('param')!r}, expected {param!r}")
            if name in ALLOWED and ALLOWED[name] not in r.headers.get("allow", ""):
                problems.append(f"Allow: {r.headers.get('allow')!r}")
            if "Traceback" in r.text:
                problems.append("a traceback in the body")
            if problems:
                wrong.append(f"{name} ({method} {path}): {'; '.join(problems)}: {r.text[:300]}")
        ok = c.post("/v1/chat/completions", headers=AUTH, json=body(CHAT))
    print("\n| case | request | status | ms |\n| --- | --- | --- | --- |")
    for name, method, path, code, dt in rows:
        print(f"| {name} | {method} {path} | {code} | {dt * 1000:.0f} |")
    report("bad_input", cases=len(rows), statuses=statuses_line(statuses),
           server_errors_5xx=sum(n for s, n in statuses.items() if s >= 500), mismatches=len(wrong),
           slowest_ms=round(max(dt for *_, dt in rows) * 1000))
    assert not wrong, "\n".join(wrong)
    assert ok.status_code == 200, ok.text
    assert "Traceback" not in server.output(), server.output()[-5000:]
