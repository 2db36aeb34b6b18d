"""The OpenAI Responses API of `herd serve`, driven by the real `openai` client against a real server process
(SmolLM2, greedy): function calls and their outputs across `previous_response_id`, the event stream against
the stored response, web_search run server-side on an offline corpus, json_schema output, MCP tools of a real
MCP server, retrieve / delete / input_items, 4xx for bad input, `store: false`, and a restart keeping them.
Every response, item page and stream event is validated against the `openai` package's own types."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter
from servekit import SMOL_ID, ServerProcess, wait_until

from herd.serve.metrics import parse_metrics

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK = {"model": SMOL_ID, "temperature": 0}
EVENT = TypeAdapter(ResponseStreamEvent)
ITEM = TypeAdapter(ResponseItem)
CORPUS = {"llamas.md": "# Llamas\nLlamas are domesticated South American camelids. A llama can carry about 25 to "
                       "30 percent of its body weight.\n",
          "herd.txt": "Herd serves Llama 3.1 models. The default port of herd serve is 8321.\n"}


def start(home: Path, corpus: Path) -> ServerProcess:
    cfg = home.parent / "server.yaml"
    cfg.write_text(f"version: 1\nmodels:\n  - {{id: {SMOL_ID}, engine: {{num_blocks: 160, max_num_seqs: 8}}}}\n"
                   f"tools: {{search_backend: offline, search_corpus: '{corpus}', search_index: ':memory:'}}\n")
    return ServerProcess("--config", str(cfg), env={"HERD_HOME": str(home)})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses") / "herd-home"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for name, text in CORPUS.items():
        (d / name).write_text(text)
    return d


@pytest.fixture(scope="module")
def server(home: Path, corpus: Path) -> Iterator[ServerProcess]:
    """The server; the restart test (last) stops it."""
    srv = start(home, corpus)
    yield srv
    assert srv.stop() == 0, srv.output()[-3000:]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def made(client: openai.OpenAI) -> dict[str, Any]:
    """Responses the tests share: a plain one, and a forced function call answered in a second one."""
    plain = client.responses.create(input="Say hello.", max_output_tokens=12, instructions="Answer briefly.", **ASK)
    call = client.responses.create(input="What is the weather in Paris?", tools=[WEATHER],
                                   tool_choice={"type": "function", "name": "get_weather"}, **ASK)
    fc = call.output[0]
    answer = client.responses.create(previous_response_id=call.id, max_output_tokens=40, input=[
        {"type": "function_call_output", "call_id": fc.call_id, "output": "Sunny and 31 degrees Celsius."}], **ASK)
    return {"plain": plain, "call": call, "answer": answer}


def raw_stream(http: httpx.Client, body: dict[str, Any], path: str = "/v1/responses") -> list[dict[str, Any]]:
    """The SSE events as sent: each `event:` line matches its data's type."""
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                e = json.loads(line[len("data: "):])
                assert e["type"] == name
                events.append(e)
    return events


def validate(response: dict[str, Any]) -> Response:
    """A response object as the openai package's pydantic model validates it (not just constructs it)."""
    return Response.model_validate(response)


# ---- text, streaming, retrieve -----------------------------------------------------------------


def test_plain_response_is_stored_as_returned(client, http, made):
    plain = made["plain"]
    assert plain.object == "response" and plain.id.startswith("resp_") and plain.model == SMOL_ID
    assert plain.status in ("completed", "incomplete") and plain.output_text
    assert plain.instructions == "Answer briefly."
    u = plain.usage
    assert u.input_tokens > 0 and 0 < u.output_tokens <= 12 and u.total_tokens == u.input_tokens + u.output_tokens
    raw = http.get(f"/v1/responses/{plain.id}").json()
    assert validate(raw).output_text == plain.output_text
    assert client.responses.retrieve(plain.id).model_dump() == plain.model_dump()
    items = client.responses.input_items.list(plain.id).data
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "Say hello.")]


def test_stream_events_reassemble_the_stored_response(client, http):
    body = {**ASK, "input": "Name three colors.", "max_output_tokens": 24}
    events = raw_stream(http, body)
    for e in events:
        EVENT.validate_python(e)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    item_id = events[2]["item"]["id"]
    assert deltas and all(d["item_id"] == item_id and d["output_index"] == 0 and d["content_index"] == 0
                          for d in deltas)
    text = "".join(d["delta"] for d in deltas)
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == text
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    final = events[-1]["response"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert validate(final).output_text == text
    stored = client.responses.retrieve(final["id"])
    assert stored.output_text == text and stored.usage.output_tokens == final["usage"]["output_tokens"]
    again = client.responses.create(**body)  # greedy: the same text without streaming
    assert again.output_text == text and again.id != final["id"]


def test_stream_cut_by_a_disconnect_stops_and_is_not_stored(http):
    def metric(name: str) -> float:
        return parse_metrics(http.get("/metrics").text).get(f'{name}{{model="{SMOL_ID}"}}', 0.0)

    def idle() -> bool:
        return metric("herd_num_requests_running") == 0

    before = metric("herd_generation_tokens_total")
    body = {**ASK, "input": "Write a very long story about a llama.", "max_output_tokens": 2000, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as r:
        data = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
        cut = next(data)["response"]["id"]
        assert [next(data)["type"] for _ in range(4)][-1] == "response.output_text.delta"
    assert wait_until(idle, timeout=60)
    time.sleep(0.3)
    assert metric("herd_generation_tokens_total") - before < 200  # aborted, far from its 2000 tokens
    assert http.get(f"/v1/responses/{cut}").status_code == 404


def test_openai_client_stream_iterator(client):
    with client.responses.create(input="Say hi.", max_output_tokens=8, stream=True, **ASK) as stream:
        events = list(stream)
    assert type(events[0]).__name__ == "ResponseCreatedEvent"
    assert type(events[-1]).__name__ in ("ResponseCompletedEvent", "ResponseIncompleteEvent")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text


# ---- function tools ------------------------------------------------------------------------------


def test_forced_function_call_comes_back_as_an_item(made):
    call = made["call"]
    assert call.status == "completed" and [o.type for o in call.output] == ["function_call"]
    fc = call.output[0]
    assert fc.name == "get_weather" and fc.call_id and fc.id.startswith("fc_") and fc.status == "completed"
    assert isinstance(json.loads(fc.arguments)["city"], str)
    assert call.tools[0].name == "get_weather" and call.tool_choice.name == "get_weather"


def test_function_output_continues_the_conversation(client, http, made):
    call, answer = made["call"], made["answer"]
    assert answer.previous_response_id == call.id and answer.status in ("completed", "incomplete")
    assert answer.output[0].type == "message" and answer.output_text
    items = client.responses.input_items.list(answer.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == call.output[0].call_id
    assert items[2].output == "Sunny and 31 degrees Celsius."
    # the model read the whole conversation: the question, its call and the output
    assert "31" in answer.output_text
    alone = client.responses.create(input="What is the weather in Paris?", max_output_tokens=4, **ASK)
    assert answer.usage.input_tokens > alone.usage.input_tokens + 20
    for raw in http.get(f"/v1/responses/{answer.id}/input_items").json()["data"]:
        ITEM.validate_python(raw)


def test_function_call_stream_events(http):
    events = raw_stream(http, {**ASK, "input": "What is the weather in Rome?", "tools": [WEATHER],
                               "tool_choice": "required"})
    for e in events:
        EVENT.validate_python(e)
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    added, delta, done, item_done = events[2:6]
    assert added["item"]["type"] == "function_call" and added["item"]["status"] == "in_progress"
    assert delta["item_id"] == done["item_id"] == added["item"]["id"] and delta["delta"] == done["arguments"]
    assert json.loads(item_done["item"]["arguments"]) == json.loads(done["arguments"])
    assert events[-1]["response"]["output"] == [item_done["item"]]


def test_tool_choice_none_answers_in_text(client):
    r = client.responses.create(input="What is the weather in Paris?", tools=[WEATHER], tool_choice="none",
                                max_output_tokens=16, **ASK)
    assert [o.type for o in r.output] == ["message"] and r.output_text


# ---- server-side tools -------------------------------------------------------------------------


PORT_QUESTION = "What is the default port of herd serve?"  # SmolLM2 alone says 12345; the corpus says 8321


def test_web_search_runs_on_the_offline_corpus(client, corpus):
    r = client.responses.create(input=PORT_QUESTION, tools=[{"type": "web_search"}], tool_choice="required",
                                max_tool_calls=1, max_output_tokens=60, **ASK)
    validate(r.model_dump(exclude_unset=True))
    assert r.status == "completed" and [o.type for o in r.output] == ["web_search_call", "message"]
    ws, msg = r.output
    assert ws.id.startswith("ws_") and ws.status == "completed" and ws.action.type == "search" and ws.action.query
    assert str(corpus / "herd.txt") in [s.url for s in ws.action.sources]
    assert "8321" in msg.content[0].text  # the model read the search result ...
    alone = client.responses.create(input=PORT_QUESTION, max_output_tokens=60, **ASK)
    assert "8321" not in alone.output_text  # ... which it could not have known
    assert r.usage.input_tokens > 2 * alone.usage.input_tokens  # two turns, the second with the result
    items = client.responses.input_items.list(r.id).data
    assert [i.type for i in items] == ["message"]


def test_web_search_stream_events(http):
    events = raw_stream(http, {**ASK, "input": PORT_QUESTION, "tools": [{"type": "web_search_preview"}],
                               "tool_choice": "required", "max_tool_calls": 1, "max_output_tokens": 60})
    for e in events:
        EVENT.validate_python(e)
    kinds = [e["type"] for e in events]
    assert kinds[2:7] == ["response.output_item.added", "response.web_search_call.in_progress",
                          "response.web_search_call.searching", "response.web_search_call.completed",
                          "response.output_item.done"]
    assert events[6]["item"]["type"] == "web_search_call" and events[6]["output_index"] == 0
    assert kinds[7] == "response.output_item.added" and events[7]["output_index"] == 1
    assert kinds[-1] == "response.completed" and "8321" in validate(events[-1]["response"]).output_text


def test_infer_iteration_cap_makes_the_response_incomplete(client):
    r = client.responses.create(input=PORT_QUESTION, tools=[{"type": "web_search"}], tool_choice="required",
                                extra_body={"max_infer_iters": 1}, **ASK)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_infer_iters"
    assert [o.type for o in r.output] == ["web_search_call"]


MCP_SERVER = """
import asyncio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("herd-responses-test", log_level="ERROR")


@mcp.tool()
def secret_word() -> str:
    \"\"\"Tell the secret word of the day.\"\"\"
    return "The secret word of the day is pineapple."


@mcp.tool()
def broken() -> str:
    \"\"\"Always fails.\"\"\"
    raise ToolError("the backend is down")


@mcp.tool()
def add(a: int, b: int) -> int:
    \"\"\"Add two integers.\"\"\"
    return a + b


async def main() -> None:
    server = uvicorn.Server(uvicorn.Config(mcp.streamable_http_app(), host="127.0.0.1", port=0, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    print(f"listening on http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/mcp", flush=True)
    await task

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MCP server (the SDK's MCPServer, streamable HTTP on loopback) in a subprocess."""
    script = tmp_path_factory.mktemp("mcp") / "server.py"
    script.write_text(MCP_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(10)


def mcp_tool(url: str, **kw: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "demo", "server_url": url, "require_approval": "never", **kw}


def test_mcp_tools_run_server_side(client, http, home, mcp_url):
    credentials = {"headers": {"X-Herd-Test": "h3ader-s3cret"}, "authorization": "t0ken-s3cret"}
    r = client.responses.create(input="What is the secret word of the day?", max_tool_calls=1, max_output_tokens=40,
                                tools=[mcp_tool(mcp_url, allowed_tools=["secret_word", "add"], **credentials)],
                                tool_choice={"type": "mcp", "server_label": "demo", "name": "secret_word"}, **ASK)
    validate(r.model_dump(exclude_unset=True))
    assert r.status == "completed" and [o.type for o in r.output] == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, msg = r.output
    assert listed.server_label == "demo" and sorted(t.name for t in listed.tools) == ["add", "secret_word"]
    assert next(t for t in listed.tools if t.name == "add").input_schema["required"] == ["a", "b"]
    assert (call.name, call.arguments, call.status, call.error) == ("secret_word", "{}", "completed", None)
    assert call.output == "The secret word of the day is pineapple." and call.server_label == "demo"
    assert "pineapple" in msg.content[0].text
    # credentials reach the MCP server only: neither echoed nor stored
    assert r.tools[0].server_url == mcp_url and "s3cret" not in http.get(f"/v1/responses/{r.id}").text
    assert not any(b"s3cret" in f.read_bytes() for f in home.glob("responses.sqlite*"))
    # continued: the stored mcp_call is replayed as the call and its output
    more = client.responses.create(previous_response_id=r.id, input="Repeat the secret word.", max_output_tokens=16,
                                   **ASK)
    assert "pineapple" in more.output_text.lower()
    assert [i.type for i in client.responses.input_items.list(more.id, order="asc")] == \
        ["message", "mcp_list_tools", "mcp_call", "message", "message"]


def test_mcp_allowed_tools_and_failures(client, http, mcp_url):
    r = client.responses.create(input="Check the backend.", max_tool_calls=1, max_output_tokens=24,
                                tools=[mcp_tool(mcp_url, allowed_tools={"tool_names": ["broken"]})],
                                tool_choice="required", **ASK)
    assert [t.name for t in r.output[0].tools] == ["broken"]  # the filter
    call = r.output[1]
    assert call.type == "mcp_call" and call.status == "failed" and call.output is None
    assert call.error.type == "mcp_tool_execution_error" and "the backend is down" in str(call.error.content)
    events = raw_stream(http, {**ASK, "input": "Check the backend.", "max_tool_calls": 1, "max_output_tokens": 24,
                               "tools": [mcp_tool(mcp_url, allowed_tools=["broken"])], "tool_choice": "required"})
    for e in events:
        EVENT.validate_python(e)
    kinds = [e["type"] for e in events]
    assert kinds[2:12] == ["response.output_item.added", "response.mcp_list_tools.in_progress",
                           "response.mcp_list_tools.completed", "response.output_item.done",
                           "response.output_item.added", "response.mcp_call.in_progress",
                           "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                           "response.mcp_call.failed", "response.output_item.done"]


# ---- structured output ---------------------------------------------------------------------------

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                "sunny": {"type": "boolean"}},
               "required": ["city", "sunny"], "additionalProperties": False}


def test_json_schema_text_format(client):
    r = client.responses.create(input="Describe the weather in Paris as JSON.", max_output_tokens=60,
                                text={"format": {"type": "json_schema", "name": "weather", "schema": CITY_SCHEMA,
                                                 "strict": True}}, **ASK)
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), CITY_SCHEMA)
    assert r.text.format.type == "json_schema" and r.text.format.name == "weather"
    obj = client.responses.create(input=[{"role": "developer", "content": "Reply in JSON."},
                                         {"role": "user", "content": [{"type": "input_text", "text": "Paris?"}]}],
                                  max_output_tokens=40, text={"format": {"type": "json_object"}}, **ASK)
    assert obj.status == "completed" and isinstance(json.loads(obj.output_text), dict)


# ---- items, delete, errors -----------------------------------------------------------------------


def test_input_items_pages(client, http, made):
    answer = made["answer"]
    first = client.responses.input_items.list(answer.id, limit=2)  # newest first by default
    assert [i.type for i in first.data] == ["function_call_output", "function_call"] and first.has_more
    rest = client.responses.input_items.list(answer.id, limit=2, after=first.data[-1].id)
    assert [i.type for i in rest.data] == ["message"] and not rest.has_more
    every = [i.id for i in client.responses.input_items.list(answer.id, limit=1)]  # the client pages on
    assert every == [i.id for i in first.data + rest.data]
    page = http.get(f"/v1/responses/{answer.id}/input_items", params={"order": "asc", "limit": 1}).json()
    assert page["object"] == "list" and page["first_id"] == page["last_id"] == rest.data[0].id and page["has_more"]
    for params, param in (({"limit": 0}, "limit"), ({"order": "up"}, "order"), ({"after": "nope"}, "after")):
        r = http.get(f"/v1/responses/{answer.id}/input_items", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_delete_and_unknown_ids_are_404s(client, http):
    r = client.responses.create(input="Say one word.", max_output_tokens=4, **ASK)
    assert client.responses.delete(r.id) is None  # the openai client returns nothing
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.delete(r.id),
                 lambda: client.responses.input_items.list(r.id)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert r.id in e.value.message
    other = client.responses.create(input="Say one word.", max_output_tokens=4, **ASK)
    assert http.delete(f"/v1/responses/{other.id}").json() == {"id": other.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(input="Hi", previous_response_id="resp_missing", **ASK)
    assert "resp_missing" in e.value.message and e.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(client):
    r = client.responses.create(input="Say one word.", max_output_tokens=4, store=False, **ASK)
    assert r.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="And another.", previous_response_id=r.id, **ASK)


BAD = [
    # (body fields, status, param, words in the message)
    ({"input": 5}, 400, "input", ["input"]),
    ({"input": []}, 400, "input", ["at least one message"]),
    ({"input": [{"role": "wizard", "content": "x"}]}, 400, "input[0].role", ["role"]),
    ({"input": [{"type": "bogus"}]}, 400, "input[0]", ["function_call_output"]),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, 400,
     "input[0].content[0].type", ["input_image"]),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]}, 400, "input[0].call_id",
     ["c1"]),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{nope"}]}, 400,
     "input[0].arguments", ["JSON"]),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1}]}, 400, "tools[0]", ["function", "file_search"]),
    ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, 400, "tools[0].vector_store_ids", ["at least 1"]),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"], "filters": {"type": "like"}}]}, 400,
     "tools[0].filters.type", ["like"]),
    ({"tools": [{"type": "function"}]}, 400, "tools[0].name", ["name"]),
    ({"tools": [WEATHER, WEATHER]}, 400, "tools[1].name", ["twice"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, 400, "tool_choice", ["'nope'"]),
    ({"tool_choice": "required"}, 400, "tool_choice", ["tools"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search"}}, 400, "tool_choice", ["'web_search'", "get_weather"]),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema", ["schema"]),
    ({"tools": [WEATHER], "tool_choice": "required", "text": {"format": {"type": "json_schema", "name": "x",
                                                                        "schema": CITY_SCHEMA}}},
     400, "text.format", ["tool_choice"]),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp",
                 "require_approval": "always"}]}, 400, "tools[0].require_approval", ["never"]),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp"}]}, 400,
     "tools[0].server_url", ["127.0.0.1:9"]),
    ({"max_output_tokens": 0}, 400, "max_output_tokens", ["max_output_tokens"]),
    ({"temperature": "hot"}, 400, "temperature", ["temperature"]),
    ({"model": "gpt-4o"}, 404, "model", ["gpt-4o", SMOL_ID]),
]


@pytest.mark.parametrize("fields,status,param,words", BAD, ids=[b[2] + ":" + str(i) for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(http, fields, status, param, words):
    r = http.post("/v1/responses", json={"model": SMOL_ID, "input": "Hi", **fields})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert all(w in error["message"] for w in words), error["message"]


def test_served_under_the_llama_stack_prefix_too(http, made):
    plain = made["plain"]
    assert http.get(f"/v1/openai/v1/responses/{plain.id}").json()["id"] == plain.id
    events = raw_stream(http, {**ASK, "input": "Hi", "max_output_tokens": 4}, "/v1/openai/v1/responses")
    assert events[-1]["type"] in ("response.completed", "response.incomplete")


def test_readme_example_runs_as_written(server):
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("\n## Responses API", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    r = subprocess.run([sys.executable, "-c", block.replace("http://127.0.0.1:8321", server.url)],
                       capture_output=True, text=True, timeout=300, check=False,
                       env={**os.environ, "HERD_API_KEY": "none"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("get_weather {") and lines[1]
    assert lines[2] == "response.created" and "response.output_text.delta" in lines
    assert lines[-1] in ("response.completed", "response.incomplete")


# ---- last: a restart -----------------------------------------------------------------------------


def test_restart_keeps_responses(server, home, corpus, made):
    answer = made["answer"]
    assert server.stop() == 0
    assert (home / "responses.sqlite").exists()
    again = start(home, corpus)
    try:
        c = openai.OpenAI(base_url=again.v1, api_key="none", max_retries=0, timeout=120)
        assert c.responses.retrieve(answer.id).model_dump() == answer.model_dump()
        assert [i.type for i in c.responses.input_items.list(answer.id)] == \
            ["function_call_output", "function_call", "message"]
        more = c.responses.create(previous_response_id=answer.id, input="Thanks!", max_output_tokens=8, **ASK)
        assert [i.type for i in c.responses.input_items.list(more.id, order="asc")] == \
            ["message", "function_call", "function_call_output", "message", "message"]
    finally:
        assert again.stop() == 0, again.output()[-3000:]
