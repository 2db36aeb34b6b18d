"""`herd chat --tools ...`: the agent loop in the terminal. The model runs in-process (the same engine and
chat path as `herd serve`); each tool call and its result is shown as it happens (on stderr, so stdout
holds only the conversation's answers)."""
from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from herd.agents.config import MAX_INFER_ITERS
from herd.cli.repl import COMMANDS, read_message
from herd.errors import HerdError
from herd.serve.errors import APIError

SHOWN_RESULT_CHARS = 600


def _tool_names(raw: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names:
        raise HerdError("--tools needs a comma-separated list, e.g. code_interpreter,web_search,wolfram_alpha")
    return names


async def _registry(args: argparse.Namespace) -> Any:
    from herd.tools.builtin import ToolSettings, default_registry, mcp_target
    from herd.tools.code_interpreter import CodeInterpreterSettings

    settings = ToolSettings(search_corpus=args.search_corpus,
                            code_interpreter=CodeInterpreterSettings(isolation="none" if args.unsandboxed else "auto"))
    registry = default_registry(settings)
    for i, target in enumerate(args.mcp or []):
        group = mcp_target(target, f"mcp::{i}")
        await group.connect()  # unreachable: a HerdError naming it (one line, exit 2)
        registry.register(group)
    return registry


def _show(console: Any, payload: dict[str, Any]) -> None:
    """Tool calls and results (and shield verdicts) as they happen."""
    step = payload.get("step_details") or {}
    if step.get("step_type") == "tool_execution":
        for call, resp in zip(step["tool_calls"], step["tool_responses"]):
            args = ", ".join(f"{k}={v!r}" for k, v in call["arguments"].items())
            console.print(f"[bold cyan]→ {call['tool_name']}[/]({args})", highlight=False)
            text = str(resp["content"])
            cut = f" … ({len(text) - SHOWN_RESULT_CHARS} more characters)" if len(text) > SHOWN_RESULT_CHARS else ""
            style = "red" if resp.get("metadata", {}).get("error_message") else "dim"
            console.print(f"[{style}]← {text[:SHOWN_RESULT_CHARS]}{cut}[/]", highlight=False, markup=True)
    elif step.get("step_type") == "shield_call" and step.get("violation"):
        console.print(f"[bold red]shield: {step['violation'].get('user_message')}[/]", highlight=False)


async def _chat(args: argparse.Namespace, model: Any) -> int:
    from rich.console import Console

    from herd.agents.config import AgentConfig, Sampling, ToolGroupRef
    from herd.agents.loop import AgentTurn, TurnEnv
    from herd.serve.generator import ServedGenerator, local_context

    console = Console(stderr=True, soft_wrap=True)  # long lines stay whole (logs, pipes)
    registry = await _registry(args)
    try:
        names = _tool_names(args.tools) if args.tools else []
        names += [g.id for g in registry.groups() if g.id.startswith("mcp::")]  # every --mcp server's tools
        for n in names:
            registry.tools_for([n])  # unknown names: one line, exit 2, before the chat starts
        config = AgentConfig(model=model.id, instructions=args.system or "You are a helpful assistant.",
                             toolgroups=[ToolGroupRef(n) for n in names], max_infer_iters=args.max_infer_iters,
                             tool_choice=args.tool_choice,
                             sampling=Sampling(args.temperature, args.top_p, args.max_tokens))
        session = str(uuid.uuid4())
        history: list[Any] = []
        interactive = sys.stdin.isatty()
        if interactive:
            console.print(f"chat with tools: {', '.join(t.name for t in registry.tools_for(names))}; {COMMANDS}")
        while (text := await asyncio.to_thread(read_message, interactive)) is not None:
            if text == "/reset":
                await registry.end_session(session)
                session, history = str(uuid.uuid4()), []
                console.print("(conversation cleared)")
                continue
            env = TurnEnv(config, ServedGenerator(model, local_context()), registry, None, session)
            turn = AgentTurn.new(env, history)
            try:
                await _show_turn(console, turn.start([{"role": "user", "content": text}]))
            except (APIError, HerdError) as e:  # this message failed (e.g. the context is full); the chat goes on
                console.print(f"[red]error: {e}[/] (/reset starts a new conversation)", highlight=False)
                continue
            history.extend(turn.messages)
    finally:
        await registry.close()
    return 0


async def _show_turn(console: Any, events: Any) -> None:
    """Stream a turn: answer text to stdout, tool calls and results to stderr as they happen."""
    async for payload in events:
        if payload["event_type"] == "step_progress" and payload["delta"]["type"] == "text":
            sys.stdout.write(payload["delta"]["text"])
            sys.stdout.flush()
        elif payload["event_type"] == "step_complete":
            step = payload["step_details"]
            if step["step_type"] == "inference" and step["model_response"]["tool_calls"]:
                sys.stdout.write("\n")
            _show(console, payload)
        elif payload["event_type"] == "turn_complete" and payload["turn"].get("herd_stop_reason"):
            console.print(f"[yellow]{payload['turn']['output_message']['content']}[/]")
    sys.stdout.write("\n")
    sys.stdout.flush()


def cmd_agent_chat(args: argparse.Namespace, engine: Any) -> int:
    """Load the model in-process (`engine`: its EngineConfig) and run the agent loop until end of input."""
    from herd import hub
    from herd.serve.config import ModelSpec, default_id
    from herd.serve.models import ModelRegistry

    if not 1 <= args.max_infer_iters <= MAX_INFER_ITERS:
        raise HerdError(f"--max-infer-iters must be from 1 to {MAX_INFER_ITERS}, got {args.max_infer_iters}")
    ref = args.model or hub.DEFAULT_MODEL
    spec = ModelSpec(id=default_id(ref), model=ref, dtype=args.dtype, device=args.device, quantize=args.quantize,
                     seed=args.seed or 0, engine=engine)
    print(f"loading {ref} ...", file=sys.stderr, flush=True)
    models = ModelRegistry.load([spec], progress=False)
    try:
        return asyncio.run(_chat(args, models.llm(spec.id)))
    finally:
        models.shutdown()
