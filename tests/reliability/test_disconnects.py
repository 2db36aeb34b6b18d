"""32 concurrent streams, a seeded third of whose clients hang up after a random number of events (some while
still queued): every KV block comes back, nothing is left running or waiting, no 5xx, and the server still
answers."""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from functools import partial

import httpx
import pytest
from reliability_support import (
    SMOL_ID,
    engine_is_empty,
    engine_state,
    metric,
    report,
    running_server,
    server_statuses,
    statuses_line,
    wait_until,
)

pytestmark = pytest.mark.reliability

SEED = 20250101
CLIENTS = 32
MAX_TOKENS = 64
CONFIG = f"""
models:
  - {{id: {SMOL_ID}, engine: {{num_blocks: 512, max_num_seqs: 16}}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("disconnects")
    with running_server(CONFIG, tmp / "server.yaml", "--embedding-model", "none") as srv:
        yield srv


async def _client(base: str, i: int, leave_after: int | None) -> dict:
    """One stream; with `leave_after`, the connection is closed after that many events (0: at the headers)."""
    body = {"model": SMOL_ID, "messages": [{"role": "user", "content": f"Count from {i} upwards."}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True}
    out = {"i": i, "status": None, "events": 0, "done": False, "finish": None, "left": leave_after is not None}
    async with httpx.AsyncClient(base_url=base, timeout=300) as c, c.stream("POST", "/v1/chat/completions",
                                                                              json=body) as r:
        out["status"] = r.status_code
        if leave_after == 0:
            return out
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                out["events"] += 1
                choices = json.loads(line[6:]).get("choices") or [{}]
                out["finish"] = choices[0].get("finish_reason") or out["finish"]
                if leave_after is not None and out["events"] >= leave_after:
                    break  # leaves both `async with`s: the connection is closed mid-stream
    return out


def _watch(url: str, stop: threading.Event, peak: dict) -> None:
    while not stop.is_set():
        s = engine_state(url, SMOL_ID)
        peak["min_free"] = min(peak.get("min_free", s["free"]), s["free"])
        peak["max_running"] = max(peak.get("max_running", 0), s["running"])
        peak["max_waiting"] = max(peak.get("max_waiting", 0), s["waiting"])
        time.sleep(0.1)


def test_32_streams_with_random_disconnects_return_every_block(server):
    rng = random.Random(SEED)
    leavers = {i: rng.randint(0, 24) for i in rng.sample(range(CLIENTS), round(CLIENTS / 3))}
    before = engine_state(server.url, SMOL_ID)
    aborts0 = metric(server.url, f'herd_requests_finished_total{{model="{SMOL_ID}",reason="abort"}}')
    assert before["free"] == before["usable"]
    stop, peak = threading.Event(), {}
    watcher = threading.Thread(target=_watch, args=(server.url, stop, peak))
    watcher.start()

    async def run() -> list[dict]:
        return await asyncio.gather(*(_client(server.url, i, leavers.get(i)) for i in range(CLIENTS)))

    t0 = time.monotonic()
    try:
        results = asyncio.run(run())
    finally:
        elapsed = time.monotonic() - t0
        t1 = time.monotonic()
        returned = wait_until(partial(engine_is_empty, server.url, SMOL_ID), timeout=30, interval=0.05)
        settle = time.monotonic() - t1
        stop.set()
        watcher.join()
    after = engine_state(server.url, SMOL_ID)
    aborts = metric(server.url, f'herd_requests_finished_total{{model="{SMOL_ID}",reason="abort"}}') - aborts0
    stayed = [r for r in results if not r["left"]]
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": SMOL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    seen = server_statuses(server.url)
    report("disconnects", clients=CLIENTS, seed=SEED, disconnected=len(leavers),
           disconnect_after_events=sorted(leavers.values()), completed=sum(r["done"] for r in stayed),
           seconds=round(elapsed, 1), kv_before=f"{before['free']:.0f}/{before['usable']:.0f}",
           kv_min_free=f"{peak.get('min_free', 0):.0f}", kv_after=f"{after['free']:.0f}/{after['usable']:.0f}",
           max_running=f"{peak.get('max_running', 0):.0f}", max_waiting=f"{peak.get('max_waiting', 0):.0f}",
           running_after=f"{after['running']:.0f}", waiting_after=f"{after['waiting']:.0f}", aborts=f"{aborts:.0f}",
           blocks_back_within_s=round(settle, 2), server_statuses=statuses_line(seen))
    assert all(r["status"] == 200 for r in results), results
    assert all(r["done"] and r["finish"] == "length" for r in stayed), stayed
    assert returned, after
    assert after["free"] == after["usable"] and after["running"] == 0 and after["waiting"] == 0
    assert aborts == len(leavers)  # each hang-up was noticed and aborted, none finished by accident
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] >= 1, chat.text
    assert not any(s >= 500 for s in seen), seen
