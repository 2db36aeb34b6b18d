"""SIGTERM with requests in flight. With a drain timeout long enough, streams finish with [DONE] and non-streams
with 200, new connections are refused, and the exit code is 0. With a short one, what is still running is cut
with an answer (an error event; 503) and the exit code is 3."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
from reliability_support import (
    SMOL_ID,
    engine_state,
    report,
    running_server,
    wait_until,
)

pytestmark = pytest.mark.reliability

STREAMS = PLAIN = 4
SCENARIOS = {  # name: (server.drain_timeout, max_tokens per request, expected exit code)
    "enough": (60, 48, 0),
    "short": (3, 2000, 3),
}


def _config(drain_timeout: float) -> str:
    return f"server: {{drain_timeout: {drain_timeout}}}\nmodels:\n" \
           f"  - {{id: {SMOL_ID}, engine: {{num_blocks: 512, max_num_seqs: 16}}}}\n"


def _body(i: int, max_tokens: int, stream: bool) -> dict:
    return {"model": SMOL_ID, "messages": [{"role": "user", "content": f"Tell story {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}


async def _stream(c: httpx.AsyncClient, i: int, max_tokens: int, started: asyncio.Event) -> dict:
    out: dict = {"events": [], "done": False}
    async with c.stream("POST", "/v1/chat/completions", json=_body(i, max_tokens, True)) as r:
        out["status"] = r.status_code
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                out["events"].append(json.loads(line[6:]))
                if len(out["events"]) == 3:
                    started.set()
    return out


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/v1/health", timeout=3)
    except httpx.TransportError:
        return True
    return False


async def _drive(srv, max_tokens: int) -> tuple[list[dict], list[httpx.Response], float, bool]:
    """Start STREAMS streams and PLAIN non-streams, SIGTERM once all are in the engine; their outcomes, the
    monotonic time of the signal, and whether a new connection was refused during the drain."""
    async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
        started = [asyncio.Event() for _ in range(STREAMS)]
        streams = [asyncio.ensure_future(_stream(c, i, max_tokens, started[i])) for i in range(STREAMS)]
        plain = [asyncio.ensure_future(c.post("/v1/chat/completions", json=_body(STREAMS + i, max_tokens, False)))
                 for i in range(PLAIN)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
        in_engine = await asyncio.to_thread(
            wait_until, lambda: engine_state(srv.url, SMOL_ID)["running"] == STREAMS + PLAIN, 30, 0.05)
        assert in_engine, engine_state(srv.url, SMOL_ID)
        srv.proc.send_signal(signal.SIGTERM)
        t_signal = time.monotonic()
        await asyncio.sleep(0.3)
        refused = await asyncio.to_thread(_refused, srv.url)
        return await asyncio.gather(*streams), await asyncio.gather(*plain), t_signal, refused


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigterm_drain(tmp_path, scenario):
    drain_timeout, max_tokens, expected_exit = SCENARIOS[scenario]
    with running_server(_config(drain_timeout), tmp_path / "server.yaml", "--embedding-model", "none") as srv:
        streams, plain, t_signal, refused = asyncio.run(_drive(srv, max_tokens))
        code = srv.proc.wait(drain_timeout + 30)
        exit_s = time.monotonic() - t_signal
        log = srv.output()
    finished = [s for s in streams if s["done"] and s["events"][-1].get("choices")
                and s["events"][-1]["choices"][0]["finish_reason"] == "length"]
    cut = [s for s in streams if s["events"] and s["events"][-1].get("error", {}).get("code") == "server_shutting_down"]
    report(f"drain_{scenario}", drain_timeout_s=drain_timeout, max_tokens=max_tokens, streams=STREAMS,
           non_streams=PLAIN, streams_done=len(finished), streams_cut=len(cut),
           stream_events=[len(s["events"]) for s in streams], non_stream_statuses=[r.status_code for r in plain],
           new_connection_refused=refused, exit_code=code, sigterm_to_exit_s=round(exit_s, 1))
    assert refused  # no new connections while draining
    if expected_exit == 0:
        assert len(finished) == STREAMS, streams
        for r in plain:
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == max_tokens, r.text
        assert "finishing in-flight requests" in log
    else:
        assert len(cut) == STREAMS, [s["events"][-1:] for s in streams]
        for r in plain:
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down", r.text
        assert f"drain timeout ({drain_timeout} s) ran out: {STREAMS + PLAIN} in-flight request(s) were cut" in log
        assert exit_s < drain_timeout + 5
    assert code == expected_exit, log[-3000:]
    assert "Traceback" not in log, log[-5000:]
