"""Bad input never gets a 5xx: every case is a 4xx with a clear `{"error": {...}}` message."""
from __future__ import annotations

import re

import pytest
from servekit import EMBED_ID, SMOL_ID

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "Hi"}]


def chat(**kw):
    return {"model": SMOL_ID, "messages": OK_MESSAGES, "max_tokens": 2, **kw}


CASES = [
    # (name, method, path, body or raw bytes, status, words in the message, param)
    ("malformed json", "POST", CHAT, b'{"model": "x", "messages": [', 400, ["not valid JSON"], None),
    ("not an object", "POST", CHAT, b"[1, 2]", 400, ["JSON object"], None),
    ("empty body", "POST", CHAT, b"", 400, ["body"], None),
    ("missing messages", "POST", CHAT, {"model": SMOL_ID}, 400, ["messages", "required"], "messages"),
    ("messages wrong type", "POST", CHAT, chat(messages="hello"), 400, ["messages"], "messages"),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400, ["messages", "at least 1"], "messages"),
    ("unknown role", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "x"}]), 400,
     ["messages[0].role", "wizard"], "messages[0].role"),
    ("content wrong type", "POST", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400,
     ["messages[0].content"], "messages[0].content"),
    ("image part", "POST", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), 400, ["image_url", "text"],
     "messages[0].content[0].type"),
    ("negative max_tokens", "POST", CHAT, chat(max_tokens=-5), 400, ["max_tokens", "-5"], "max_tokens"),
    ("zero max_tokens", "POST", CHAT, chat(max_tokens=0), 400, ["max_tokens"], "max_tokens"),
    ("string max_tokens", "POST", CHAT, chat(max_tokens="10"), 400, ["max_tokens", "integer"], "max_tokens"),
    ("temperature type", "POST", CHAT, chat(temperature="hot"), 400, ["temperature"], "temperature"),
    ("top_p range", "POST", CHAT, chat(top_p=0), 400, ["top_p"], "top_p"),
    ("n range", "POST", CHAT, chat(n=1000), 400, ["n"], "n"),
    ("stop type", "POST", CHAT, chat(stop=5), 400, ["stop"], "stop"),
    ("unknown model", "POST", CHAT, chat(model="gpt-4"), 404, ["gpt-4", SMOL_ID], "model"),
    ("embedding model for chat", "POST", CHAT, chat(model=EMBED_ID), 400, ["embedding model"], "model"),
    ("tool_choice without tools", "POST", CHAT, chat(tool_choice="required"), 400, ["tools"], "tool_choice"),
    ("unknown named tool", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                              tool_choice={"type": "function", "function": {"name": "g"}}), 400,
     ["'g'"], "tool_choice"),
    ("bad tool", "POST", CHAT, chat(tools=[{"type": "function"}]), 400, ["tools[0].function"], None),
    ("bad response_format", "POST", CHAT, chat(response_format={"type": "xml"}), 400, ["response_format"],
     "response_format"),
    ("bad json schema", "POST", CHAT, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}), 400,
     ["response_format"], None),
    ("assistant bad tool args", "POST", CHAT, chat(messages=[
        {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                              "function": {"name": "f", "arguments": "{nope"}}]},
        {"role": "user", "content": "x"}]), 400, ["arguments"], None),
    ("NaN temperature", "POST", CHAT, b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], '
     b'"temperature": NaN}' % SMOL_ID.encode(), 400, ["temperature"], "temperature"),
    ("huge top_k", "POST", CHAT, chat(top_k=10**30), 400, ["top_k"], "top_k"),
    ("seed overflow", "POST", CHAT, chat(seed=2**64), 400, ["seed"], "seed"),
    ("logit_bias", "POST", CHAT, chat(logit_bias={"1": 5}), 400, ["logit_bias"], "logit_bias"),
    ("completion empty prompt", "POST", "/v1/completions", {"model": SMOL_ID, "prompt": ""}, 400,
     ["prompt"], "prompt"),
    ("completion bad token id", "POST", "/v1/completions", {"model": SMOL_ID, "prompt": [1, 99999999]}, 400,
     ["vocabulary"], "prompt"),
    ("embedding empty", "POST", "/v1/embeddings", {"model": EMBED_ID, "input": []}, 400, ["input"], "input"),
    ("embedding token ids", "POST", "/v1/embeddings", {"model": EMBED_ID, "input": [[1, 2]]}, 400,
     ["token"], "input"),
    ("embedding dimensions", "POST", "/v1/embeddings", {"model": EMBED_ID, "input": "x", "dimensions": 10}, 400,
     ["384"], "dimensions"),
    ("native unknown role", "POST", "/v1/inference/chat-completion",
     {"model_id": SMOL_ID, "messages": [{"role": "bot", "content": "x"}]}, 400, ["messages[0].role"], None),
    ("native image", "POST", "/v1/inference/chat-completion", {"model_id": SMOL_ID, "messages": [
        {"role": "user", "content": [{"type": "image", "image": {"url": {"uri": "http://x"}}}]}]}, 400,
     ["image"], None),
    ("native negative max_tokens", "POST", "/v1/inference/chat-completion", {
        "model_id": SMOL_ID, "messages": OK_MESSAGES, "sampling_params": {"max_tokens": -1}}, 400,
     ["max_tokens"], None),
    ("unknown route", "POST", "/v1/nope", {}, 404, ["/v1/nope"], None),
    ("wrong method", "DELETE", CHAT, None, 405, ["DELETE"], None),
    ("unknown model get", "GET", "/v1/models/a/b/c", None, 404, ["a/b/c"], None),
]


@pytest.mark.parametrize("name,method,path,body,status,words,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx(http, name, method, path, body, status, words, param):
    kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body} if body is not None else {}
    r = http.request(method, path, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] == err["detail"] and err["type"]
    for w in words:
        assert w in err["message"], err["message"]
    if param is not None:
        assert err["param"] == param, err


def test_ten_megabyte_body_is_413(http):
    r = http.post(CHAT, content=b'{"model": "' + b"x" * (10 * 2**20) + b'"}',
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_overlong_prompt_names_both_token_counts(http):
    long = "hello " * 12000  # far past SmolLM2's 8192-token context
    r = http.post(CHAT, json=chat(messages=[{"role": "user", "content": long}], max_tokens=10))
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert re.search(r"prompt has \d{5} tokens", msg) and "8192" in msg, msg
    r = http.post(CHAT, json=chat(messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=7000))
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens" and err["code"] == "context_length_exceeded"
    assert "7000" in err["message"] and re.search(r"prompt has 30\d\d tokens", err["message"]), err


def test_missing_api_key_is_401_but_health_is_open(server):
    import httpx

    r = httpx.post(f"{server.url}{CHAT}", json=chat())
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/v1/health").json() == {"status": "OK"}


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          None])
def test_bodies_that_are_not_declared_json_are_415(http, content_type):
    """A web page can POST a form (or text/plain, or a blob with no type) to a local server without CORS
    preflight: such bodies are refused, so a key-less server cannot be driven from a browser."""
    body = b'{"model": "%s", "input": "hi"}' % EMBED_ID.encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post("/v1/embeddings", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["error"]["message"]
    ok = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384
