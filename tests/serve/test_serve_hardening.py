"""Issue 10 regressions on the main server: bad text, protocol conformance, the event loop, embeddings
limits and greedy near-zero temperatures. (Long prompts: test_serve_long_prompts.py; back-pressure and
the drain: test_serve_limits.py.)"""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from servekit import API_KEY, EMBED_ID, SMOL_ID

SURROGATE = b"\\ud800"  # valid JSON, not valid Unicode

# route, a JSON body with the marker X where the bad text goes, the param the 400 must name
SURROGATE_CASES = [
    ("/v1/chat/completions", '{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "aX"}]}'
     % SMOL_ID, "messages[0].content"),
    ("/v1/completions", '{"model": "%s", "max_tokens": 2, "prompt": "X"}' % SMOL_ID, "prompt"),
    ("/v1/embeddings", '{"model": "%s", "input": ["ok", "X"]}' % EMBED_ID, "input[1]"),
    ("/v1/inference/chat-completion", '{"model_id": "%s", "sampling_params": {"max_tokens": 2}, '
     '"messages": [{"role": "user", "content": "X"}]}' % SMOL_ID, "messages[0].content"),
    ("/v1/inference/completion", '{"model_id": "%s", "sampling_params": {"max_tokens": 2}, "content": "X"}'
     % SMOL_ID, "content"),
    ("/v1/inference/embeddings", '{"model_id": "%s", "contents": ["X"]}' % EMBED_ID, "contents[0]"),
    ("/v1/moderations", '{"input": "X"}', "input"),
    ("/v1/safety/run-shield", '{"shield_id": "code-shield", "messages": [{"role": "user", "content": "X"}]}',
     "messages[0].content"),
    ("/v1/chat/completions", '{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], '
     '"stop": ["X"]}' % SMOL_ID, "stop[0]"),
]


@pytest.mark.parametrize("path,template,param", SURROGATE_CASES, ids=[f"{c[0]}:{c[2]}" for c in SURROGATE_CASES])
def test_lone_surrogates_are_a_clear_400(http, path, template, param):
    body = template.encode().replace(b"X", SURROGATE)
    r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "surrogate" in err["message"] and param in err["message"], err
    assert "Traceback" not in r.text and "Error(" not in r.text
    # a properly paired surrogate escape (an emoji) is fine
    ok = template.encode().replace(b"X", b"\\ud83e\\udd99")
    assert http.post(path, content=ok, headers={"Content-Type": "application/json"}).status_code < 500


def test_405_names_the_allowed_methods(http):
    r = http.delete("/v1/chat/completions")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert "allowed: POST" in r.json()["error"]["message"]


def test_health_answers_head_and_get_without_a_key_but_root_needs_one(server):
    assert httpx.head(f"{server.url}/v1/health").status_code == 200
    assert httpx.get(f"{server.url}/v1/health").json() == {"status": "OK"}
    assert httpx.get(f"{server.url}/").status_code == 401
    r = httpx.get(f"{server.url}/", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and SMOL_ID in r.json()["models"]


def test_no_cors_by_default(server):
    r = httpx.options(f"{server.url}/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_openapi_document_matches_the_server(http):
    doc = http.get("/openapi.json").json()
    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert ops and all("422" not in op["responses"] for _, _, op in ops)
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    for status in ("400", "401", "404", "413", "415", "429", "503", "504"):
        ref = chat["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/Error"
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert "requestBody" in doc["paths"]["/v1/models"]["post"]  # register: its body is declared
    assert "401" not in doc["paths"]["/v1/health"]["get"]["responses"]
    # the documented 400 is what a validation error gets
    r = http.post("/v1/chat/completions", json={"model": SMOL_ID, "messages": []})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param"}


def test_whole_number_floats_are_integers(openai_client):
    # JSON has one number type: 4.0 is an integer to JSON schema, so to herd
    r = openai_client.chat.completions.create(model=SMOL_ID, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4.0, n=1.0, temperature=0, seed=3.0)
    assert r.usage.completion_tokens <= 4
    with pytest.raises(Exception) as e:
        openai_client.chat.completions.create(model=SMOL_ID, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4.5)
    assert "max_tokens" in str(e.value)


def test_temperature_below_1e_5_is_greedy(http):
    def text(t: float) -> str:
        r = http.post("/v1/chat/completions", json={"model": SMOL_ID, "temperature": t, "max_tokens": 12,
                                                    "messages": [{"role": "user", "content": "Name a colour."}]})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    greedy = text(0)
    assert text(1e-300) == greedy and text(5e-324) == greedy and text(9e-6) == greedy


def test_overlong_embedding_input_is_a_400_unless_truncation_is_asked(http, stack_client):
    long = "word " * 2000  # ~2000 tokens; all-MiniLM-L6-v2 takes 256
    r = http.post("/v1/embeddings", json={"model": EMBED_ID, "input": ["short", long]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "input" and "input[1]" in err["message"] and "256" in err["message"]
    r = http.post("/v1/inference/embeddings", json={"model_id": EMBED_ID, "contents": [long]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "contents"  # text_truncation omitted: none
    r = http.post("/v1/inference/embeddings", json={"model_id": EMBED_ID, "contents": [long],
                                                    "text_truncation": None})
    assert r.status_code == 400
    end = stack_client.inference.embeddings(model_id=EMBED_ID, contents=[long], text_truncation="end")
    head = stack_client.inference.embeddings(model_id=EMBED_ID, contents=["word " * 254],
                                             text_truncation="none")
    # cut at the end: the first 254 word tokens + [CLS]/[SEP], the same as the input that fits
    assert max(abs(a - b) for a, b in zip(end.embeddings[0], head.embeddings[0])) < 1e-4


def _watch_health(url: str, stop: threading.Event, worst: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t = time.monotonic()
            assert c.get(f"{url}/v1/health").status_code == 200
            worst[0] = max(worst[0], time.monotonic() - t)
            time.sleep(0.05)


def test_health_stays_responsive_while_maximal_requests_are_processed(server, http):
    """~8 MB bodies (just under max_request_bytes) are tokenized off the event loop."""
    big = "All work and no play makes Jack a dull boy. " * 180_000  # 8.1 M characters
    big = big[: 8 * 2**20 - 300]
    stop, worst = threading.Event(), [0.0]
    watcher = threading.Thread(target=_watch_health, args=(server.url, stop, worst))
    watcher.start()
    try:
        t = time.monotonic()
        r = http.post("/v1/inference/embeddings", json={"model_id": EMBED_ID, "contents": [big],
                                                        "text_truncation": "end"})
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384
        r = http.post("/v1/chat/completions", json={"model": SMOL_ID, "max_tokens": 4,
                                                    "messages": [{"role": "user", "content": big}]})
        # refused from its length alone: 8 M characters cannot fit 8192 tokens of at most 81 characters
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "characters" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json={"model": SMOL_ID, "max_tokens": 4, "messages": [
            {"role": "user", "content": big[: 300_000]}]})  # short enough to be tokenized: ~70k tokens
        assert r.status_code == 400 and "tokens" in r.json()["error"]["message"]
        elapsed = time.monotonic() - t
    finally:
        stop.set()
        watcher.join()
    assert worst[0] < 1.0, f"/v1/health took {worst[0]:.2f} s while {elapsed:.1f} s of big requests ran"
