"""Stored chat completions: `store: true` keeps a completion in SQLite under $HERD_HOME; the real `openai` and
`llama-stack-client` packages list, page, fetch and delete them; they survive a restart; the server setting
`store_chat_completions` (requested / all / off) decides what is kept."""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_stack_client
import openai
import pytest
from servekit import SMOL_ID, WEATHER_TOOL, ServerProcess, wait_until
from llama_stack_client import LlamaStackClient

from herd.serve.metrics import parse_metrics

ASK = {"model": SMOL_ID, "max_tokens": 8, "temperature": 0}
PLAIN_MESSAGES = [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "What is the capital of France?", "name": "ann"}]
STREAM_MESSAGES = [{"role": "user", "content": "Say hi."}]


def start(home: Path, mode: str) -> ServerProcess:
    cfg = home.parent / f"server-{mode}.yaml"
    cfg.write_text(f"version: 1\nserver: {{store_chat_completions: '{mode}'}}\n"  # bare off is YAML's false
                   f"models:\n  - {{id: {SMOL_ID}, engine: {{num_blocks: 96, max_num_seqs: 8}}}}\n")
    return ServerProcess("--config", str(cfg), env={"HERD_HOME": str(home)})


def client_for(srv: ServerProcess, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}{base}", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stored") / "herd-home"  # created by the server on first use


@pytest.fixture(scope="module")
def first(home: Path) -> Iterator[ServerProcess]:
    """The server with the default setting ("requested"); the restart test stops it."""
    srv = start(home, "requested")
    yield srv
    assert srv.stop() == 0, srv.output()[-3000:]


@pytest.fixture(scope="module")
def client(first: ServerProcess) -> openai.OpenAI:
    return client_for(first)


@pytest.fixture(scope="module")
def http(first: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=first.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def made(client: openai.OpenAI) -> dict[str, Any]:
    """A stored non-streamed completion (and its raw JSON), a stored stream, a stored tool-call stream and one
    completion that was not stored."""
    raw = client.chat.completions.with_raw_response.create(messages=PLAIN_MESSAGES, store=True,
                                                           metadata={"run": "t", "kind": "plain"}, **ASK)
    chunks = list(client.chat.completions.create(messages=STREAM_MESSAGES, store=True, metadata={"kind": "stream"},
                                                 stream=True, stream_options={"include_usage": True}, **ASK))
    tool_chunks = list(client.chat.completions.create(
        messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], tool_choice="required",
        store=True, stream=True, model=SMOL_ID, max_tokens=40, temperature=0))
    unstored = client.chat.completions.create(messages=STREAM_MESSAGES, **ASK)
    return {"plain": raw.parse(), "plain_json": raw.http_response.json(), "chunks": chunks,
            "tool_chunks": tool_chunks, "unstored": unstored}


def test_non_streamed_completion_is_stored_as_it_was_returned(client, http, made, home):
    plain, sent = made["plain"], made["plain_json"]
    got = http.get(f"/v1/chat/completions/{plain.id}").json()
    assert {k: v for k, v in got.items() if k not in ("input_messages", "metadata")} == sent
    assert got["input_messages"] == PLAIN_MESSAGES and got["metadata"] == {"run": "t", "kind": "plain"}
    parsed = client.chat.completions.retrieve(plain.id)
    assert parsed.choices[0].message.content == plain.choices[0].message.content and parsed.usage == plain.usage
    assert parsed.metadata == {"run": "t", "kind": "plain"}
    db = home / "chat_completions.sqlite"
    with sqlite3.connect(db) as conn:  # the file is where the README says, in WAL mode
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM chat_completions WHERE id = ?", (plain.id,)).fetchone() == (1,)


def test_streamed_completion_is_stored_as_the_stream_spelled_it(client, made):
    chunks = made["chunks"]
    got = client.chat.completions.retrieve(chunks[0].id)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert got.choices[0].message.content == text and text
    assert got.choices[0].finish_reason == next(c.choices[0].finish_reason for c in chunks
                                                if c.choices and c.choices[0].finish_reason)
    assert got.usage == chunks[-1].usage and got.usage.completion_tokens == 8
    assert got.created == chunks[0].created and got.model == SMOL_ID
    assert got.input_messages == STREAM_MESSAGES and got.metadata == {"kind": "stream"}


def test_streamed_tool_call_is_stored_whole(client, made):
    chunks = made["tool_chunks"]
    deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    got = client.chat.completions.retrieve(chunks[0].id).choices[0]
    assert got.finish_reason == "tool_calls" and len(got.message.tool_calls) == 1
    call = got.message.tool_calls[0]
    assert call.id == deltas[0].id and call.function.name == "get_weather"
    assert call.function.arguments == "".join(d.function.arguments or "" for d in deltas)
    assert "city" in json.loads(call.function.arguments)


def test_completion_without_store_is_not_kept(client, made):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.retrieve(made["unstored"].id)
    error = e.value.response.json()["error"]
    assert error["type"] == "not_found_error" and error["param"] == "completion_id"
    assert made["unstored"].id in error["message"]


def test_list_pages_are_consistent(client, http, made):
    extra = [client.chat.completions.create(messages=[{"role": "user", "content": f"Number {i}?"}], store=True,
                                            model=SMOL_ID, max_tokens=1, temperature=0).id for i in range(3)]
    everything = http.get("/v1/chat/completions", params={"limit": 100}).json()
    ids = [c["id"] for c in everything["data"]]
    assert len(ids) == 6 and set(extra) <= set(ids) and made["unstored"].id not in ids
    assert everything["first_id"] == ids[0] and everything["last_id"] == ids[-1] and not everything["has_more"]
    keys = [(c["created"], c["id"]) for c in everything["data"]]
    assert keys == sorted(keys, reverse=True)  # newest first, ties by id
    assert all(c["object"] == "chat.completion" and c["input_messages"] for c in everything["data"])

    paged, after, pages = [], None, []
    while True:  # by hand, checking has_more on every page
        page = client.chat.completions.list(limit=4, **({"after": after} if after else {}))
        pages.append((len(page.data), page.has_more))
        paged += [c.id for c in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert paged == ids and pages == [(4, True), (2, False)]
    assert [c.id for c in client.chat.completions.list(limit=2)] == ids  # the client's own auto-paging
    assert [c.id for c in client.chat.completions.list(limit=5, order="asc")] == ids[::-1]

    assert {c.id for c in client.chat.completions.list(model=SMOL_ID, limit=100)} == set(ids)
    nothing = http.get("/v1/chat/completions", params={"model": "no-such-model"}).json()
    assert nothing == {"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": False}
    streamed = client.chat.completions.list(metadata={"kind": "stream"})
    assert [c.id for c in streamed] == [made["chunks"][0].id]
    assert [c.id for c in client.chat.completions.list(metadata={"run": "t", "kind": "plain"})] == [made["plain"].id]


def test_messages_list_pages_the_input_messages(client, made):
    cid = made["plain"].id
    messages = list(client.chat.completions.messages.list(cid, limit=1))  # auto-paging, one per page
    assert [m.role for m in messages] == ["system", "user"]
    assert [m.id for m in messages] == [f"{cid}-0", f"{cid}-1"]
    assert messages[0].content == "Answer briefly." and messages[1].content == "What is the capital of France?"
    assert messages[1].content_parts is None and messages[1].name == "ann"
    page = client.chat.completions.messages.list(cid, order="desc", limit=1)
    assert [m.id for m in page.data] == [f"{cid}-1"] and page.has_more
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(made["unstored"].id)


def test_llama_stack_client_lists_and_retrieves(first, client, made):
    stack = LlamaStackClient(base_url=first.url, max_retries=0, timeout=120)  # /v1/openai/v1/chat/completions
    listing = stack.chat.completions.list(limit=2, order="asc")
    assert len(listing.data) == 2 and listing.has_more and listing.first_id == listing.data[0].id
    assert [c.id for c in listing.data] == [c.id for c in client.chat.completions.list(limit=2, order="asc").data]
    assert all(c.input_messages and c.choices[0].message.role == "assistant" for c in listing.data)
    got = stack.chat.completions.retrieve(made["chunks"][0].id)
    assert got.input_messages[0].content == "Say hi." and got.choices[0].message.content
    later = stack.chat.completions.list(after=listing.last_id, limit=100, order="asc")
    assert listing.last_id not in [c.id for c in later.data] and not later.has_more
    with pytest.raises(llama_stack_client.NotFoundError):
        stack.chat.completions.retrieve(made["unstored"].id)


def test_bad_query_params_are_400s_naming_them(client, http, made):
    cases = [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "ten"}, "limit"),
             ({"order": "newest"}, "order"), ({"after": "chatcmpl-nope"}, "after")]
    for base in ("/v1", "/v1/openai/v1"):
        for params, name in cases:
            r = http.get(f"{base}/chat/completions", params=params)
            assert r.status_code == 400 and r.json()["error"]["param"] == name, (params, r.text)
            assert name in r.json()["error"]["message"]
    r = http.get(f"/v1/chat/completions/{made['plain'].id}/messages", params={"limit": 500})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.list(order="sideways")  # type: ignore[arg-type]
    too_many = {str(i): "x" for i in range(17)}  # OpenAI's limit is 16 pairs
    r = http.post("/v1/chat/completions", json={**ASK, "messages": STREAM_MESSAGES, "store": True, "metadata": too_many})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata"


def test_routes_are_documented_with_their_query_params(http):
    paths = http.get("/openapi.json").json()["paths"]
    params = {q["name"] for q in paths["/v1/chat/completions"]["get"]["parameters"]}
    assert params == {"limit", "after", "model", "order", "metadata"}
    assert set(paths["/v1/chat/completions/{completion_id}"]) == {"get", "delete"}
    assert {q["name"] for q in paths["/v1/chat/completions/{completion_id}/messages"]["get"]["parameters"]} == {
        "completion_id", "limit", "after", "order"}
    assert not any(path.startswith("/v1/openai/v1") for path in paths)


def test_delete_forgets_a_completion(first, client, made):
    victim = client.chat.completions.create(messages=STREAM_MESSAGES, store=True, model=SMOL_ID, max_tokens=1).id
    alias = client_for(first, "/v1/openai/v1")  # the Llama Stack 0.2 prefix is the same store
    assert alias.chat.completions.retrieve(victim).id == victim
    deleted = alias.chat.completions.delete(victim)
    assert (deleted.id, deleted.object, deleted.deleted) == (victim, "chat.completion.deleted", True)
    for call in (client.chat.completions.retrieve, client.chat.completions.delete):
        with pytest.raises(openai.NotFoundError):
            call(victim)
    assert victim not in [c.id for c in client.chat.completions.list(limit=100)]
    made["deleted"] = victim


def test_stream_cut_by_a_disconnect_is_not_stored(first, http):
    def idle() -> bool:
        return parse_metrics(http.get("/metrics").text).get(f'herd_num_requests_running{{model="{SMOL_ID}"}}') == 0

    body = {"model": SMOL_ID, "messages": STREAM_MESSAGES, "max_tokens": 100, "ignore_eos": True, "stream": True,
            "store": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        cut = json.loads(next(lines)[6:])["id"]
        next(lines)
    assert wait_until(idle, timeout=60)  # aborted (or, at worst, run to its end with no one to send it to)
    time.sleep(0.5)
    assert http.get(f"/v1/chat/completions/{cut}").status_code == 404


def test_restart_keeps_them_and_the_setting_decides(first, home, made):
    assert first.stop() == 0, first.output()[-3000:]
    srv = start(home, "all")  # same HERD_HOME: the same file
    try:
        c = client_for(srv)
        assert c.chat.completions.retrieve(made["plain"].id).metadata == {"run": "t", "kind": "plain"}
        assert c.chat.completions.retrieve(made["chunks"][0].id).input_messages == STREAM_MESSAGES
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.retrieve(made["deleted"])
        kept = c.chat.completions.create(messages=STREAM_MESSAGES, **ASK)  # "all": no `store` needed
        assert c.chat.completions.retrieve(kept.id).choices[0].message.content == kept.choices[0].message.content
        opted_out = c.chat.completions.create(messages=STREAM_MESSAGES, store=False, **ASK)
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.retrieve(opted_out.id)
        assert len(c.chat.completions.list(limit=100).data) == 7
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
    srv = start(home, "off")
    try:
        c = client_for(srv)
        ignored = c.chat.completions.create(messages=STREAM_MESSAGES, store=True, **ASK)  # accepted, not kept
        for cid in (made["plain"].id, ignored.id):
            with pytest.raises(openai.NotFoundError):
                c.chat.completions.retrieve(cid)
        assert c.chat.completions.list().data == []
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
