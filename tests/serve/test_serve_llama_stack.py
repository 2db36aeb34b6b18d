"""The Llama Stack routes, driven by `llama-stack-client` (0.2.12 on Python < 3.12: the classic routes)."""
from __future__ import annotations

import llama_stack_client
import numpy as np
import pytest
from servekit import API_KEY, EMBED_ID, SMOL_ID, TINY_ID

GREEDY = {"strategy": {"type": "greedy"}, "max_tokens": 8}


def test_models_list_shows_types_and_metadata(stack_client):
    models = {m.identifier: m for m in stack_client.models.list()}
    assert list(models) == [SMOL_ID, TINY_ID, EMBED_ID]
    assert models[SMOL_ID].api_model_type == "llm" and models[SMOL_ID].provider_id == "herd"
    assert models[EMBED_ID].api_model_type == "embedding" and models[EMBED_ID].metadata["embedding_dimension"] == 384
    assert stack_client.models.retrieve(TINY_ID).identifier == TINY_ID


def test_chat_completion_non_stream_and_stream_agree(stack_client):
    kw = dict(model_id=SMOL_ID, messages=[{"role": "user", "content": "What is the capital of France?"}],
              sampling_params=GREEDY)
    r = stack_client.inference.chat_completion(**kw)
    msg = r.completion_message
    assert msg.role == "assistant" and msg.content and msg.stop_reason in ("end_of_turn", "out_of_tokens")
    metrics = {m.metric: m.value for m in r.metrics}
    assert metrics["total_tokens"] == metrics["prompt_tokens"] + metrics["completion_tokens"]
    events = [c.event for c in stack_client.inference.chat_completion(stream=True, **kw)]
    assert [events[0].event_type, events[-1].event_type] == ["start", "complete"]
    assert "".join(e.delta.text for e in events if e.delta.type == "text") == msg.content
    assert events[-1].stop_reason == msg.stop_reason


def test_chat_completion_with_system_message_and_top_p(stack_client):
    r = stack_client.inference.chat_completion(
        model_id=SMOL_ID, messages=[{"role": "system", "content": "Answer in one word."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        sampling_params={"strategy": {"type": "top_p", "temperature": 0.7, "top_p": 0.9}, "max_tokens": 4},
        logprobs={"top_k": 2})
    assert r.completion_message.content and len(r.logprobs) >= 1 and len(r.logprobs[0].logprobs_by_token) >= 1


def test_completion_and_stream(stack_client):
    r = stack_client.inference.completion(model_id=SMOL_ID, content="The capital of France is",
                                          sampling_params=GREEDY)
    assert "Paris" in r.content and r.stop_reason in ("end_of_turn", "out_of_tokens")
    chunks = list(stack_client.inference.completion(model_id=SMOL_ID, content="The capital of France is",
                                                    sampling_params=GREEDY, stream=True))
    assert "".join(c.content for c in chunks) == r.content and chunks[-1].stop_reason == r.stop_reason


def test_embeddings(stack_client):
    r = stack_client.inference.embeddings(model_id=EMBED_ID, contents=["a cat", "a kitten", "tax law"])
    v = np.array(r.embeddings)
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2]
    r = stack_client.inference.embeddings(model_id=EMBED_ID, contents=[{"type": "text", "text": "a cat"}])
    assert np.allclose(r.embeddings[0], v[0], atol=1e-5)


def test_providers_health_version_routes(stack_client):
    providers = {(p.api, p.provider_id, p.provider_type) for p in stack_client.providers.list()}
    # inference (herd), safety (the shield types the server has: code-shield is always there), retrieval
    # (it serves an embedding model), and the tool runtime's (tests/serve/test_tool_runtime.py checks those)
    assert {x for x in providers if x[0] != "tool_runtime"} == {
        ("inference", "herd", "inline::herd"), ("safety", "code-shield", "inline::code-shield"),
        ("vector_io", "sqlite-vec", "inline::sqlite-vec"), ("files", "localfs", "inline::localfs")}
    assert ("tool_runtime", "model-context-protocol", "remote::model-context-protocol") in providers
    assert ("tool_runtime", "rag-runtime", "inline::rag-runtime") in providers
    assert stack_client.providers.retrieve("herd").provider_type == "inline::herd"
    assert stack_client.providers.retrieve("code-shield").api == "safety"
    assert stack_client.inspect.health().status == "OK"
    assert stack_client.inspect.version().version
    routes = {(r.route, r.method) for r in stack_client.routes.list()}
    for want in [("/v1/chat/completions", "POST"), ("/v1/inference/chat-completion", "POST"),
                 ("/v1/models/{model_id}", "GET"), ("/v1/health", "GET")]:
        assert want in routes


def test_errors_come_back_as_client_exceptions(server, stack_client):
    with pytest.raises(llama_stack_client.NotFoundError) as e:
        stack_client.inference.chat_completion(model_id="llama3.2:3b", messages=[{"role": "user", "content": "x"}])
    assert SMOL_ID in str(e.value)
    with pytest.raises(llama_stack_client.AuthenticationError):
        llama_stack_client.LlamaStackClient(base_url=server.url, max_retries=0).models.list()
    with pytest.raises(llama_stack_client.BadRequestError):
        stack_client.inference.embeddings(model_id=EMBED_ID, contents=["x"], output_dimension=128)


def test_version_skew_is_never_a_426(http):
    for version in ("0.1.0", "0.2.12", "0.7.5", "9.9.9", "garbage"):
        r = http.get("/v1/models", headers={"X-LlamaStack-Client-Version": version,
                                            "X-LlamaStack-Provider-Data": '{"fireworks_api_key": "k"}'})
        assert r.status_code == 200
    # a 0.2 client gets no `[DONE]` (it json-parses every event); everyone else does
    body = {"model": SMOL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True}
    for version, done in (("0.2.12", False), ("0.7.5", True)):
        with http.stream("POST", "/v1/openai/v1/chat/completions", json=body,
                         headers={"X-LlamaStack-Client-Version": version}) as r:
            lines = [x for x in r.iter_lines() if x.startswith("data:")]
        assert (lines[-1] == "data: [DONE]") is done


def test_register_served_model_is_a_no_op(http):
    r = http.post("/v1/models", json={"model_id": SMOL_ID})
    assert r.status_code == 200 and r.json()["identifier"] == SMOL_ID
    r = http.post("/v1/models", json={"model_id": "other"})
    assert r.status_code == 400 and "--model" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "model_id"
    assert API_KEY  # the shared client sends it
