"""Concurrency and lifecycle: 32 streaming clients with 8 early disconnects, metrics, and a graceful drain."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
from servekit import API_KEY, SMOL_ID, TINY_ID, ServerProcess, wait_until

from herd.serve.metrics import parse_metrics


def kv_state(http: httpx.Client, model: str) -> tuple[float, float, float]:
    m = parse_metrics(http.get("/metrics").text)
    label = f'{{model="{model}"}}'
    return (m[f"herd_kv_cache_free_blocks{label}"], m[f"herd_kv_cache_usable_blocks{label}"],
            m[f"herd_num_requests_running{label}"])


async def _client(base: str, i: int, disconnect: bool) -> tuple[int, str, str | None]:
    body = {"model": SMOL_ID, "messages": [{"role": "user", "content": f"Count from {i} upwards."}],
            "max_tokens": 12, "temperature": 0, "stream": True, "ignore_eos": True}
    text, finish, events = "", None, 0
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as c:
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events += 1
                chunk = json.loads(line[6:])
                choice = chunk["choices"][0]
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
                if disconnect and events >= 3:
                    break  # leaves the `async with`: the connection is closed mid-stream
    return i, text, finish


def test_32_streams_with_8_disconnects_free_every_kv_block(server, http):
    free0, usable, _ = kv_state(http, SMOL_ID)
    assert free0 == usable

    async def run() -> list[tuple[int, str, str | None]]:
        return await asyncio.gather(*(_client(server.url, i, disconnect=i % 4 == 0) for i in range(32)))

    results = asyncio.run(run())
    completed = [r for r in results if r[0] % 4]
    assert len(completed) == 24 and all(finish == "length" and text for _, text, finish in completed)
    # the engine notices the 8 disconnects, aborts them and frees their blocks
    assert wait_until(lambda: kv_state(http, SMOL_ID) == (usable, usable, 0), timeout=30), kv_state(http, SMOL_ID)
    m = parse_metrics(http.get("/metrics").text)
    assert m[f'herd_requests_finished_total{{model="{SMOL_ID}",reason="abort"}}'] >= 8
    assert m[f'herd_time_to_first_token_seconds_count{{model="{SMOL_ID}"}}'] >= 32


def test_non_stream_client_that_gives_up_frees_its_blocks(server, http):
    _, usable, _ = kv_state(http, SMOL_ID)
    body = {"model": SMOL_ID, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 4000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=2.0,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert wait_until(lambda: kv_state(http, SMOL_ID) == (usable, usable, 0), timeout=20), kv_state(http, SMOL_ID)


def test_metrics_exposition(http):
    http.post("/v1/chat/completions", json={"model": SMOL_ID, "messages": [{"role": "user", "content": "Hi"}],
                                            "max_tokens": 3})
    text = http.get("/metrics").text
    for name in ("herd_http_requests_total", "herd_prompt_tokens_total", "herd_generation_tokens_total",
                 "herd_time_to_first_token_seconds_bucket", "herd_inter_token_latency_seconds_bucket",
                 "herd_num_requests_running", "herd_num_requests_waiting", "herd_kv_cache_usage_ratio"):
        assert f"\n{name}" in text or text.startswith(name), name
    assert '# TYPE herd_time_to_first_token_seconds histogram' in text
    m = parse_metrics(text)
    assert m['herd_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'] >= 1


@pytest.fixture()
def tiny_server(tool_model_dir) -> ServerProcess:
    srv = ServerProcess("--model", f"{TINY_ID}={tool_model_dir}", "--embedding-model", "none",
                        "--num-blocks", "128", "--drain-timeout", "60")
    yield srv
    srv.stop(kill=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_streams_and_exits_0(tiny_server, sig):
    body = {"model": TINY_ID, "messages": [{"role": "user", "content": "Go"}], "max_tokens": 300,
            "temperature": 0, "stream": True, "ignore_eos": True}
    chunks = 0
    with httpx.Client(base_url=tiny_server.url, timeout=120) as c, \
            c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        for line in lines:  # the stream is under way ...
            if line.startswith("data: {"):
                chunks += 1
                if chunks == 3:
                    break
        tiny_server.proc.send_signal(sig)  # ... when the server is told to stop
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new connections while draining
            httpx.get(f"{tiny_server.url}/v1/health", timeout=5)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    finishes = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in rest[:-1] if json.loads(x[6:])["choices"]]
    assert finishes[-1] == "length"
    assert tiny_server.proc.wait(60) == 0
    assert "finishing in-flight requests" in tiny_server.output()
