"""A flood: 200 concurrent short chat requests against a small queue (limits.max_waiting_requests 8). The
surplus gets 429 + Retry-After at once, the admitted requests finish, a client that honours Retry-After gets
its request through within a stated bound, there is no 5xx, and the engine is empty afterwards."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from functools import partial

import httpx
import pytest
from reliability_support import (
    SMOL_ID,
    access_log,
    engine_is_empty,
    percentile,
    report,
    running_server,
    server_statuses,
    statuses_line,
    wait_until,
)

pytestmark = pytest.mark.reliability

FLOOD = 200
MAX_WAITING = 8
PROBE_BOUND_S = 20.0  # a Retry-After-honouring client's short request completes within this during the flood
CONFIG = f"""
limits: {{max_waiting_requests: {MAX_WAITING}, retry_after: 1}}
models:
  - {{id: {SMOL_ID}, engine: {{num_blocks: 512, max_num_seqs: 8}}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("flood")
    with running_server(CONFIG, tmp / "server.yaml", "--embedding-model", "none") as srv:
        yield srv


def chat(content: str, max_tokens: int = 8) -> dict:
    return {"model": SMOL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}


async def _one(c: httpx.AsyncClient, i: int) -> tuple[int, float, httpx.Response]:
    t = time.monotonic()
    r = await c.post("/v1/chat/completions", json=chat(f"Say {i}."))
    return r.status_code, time.monotonic() - t, r


async def _probe(c: httpx.AsyncClient, start_after: float) -> tuple[float, int, list[int]]:
    """A client that retries on 429 after the Retry-After it was given: (seconds to its answer, attempts, statuses)."""
    await asyncio.sleep(start_after)
    t, seen = time.monotonic(), []
    while True:
        r = await c.post("/v1/chat/completions", json=chat("Hi", max_tokens=4))
        seen.append(r.status_code)
        if r.status_code != 429:
            return time.monotonic() - t, len(seen), seen
        await asyncio.sleep(float(r.headers["retry-after"]))


def test_a_flood_gets_quick_429s_and_a_polite_client_gets_through(server):
    assert httpx.post(f"{server.url}/v1/chat/completions", json=chat("warm up"), timeout=60).status_code == 200

    async def main() -> tuple[list, tuple[float, int, list[int]], float]:
        limits = httpx.Limits(max_connections=FLOOD + 10, max_keepalive_connections=FLOOD + 10)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            t0 = time.monotonic()
            probe = asyncio.ensure_future(_probe(c, start_after=0.05))
            results = await asyncio.gather(*(_one(c, i) for i in range(FLOOD)))
            return results, await probe, time.monotonic() - t0

    results, (probe_s, probe_tries, probe_seen), elapsed = asyncio.run(main())
    codes = Counter(code for code, _, _ in results)
    busy = [(dt, r) for code, dt, r in results if code == 429]
    done = [(dt, r) for code, dt, r in results if code == 200]
    empty = wait_until(partial(engine_is_empty, server.url, SMOL_ID), timeout=30)
    seen = server_statuses(server.url)
    busy_ms = [dt * 1000 for dt, _ in busy]  # as the client saw them (200 coroutines on the same 2 cores)
    served_ms = [e["duration_ms"] for e in access_log(server) if e["status"] == 429]  # inside the server
    ok_s = [dt for dt, _ in done]
    report("flood", requests=FLOOD, max_waiting_requests=MAX_WAITING, statuses=statuses_line(codes),
           p50_429_ms=round(percentile(busy_ms, 50)), p99_429_ms=round(percentile(busy_ms, 99)),
           max_429_ms=round(max(busy_ms, default=0)), server_p50_429_ms=round(percentile(served_ms, 50), 1),
           server_p99_429_ms=round(percentile(served_ms, 99), 1), p50_200_s=round(percentile(ok_s, 50), 2),
           max_200_s=round(max(ok_s, default=0), 2), retry_after=sorted({r.headers["retry-after"] for _, r in busy}),
           probe_s=round(probe_s, 2), probe_attempts=probe_tries, probe_statuses=probe_seen,
           probe_bound_s=PROBE_BOUND_S, flood_seconds=round(elapsed, 1), server_statuses=statuses_line(seen),
           engine_empty_after=empty)
    assert set(codes) <= {200, 429}, [r.text for _, _, r in results if r.status_code not in (200, 429)][:5]
    assert len(busy) >= FLOOD // 2 and len(done) >= MAX_WAITING, codes
    for _, r in busy:
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "server_busy", r.text
    assert percentile(busy_ms, 99) < 2000, busy_ms  # refused at once, not after a wait in the queue
    for _, r in done:
        assert r.json()["usage"]["completion_tokens"] == 8, r.text
    assert probe_seen[-1] == 200 and probe_s < PROBE_BOUND_S, (probe_s, probe_seen)
    assert empty
    assert not any(s >= 500 for s in seen), seen
