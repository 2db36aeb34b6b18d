"""Back-pressure and the server's lifecycle: admission per model (429 when the queue is full), a cap
on one request's sequences in the engine at once, request deadlines, and the drain on shutdown.

A request is *waiting* from the moment it is admitted until its first token (or its end); each
model admits at most `limits.max_waiting_requests` waiting requests holding at most
`limits.max_queued_tokens` prompt tokens. Beyond that a client gets 429 with Retry-After at once
instead of an unbounded wait. Once admitted, a request keeps at most
`limits.max_sequences_in_flight` sequences in the engine (a 100-prompt x n=16 completions request
runs a few prompts at a time), so the engine's continuous batching serves everyone else beside it.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from herd.serve.config import LimitSettings
from herd.serve.errors import APIError

T = TypeVar("T")
DRAIN_MARGIN = 1.0  # seconds before the drain timeout at which in-flight work is cut (and answered)


class Drain:
    """Shutdown state: `draining` once a signal arrived (new requests get 503); `expired` is set when
    the drain timeout is about to run out (in-flight requests are then cut, with an error)."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = asyncio.Event()
        self.cut = 0  # requests answered with an error because the drain timed out

    def start(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Begin draining (thread-safe, e.g. from a signal handler); expire `timeout` seconds from now."""
        self.draining = True
        delay = max(0.0, timeout - DRAIN_MARGIN)
        loop.call_soon_threadsafe(lambda: loop.call_later(delay, self.expired.set))


class Ticket:
    """One admitted request's place in its model's queue; released at its first token or its end."""

    def __init__(self, queue: ModelQueue, tokens: int):
        self.queue, self.tokens = queue, tokens
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.queue.waiting -= 1
            self.queue.tokens -= self.tokens


class ModelQueue:
    """Waiting requests and their prompt tokens for one model."""

    def __init__(self) -> None:
        self.waiting = 0
        self.tokens = 0


class Admission:
    """Per-model admission control (one per server)."""

    def __init__(self, limits: LimitSettings):
        self.limits = limits
        self.queues: dict[str, ModelQueue] = {}

    def check(self, model_id: str, tokens: int = 0) -> ModelQueue:
        """The model's queue, or 429 when it has no room for a request of `tokens` prompt tokens (a
        request larger than the token bound alone is admitted into an empty queue: it fits the context)."""
        lim = self.limits
        q = self.queues.setdefault(model_id, ModelQueue())
        if q.waiting >= lim.max_waiting_requests or (q.waiting and q.tokens + tokens > lim.max_queued_tokens):
            raise APIError(429, f"model {model_id!r} is busy: {q.waiting} requests holding {q.tokens} prompt tokens "
                                f"are waiting (limits: {lim.max_waiting_requests} requests, {lim.max_queued_tokens} "
                                f"tokens); retry after {lim.retry_after:g} s",
                           code="server_busy", headers={"Retry-After": retry_after(lim.retry_after)})
        return q

    def admit(self, model_id: str, tokens: int) -> Ticket:
        """A ticket for a request of `tokens` prompt tokens, or 429 when the model's queue is full."""
        q = self.check(model_id, tokens)
        q.waiting += 1
        q.tokens += tokens
        return Ticket(q, tokens)


def retry_after(seconds: float) -> str:
    """A Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))


class SequenceGate:
    """At most `cap` of one request's sequences in the engine at once (a group larger than the cap
    runs alone)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.in_use = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use == 0 or self.in_use + n <= self.cap)
            self.in_use += n
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= n
                self._changed.notify_all()


class Deadline:
    """The time by which a request must be done, and the drain that may cut it first."""

    def __init__(self, timeout: float, drain: Drain | None):
        self.timeout = timeout
        self.at = time.monotonic() + timeout if timeout > 0 else math.inf
        self.drain = drain

    async def next(self, stream: AsyncIterator[T]) -> T:
        """The stream's next item, or 504 past the deadline / 503 when the drain expires (the pending
        read is cancelled, which aborts the engine request)."""
        if self.drain is None and self.at == math.inf:
            return await anext(stream)
        item = asyncio.ensure_future(anext(stream))
        waits = {item}
        cut = None
        if self.drain is not None:
            cut = asyncio.ensure_future(self.drain.expired.wait())
            waits.add(cut)
        try:
            remaining = self.at - time.monotonic()
            done, _ = await asyncio.wait(waits, timeout=None if remaining == math.inf else max(0.0, remaining),
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (the client left): stop the read before the stream is closed
            await _cancel(item)
            raise
        finally:
            if cut is not None:
                cut.cancel()
        if item in done:
            return item.result()
        await _cancel(item)
        if cut is not None and cut in done:
            self.drain.cut += 1
            raise APIError(503, "the server is shutting down and its drain timeout ran out; this request was "
                                "stopped", code="server_shutting_down")
        raise APIError(504, f"the request ran past limits.request_timeout ({self.timeout:g} s) and was stopped",
                       code="request_timeout")


async def _cancel(task: asyncio.Future) -> None:
    """Cancel a task and wait until it has stopped (its generator is then no longer running)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
