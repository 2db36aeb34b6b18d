"""Chat completions, both APIs: OpenAI `POST /v1/chat/completions` (JSON or `chat.completion.chunk` events)
and Llama Stack `POST /v1/inference/chat-completion` (a ChatCompletionResponse or start/progress/complete
events). The turn itself (prompt, grammar, tool-call streaming, shields) is herd/serve/turn.py."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from herd.serve import protocol as p
from herd.serve.errors import bad_request
from herd.serve.generation import (
    CallContext,
    LogprobEntry,
    Usage,
    sampling_in,
    stack_logprobs,
    token_text,
)
from herd.serve.models import ModelRegistry
from herd.serve.stored import ChatCompletionStore, StreamAssembler, save_completion
from herd.serve.turn import (
    ChatPlan,
    ChoiceDelta,
    ChoiceState,
    call_arguments,
    chat_shields,
    finish_chat,
    plan_chat,
    stream_chat,
)
from herd.tokenizer.messages import ToolCall, new_call_id, to_messages, to_tools

if TYPE_CHECKING:
    from herd.tokenizer.tokenizer import Tokenizer


# ---- OpenAI --------------------------------------------------------------------------------


def usage_out(u: Usage) -> p.Usage:
    """OpenAI usage, with cached prompt tokens in prompt_tokens_details."""
    return p.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                   total_tokens=u.total_tokens, prompt_tokens_details={"cached_tokens": u.cached_tokens})


def chat_sampling(req: p.ChatCompletionRequest) -> dict[str, Any]:
    """The SamplingParams fields a chat request sets (None: herd's default)."""
    if req.logit_bias:
        raise bad_request("logit_bias is not supported by this server", "logit_bias")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    return dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p, stop=req.stop,
                seed=req.seed, n=req.n, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
                logprobs=(req.top_logprobs or 0) if req.logprobs else None, ignore_eos=req.ignore_eos or None)


def logprobs_out(tokenizer: Tokenizer, entries: list[LogprobEntry], k: int) -> p.ChoiceLogprobs:
    """OpenAI chat logprobs: each token with its top-k alternatives."""
    content = []
    for tok, lp, alts in entries:
        text, raw = token_text(tokenizer, tok)
        top = []
        for alt, alp in alts[:k]:
            t, b = token_text(tokenizer, alt)
            top.append(p.TopLogprob(token=t, logprob=alp, bytes=b))
        content.append(p.TokenLogprob(token=text, logprob=lp, bytes=raw, top_logprobs=top))
    return p.ChoiceLogprobs(content=content)


def message_out(state: ChoiceState) -> p.ChatMessageOut:
    """A finished choice as the OpenAI assistant message (tool calls with JSON-string arguments; a forced
    call cut off by max_tokens as far as it got, with finish_reason "length", as OpenAI returns it)."""
    msg = state.message
    calls = [p.ToolCallOut(id=c.call_id, function=p.FunctionCallOut(name=c.tool_name, arguments=call_arguments(c)))
             for c in msg.tool_calls]
    if state.partial_call is not None:
        name, arguments = state.partial_call
        calls.append(p.ToolCallOut(id=new_call_id(), function=p.FunctionCallOut(name=name, arguments=arguments)))
    return p.ChatMessageOut(content=(msg.content or None) if calls else msg.content, tool_calls=calls or None)


async def chat_completions(req: p.ChatCompletionRequest, registry: ModelRegistry, ctx: CallContext,
                           store: ChatCompletionStore | None = None) -> Any:
    """POST /v1/chat/completions: a ChatCompletion dict, or an async iterator of chunk dicts; kept in
    `store` when the request (or the server's setting) asks for it."""
    model = registry.llm(req.model)
    ctx.precheck(model.id)
    shields = chat_shields(model, ctx, req.input_shields, req.output_shields)
    max_tokens, param = (req.max_completion_tokens, "max_completion_tokens") if req.max_completion_tokens \
        else (req.max_tokens, "max_tokens")
    messages, tools = to_messages(req.messages), to_tools(req.tools)  # HerdErrors: 400s naming the field
    ctx.cap(len(req.stop) if isinstance(req.stop, list) else 0, "max_stop_strings", "stop", "stop strings")
    plan = await asyncio.to_thread(  # tokenizing a long prompt must not stall other streams
        plan_chat, model, messages, tools=tools, tool_choice=req.tool_choice,
        tool_prompt_format=req.tool_prompt_format, response_format=req.response_format, max_tokens=max_tokens,
        max_tokens_param=param, sampling=chat_sampling(req), request_id=ctx.request_id,
        parallel_tool_calls=req.parallel_tool_calls)
    ctx.warn(*plan.warnings)
    usage = ctx.track(model.id, Usage(len(plan.prompt_ids)))
    ctx.admit(model.id, len(plan.prompt_ids), plan.params.n)
    k = req.top_logprobs or 0
    if req.stream:
        rest = await stream_chat(plan, shields, messages, ctx, usage)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunks = chat_chunks(plan, rest, usage, include_usage, k if req.logprobs else None)
        return stored_chunks(chunks, store, req, usage) if store and store.wants(req.store) else chunks
    states = await finish_chat(plan, shields, messages, ctx, usage)
    choices = [p.ChatChoice(index=s.index, message=message_out(s), finish_reason=s.finish_reason,
                            logprobs=logprobs_out(model.tokenizer, s.logprobs, k) if req.logprobs else None,
                            safety_violation=s.violation)
               for s in states]
    out = p.dump(p.ChatCompletion(id=ctx.request_id, created=plan.created, model=model.id, choices=choices,
                                  usage=usage_out(usage),
                                  safety_violation=next((s.violation for s in states if s.violation), None)))
    if store and store.wants(req.store):
        await save_completion(store, out, req)
    return out


async def stored_chunks(chunks: AsyncGenerator[dict[str, Any], None], store: ChatCompletionStore,
                        req: p.ChatCompletionRequest, usage: Usage) -> AsyncIterator[dict[str, Any]]:
    """The chunks, passed through; once the stream has finished (not cut short), the completion they
    make up is stored, before the stream ends."""
    assembled = StreamAssembler()
    async with aclosing(chunks):  # a client that goes away closes `chunks` now, which aborts the request
        async for chunk in chunks:
            assembled.add(chunk)
            yield chunk
    await save_completion(store, assembled.completion(usage_out(usage)), req)


async def chat_chunks(plan: ChatPlan, rest: AsyncIterator[list[ChoiceDelta]], usage: Usage, include_usage: bool,
                      logprobs_k: int | None) -> AsyncIterator[dict[str, Any]]:
    """The chat.completion.chunk stream: role first, then content / tool-call deltas, then finishes (a
    refused choice's finish chunk carries `safety_violation`, in the choice and at the top)."""
    def chunk(choices: list[p.ChatChunkChoice], u: p.Usage | None = None,
              violation: dict[str, Any] | None = None) -> dict[str, Any]:
        return p.dump_chunk(p.ChatCompletionChunk(id=plan.request_id, created=plan.created, model=plan.model.id,
                                                  choices=choices, usage=u, safety_violation=violation))

    tok = plan.model.tokenizer
    yield chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(role="assistant", content=""))
                 for i in range(plan.params.n)])
    async for deltas in rest:
        for d in deltas:
            lp = logprobs_out(tok, d.logprobs, logprobs_k) if logprobs_k is not None and d.logprobs else None
            if d.text or lp is not None:
                yield chunk([p.ChatChunkChoice(index=d.index, delta=p.ChatDelta(content=d.text), logprobs=lp)])
            calls = [(c.call_id, c.tool_name, call_arguments(c)) for c in d.tool_calls]
            if d.partial_call is not None:
                calls.append((new_call_id(), *d.partial_call))
            for j, (call_id, name, arguments) in enumerate(calls):
                idx = d.first_call_index + j
                head = p.ToolCallDeltaOut(index=idx, id=call_id, type="function",
                                          function=p.ToolCallDeltaFunction(name=name, arguments=""))
                args = p.ToolCallDeltaOut(index=idx, function=p.ToolCallDeltaFunction(arguments=arguments))
                yield chunk([p.ChatChunkChoice(index=d.index, delta=p.ChatDelta(tool_calls=[head]))])
                yield chunk([p.ChatChunkChoice(index=d.index, delta=p.ChatDelta(tool_calls=[args]))])
            if d.finish_reason is not None:
                yield chunk([p.ChatChunkChoice(index=d.index, delta=p.ChatDelta(), finish_reason=d.finish_reason,
                                               safety_violation=d.violation)], violation=d.violation)
    if include_usage:
        yield chunk([], usage_out(usage))


# ---- Llama Stack ---------------------------------------------------------------------------


def stack_call_out(c: ToolCall) -> p.StackToolCallOut:
    return p.StackToolCallOut(call_id=c.call_id, tool_name=c.tool_name, arguments=c.arguments,
                              arguments_json=call_arguments(c))


async def stack_chat_completion(req: p.StackChatRequest, registry: ModelRegistry, ctx: CallContext) -> Any:
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
    ctx.warn(*plan.warnings)
    usage = ctx.track(model.id, Usage(len(plan.prompt_ids)))
    ctx.admit(model.id, len(plan.prompt_ids), plan.params.n)
    if req.stream:
        rest = await stream_chat(plan, shields, messages, ctx, usage)
        return stack_chat_events(plan, rest, usage, k is not None)
    state = (await finish_chat(plan, shields, messages, ctx, usage))[0]
    msg = p.CompletionMessage(content=state.message.content, stop_reason=state.message.stop_reason or "end_of_turn",
                              tool_calls=[stack_call_out(c) for c in state.message.tool_calls])
    return p.dump(p.StackChatResponse(
        completion_message=msg, logprobs=stack_logprobs(model, state.logprobs) if k is not None else None,
        metrics=p.usage_metrics(usage.prompt_tokens, usage.completion_tokens), safety_violation=state.violation))


async def stack_chat_events(plan: ChatPlan, rest: AsyncIterator[list[ChoiceDelta]], usage: Usage,
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
                yield event("progress", p.StackDelta(type="tool_call", tool_call=stack_call_out(call),
                                                     parse_status="succeeded"))
            if d.finish_reason is not None:
                done = p.StackChatChunk(
                    event=p.StackEvent(event_type="complete", delta=p.StackDelta(type="text", text=""),
                                       stop_reason=d.stop_reason),
                    metrics=p.usage_metrics(usage.prompt_tokens, usage.completion_tokens),
                    safety_violation=d.violation)
                yield p.dump(done)
