"""Back-pressure and lifecycle limits of `herd serve` (issue 10): per-request caps, 429 instead of an unbounded
queue, one request's sequences cannot starve a short one, request deadlines, queued streams that lose their
client, CORS, memory after large requests, and a drain that runs out."""
from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from servekit import EMBED_ID, SMOL_ID, ServerProcess, wait_until

from herd.serve.metrics import parse_metrics

ORIGIN = "https://app.example"
CONFIG = f"""
server: {{cors_origins: ["{ORIGIN}"]}}
limits: {{max_waiting_requests: 3, max_sequences_in_flight: 1, max_completion_prompts: 8, max_embedding_inputs: 4,
          max_stop_strings: 2, max_sequences_per_request: 8, request_timeout: 6}}
models:
  - {{id: {SMOL_ID}, engine: {{num_blocks: 512, max_num_seqs: 2}}}}
  - {{id: {EMBED_ID}, type: embedding}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    cfg = tmp_path_factory.mktemp("limits") / "server.yaml"
    cfg.write_text(CONFIG)
    srv = ServerProcess("--config", str(cfg))
    yield srv
    srv.stop(kill=True)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def chat(content: str = "Hi", **kw):
    return {"model": SMOL_ID, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


def engine_counts(http: httpx.Client) -> tuple[float, float]:
    m = parse_metrics(http.get("/metrics").text)
    label = f'{{model="{SMOL_ID}"}}'
    return m[f"herd_num_requests_running{label}"], m[f"herd_num_requests_waiting{label}"]


@pytest.mark.parametrize("path,body,param,limit", [
    ("/v1/completions", {"model": SMOL_ID, "prompt": ["a"] * 9, "max_tokens": 1}, "prompt", "max_completion_prompts"),
    ("/v1/completions", {"model": SMOL_ID, "prompt": ["a"] * 3, "n": 3, "max_tokens": 1}, "n",
     "max_sequences_per_request"),
    ("/v1/embeddings", {"model": EMBED_ID, "input": ["a"] * 5}, "input", "max_embedding_inputs"),
    ("/v1/inference/embeddings", {"model_id": EMBED_ID, "contents": ["a"] * 5}, "contents", "max_embedding_inputs"),
    ("/v1/chat/completions", chat(stop=["x", "y", "z"], max_tokens=1), "stop", "max_stop_strings"),
    ("/v1/completions", {"model": SMOL_ID, "prompt": "a", "stop": ["x", "y", "z"], "max_tokens": 1}, "stop",
     "max_stop_strings"),
    ("/v1/inference/chat-completion", {"model_id": SMOL_ID, "messages": [{"role": "user", "content": "a"}],
                                       "sampling_params": {"stop": ["x", "y", "z"], "max_tokens": 1}},
     "sampling_params.stop", "max_stop_strings"),
])
def test_per_request_caps_are_400s_naming_the_limit(http, path, body, param, limit):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and f"limits.{limit}" in err["message"] and err["code"] == "limit_exceeded", err


def test_a_flood_gets_429s_at_once_and_the_admitted_requests_finish(server):
    async def one(c: httpx.AsyncClient, i: int) -> tuple[int, float, httpx.Response]:
        t = time.monotonic()
        r = await c.post("/v1/chat/completions", json=chat(f"Count to {i}.", max_tokens=16, ignore_eos=True))
        return r.status_code, time.monotonic() - t, r

    async def main() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            return await asyncio.gather(*(one(c, i) for i in range(12)))

    results = asyncio.run(main())
    busy = [(dt, r) for code, dt, r in results if code == 429]
    assert busy and all(code in (200, 429) for code, _, _ in results), [r.text for _, _, r in results]
    for dt, r in busy:
        assert dt < 2.0 and int(r.headers["retry-after"]) >= 1  # refused at once, with a hint
        assert r.json()["error"]["code"] == "server_busy" and "limits" in r.json()["error"]["message"]
    assert sum(code == 200 for code, _, _ in results) >= 3


def test_many_sequences_of_one_request_do_not_starve_a_short_one(server):
    """A completions request of 3 prompts x n=2 keeps one prompt's group in the engine at a time
    (max_sequences_in_flight 1), so a short chat sent just after it gets the engine's other slot."""
    async def main() -> tuple[float, float, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            t0 = time.monotonic()
            big = asyncio.ensure_future(c.post("/v1/completions", json={
                "model": SMOL_ID, "prompt": ["One", "Two", "Three"], "n": 2, "max_tokens": 32, "temperature": 0,
                "ignore_eos": True}))
            await asyncio.sleep(0.4)
            short = await c.post("/v1/chat/completions", json=chat("Hi", max_tokens=4))
            t_short = time.monotonic() - t0
            big_r = await big
            return t_short, time.monotonic() - t0, short, big_r

    t_short, t_big, short, big = asyncio.run(main())
    assert short.status_code == 200 and big.status_code == 200, (short.text, big.text)
    assert len(big.json()["choices"]) == 6
    assert t_short < t_big / 2, f"short chat took {t_short:.1f} s, the big request {t_big:.1f} s"


def test_request_timeout_stops_a_long_request(server, http):
    t = time.monotonic()
    r = http.post("/v1/chat/completions", json=chat("Tell a long story.", max_tokens=6000, ignore_eos=True))
    dt = time.monotonic() - t
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout", r.text
    assert 5.5 < dt < 12, dt
    with http.stream("POST", "/v1/chat/completions", json=chat("Go on.", max_tokens=6000, ignore_eos=True,
                                                               stream=True)) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "request_timeout" and len(events) > 3
    assert wait_until(lambda: engine_counts(http) == (0, 0), timeout=10)  # nothing left in the engine
    assert http.post("/v1/chat/completions", json=chat(max_tokens=2)).status_code == 200


def test_a_queued_stream_whose_client_leaves_is_aborted_while_waiting(server, http):
    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            # both engine slots busy with long streams
            busy = [asyncio.ensure_future(c.post("/v1/chat/completions", json=chat(
                f"Story {i}", max_tokens=5000, ignore_eos=True))) for i in range(2)]
            await asyncio.sleep(1.0)

            async def queued() -> None:
                async with c.stream("POST", "/v1/chat/completions", json=chat("Wait", max_tokens=4,
                                                                               stream=True)) as r:
                    async for _ in r.aiter_lines():
                        pass

            task = asyncio.ensure_future(queued())
            assert await asyncio.to_thread(wait_until, lambda: engine_counts(http)[1] == 1, 5)
            task.cancel()  # the client goes away while its request still waits for a slot
            t = time.monotonic()
            assert await asyncio.to_thread(wait_until, lambda: engine_counts(http)[1] == 0, 5)
            assert time.monotonic() - t < 2.0 and engine_counts(http)[0] == 2  # gone long before a slot freed
            for b in busy:
                b.cancel()
            await asyncio.gather(*busy, task, return_exceptions=True)

    asyncio.run(main())
    assert wait_until(lambda: engine_counts(http) == (0, 0), timeout=15)


def test_cors_when_configured(server):
    pre = httpx.options(f"{server.url}/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{server.url}/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    r = httpx.get(f"{server.url}/v1/models", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_returns_after_large_requests(server, http):
    big = ("All work and no play makes Jack a dull boy. " * 190_000)[: 8 * 2**20 - 300]
    assert http.post("/v1/chat/completions", json=chat("warm up", max_tokens=1)).status_code == 200
    assert http.post("/v1/inference/embeddings", json={"model_id": EMBED_ID, "contents": ["warm up"]}).status_code == 200
    base = _rss_mb(server.proc.pid)
    peak = base
    for _ in range(4):
        r = http.post("/v1/chat/completions", json=chat(big, max_tokens=1))
        assert r.status_code == 400  # longer than the context
        r = http.post("/v1/inference/embeddings", json={"model_id": EMBED_ID, "contents": [big],
                                                        "text_truncation": "end"})
        assert r.status_code == 200
        peak = max(peak, _rss_mb(server.proc.pid))
    time.sleep(1.5)  # the trim runs off the event loop
    after = _rss_mb(server.proc.pid)
    assert after < base + 250, f"RSS {base:.0f} MB -> {after:.0f} MB after 8 large requests (peak {peak:.0f} MB)"


def test_a_drain_that_runs_out_cuts_requests_with_an_answer_and_exit_3(tmp_path: Path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"server: {{drain_timeout: 3}}\nmodels:\n  - {{id: {SMOL_ID}, engine: {{num_blocks: 256}}}}\n")
    srv = ServerProcess("--config", str(cfg), "--embedding-model", "none")
    try:
        async def main() -> tuple[list[dict], httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                plain = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat(
                    "Long", max_tokens=2000, ignore_eos=True)))
                events: list[dict] = []
                async with c.stream("POST", "/v1/chat/completions", json=chat(
                        "Longer", max_tokens=2000, ignore_eos=True, stream=True)) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            events.append(json.loads(line[6:]))
                            if len(events) == 3:
                                srv.proc.send_signal(signal.SIGTERM)
                return events, await plain

        events, plain = asyncio.run(main())
        assert events[-1]["error"]["code"] == "server_shutting_down", events[-1]
        assert plain.status_code == 503 and plain.json()["error"]["code"] == "server_shutting_down"
        assert srv.proc.wait(30) == 3
        assert "drain timeout (3 s) ran out: 2 in-flight request(s) were cut" in srv.output()
    finally:
        srv.stop(kill=True)
