"""The safety routes served by uvicorn and driven by the real `llama-stack-client` and `openai` clients.

The app here is a bare FastAPI app with `herd.serve.safety.mount`; the guard is the tiny random
checkpoint whose answers are forced by the test-only logits processor.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from guardkit import forcing, say

from herd.safety.llama_guard import LlamaGuard
from herd.safety.shields import ShieldConfig, ShieldRegistry

END_HEADER, UNSAFE, SAFE = 128007, 39257, 19193


@pytest.fixture(scope="module")
def served(guard_meta_dir) -> Iterator[tuple[str, LlamaGuard]]:
    import uvicorn
    from fastapi import FastAPI

    from herd.serve.routes import mount_safety

    guard = LlamaGuard.load(str(guard_meta_dir), device="cpu", dtype="float32", max_model_len=2048)
    registry = ShieldRegistry.from_config(None)
    registry.add(ShieldConfig("llama-guard", "llama-guard", str(guard_meta_dir), {}), guard)
    app = FastAPI()
    mount_safety(app, registry)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/v1/shields", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield base, guard
    server.should_exit = True
    thread.join(timeout=10)


def test_llama_stack_client_run_shield(served) -> None:
    from llama_stack_client import LlamaStackClient

    base, guard = served
    client = LlamaStackClient(base_url=base)
    tok = guard.llm.tokenizer
    msgs = [{"role": "user", "content": "How do I make sarin?"}]
    with forcing(guard.llm.model, say(tok, "unsafe\nS9", END_HEADER, first={UNSAFE: 0.9, SAFE: 0.1})):
        r = client.safety.run_shield(shield_id="llama-guard", messages=msgs, params={})
    assert r.violation is not None and r.violation.violation_level == "error"
    assert r.violation.user_message == "I can't answer that. Can I help with something else?"
    assert r.violation.metadata["violation_type"] == "S9"
    with forcing(guard.llm.model, say(tok, "safe", END_HEADER)):
        assert client.safety.run_shield(shield_id="llama-guard", messages=msgs, params={}).violation is None


def test_llama_stack_client_shields(served) -> None:
    from llama_stack_client import LlamaStackClient

    client = LlamaStackClient(base_url=served[0])
    shields = client.shields.list()
    assert [s.identifier for s in shields] == ["code-shield", "llama-guard"]
    assert all(s.type == "shield" for s in shields)
    assert client.shields.retrieve("code-shield").provider_id == "code-shield"


def test_openai_moderations(served) -> None:
    from openai import OpenAI

    base, guard = served
    client = OpenAI(base_url=f"{base}/v1", api_key="none")
    with forcing(guard.llm.model, say(guard.llm.tokenizer, "unsafe\nS1", END_HEADER)):
        r = client.moderations.create(model="llama-guard", input="I will hurt him")
    assert r.model == "llama-guard" and len(r.results) == 1
    res = r.results[0]
    assert res.flagged and res.categories.model_extra["Violent Crimes"] is True
    assert res.model_extra["user_message"].startswith("I can't answer that")
    r = client.moderations.create(model="code-shield", input=["import hashlib\nhashlib.md5(password)", "x = 1"])
    assert [x.flagged for x in r.results] == [True, False]


def test_run_shield_with_openai_messages_and_code_shield(served) -> None:
    body = {"shield_id": "code-shield", "messages": [
        {"role": "user", "content": "hash it"},
        {"role": "assistant", "content": [{"type": "text", "text": "```python\nimport hashlib\n"
                                                                   "h = hashlib.md5(password.encode())\n```"}]}]}
    r = httpx.post(f"{served[0]}/v1/safety/run-shield", json=body)
    assert r.status_code == 200
    v = r.json()["violation"]
    assert v["violation_level"] == "error" and v["metadata"]["issues"][0]["line"] == 2
    ok = httpx.post(f"{served[0]}/v1/safety/run-shield",
                    json={"shield_id": "code-shield", "messages": [{"role": "user", "content": "hi"}], "params": {}})
    assert ok.json() == {"violation": None}


def test_errors_are_clear_4xx(served) -> None:
    base = served[0]
    r = httpx.post(f"{base}/v1/safety/run-shield", json={"shield_id": "nope", "messages": [], "params": {}})
    assert r.status_code == 404 and "available shields: code-shield, llama-guard" in r.text
    r = httpx.get(f"{base}/v1/shields/nope")
    assert r.status_code == 404 and "code-shield" in r.text
    r = httpx.post(f"{base}/v1/safety/run-shield", json={"shield_id": "code-shield", "messages": [{"role": "x"}]})
    assert r.status_code == 400 and "role must be" in r.text
    r = httpx.post(f"{base}/v1/moderations", json={"input": "hi", "model": "gpt-moderation"})
    assert r.status_code == 404
