"""The agent loop: one turn of a session, model -> tools -> model, with shields in the loop.

    turn = AgentTurn(env, record, history)
    async for payload in turn.start(messages):   # Llama Stack turn events (payload dicts)
        ...
    async for payload in turn.resume(tool_responses):   # after turn_awaiting_input

A turn:
1. input shields screen the conversation (a `shield_call` step; a violation ends the turn with the refusal);
2. an `inference` step asks the model (through the `Generator` protocol) with the agent's tools offered;
3. calls of server tools (the registry's: web search, code interpreter, MCP, ...) run in a
   `tool_execution` step and their results go back to the model as tool messages; tool outputs pass
   the tool-output shields first (Prompt Guard: indirect prompt injection enters there); the loop goes
   on at 2 until the model answers, up to `max_infer_iters` inference steps;
4. a call of a client tool ends the turn with `turn_awaiting_input`; `resume(tool_responses)` goes on;
5. output shields screen the answer (a violation replaces it by the refusal).

Llama 3.x models (the generator's `prompt_format` is "llama3") get the registry's built-in tools the way
Llama 3.1 was trained for them: "Environment: ipython" / "Tools: brave_search, wolfram_alpha" in the
system prompt, `<|python_tag|>` calls, results as `ipython` messages, `<|eom_id|>` meaning "call and
continue" (herd.tokenizer.chat_format renders and parses all of that). Other models get every tool as
a function with its JSON schema.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from herd.agents.config import AgentConfig
from herd.agents.store import TurnRecord, iso, new_id
from herd.errors import HerdError
from herd.generator import ChatRequest, Generator
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition, plain_text, to_messages
from herd.tools.base import Tool, ToolRegistry, ToolResult
from herd.tools.builtin import BUILTIN_NAMES

MAX_ITERS_REASON = "max_infer_iters"


@dataclass
class TurnEnv:
    """What a turn runs with: the agent, its model, the tool registry and the shields (may be None)."""

    config: AgentConfig
    generator: Generator
    tools: ToolRegistry
    shields: Any = None  # herd.safety.shields.ShieldRegistry: check(ids, messages), config(id).type
    session_id: str = ""
    extra_groups: list[Any] = field(default_factory=list)  # ToolGroupRefs a turn adds


# ---- shapes ---------------------------------------------------------------------------------


def stack_call(c: ToolCall) -> dict[str, Any]:
    return {"call_id": c.call_id, "tool_name": c.tool_name, "arguments": c.arguments,
            "arguments_json": json.dumps(c.arguments, ensure_ascii=False)}


def stack_message(m: Message) -> dict[str, Any]:
    """A herd Message as the Llama Stack message dict (what turns store and `to_messages` reads back)."""
    if m.role == "assistant":
        return {"role": "assistant", "content": m.content, "stop_reason": m.stop_reason or "end_of_turn",
                "tool_calls": [stack_call(c) for c in m.tool_calls]}
    if m.role in ("tool", "ipython"):
        return {"role": "tool", "call_id": m.call_id or "", "content": m.content}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.context:
        out["context"] = m.context
    return out


def _violation(v: Any) -> dict[str, Any]:
    d = v.violation.to_dict()
    d.setdefault("metadata", {})
    d["metadata"] = {**d["metadata"], "shield_id": v.shield_id}
    return d


# ---- the turn ----------------------------------------------------------------------------------


class AgentTurn:
    """One turn; its state lives in `record` (saved by the caller after each yielded turn event)."""

    def __init__(self, env: TurnEnv, record: TurnRecord, history: Sequence[Message]) -> None:
        self.env, self.record = env, record
        self.history = list(history)
        self.turn = record.turn
        self.messages = to_messages(record.state["messages"]) if record.state.get("messages") else []
        self.iters = int(record.state.get("iters", 0))
        self.attachments: list[dict[str, Any]] = list(self.turn.get("output_attachments") or [])
        self._offer()

    @classmethod
    def new(cls, env: TurnEnv, history: Sequence[Message], turn_id: str | None = None) -> AgentTurn:
        turn = {"turn_id": turn_id or new_id(), "session_id": env.session_id, "input_messages": [], "steps": [],
                "output_message": None, "output_attachments": [], "started_at": iso(time.time()),
                "completed_at": None}
        return cls(env, TurnRecord(turn, "in_progress", {"messages": [], "iters": 0}), history)

    # ---- tools offered ---------------------------------------------------------------------
    def _offer(self) -> None:
        cfg, reg = self.env.config, self.env.tools
        refs = [*cfg.toolgroups, *self.env.extra_groups]
        self.group_args: dict[str, dict[str, Any]] = {}
        server: list[Tool] = []
        for ref in refs:
            name = ref.name
            if "/" in name and name.split("/", 1)[0] in {g.id for g in reg.groups()}:
                tools = [reg.tool(name.split("/", 1)[1])]
            else:
                tools = reg.tools_for([name])
            for t in tools:
                server.append(t)
                self.group_args[t.name] = dict(ref.args)
        self.server_tools = {t.name: t for t in server}
        self.client_tools = {t.tool_name: t for t in cfg.client_tools}
        llama3 = getattr(self.env.generator, "prompt_format", None) == "llama3"
        to_builtin = {tool: builtin for builtin, tool in BUILTIN_NAMES.items()} if llama3 else {}
        self.from_model = {builtin: tool for tool, builtin in to_builtin.items()}  # brave_search -> web_search
        self.offered: list[ToolDefinition] = [
            ToolDefinition(to_builtin[t.name]) if t.name in to_builtin else t.definition()
            for t in self.server_tools.values()]
        self.offered += list(self.client_tools.values())

    def _tool_choice(self) -> str:
        choice = self.env.config.tool_choice
        if not self.offered or self.iters > 0:  # forcing applies to the turn's first inference only
            return "auto" if self.offered else "none"
        if choice in ("auto", "none", "required"):
            return choice
        names = {t.tool_name for t in self.offered}
        builtin = {v: k for k, v in self.from_model.items()}.get(choice, choice)
        if builtin not in names:
            raise HerdError(f"tool_choice names {choice!r}, which is not among the agent's tools "
                            f"({', '.join(sorted(names))})", "tool_config.tool_choice")
        return builtin

    # ---- events ----------------------------------------------------------------------------
    def _step(self, step_type: str) -> dict[str, Any]:
        return {"step_id": new_id(), "step_type": step_type, "turn_id": self.turn["turn_id"],
                "started_at": iso(time.time()), "completed_at": None}

    def _complete(self, step: dict[str, Any]) -> dict[str, Any]:
        step["completed_at"] = iso(time.time())
        self.turn["steps"].append(step)
        return {"event_type": "step_complete", "step_type": step["step_type"], "step_id": step["step_id"],
                "step_details": step}

    def _start(self, step: dict[str, Any]) -> dict[str, Any]:
        return {"event_type": "step_start", "step_type": step["step_type"], "step_id": step["step_id"],
                "metadata": {}}

    def _save_state(self) -> None:
        self.record.state = {"messages": [stack_message(m) for m in self.messages], "iters": self.iters,
                             "pending": self.record.state.get("pending", [])}

    def _finish(self, output: Message, status: str, reason: str | None = None) -> dict[str, Any]:
        """End (or pause) the turn with `output` as its output message; the turn's messages are already
        complete (a message the loop makes up itself, such as a refusal, is appended by the caller)."""
        self.turn["output_message"] = stack_message(output)
        self.turn["output_attachments"] = self.attachments
        self.turn["completed_at"] = iso(time.time())
        if reason:
            self.turn["herd_stop_reason"] = reason  # herd extension: why the loop stopped early
        self.record.status = status
        self._save_state()
        kind = "turn_awaiting_input" if status == "awaiting_input" else "turn_complete"
        return {"event_type": kind, "turn": self.turn}

    # ---- shields ---------------------------------------------------------------------------
    async def _shield(self, ids: Sequence[str], messages: Sequence[Message]) -> tuple[dict[str, Any], Any]:
        step = self._step("shield_call")
        violation = await asyncio.to_thread(self.env.shields.check, list(ids), list(messages))
        step["violation"] = _violation(violation) if violation is not None else None
        return step, violation

    def _tool_output_shields(self) -> list[str]:
        cfg, shields = self.env.config, self.env.shields
        if shields is None:
            return []
        ids = list(cfg.tool_output_shields)
        ids += [s for s in cfg.input_shields if s not in ids and shields.config(s).type == "prompt-guard"]
        return ids

    # ---- running ---------------------------------------------------------------------------
    async def start(self, messages: Sequence[Any], documents: Sequence[Any] = ()) -> AsyncIterator[dict[str, Any]]:
        """Run a new turn on `messages` (user / tool messages); yields the turn's event payloads."""
        new = to_messages(messages)
        for i, m in enumerate(new):
            if m.role not in ("user", "tool", "ipython"):
                raise HerdError(f"messages[{i}].role must be user or tool in an agent turn, got {m.role!r}",
                                f"messages[{i}].role")
        if documents:
            last = new[-1]
            extra = "\n\n".join(_document_text(d, f"documents[{i}]") for i, d in enumerate(documents))
            last.context = (last.context + "\n\n" if last.context else "") + extra
        self.turn["input_messages"] = [stack_message(m) for m in new]
        self.messages = list(new)
        if self.env.config.input_shields:
            if self.env.shields is None:
                raise HerdError("this agent has input_shields but the server has no shields", "input_shields")
            step, violation = await self._shield(self.env.config.input_shields, [*self.history, *new])
            yield self._start(step)
            yield self._complete(step)
            if violation is not None:
                refusal = Message("assistant", violation.user_message, stop_reason="end_of_turn")
                self.messages.append(refusal)
                yield self._finish(refusal, "complete")
                return
        async for ev in self._loop():
            yield ev

    async def resume(self, tool_responses: Sequence[Any]) -> AsyncIterator[dict[str, Any]]:
        """Go on after turn_awaiting_input with the client's tool results."""
        pending = {c["call_id"]: c for c in self.record.state.get("pending", [])}
        responses = []
        for i, r in enumerate(tool_responses):
            r = r.model_dump(exclude_none=True) if hasattr(r, "model_dump") else r
            if not isinstance(r, Mapping) or r.get("call_id") not in pending:
                raise HerdError(f"tool_responses[{i}].call_id {r.get('call_id') if isinstance(r, Mapping) else r!r} "
                                f"is not a call this turn waits for ({', '.join(pending) or 'none'})",
                                f"tool_responses[{i}].call_id")
            responses.append(r)
        missing = set(pending) - {r["call_id"] for r in responses}
        if missing:
            raise HerdError(f"tool_responses lacks the result of call(s) {', '.join(sorted(missing))}",
                            "tool_responses")
        step = self._step("tool_execution")
        step["tool_calls"] = [pending[r["call_id"]] for r in responses]
        step["tool_responses"] = []
        yield self._start(step)
        for r in responses:
            text = plain_text(r.get("content"), "tool_responses.content", lenient=True)
            step["tool_responses"].append({"call_id": r["call_id"], "tool_name": r.get("tool_name") or
                                           pending[r["call_id"]]["tool_name"], "content": text,
                                           "metadata": r.get("metadata") or {}})
            self.messages.append(Message("tool", text, call_id=r["call_id"]))
        yield self._complete(step)
        self.record.state["pending"] = []
        self.record.status = "in_progress"
        async for ev in self._loop():
            yield ev

    async def _loop(self) -> AsyncIterator[dict[str, Any]]:
        cfg = self.env.config
        while True:
            if self.iters >= cfg.max_infer_iters:
                # only reached after tool calls (an answer ends the loop): the turn ends without one
                note = Message("assistant", f"(the agent stopped: max_infer_iters={cfg.max_infer_iters} inference "
                               "steps were used before the model gave a final answer)", stop_reason="out_of_tokens")
                self.messages.append(note)
                yield self._finish(note, "complete", MAX_ITERS_REASON)
                return
            step = self._step("inference")
            yield self._start(step)
            message = None
            async for d in self.env.generator.chat(self._request()):
                if d.text:
                    yield {"event_type": "step_progress", "step_type": "inference", "step_id": step["step_id"],
                           "delta": {"type": "text", "text": d.text}}
                for c in d.tool_calls:
                    yield {"event_type": "step_progress", "step_type": "inference", "step_id": step["step_id"],
                           "delta": {"type": "tool_call", "parse_status": "succeeded", "tool_call": stack_call(c)}}
                if d.done:
                    message = d.message
            self.iters += 1
            assert message is not None
            calls = [ToolCall(c.call_id, self.from_model.get(c.tool_name, c.tool_name), c.arguments)
                     for c in message.tool_calls]
            message = Message("assistant", message.content, calls,
                              stop_reason="end_of_message" if calls else message.stop_reason or "end_of_turn")
            step["model_response"] = stack_message(message)
            yield self._complete(step)
            self.messages.append(message)
            if not calls:
                async for ev in self._answer(message):
                    yield ev
                return
            client = [c for c in calls if c.tool_name in self.client_tools]
            server = [c for c in calls if c.tool_name not in self.client_tools]
            if server:
                async for ev in self._run_tools(server):
                    yield ev
            if client:
                self.record.state["pending"] = [stack_call(c) for c in client]
                out = Message("assistant", message.content, client, stop_reason="end_of_message")
                yield self._finish(out, "awaiting_input")
                return

    def _request(self) -> ChatRequest:
        cfg = self.env.config
        system = [Message("system", cfg.instructions)] if cfg.instructions else []
        return ChatRequest(messages=[*system, *self.history, *self.messages], tools=self.offered,
                           tool_choice=self._tool_choice(), tool_prompt_format=cfg.tool_prompt_format,
                           response_format=cfg.response_format if not self.offered else None,
                           max_tokens=cfg.sampling.max_tokens, temperature=cfg.sampling.temperature,
                           top_p=cfg.sampling.top_p, stop=cfg.sampling.stop)

    async def _answer(self, message: Message) -> AsyncIterator[dict[str, Any]]:
        cfg = self.env.config
        if cfg.output_shields and self.env.shields is not None:
            step, violation = await self._shield(cfg.output_shields, [*self.history, *self.messages])
            yield self._start(step)
            yield self._complete(step)
            if violation is not None:
                self.messages.pop()  # the refused answer is not kept in the session's history
                message = Message("assistant", violation.user_message, stop_reason="end_of_turn")
                self.messages.append(message)
        yield self._finish(message, "complete")

    async def _run_tools(self, calls: Sequence[ToolCall]) -> AsyncIterator[dict[str, Any]]:
        step = self._step("tool_execution")
        step["tool_calls"] = [stack_call(c) for c in calls]
        step["tool_responses"] = []
        yield self._start(step)
        guards = self._tool_output_shields()
        flagged = []
        for c in calls:
            if c.tool_name not in self.server_tools:
                result = ToolResult.error(f"tool {c.tool_name!r} is not available to this agent (its tools: "
                                          f"{', '.join(sorted([*self.server_tools, *self.client_tools])) or 'none'})",
                                          code=1)
            else:
                args = {**c.arguments, **self.group_args.get(c.tool_name, {})}
                result = await self.env.tools.invoke(c.tool_name, args, session_id=self.env.session_id or None)
            text = result.text()
            if guards and text:
                v = await asyncio.to_thread(self.env.shields.check, guards, [Message("user", text)])
                if v is not None:
                    flagged.append((c, v))
                    text = (f"[the output of {c.tool_name} was withheld: shield {v.shield_id} flagged it as a "
                            "possible prompt injection]")
            for a in result.attachments:
                self.attachments.append({"mime_type": a.mime_type, "content": {
                    "type": "image", "image": {"data": base64.b64encode(a.data).decode()}}}
                    if a.mime_type.startswith("image/") else {"mime_type": a.mime_type,
                                                              "content": base64.b64encode(a.data).decode()})
            meta = dict(result.metadata)
            if result.error_message:
                meta.update(error_message=result.error_message, error_code=result.error_code)
            step["tool_responses"].append({"call_id": c.call_id, "tool_name": c.tool_name, "content": text,
                                           "metadata": meta})
            self.messages.append(Message("tool", text, call_id=c.call_id))
        yield self._complete(step)
        for _, v in flagged:
            shield_step = self._step("shield_call")
            shield_step["violation"] = _violation(v)
            yield self._start(shield_step)
            yield self._complete(shield_step)


def _document_text(doc: Any, where: str) -> str:
    doc = doc.model_dump(exclude_none=True) if hasattr(doc, "model_dump") else doc
    if not isinstance(doc, Mapping) or "content" not in doc:
        raise HerdError(f"{where} must be {{content, mime_type}}", where)
    content = doc["content"]
    if isinstance(content, Mapping) and "uri" in content:
        raise HerdError(f"{where}.content: documents by URL are not fetched (herd runs offline); send the text",
                        f"{where}.content")
    return plain_text(content, f"{where}.content")
