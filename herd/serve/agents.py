"""The Llama Stack agents API (0.2.x classic) over herd.agents: agents, sessions, turns (streamed as
`{"event": {"payload": ...}}` chunks *or* answered whole — Llama Stack's own server refuses
non-streaming turns with a 501), resume after client tools, turn and step lookup. Routes:
herd/serve/routes.py. Agents, sessions and turns live in `<herd_home>/agents.sqlite`, so they
survive a restart (`enable_session_persistence` is accepted and always true).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from herd.agents.config import AgentConfig, ToolGroupRef
from herd.agents.loop import AgentTurn, TurnEnv
from herd.agents.store import AgentStore, NotFoundError, TurnRecord
from herd.errors import HerdError
from herd.serve import protocol as p
from herd.serve.errors import APIError, bad_request, not_found
from herd.serve.generation import CallContext, first_then_rest
from herd.serve.generator import ServedGenerator
from herd.serve.safety import registry_of, shield_http_error
from herd.tokenizer.messages import to_messages
from herd.tools.base import ToolRegistry, UnknownToolError, UnknownToolGroupError


def http_error(e: HerdError) -> APIError:
    """Unknown agent / session / turn / tool / tool group: 404 naming it; a shield's errors as the safety
    routes answer them (unknown shield 404, a misbehaving guard model 502); any other HerdError: 400."""
    if isinstance(e, (NotFoundError, UnknownToolError, UnknownToolGroupError)):
        return not_found(str(e), e.param)
    return shield_http_error(e)


class AgentService:
    """The app's agents: the store, plus one lock per session so two turns of a session never interleave."""

    def __init__(self, store: AgentStore | None = None) -> None:
        self.store = store or AgentStore()
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def call(self, fn: Any, *args: Any) -> Any:
        """A store method in a worker thread, its HerdErrors as HTTP errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except HerdError as e:
            raise http_error(e) from None


def service(request: Request) -> AgentService:
    state = request.app.state
    if getattr(state, "agents", None) is None:
        state.agents = AgentService()
    return state.agents


def _check_tools(tools: ToolRegistry, refs: list[ToolGroupRef], param: str) -> None:
    groups = {g.id for g in tools.groups()}
    for i, ref in enumerate(refs):
        head, _, tool = ref.name.partition("/")
        try:
            if head in groups and tool:
                tools.tool(tool)
            else:
                tools.tools_for([ref.name])
        except HerdError as e:
            raise not_found(f"{param}[{i}]: {e}", f"{param}[{i}]") from None


def _config(raw: Any, request: Request) -> AgentConfig:
    """Parse and check an agent_config against what this server has (model, tool groups, shields)."""
    try:
        cfg = AgentConfig.from_stack(raw)
    except HerdError as e:
        raise bad_request(str(e), e.param) from None
    request.app.state.registry.llm(cfg.model, "agent_config.model")
    _check_tools(request.app.state.tools, cfg.toolgroups, "agent_config.toolgroups")
    ids = [*cfg.input_shields, *cfg.output_shields, *cfg.tool_output_shields]
    if ids:

        reg = registry_of(request)
        for sid in ids:
            try:
                reg.config(sid)
            except HerdError as e:
                raise shield_http_error(e) from None
    return cfg


# ---- agents and sessions --------------------------------------------------------------------


async def create_agent(body: p.CreateAgentRequest, request: Request) -> dict[str, Any]:
    _config(body.agent_config, request)
    svc = service(request)
    return {"agent_id": await svc.call(svc.store.create_agent, body.agent_config)}


async def list_agents(request: Request) -> dict[str, Any]:
    svc = service(request)
    return {"data": await svc.call(svc.store.agents), "has_more": False}


async def get_agent(agent_id: str, request: Request) -> dict[str, Any]:
    svc = service(request)
    return await svc.call(svc.store.agent, agent_id)


async def delete_agent(agent_id: str, request: Request) -> None:
    svc = service(request)
    sessions = await svc.call(svc.store.sessions, agent_id)
    await svc.call(svc.store.delete_agent, agent_id)
    for s in sessions:
        await request.app.state.tools.end_session(s["session_id"])


async def create_session(agent_id: str, body: p.CreateSessionRequest, request: Request) -> dict[str, Any]:
    svc = service(request)
    return {"session_id": await svc.call(svc.store.create_session, agent_id, body.session_name)}


async def get_session(agent_id: str, session_id: str, request: Request, turn_ids: list[str] | None) -> dict[str, Any]:
    svc = service(request)
    session = await svc.call(svc.store.session, agent_id, session_id)
    if turn_ids:
        session["turns"] = [t for t in session["turns"] if t["turn_id"] in set(turn_ids)]
    return session


async def list_sessions(agent_id: str, request: Request) -> dict[str, Any]:
    svc = service(request)
    return {"data": await svc.call(svc.store.sessions, agent_id), "has_more": False}


async def delete_session(agent_id: str, session_id: str, request: Request) -> None:
    svc = service(request)
    await svc.call(svc.store.delete_session, agent_id, session_id)
    await request.app.state.tools.end_session(session_id)  # e.g. the session's code interpreter kernel


# ---- turns ------------------------------------------------------------------------------------


async def get_turn(agent_id: str, session_id: str, turn_id: str, request: Request) -> dict[str, Any]:
    svc = service(request)
    return (await svc.call(svc.store.turn, agent_id, session_id, turn_id)).turn


async def get_step(agent_id: str, session_id: str, turn_id: str, step_id: str, request: Request) -> dict[str, Any]:
    turn = await get_turn(agent_id, session_id, turn_id, request)
    for step in turn["steps"]:
        if step["step_id"] == step_id:
            return {"step": step}
    raise not_found(f"step {step_id!r} not found in turn {turn_id!r}", "step_id")


async def _env(request: Request, ctx: CallContext, agent_id: str, session_id: str,
               extra: list[Any] | None = None, tool_config: dict[str, Any] | None = None) -> TurnEnv:
    svc = service(request)
    agent = await svc.call(svc.store.agent, agent_id)
    await svc.call(svc.store.check_session, agent_id, session_id)
    raw = dict(agent["agent_config"])
    if tool_config:  # a turn's tool_config overrides the agent's
        raw["tool_config"] = {**(raw.get("tool_config") or {}), **tool_config}
    cfg = _config(raw, request)
    try:
        refs = [ToolGroupRef.parse(g, f"toolgroups[{i}]") for i, g in enumerate(extra or [])]
    except HerdError as e:
        raise bad_request(str(e), e.param) from None
    _check_tools(request.app.state.tools, refs, "toolgroups")
    model = request.app.state.registry.llm(cfg.model, "agent_config.model")
    shields = None
    if cfg.input_shields or cfg.output_shields or cfg.tool_output_shields:
        shields = registry_of(request)
    return TurnEnv(cfg, ServedGenerator(model, ctx), request.app.state.tools, shields, session_id, refs)


async def _events(turn: AgentTurn, run: AsyncIterator[dict[str, Any]], svc: AgentService, session_id: str,
                  lock: asyncio.Lock) -> AsyncIterator[dict[str, Any]]:
    """The turn's payloads as stream chunks, saving the turn when it completes or awaits input; the
    session's lock is held until the turn is over (released if the client goes away)."""
    try:
        async for payload in run:
            if payload["event_type"] in ("turn_complete", "turn_awaiting_input"):
                await svc.call(svc.store.save_turn, session_id, turn.record)
            yield {"event": {"payload": payload}}
    except HerdError as e:
        raise http_error(e) from None
    finally:
        if lock.locked():
            lock.release()


async def _answer(turn: AgentTurn, run: AsyncIterator[dict[str, Any]], svc: AgentService, session_id: str,
                  lock: asyncio.Lock, stream: bool) -> Any:
    """Stream (the first chunk pulled here, so errors before the model runs are 4xx statuses) or run to the
    end and answer the Turn."""
    _, chunks = await first_then_rest(_events(turn, run, svc, session_id, lock))
    if stream:
        return chunks
    last = None
    async for chunk in chunks:
        last = chunk
    return last["event"]["payload"]["turn"] if last else turn.turn


async def _run_locked(svc: AgentService, session_id: str, prepare: Any, stream: bool) -> Any:
    """Take the session's lock, let `prepare()` (async) build the turn and its event iterator, and answer;
    the lock is released when the turn is over, or at once when preparing it fails."""
    lock = svc.lock(session_id)
    await lock.acquire()
    try:
        turn, run = await prepare()
    except BaseException as e:
        lock.release()
        if isinstance(e, HerdError):
            raise http_error(e) from None
        raise
    return await _answer(turn, run, svc, session_id, lock, stream)


async def create_turn(agent_id: str, session_id: str, body: p.CreateTurnRequest, request: Request,
                      ctx: CallContext) -> Any:
    svc = service(request)
    env = await _env(request, ctx, agent_id, session_id, body.toolgroups, body.tool_config)

    async def prepare() -> tuple[AgentTurn, AsyncIterator[dict[str, Any]]]:
        before = await svc.call(svc.store.history, session_id)
        turn = AgentTurn.new(env, to_messages(before) if before else [])
        return turn, turn.start(body.messages, body.documents or ())

    return await _run_locked(svc, session_id, prepare, body.stream)


async def resume_turn(agent_id: str, session_id: str, turn_id: str, body: p.ResumeTurnRequest, request: Request,
                      ctx: CallContext) -> Any:
    svc = service(request)
    env = await _env(request, ctx, agent_id, session_id)

    async def prepare() -> tuple[AgentTurn, AsyncIterator[dict[str, Any]]]:
        record: TurnRecord = await svc.call(svc.store.turn, agent_id, session_id, turn_id)
        if record.status != "awaiting_input":
            raise bad_request(f"turn {turn_id!r} is {record.status.replace('_', ' ')}, not awaiting tool "
                              "responses", "turn_id")
        before = await svc.call(svc.store.history, session_id, turn_id)
        turn = AgentTurn(env, record, to_messages(before) if before else [])
        return turn, turn.resume(body.tool_responses)

    return await _run_locked(svc, session_id, prepare, body.stream)
