"""What chat and completions share: sampling params from request fields, the context budget,
running a request on the engine with metrics, logprobs, and aborting on client disconnect."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from herd.engine.request import CompletionOutput, RequestOutput, SamplingParams
from herd.errors import EngineError, HerdError
from herd.serve import protocol as p
from herd.serve.config import LimitSettings
from herd.serve.errors import APIError, bad_request
from herd.serve.limits import Admission, Deadline, Drain, SequenceGate, Ticket
from herd.serve.metrics import Metrics
from herd.serve.models import LLMModel

log = logging.getLogger("herd.serve")
MAX_WARNINGS = 8  # `Warning` header entries per response

if TYPE_CHECKING:
    from herd.safety.shields import ShieldRegistry

T = TypeVar("T")
# (token id, its logprob, [(alternative id, logprob)] best first)
LogprobEntry = tuple[int, float, list[tuple[int, float]]]
MIN_LOGPROB = -9999.0  # what OpenAI reports for impossible tokens


def check_budget(model: LLMModel, prompt_len: int, max_tokens: int | None, param: str = "max_tokens",
                 prompt_param: str = "messages") -> int:
    """The max_tokens to use; prompt + max_tokens over the context is a 400 naming both counts."""
    limit = model.max_model_len
    context = model.engine.capacity().max_model_len
    what = f"this model's context of {limit} tokens" if limit == context else \
        f"the {limit} tokens one request may hold (KV-cache pool; the model's context is {context})"
    if prompt_len >= limit:
        raise bad_request(f"the prompt has {prompt_len} tokens, which leaves no room for output in {what}; "
                          f"shorten the prompt", prompt_param, "context_length_exceeded")
    if max_tokens is None or max_tokens <= 0:
        return limit - prompt_len
    if prompt_len + max_tokens > limit:
        raise bad_request(f"the prompt has {prompt_len} tokens and {param} is {max_tokens}: together "
                          f"{prompt_len + max_tokens} tokens, over {what}; lower {param} to at most "
                          f"{limit - prompt_len}", param, "context_length_exceeded")
    return max_tokens


def check_text_length(model: LLMModel, chars: int, param: str) -> None:
    """400 for a text too long for the context whatever it says, before spending seconds tokenizing it:
    no token covers more than `tokenizer.max_token_bytes` characters."""
    limit = model.max_model_len
    most = limit * model.tokenizer.max_token_bytes
    if chars > most:
        raise bad_request(f"{param} holds {chars} characters, more than the {limit} tokens this model can take "
                          f"could hold (a token covers at most {model.tokenizer.max_token_bytes} characters); "
                          "shorten it", param, "context_length_exceeded")


def response_format_of(raw: dict[str, Any] | None, param: str = "response_format") -> Any:
    """A herd ResponseFormat (None for text / absent); bad shapes are 400s."""
    if raw is None:
        return None
    from herd.engine.structured import ResponseFormat

    try:
        fmt = ResponseFormat.from_openai(raw)
    except HerdError as e:
        raise bad_request(str(e), param) from None
    return None if fmt.type == "text" else fmt


def sampling_params(**kw: Any) -> SamplingParams:
    """SamplingParams from keyword fields; None means the herd default; invalid values are 400s."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if isinstance(kw.get("stop"), str):
        kw["stop"] = (kw["stop"],)
    if kw.get("top_k", 0) < 0:  # vLLM: -1 turns top-k off
        kw["top_k"] = 0
    try:
        return SamplingParams(**kw)
    except HerdError as e:
        field = str(e).split(" ", 1)[0]
        raise bad_request(str(e), field if field in SamplingParams.__dataclass_fields__ else None) from None


def new_logprobs(out: CompletionOutput, start: int, stop_ids: frozenset[int]) -> list[LogprobEntry]:
    """Logprob entries for out.token_ids[start:], leaving out a final stop token."""
    if out.logprobs is None:
        return []
    entries = []
    for i in range(start, min(len(out.token_ids), len(out.logprobs))):
        tok = out.token_ids[i]
        if out.finished and i == len(out.token_ids) - 1 and out.stop_token_id == tok and tok in stop_ids:
            break
        row = {t: max(lp, MIN_LOGPROB) for t, lp in out.logprobs[i].items()}  # JSON has no -inf
        alts = sorted(row.items(), key=lambda x: -x[1])
        entries.append((tok, row.get(tok, MIN_LOGPROB), alts))
    return entries


def token_text(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    """A token's text (invalid UTF-8 replaced) and its raw bytes."""
    try:
        raw = tokenizer.token_bytes(token_id)
    except (KeyError, ValueError):
        raw = b""
    return raw.decode("utf-8", errors="replace"), list(raw)


@dataclass
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def engine_error(e: HerdError | EngineError, request_id: str, prompt_param: str) -> APIError:
    """The HTTP error for an engine error: input errors are 400s naming the field (the engine's
    "prompt" is this route's `prompt_param`); a request the engine failed is a 500 for it alone."""
    if isinstance(e, EngineError):
        return APIError(500, f"the engine failed this request ({e}); the server log has the details under "
                             f"request id {request_id}", code="engine_error")
    param = prompt_param if e.param == "prompt" else e.param
    return bad_request(str(e), param)


async def generate(
    model: LLMModel, prompt_ids: Sequence[int], params: SamplingParams, ctx: CallContext, usage: Usage,
    *, request_id: str | None = None, prompt_param: str = "messages",
) -> AsyncIterator[RequestOutput]:
    """Engine outputs step by step, with metrics; engine errors become HTTP errors (engine_error); the
    request's deadline and the server's drain can cut it (504 / 503); cancelling aborts."""
    request_id = request_id or ctx.request_id
    metrics = ctx.metrics
    async with ctx.gate.hold(params.n):  # one request's sequences in the engine at once are capped
        start = last = time.monotonic()
        first = True
        finished = False
        seen = 0
        stream = model.engine.generate(list(prompt_ids), params, request_id=request_id)
        try:
            while True:
                try:
                    out = await ctx.deadline.next(stream)
                except StopAsyncIteration:
                    break
                ctx.started()
                t = time.monotonic()
                total = sum(len(o.token_ids) for o in out.outputs)
                if total > seen:
                    if first:
                        metrics.ttft.observe(t - start, model=model.id)
                        first = False
                    else:
                        metrics.itl.observe(t - last, model=model.id)
                    last = t
                    metrics.generation_tokens.inc(total - seen, model=model.id)
                    seen = total
                usage.completion_tokens = total
                usage.cached_tokens = out.num_cached_tokens
                if out.finished:
                    finished = True
                    for o in out.outputs:
                        metrics.finished.inc(model=model.id, reason=o.finish_reason or "stop")
                    metrics.e2e.observe(t - start, model=model.id)
                yield out
        except (HerdError, EngineError) as e:
            raise engine_error(e, request_id, prompt_param) from None
        finally:
            await stream.aclose()  # a consumer that stopped early aborts the request: its KV blocks are freed
            metrics.prompt_tokens.inc(len(prompt_ids), model=model.id)
            metrics.cached_tokens.inc(usage.cached_tokens, model=model.id)
            if not finished:
                metrics.finished.inc(model=model.id, reason="abort")


async def first_then_rest(agen: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """Pull the first item now (so input errors still become a 4xx status), then the rest lazily."""
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        return None, agen
    except BaseException:
        await _aclose(agen)
        raise

    async def chained() -> AsyncIterator[T]:
        try:
            yield first
            async for item in agen:
                yield item
        finally:
            await _aclose(agen)

    return first, chained()


async def _aclose(agen: Any) -> None:
    close = getattr(agen, "aclose", None)
    if close is not None:
        await close()


async def until_disconnected(is_disconnected: Callable[[], Awaitable[bool]], work: Awaitable[T],
                             poll: float = 0.25) -> T:
    """Await `work`, cancelling it (which aborts its request) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await is_disconnected():
                task.cancel()
                raise APIError(499, "client closed the request")
    finally:
        if not task.done():
            task.cancel()


@dataclass
class CallContext:
    """Per-HTTP-request facts the API modules need."""

    request_id: str
    metrics: Metrics
    is_disconnected: Callable[[], Awaitable[bool]]
    send_done: bool = True  # end SSE streams with `data: [DONE]` (0.2.x llama-stack-client cannot parse it)
    model: str | None = None  # set once the model is known (for the access log)
    usages: list[Usage] = field(default_factory=list)
    shields: ShieldRegistry | None = None  # the server's, for input/output shields
    limits: LimitSettings = field(default_factory=LimitSettings)
    admission: Admission | None = None  # the server's; None: no queue bound (tests of single pieces)
    drain: Drain | None = None
    ticket: Ticket | None = None
    warnings: list[str] = field(default_factory=list)  # sent back in `Warning` headers (MAX_WARNINGS of them)
    more_warnings: int = 0  # past MAX_WARNINGS: counted, not sent or logged one by one
    gate: SequenceGate = field(init=False)
    deadline: Deadline = field(init=False)

    def __post_init__(self) -> None:
        self.gate = SequenceGate(self.limits.max_sequences_in_flight)
        self.deadline = Deadline(self.limits.request_timeout, self.drain)

    def warn(self, *notes: str) -> None:
        """Tell the client (a `Warning` response header each) and the log about a liberty taken."""
        for note in notes:
            if note in self.warnings:
                continue
            if len(self.warnings) >= MAX_WARNINGS:  # a request's input sets how many: keep the header small
                self.more_warnings += 1
                continue
            log.warning("request %s: %s", self.request_id, note)
            self.warnings.append(note)

    def headers(self) -> dict[str, str]:
        """The response headers this request has earned (its warnings, RFC 7234 style, joined)."""
        if not self.warnings:
            return {}
        notes = self.warnings + ([f"and {self.more_warnings} more"] if self.more_warnings else [])
        quoted = (w.encode("ascii", "replace").decode().replace("\\", "\\\\").replace('"', '\\"')
                  for w in notes)
        return {"Warning": ", ".join(f'299 herd "{q}"' for q in quoted)}

    def track(self, model: str, usage: Usage) -> Usage:
        """Remember the model and a request's token counts for the access log."""
        self.model = model
        self.usages.append(usage)
        return usage

    def precheck(self, model_id: str) -> None:
        """429 at once when the model's queue is already full (before tokenizing anything)."""
        if self.admission is not None:
            self.admission.check(model_id)

    def admit(self, model_id: str, prompt_tokens: int, sequences: int = 1) -> None:
        """Take a place in the model's queue (429 when it is full) and check the per-request caps."""
        if sequences > self.limits.max_sequences_per_request:
            raise bad_request(f"this request asks for {sequences} sequences (prompts x n); the limit is "
                              f"{self.limits.max_sequences_per_request} (limits.max_sequences_per_request)", "n",
                              "limit_exceeded")
        if self.admission is not None and self.ticket is None:
            self.ticket = self.admission.admit(model_id, prompt_tokens)

    def cap(self, count: int, limit: str, param: str, what: str) -> None:
        """400 naming the limit when a request lists more `what` than limits.<limit> allows."""
        most = getattr(self.limits, limit)
        if count > most:
            raise bad_request(f"{param}: {count} {what}; the limit is {most} (limits.{limit})", param,
                              "limit_exceeded")

    def started(self) -> None:
        """The request produced its first output: it no longer counts as waiting."""
        if self.ticket is not None:
            self.ticket.release()

    def close(self) -> None:
        """The HTTP request is over (answered, failed or cut): release what it holds."""
        self.started()

    def log_fields(self) -> dict[str, Any]:
        """model / prompt_tokens / completion_tokens for the access log."""
        if self.model is None:
            return {}
        return {"model": self.model, "prompt_tokens": sum(u.prompt_tokens for u in self.usages),
                "completion_tokens": sum(u.completion_tokens for u in self.usages)}


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators as (which, item); closing the merge closes them all."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for item in it:
                await queue.put((i, item))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))
        finally:
            await queue.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---- Llama Stack sampling and logprobs (chat and completion) ------------------------------


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
