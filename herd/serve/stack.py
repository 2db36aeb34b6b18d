"""The Llama Stack (0.2.x classic) inference API: native messages, tools, sampling strategies, events."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from herd.serve import protocol as p
from herd.serve.chat import (
    ChatPlan,
    ChoiceDelta,
    call_arguments,
    chat_shields,
    finish_chat,
    plan_chat,
    stream_chat,
)
from herd.serve.embeddings import check_dimensions, embed, texts_from_input
from herd.serve.generation import (
    CallContext,
    LogprobEntry,
    Usage,
    token_text,
)
from herd.serve.models import LLMModel, ModelRegistry
from herd.tokenizer.messages import ToolCall, to_messages, to_tools


def sampling_in(sp: p.StackSamplingParams | None) -> tuple[dict[str, Any], int | None]:
    """(SamplingParams fields, max_tokens or None) from native sampling_params; the default is greedy."""
    sp = sp or p.StackSamplingParams()
    s = sp.strategy
    kw: dict[str, Any] = {"repetition_penalty": sp.repetition_penalty, "stop": sp.stop or None}
    if s.type == "greedy":
        kw["temperature"] = 0.0
    elif s.type == "top_p":
        kw.update(temperature=s.temperature if s.temperature is not None else 0.6,
                  top_p=s.top_p if s.top_p is not None else 0.95)
    else:
        kw.update(temperature=s.temperature if s.temperature is not None else 1.0, top_k=s.top_k or 1, top_p=1.0)
    return kw, (sp.max_tokens or None)


def stack_logprobs(model: LLMModel, entries: list[LogprobEntry]) -> list[p.TokenLogProbs]:
    """Per token: {token text: logprob} over the top alternatives."""
    return [p.TokenLogProbs(logprobs_by_token={token_text(model.tokenizer, t)[0]: lp for t, lp in alts})
            for _, _, alts in entries]


def _call_out(c: ToolCall) -> p.StackToolCallOut:
    return p.StackToolCallOut(call_id=c.call_id, tool_name=c.tool_name, arguments=c.arguments,
                              arguments_json=call_arguments(c))


async def chat_completion(req: p.StackChatRequest, registry: ModelRegistry, ctx: CallContext) -> Any:
    """POST /v1/inference/chat-completion: a ChatCompletionResponse dict or an async iterator of chunks."""
    model = registry.llm(req.model_id, "model_id")
    ctx.precheck(model.id)
    shields = chat_shields(model, ctx, req.input_shields, req.output_shields)
    cfg = req.tool_config or p.StackToolConfig()
    tool_choice = req.tool_choice if req.tool_config is None or req.tool_config.tool_choice is None \
        else cfg.tool_choice
    sampling, max_tokens = sampling_in(req.sampling_params)
    ctx.cap(len(sampling["stop"] or ()), "max_stop_strings", "sampling_params.stop", "stop strings")
    k = req.logprobs.top_k if req.logprobs else None
    messages, tools = to_messages(req.messages), to_tools(req.tools)  # HerdErrors: 400s naming the field
    plan = await asyncio.to_thread(
        plan_chat, model, messages, tools=tools, tool_choice=tool_choice,
        tool_prompt_format=cfg.tool_prompt_format or req.tool_prompt_format, response_format=req.response_format,
        max_tokens=max_tokens, max_tokens_param="sampling_params.max_tokens", sampling={**sampling, "logprobs": k},
        request_id=ctx.request_id)
    usage = ctx.track(model.id, Usage(len(plan.prompt_ids)))
    ctx.admit(model.id, len(plan.prompt_ids), plan.params.n)
    if req.stream:
        rest = await stream_chat(plan, shields, messages, ctx, usage)
        return chat_events(plan, rest, usage, k is not None)
    state = (await finish_chat(plan, shields, messages, ctx, usage))[0]
    msg = p.CompletionMessage(content=state.message.content, stop_reason=state.message.stop_reason or "end_of_turn",
                              tool_calls=[_call_out(c) for c in state.message.tool_calls])
    return p.dump(p.StackChatResponse(
        completion_message=msg, logprobs=stack_logprobs(model, state.logprobs) if k is not None else None,
        metrics=p.usage_metrics(usage.prompt_tokens, usage.completion_tokens), safety_violation=state.violation))


async def chat_events(plan: ChatPlan, rest: AsyncIterator[list[ChoiceDelta]], usage: Usage,
                      logprobs: bool) -> AsyncIterator[dict[str, Any]]:
    """start, progress (text and tool_call deltas), complete with stop_reason and token metrics (and
    `safety_violation` when a shield refused the turn)."""
    def event(kind: str, delta: p.StackDelta, **kw: Any) -> dict[str, Any]:
        return p.dump(p.StackChatChunk(event=p.StackEvent(event_type=kind, delta=delta, **kw)))

    yield event("start", p.StackDelta(type="text", text=""))
    async for deltas in rest:
        for d in deltas:
            lp = stack_logprobs(plan.model, d.logprobs) if logprobs and d.logprobs else None
            if d.text or lp:
                yield event("progress", p.StackDelta(type="text", text=d.text), logprobs=lp)
            for call in d.tool_calls:
                yield event("progress", p.StackDelta(type="tool_call", tool_call="", parse_status="started"))
                yield event("progress", p.StackDelta(type="tool_call", tool_call=_call_out(call),
                                                     parse_status="succeeded"))
            if d.finish_reason is not None:
                done = p.StackChatChunk(
                    event=p.StackEvent(event_type="complete", delta=p.StackDelta(type="text", text=""),
                                       stop_reason=d.stop_reason),
                    metrics=p.usage_metrics(usage.prompt_tokens, usage.completion_tokens),
                    safety_violation=d.violation)
                yield p.dump(done)


async def embeddings(req: p.StackEmbeddingsRequest, registry: ModelRegistry, ctx: CallContext) -> dict[str, Any]:
    """POST /v1/inference/embeddings."""
    model = registry.embedding(req.model_id, "model_id")
    check_dimensions(model.encoder, req.output_dimension, "output_dimension")
    texts = texts_from_input(req.contents, "contents")
    ctx.cap(len(texts), "max_embedding_inputs", "contents", "inputs")
    # text_truncation omitted or null means "none", as Llama Stack defines it: too long is a 400
    vectors, _ = await embed(model.encoder, texts, req.text_truncation or "none", "contents")
    ctx.metrics.embedding_inputs.inc(len(texts), model=model.id)
    return p.dump(p.StackEmbeddingsResponse(embeddings=vectors.tolist()))
