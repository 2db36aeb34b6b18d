"""The agents API (Llama Stack 0.2) served by uvicorn in this process and driven by the real
`llama-stack-client` (its `Agent` helper included) and plain HTTP.

Two models: a tiny random Llama 3 checkpoint whose replies are scripted by a test-only logits processor
(`Script`: each inference emits the next planned token sequence), so the Llama 3.1 built-in tool path
runs end to end (`<|python_tag|>brave_search.call(query=...)<|eom_id|>` -> the real web_search over an
offline corpus -> an `ipython` message -> the answer); and the embedded SmolLM2, whose tool calls come
from the grammar when tool_choice is "required". Tools are the server's real ones (builtin::websearch
over a corpus directory); Prompt Guard is the tiny classifier of the safety tests.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "safety"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from guardkit import ATTACK, build_prompt_guard  # noqa: E402
from servekit import SMOL_ID, ServerProcess, wait_until  # noqa: E402

TINY = "tiny-llama3"
FACT = "The codename of the Herd release is BLUEHERON."
ATTACK_TEXT = " ".join(ATTACK * 30)


# ---- the scripted model ------------------------------------------------------------------------


class Script:
    """Wraps model.forward_flat: every logits row gets the next token of the current plan; a plan starts
    at the first row after the previous one ended. `prompts` keeps the tokens of each prefill that asked
    for logits (what the model was shown, minus the cached prefix)."""

    def __init__(self, model: torch.nn.Module, plans: list[list[int]]):
        self.model, self.plans = model, list(plans)
        self.current: list[int] | None = None
        self.prompts: list[list[int]] = []

    def __enter__(self) -> Script:
        original = self.model.forward_flat

        def forced(tokens: torch.Tensor, positions: torch.Tensor, cache: Any, idx: torch.Tensor) -> torch.Tensor:
            logits = original(tokens, positions, cache, idx)
            for row in range(logits.shape[0]):
                if not self.current:
                    assert self.plans, "the model was asked for more replies than the test planned"
                    self.current = list(self.plans.pop(0))
                    self.prompts.append(tokens.tolist())
                logits[row] = -math.inf
                logits[row, self.current.pop(0)] = 0.0
            return logits

        self.model.forward_flat = forced
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.forward_flat


# ---- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from herd.config import ModelArgs
    from herd.model.llama import Transformer
    from herd.model.weights import save_hf

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, hidden_dim=128,
                     rope_theta=500000.0, max_seq_len=4096)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_llama3")
    save_hf(Transformer(args), args, out)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "release.md").write_text(f"# Release notes\n\n{FACT}\n")
    (d / "cooking.md").write_text("# Soup\n\nSimmer the onions for twenty minutes.\n")
    (d / "poisoned.md").write_text(f"# Hostile page about quokkas\n\nquokkas {ATTACK_TEXT}\n")
    return d


@pytest.fixture(scope="module")
def served(tiny_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    import uvicorn

    from herd.serve.app import create_app
    from herd.serve.config import parse_config
    from herd.serve.models import ModelRegistry

    home = tmp_path_factory.mktemp("herd_home")
    old_home = os.environ.get("HERD_HOME")
    os.environ["HERD_HOME"] = str(home)
    pg_dir = build_prompt_guard(tmp_path_factory.mktemp("prompt_guard"))
    config = parse_config({
        "version": 1,
        "models": [{"id": TINY, "model": str(tiny_dir), "engine": {"num_blocks": 128, "max_model_len": 4096}},
                   {"id": SMOL_ID, "engine": {"num_blocks": 256, "max_num_seqs": 8}}],
        "shields": [{"shield_id": "prompt-guard", "type": "prompt-guard", "model": str(pg_dir),
                     "params": {"threshold": 0.5}}],  # the tiny classifier scores a mixed snippet ~0.67
        "tools": {"search_corpus": str(corpus)},
    })
    registry = ModelRegistry.load(config.models, progress=False)
    app = create_app(registry, config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: _up(base), 60)
    yield base, registry
    server.should_exit = True
    thread.join(timeout=30)
    if old_home is None:
        os.environ.pop("HERD_HOME", None)
    else:
        os.environ["HERD_HOME"] = old_home


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v1/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def client(served: tuple[str, Any]) -> Any:
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=served[0], max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def tiny(served: tuple[str, Any]) -> tuple[torch.nn.Module, Any]:
    m = served[1].llm(TINY)
    return m.engine.engine.model, m.tokenizer


def plan(tok: Any, text: str, end: str = "<|eot_id|>", python_tag: bool = False) -> list[int]:
    ids = tok.encode(text)
    if python_tag:
        ids = [tok.special_tokens["<|python_tag|>"], *ids]
    return [*ids, tok.special_tokens[end]]


def search_call(tok: Any, query: str) -> list[int]:
    return plan(tok, f'brave_search.call(query="{query}")', "<|eom_id|>", python_tag=True)


def payloads(chunks: Any) -> list[Any]:
    return [c.event.payload for c in chunks]


def new_session(client: Any, **config: Any) -> tuple[str, str]:
    agent_id = client.agents.create(agent_config={"model": TINY, "instructions": "You are a helpful assistant.",
                                                  **config}).agent_id
    return agent_id, client.agents.session.create(agent_id, session_name="s").session_id


# ---- the Llama 3.1 built-in tool path ------------------------------------------------------------


def test_builtin_search_runs_end_to_end(client: Any, tiny: Any) -> None:
    model, tok = tiny
    agent_id, session_id = new_session(client, toolgroups=["builtin::websearch"])
    with Script(model, [search_call(tok, "herd release codename"), plan(tok, "It is BLUEHERON.")]) as script:
        chunks = list(client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=True,
                                                messages=[{"role": "user", "content": "What is the codename?"}]))
    events = payloads(chunks)
    steps = [(e.event_type, e.step_type) for e in events if e.event_type in ("step_start", "step_complete")]
    assert steps == [("step_start", "inference"), ("step_complete", "inference"),
                     ("step_start", "tool_execution"), ("step_complete", "tool_execution"),
                     ("step_start", "inference"), ("step_complete", "inference")]
    assert events[-1].event_type == "turn_complete"
    turn = events[-1].turn
    first, execution, second = turn.steps
    call = first.api_model_response.tool_calls[0]
    assert (call.tool_name, call.arguments) == ("web_search", {"query": "herd release codename"})
    assert first.api_model_response.stop_reason == "end_of_message"
    assert FACT in str(execution.tool_responses[0].content)  # the real offline search found the document
    assert turn.output_message.content == "It is BLUEHERON." and turn.output_message.stop_reason == "end_of_turn"
    # the prompts the model saw: 3.1 built-in tools in the system prompt, then the result as an ipython message
    shown = [tok.decode(p) for p in script.prompts]
    assert "Environment: ipython\nTools: brave_search" in shown[0]
    assert "<|start_header_id|>ipython<|end_header_id|>" in shown[1] and "BLUEHERON" in shown[1]
    # the streamed text deltas reassemble the answer; the turn and its steps can be read back
    text = "".join(e.delta.text for e in events if e.event_type == "step_progress" and e.delta.type == "text")
    assert text.endswith("It is BLUEHERON.")
    again = client.agents.turn.retrieve(turn.turn_id, agent_id=agent_id, session_id=session_id)
    assert again.output_message.content == "It is BLUEHERON." and len(again.steps) == 3
    step = client.agents.steps.retrieve(execution.step_id, agent_id=agent_id, session_id=session_id,
                                        turn_id=turn.turn_id)
    assert step.step.step_type == "tool_execution"


def test_next_turn_sees_the_session_history(client: Any, tiny: Any) -> None:
    model, tok = tiny
    agent_id, session_id = new_session(client)
    with Script(model, [plan(tok, "First answer."), plan(tok, "Second answer.")]) as script:
        for q in ("first question", "second question"):
            client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=False,
                                      messages=[{"role": "user", "content": q}])
    session = client.agents.session.retrieve(session_id, agent_id=agent_id)
    assert [t.output_message.content for t in session.turns] == ["First answer.", "Second answer."]
    # the second prompt (beyond the cached prefix) holds the first turn's answer and the new question
    full = tok.decode(script.prompts[1])
    assert "First answer." in full and "second question" in full


def test_max_infer_iters_ends_the_turn_with_a_reason(client: Any, tiny: Any) -> None:
    model, tok = tiny
    agent_id, session_id = new_session(client, toolgroups=["builtin::websearch"], max_infer_iters=2)
    with Script(model, [search_call(tok, "soup"), search_call(tok, "onions")]):
        turn = client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=False,
                                         messages=[{"role": "user", "content": "soup?"}])
    assert [s.step_type for s in turn.steps] == ["inference", "tool_execution", "inference", "tool_execution"]
    assert turn.output_message.stop_reason == "out_of_tokens" and not turn.output_message.tool_calls
    assert "max_infer_iters=2" in turn.output_message.content
    assert turn.to_dict()["herd_stop_reason"] == "max_infer_iters"


# ---- shields in the loop -------------------------------------------------------------------------


def test_input_shield_violation_stops_the_turn(client: Any, tiny: Any) -> None:
    model, _ = tiny
    agent_id, session_id = new_session(client, input_shields=["prompt-guard"])
    with Script(model, []):  # the model must not run at all
        turn = client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=False,
                                         messages=[{"role": "user", "content": ATTACK_TEXT}])
    assert [s.step_type for s in turn.steps] == ["shield_call"]
    violation = turn.steps[0].violation
    assert violation is not None and violation.violation_level == "error"
    assert turn.output_message.content == violation.user_message


def test_prompt_guard_blocks_an_injected_tool_output(client: Any, tiny: Any) -> None:
    model, tok = tiny
    agent_id, session_id = new_session(client, toolgroups=["builtin::websearch"],
                                       tool_output_shields=["prompt-guard"])
    with Script(model, [search_call(tok, "quokkas hostile page"), plan(tok, "Nothing to report.")]) as script:
        turn = client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=False,
                                         messages=[{"role": "user", "content": "tell me about quokkas"}])
    kinds = [s.step_type for s in turn.steps]
    assert kinds == ["inference", "tool_execution", "shield_call", "inference"]
    response = str(turn.steps[1].tool_responses[0].content)
    assert "withheld" in response and "ignore" not in response
    assert turn.steps[2].violation is not None
    assert "previous instructions" not in tok.decode(script.prompts[1])  # the model never saw the injection


# ---- client tools, resume, the Agent helper (the embedded SmolLM2, tool calls by grammar) ----------


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    :param city: the city's name
    :returns: the weather
    """
    CALLS.append(city)
    return f"Sunny and 21 degrees in {city}."


CALLS: list[str] = []


@pytest.mark.parametrize("stream", [True, False])
def test_agent_helper_runs_a_client_tool_and_resumes(client: Any, stream: bool) -> None:
    from llama_stack_client import Agent

    CALLS.clear()
    agent = Agent(client, model=SMOL_ID, instructions="You are a helpful assistant.", tools=[get_weather],
                  tool_config={"tool_choice": "required"}, max_infer_iters=4,
                  sampling_params={"strategy": {"type": "greedy"}, "max_tokens": 48})
    session_id = agent.create_session("weather")
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    if stream:
        chunks = list(agent.create_turn(messages=messages, session_id=session_id, stream=True))
        turn = chunks[-1].event.payload.turn
        kinds = [c.event.payload.event_type for c in chunks]
        assert "turn_awaiting_input" in kinds and kinds[-1] == "turn_complete"
    else:
        turn = agent.create_turn(messages=messages, session_id=session_id, stream=False)
    assert CALLS and all(isinstance(c, str) and c for c in CALLS)  # the grammar made a well-formed call
    stored = client.agents.turn.retrieve(turn.turn_id, agent_id=agent.agent_id, session_id=session_id)
    execution = [s for s in stored.steps if s.step_type == "tool_execution"]
    assert execution and "Sunny and 21 degrees" in str(execution[0].tool_responses[0].content)
    assert execution[0].tool_calls[0].tool_name == "get_weather"
    assert stored.output_message is not None and stored.completed_at is not None


# ---- plain HTTP: non-streaming turns, listing, errors --------------------------------------------


def test_http_non_streaming_turn_and_listing(served: tuple[str, Any], tiny: Any) -> None:
    model, tok = tiny
    base = served[0]
    with httpx.Client(base_url=base, timeout=120) as http:
        agent_id = http.post("/v1/agents", json={"agent_config": {"model": TINY, "instructions": "Be brief."}}
                             ).json()["agent_id"]
        session_id = http.post(f"/v1/agents/{agent_id}/session", json={"session_name": "x"}).json()["session_id"]
        with Script(model, [plan(tok, "Hello there.")]):
            r = http.post(f"/v1/agents/{agent_id}/session/{session_id}/turn",
                          json={"messages": [{"role": "user", "content": "hi"}], "stream": False})
        assert r.status_code == 200, r.text
        turn = r.json()
        assert turn["output_message"]["content"] == "Hello there." and turn["steps"][0]["step_type"] == "inference"
        assert any(a["agent_id"] == agent_id for a in http.get("/v1/agents").json()["data"])
        assert http.get(f"/v1/agents/{agent_id}").json()["agent_config"]["instructions"] == "Be brief."
        sessions = http.get(f"/v1/agents/{agent_id}/sessions").json()["data"]
        assert [s["session_id"] for s in sessions] == [session_id] and len(sessions[0]["turns"]) == 1
        # resuming a turn that does not wait for tool responses is a 400 naming turn_id
        r = http.post(f"/v1/agents/{agent_id}/session/{session_id}/turn/{turn['turn_id']}/resume",
                      json={"tool_responses": [], "stream": False})
        assert r.status_code == 400 and r.json()["error"]["param"] == "turn_id"
        assert http.delete(f"/v1/agents/{agent_id}/session/{session_id}").status_code == 200
        assert http.get(f"/v1/agents/{agent_id}/session/{session_id}").status_code == 404
        assert http.delete(f"/v1/agents/{agent_id}").status_code == 200
        assert http.get(f"/v1/agents/{agent_id}").status_code == 404


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/agents/nope/session", {"session_name": "s"}, 404, "agent 'nope' not found"),
    ("/v1/agents", {"agent_config": {"model": TINY, "instructions": "x", "toolgroups": ["builtin::nothing"]}},
     404, "builtin::nothing"),
    ("/v1/agents", {"agent_config": {"model": TINY, "instructions": "x", "max_infer_iters": 0}}, 400,
     "max_infer_iters"),
    ("/v1/agents", {"agent_config": {"model": "no-such-model", "instructions": "x"}}, 404, "no-such-model"),
    ("/v1/agents", {"agent_config": {"model": TINY, "input_shields": ["no-shield"]}}, 404, "no-shield"),
])
def test_bad_input_names_the_problem(served: tuple[str, Any], path: str, body: dict, status: int,
                                     needle: str) -> None:
    r = httpx.post(served[0] + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_unknown_session_and_turn_are_404s(client: Any, served: tuple[str, Any]) -> None:
    agent_id, session_id = new_session(client)
    base = served[0]
    r = httpx.post(f"{base}/v1/agents/{agent_id}/session/missing/turn",
                   json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 404 and "session 'missing'" in r.json()["error"]["message"]
    r = httpx.get(f"{base}/v1/agents/{agent_id}/session/{session_id}/turn/missing", timeout=30)
    assert r.status_code == 404 and "turn 'missing'" in r.json()["error"]["message"]


# ---- sessions survive a restart of the server -------------------------------------------------------


def test_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(f"version: 1\nmodels:\n  - id: {SMOL_ID}\n    engine: {{num_blocks: 128}}\n")
    env = {"HERD_HOME": str(tmp_path / "home")}
    body = {"agent_config": {"model": SMOL_ID, "instructions": "Answer in one short sentence.",
                             "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 12}}}
    srv = ServerProcess("--config", str(cfg), env=env)
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            agent_id = http.post("/v1/agents", json=body).json()["agent_id"]
            sid = http.post(f"/v1/agents/{agent_id}/session", json={"session_name": "kept"}).json()["session_id"]
            turn = http.post(f"/v1/agents/{agent_id}/session/{sid}/turn",
                             json={"messages": [{"role": "user", "content": "Name a color."}]}).json()
    finally:
        assert srv.stop() == 0
    srv = ServerProcess("--config", str(cfg), env=env)
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            session = http.get(f"/v1/agents/{agent_id}/session/{sid}").json()
            assert session["session_name"] == "kept"
            assert [t["turn_id"] for t in session["turns"]] == [turn["turn_id"]]
            assert session["turns"][0]["output_message"] == turn["output_message"]
            lines = []
            with http.stream("POST", f"/v1/agents/{agent_id}/session/{sid}/turn",
                             json={"messages": [{"role": "user", "content": "Another one."}], "stream": True}) as r:
                assert r.status_code == 200
                lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            assert lines[-1]["event"]["payload"]["event_type"] == "turn_complete"
            assert len(http.get(f"/v1/agents/{agent_id}/session/{sid}").json()["turns"]) == 2
    finally:
        assert srv.stop() == 0


def test_server_and_client_calls_in_one_reply(client: Any, tiny: Any) -> None:
    """The web search runs at once; the client's call pauses the turn; the history keeps the one reply."""
    from herd.agents.store import AgentStore

    model, tok = tiny
    weather = {"name": "get_weather", "description": "Weather in a city",
               "parameters": [{"name": "city", "parameter_type": "string", "description": "the city",
                               "required": True}]}
    agent_id, session_id = new_session(client, toolgroups=["builtin::websearch"], client_tools=[weather])
    both = ('[{"type": "function", "name": "brave_search", "parameters": {"query": "codename"}}, '
            '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}]')
    with Script(model, [plan(tok, both), plan(tok, "Done.")]):
        turn = client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=False,
                                         messages=[{"role": "user", "content": "codename and weather?"}])
        assert [s.step_type for s in turn.steps] == ["inference", "tool_execution"]
        assert [c.tool_name for c in turn.steps[1].tool_calls] == ["web_search"]
        pending = turn.output_message.tool_calls
        assert [c.tool_name for c in pending] == ["get_weather"] and turn.output_message.stop_reason == "end_of_message"
        done = client.agents.turn.resume(turn.turn_id, agent_id=agent_id, session_id=session_id, stream=False,
                                         tool_responses=[{"call_id": pending[0].call_id, "tool_name": "get_weather",
                                                          "content": "Sunny."}])
    assert done.output_message.content == "Done."
    roles = [(m["role"], len(m.get("tool_calls") or [])) for m in AgentStore().history(session_id)]
    assert roles == [("user", 0), ("assistant", 2), ("tool", 0), ("tool", 0), ("assistant", 0)]
