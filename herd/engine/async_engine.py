"""AsyncLLMEngine: the step loop on a background thread, one async stream per request.

The engine is not thread-safe, so only the loop thread touches it: callers post add/abort
commands to a queue; outputs come back to each request's asyncio.Queue through the event loop.
Cancelling a consumer (client disconnect) aborts its request, which frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence

from herd.engine.engine import Capacity, EngineStats, LLMEngine
from herd.engine.request import RequestOutput, SamplingParams
from herd.errors import EngineError, HerdError

log = logging.getLogger("herd.engine")


class AsyncLLMEngine:
    """Serve many concurrent async consumers from one LLMEngine."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="herd-engine", daemon=True)
        self._thread.start()

    # ---- public -------------------------------------------------------------------------

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None, priority: int = 0
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs step by step; the last one has finished=True."""
        if self._stop:
            raise HerdError("the engine is shutting down")
        rid = request_id or f"areq-{next(self._ids)}"
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), q)
        self._post(("add", rid, list(prompt_ids), params, priority))
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(rid, None)
            if not finished:  # consumer went away (cancelled / closed): free its blocks
                self._post(("abort", rid))

    def abort(self, request_id: str) -> None:
        self._post(("abort", request_id))

    def stats(self) -> EngineStats:
        """Queue lengths and KV-pool use (see LLMEngine.stats)."""
        return self.engine.stats()

    def capacity(self) -> Capacity:
        """The context and KV-pool sizes (fixed)."""
        return self.engine.capacity()

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stop the loop thread (callers should drain their streams first)."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    # ---- the loop thread ------------------------------------------------------------------

    def _post(self, cmd: tuple) -> None:
        self._commands.put(cmd)
        self._wake.set()

    def _deliver(self, rid: str, item: RequestOutput | BaseException) -> None:
        target = self._streams.get(rid)
        if target is not None:
            loop, q = target
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the consumer's loop is closed
                self._commands.put(("abort", rid))

    def _apply_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, rid, prompt, params, priority = cmd
                try:
                    self.engine.add_request(rid, prompt, params, priority=priority)
                except Exception as e:  # any bad request fails alone, never the loop thread
                    self._deliver(rid, e if isinstance(e, HerdError) else HerdError(f"bad request: {e}"))
            else:
                self.engine.abort(cmd[1])

    def _loop(self) -> None:
        while not self._stop:
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:
                # step() fails a request alone when its forward or sampling fails; an error here is
                # in the engine's own bookkeeping, so no request can be trusted to go on: fail them all
                log.exception("engine step failed; failing its %d requests", len(self.engine.groups))
                for rid in list(self.engine.groups):
                    self.engine.abort(rid)
                    self._deliver(rid, EngineError(f"engine step failed: {type(e).__name__}: {e}"))
                continue
            for out in outputs:
                if out.error is not None:
                    self._deliver(out.request_id, EngineError(out.error))
                    continue
                # a snapshot: the engine updates its outputs in place at the next step, which may
                # run before this consumer reads the item (deltas would be lost or repeated)
                self._deliver(out.request_id, out.snapshot())
