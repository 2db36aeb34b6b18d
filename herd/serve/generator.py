"""The in-process `Generator` (herd.generator): a served model's chat turns over the async engine.

Agents, the Responses API and `herd chat --tools` call the model through this, so they get exactly
what `POST /v1/chat/completions` does: the model's prompt format, tool-call parsing while streaming,
the grammar for tool_choice required/named and json_schema formats, the context budget, the server's
limits and deadline. Input errors are `APIError`s (4xx) as in the chat routes.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from herd.generator import ChatDelta, ChatRequest
from herd.serve.config import LimitSettings
from herd.serve.generation import CallContext, Usage, generate
from herd.serve.metrics import Metrics
from herd.serve.models import LLMModel
from herd.serve.turn import ChoiceState, plan_chat


async def _never() -> bool:
    return False


def local_context(request_id: str | None = None) -> CallContext:
    """A CallContext for work that no HTTP request carries (the CLI's agent loop, herd eval / sdg /
    rejection-sample runs): no request timeout, since one context may serve a run of hours."""
    return CallContext(request_id or f"local-{uuid.uuid4().hex[:12]}", Metrics(), _never,
                       limits=LimitSettings(request_timeout=0))


class ServedGenerator:
    """Chat turns of one served model within one HTTP request's context (`ctx`)."""

    def __init__(self, model: LLMModel, ctx: CallContext) -> None:
        self.model = model
        self.model_id = model.id
        self.prompt_format = model.prompter.kind  # "llama3": the 3.1 built-in tools are offered natively
        self.ctx = ctx
        self._turns = 0

    def _sampling(self, req: ChatRequest) -> dict[str, Any]:
        return dict(temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop)

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        self._turns += 1
        rid = f"{self.ctx.request_id}-{self._turns}"
        plan = await asyncio.to_thread(
            plan_chat, self.model, request.messages, tools=request.tools or None,
            tool_choice=request.tool_choice if request.tools else None,
            tool_prompt_format=request.tool_prompt_format, response_format=request.response_format,
            max_tokens=request.max_tokens, max_tokens_param="max_tokens", sampling=self._sampling(request),
            request_id=rid, parallel_tool_calls=request.parallel_tool_calls)
        self.ctx.warn(*plan.warnings)
        usage = self.ctx.track(self.model.id, Usage(len(plan.prompt_ids)))
        self.ctx.admit(self.model.id, len(plan.prompt_ids), 1)
        state = ChoiceState(plan, 0)
        async for out in generate(self.model, plan.prompt_ids, plan.params, self.ctx, usage, request_id=rid):
            d = state.step(out.outputs[0])
            if d is None:
                continue
            if d.finish_reason is None:
                if d.text or d.tool_calls:
                    yield ChatDelta(text=d.text, tool_calls=list(d.tool_calls))
                continue
            yield ChatDelta(text=d.text, tool_calls=list(d.tool_calls), done=True, message=state.message,
                            finish_reason=state.finish_reason, prompt_tokens=usage.prompt_tokens,
                            completion_tokens=usage.completion_tokens)
