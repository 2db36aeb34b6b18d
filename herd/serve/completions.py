"""Raw-text completions: OpenAI `POST /v1/completions` and Llama Stack `POST /v1/inference/completion`."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from herd.engine.request import RequestOutput, SamplingParams
from herd.serve import protocol as p
from herd.serve.errors import bad_request
from herd.serve.generation import (
    CallContext,
    LogprobEntry,
    Usage,
    check_budget,
    check_text_length,
    first_then_rest,
    generate,
    merge,
    new_logprobs,
    response_format_of,
    sampling_params,
    stack_logprobs,
    token_text,
    until_disconnected,
)
from herd.serve.models import LLMModel, ModelRegistry
from herd.tokenizer.messages import plain_text


def encode_prompt(model: LLMModel, prompt: str | Sequence[int], param: str = "prompt") -> list[int]:
    """Prompt text to ids (special-token text is honoured; BOS added when the model wants one)."""
    tok = model.tokenizer
    if not isinstance(prompt, str):
        ids = list(prompt)
        if not ids:
            raise bad_request(f"{param} is empty", param)
        bad = next((i for i in ids if not 0 <= i < tok.n_words), None)
        if bad is not None:
            raise bad_request(f"{param}: token id {bad} is outside the vocabulary (0..{tok.n_words - 1})", param)
        return ids
    if not prompt:
        raise bad_request(f"{param} is an empty string", param)
    check_text_length(model, len(prompt), param)
    ids = tok.encode(prompt, allowed_special="all")
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids = [tok.bos_id, *ids]
    return ids


def prompts_of(raw: Any) -> list[str | list[int]]:
    """OpenAI `prompt`: a string, a list of strings, a token list, or a list of token lists."""
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise bad_request("prompt must not be empty", "prompt")
    if all(isinstance(x, int) for x in raw):
        return [list(raw)]
    return list(raw)


@dataclass
class _Choice:
    index: int
    echo: str = ""
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | None = None
    logprobs: list[LogprobEntry] = field(default_factory=list)
    seen: int = 0
    done: bool = False


def _advance(choices: list[_Choice], out: RequestOutput, stop_ids: frozenset[int]) -> list[tuple[_Choice, str, list]]:
    """Apply one engine step to the choices of one prompt; (choice, new text, new logprobs) that moved."""
    moved = []
    for o in out.outputs:
        c = choices[o.index]
        if c.done or (len(o.token_ids) == c.seen and not o.finished):
            continue
        lp = new_logprobs(o, c.seen, stop_ids)
        c.seen, c.text = len(o.token_ids), c.text + o.delta_text
        c.logprobs += lp
        if o.finished:
            c.done = True
            c.finish_reason = "length" if o.finish_reason == "length" else "stop"
            c.stop_reason = "out_of_tokens" if o.finish_reason == "length" else "end_of_turn"
        moved.append((c, o.delta_text, lp))
    return moved


def completion_logprobs(model: LLMModel, entries: list[LogprobEntry], k: int, offset: int) -> p.CompletionLogprobs:
    """OpenAI legacy logprobs: tokens, token_logprobs, top_logprobs (dicts) and text_offset."""
    tokens, lps, tops, offsets = [], [], [], []
    for tok, lp, alts in entries:
        text, _ = token_text(model.tokenizer, tok)
        tokens.append(text)
        lps.append(lp)
        tops.append({token_text(model.tokenizer, a)[0]: alp for a, alp in alts[:k]} if k else None)
        offsets.append(offset)
        offset += len(text)
    return p.CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets)


def _plan(model: LLMModel, prompts: list[str | list[int]], req: p.CompletionRequest) -> tuple[list[list[int]], list[SamplingParams]]:
    if req.suffix:
        raise bad_request("suffix is not supported by this server", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of must equal n (this server returns every sequence it samples)", "best_of")
    if req.logit_bias:
        raise bad_request("logit_bias is not supported by this server", "logit_bias")
    fmt = response_format_of(req.response_format)
    ids_list, params = [], []
    for i, prompt in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if not isinstance(prompt, (str, list)):
            raise bad_request(f"{where} must be a string or a list of token ids", where)
        ids = encode_prompt(model, prompt, where)
        max_tokens = check_budget(model, len(ids), req.max_tokens if req.max_tokens is not None else 16,
                                  prompt_param=where)
        params.append(sampling_params(
            max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
            stop=req.stop, seed=req.seed, n=req.n, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
            logprobs=req.logprobs, ignore_eos=req.ignore_eos or None, response_format=fmt))
        ids_list.append(ids)
    return ids_list, params


async def completions(req: p.CompletionRequest, registry: ModelRegistry, ctx: CallContext) -> Any:
    """POST /v1/completions: a Completion dict, or an async iterator of chunk dicts."""
    model = registry.llm(req.model)
    ctx.precheck(model.id)
    prompts = prompts_of(req.prompt)
    ctx.cap(len(prompts), "max_completion_prompts", "prompt", "prompts")
    ctx.cap(len(req.stop) if isinstance(req.stop, list) else 0, "max_stop_strings", "stop", "stop strings")
    ids_list, params = await asyncio.to_thread(_plan, model, prompts, req)  # tokenizing off the event loop
    usages = [ctx.track(model.id, Usage(len(ids))) for ids in ids_list]
    ctx.admit(model.id, sum(len(ids) for ids in ids_list), len(ids_list) * req.n)
    # each prompt is its own engine request; ctx.gate keeps only a few of them in the engine at once
    streams = [generate(model, ids, sp, ctx, u, request_id=f"{ctx.request_id}-{i}",
                        prompt_param="prompt" if len(ids_list) == 1 else f"prompt[{i}]")
               for i, (ids, sp, u) in enumerate(zip(ids_list, params, usages))]
    echo = [(prompt if isinstance(prompt, str) else model.tokenizer.decode(prompt)) if req.echo else ""
            for prompt in prompts]
    choices = [[_Choice(i * req.n + j, echo[i]) for j in range(req.n)] for i in range(len(prompts))]
    created, k = int(time.time()), req.logprobs or 0
    stop_ids = model.tokenizer.stop_ids

    def total() -> p.Usage:
        pt, ct = sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)
        return p.Usage(prompt_tokens=pt, completion_tokens=ct, total_tokens=pt + ct)

    def lp(c: _Choice, entries: list[LogprobEntry], offset: int) -> p.CompletionLogprobs | None:
        return completion_logprobs(model, entries, k, offset) if req.logprobs is not None else None

    if not req.stream:
        async def run_all() -> None:
            async for i, out in merge(streams):
                _advance(choices[i], out, stop_ids)

        await until_disconnected(ctx.is_disconnected, run_all())
        out = [p.CompletionChoice(index=c.index, text=c.echo + c.text, finish_reason=c.finish_reason,
                                  logprobs=lp(c, c.logprobs, len(c.echo))) for row in choices for c in row]
        return p.dump(p.Completion(id=ctx.request_id, created=created, model=model.id, choices=out, usage=total()))

    _, rest = await until_disconnected(ctx.is_disconnected, first_then_rest(merge(streams)))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        def chunk(cs: list[p.CompletionChoice], u: p.Usage | None = None) -> dict[str, Any]:
            return p.dump(p.Completion(id=ctx.request_id, created=created, model=model.id, choices=cs, usage=u))

        if req.echo:
            yield chunk([p.CompletionChoice(index=c.index, text=c.echo, finish_reason=None)
                         for row in choices for c in row])
        async for i, out in rest:
            for c, text, entries in _advance(choices[i], out, stop_ids):
                offset = len(c.echo) + len(c.text) - len(text)
                yield chunk([p.CompletionChoice(index=c.index, text=text, finish_reason=c.finish_reason,
                                                logprobs=lp(c, entries, offset))])
        if include_usage:
            yield chunk([], total())

    return chunks()


# ---- Llama Stack ---------------------------------------------------------------------------


async def stack_completion(req: p.StackCompletionRequest, registry: ModelRegistry, ctx: CallContext,
                           sampling: dict[str, Any], max_tokens: int | None) -> Any:
    """POST /v1/inference/completion: a CompletionResponse dict, or an async iterator of chunk dicts."""
    model = registry.llm(req.model_id, "model_id")
    ctx.precheck(model.id)
    ctx.cap(len(sampling["stop"] or ()), "max_stop_strings", "sampling_params.stop", "stop strings")
    ids = await asyncio.to_thread(encode_prompt, model, plain_text(req.content, "content"), "content")
    k = req.logprobs.top_k if req.logprobs else None
    budget = check_budget(model, len(ids), max_tokens, "sampling_params.max_tokens", "content")
    params = sampling_params(max_tokens=budget, response_format=response_format_of(req.response_format),
                             logprobs=k, **sampling)
    usage = ctx.track(model.id, Usage(len(ids)))
    ctx.admit(model.id, len(ids))
    choice = [_Choice(0)]
    stream = generate(model, ids, params, ctx, usage, prompt_param="content")
    if not req.stream:
        async def run_all() -> None:
            async for out in stream:
                _advance(choice, out, model.tokenizer.stop_ids)

        await until_disconnected(ctx.is_disconnected, run_all())
        c = choice[0]
        return p.dump(p.StackCompletionResponse(
            content=c.text, stop_reason=c.stop_reason, logprobs=stack_logprobs(model, c.logprobs) if k else None,
            metrics=p.usage_metrics(usage.prompt_tokens, usage.completion_tokens)))
    _, rest = await until_disconnected(ctx.is_disconnected, first_then_rest(stream))

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for out in rest:
            for c, text, entries in _advance(choice, out, model.tokenizer.stop_ids):
                yield p.dump(p.StackCompletionResponse(
                    content=text, delta=text, stop_reason=c.stop_reason if c.done else None,
                    logprobs=stack_logprobs(model, entries) if k else None,
                    metrics=p.usage_metrics(usage.prompt_tokens, usage.completion_tokens) if c.done else None))

    return chunks()

