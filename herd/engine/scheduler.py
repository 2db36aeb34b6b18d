"""Continuous batching over a token budget (vLLM v1 style): no prefill/decode phases.

Each step, every running request first gets the tokens it still has to compute (a decoding
request needs 1, a prefill gets a chunk), then waiting requests are admitted in
(priority, arrival) order while the budget and max_num_seqs allow. A prompt longer than the
budget is split across steps (chunked prefill); only the step that computes the last token
produces a sampled token. When the KV pool runs out, the least important running request
(highest priority value, then latest arrival) is preempted by recomputation: its blocks are
freed and it goes back to waiting, to recompute prompt + output later (cheaply, when its
blocks are still in the prefix cache).

A request that could never fit in the whole pool, even alone, is refused by add_request with
a HerdError, so it can neither deadlock the queue nor preempt everyone else forever.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from herd.engine.kv_cache import KVCacheManager, cdiv
from herd.engine.request import Request, RequestStatus
from herd.errors import HerdError


@dataclass
class ScheduledRequest:
    """One request's share of a step: compute all_token_ids[start : start + num_new_tokens]."""

    request: Request
    num_new_tokens: int
    start: int  # num_computed_tokens before this step (the position of the first new token)
    block_ids: list[int]  # the full block table after allocation (a copy)
    # whether this step reaches the end of the sequence, so its last logits are sampled; fixed
    # at scheduling time (after update_from_output the request is one token longer)
    produces_token: bool = field(init=False)

    def __post_init__(self) -> None:
        self.produces_token = self.start + self.num_new_tokens == self.request.num_tokens

    @property
    def token_ids(self) -> list[int]:
        """The token ids to compute this step (call before update_from_output)."""
        return self.request.all_token_ids[self.start : self.start + self.num_new_tokens]


@dataclass
class SchedulerOutput:
    """What the runner computes this step, and which per-request state it may drop."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_batched_tokens: int = 0
    preempted: list[str] = field(default_factory=list)  # ids whose blocks were freed this step
    finished_ids: list[str] = field(default_factory=list)  # finished (any reason) since the last step


class Scheduler:
    """Decides, step by step, which requests compute how many tokens, within budget and KV pool."""

    def __init__(
        self,
        kv: KVCacheManager,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 64,
        long_prefill_token_threshold: int = 0,
        stop_token_ids: frozenset[int] = frozenset(),
        max_model_len: int | None = None,
        context_name: str = "the model's context",  # how errors name what max_model_len is
    ):
        if max_num_batched_tokens < 1 or max_num_seqs < 1 or long_prefill_token_threshold < 0:
            raise HerdError("max_num_batched_tokens and max_num_seqs must be >= 1, long_prefill_token_threshold >= 0")
        self.kv = kv
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.stop_token_ids = frozenset(stop_token_ids)  # the tokenizer's end-of-turn / eos ids
        self.max_model_len = max_model_len  # total tokens (prompt + output) a sequence may reach
        self.context_name = context_name
        self.requests: dict[str, Request] = {}  # every unfinished request
        self.num_preemptions_total = 0  # for metrics and tests
        # both queues stay sorted by (priority, arrival, add order): running is served in that
        # order and preempted from its end; a preempted request returns to its place in waiting,
        # which under FCFS is the front, since it arrived before anything never admitted
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._stops: dict[str, frozenset[int]] = {}
        self._finished_ids: list[str] = []

    # ---- queue state -------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self.running or self.waiting)

    def _key(self, r: Request) -> tuple[int, float, int]:
        return (r.priority, r.arrival_time, self._seq[r.request_id])

    # ---- requests in and out -----------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a new request; raises HerdError for one that is empty or could never fit."""
        rid, params = request.request_id, request.sampling_params
        if rid in self.requests:
            raise HerdError(f"request id {rid!r} is already in use")
        if not request.prompt_token_ids:
            raise HerdError(f"request {rid!r} has an empty prompt")
        limit = request.num_prompt_tokens + params.max_tokens
        if self.max_model_len is not None:
            if request.num_prompt_tokens >= self.max_model_len:
                raise HerdError(
                    f"request {rid!r}: the prompt has {request.num_prompt_tokens} tokens; "
                    f"{self.context_name} is {self.max_model_len}"
                )
            limit = min(limit, self.max_model_len)
        # the last sampled token is never computed, so it needs no KV slot
        need = cdiv(limit - 1, self.kv.block_size)
        if need > self.kv.num_usable_blocks:
            raise HerdError(
                f"request {rid!r} needs {need} KV blocks ({request.num_prompt_tokens} prompt tokens + "
                f"max_tokens {params.max_tokens}) but the whole cache has {self.kv.num_usable_blocks}; "
                "lower max_tokens or give the cache more memory"
            )
        # the same rule as generate.stop_ids_for: ignore_eos drops only the tokenizer's ids
        stops = frozenset(params.stop_token_ids or ())
        if not params.ignore_eos:
            stops |= self.stop_token_ids
        self._stops[rid] = stops
        self._seq[rid] = self._next_seq
        self._next_seq += 1
        self.requests[rid] = request
        request.status = RequestStatus.WAITING
        bisect.insort(self.waiting, request, key=self._key)

    def finish_request(
        self, request_id: str, status: RequestStatus, reason: int | str | None = None
    ) -> None:
        """End a request from outside (a stop string, an abort): free its blocks; no-op if unknown."""
        if not status.is_finished():
            raise ValueError(f"{status!r} is not a finished status")
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self._retire(request, status, reason)

    def abort(self, request_ids: str | Iterable[str]) -> list[Request]:
        """Abort unfinished requests by id (unknown ids are ignored); returns those aborted."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        aborted = [self.requests[i] for i in ids if i in self.requests]
        for r in aborted:
            self.finish_request(r.request_id, RequestStatus.FINISHED_ABORTED)
        return aborted

    def _retire(self, request: Request, status: RequestStatus, reason: int | str | None) -> None:
        request.status = status
        if reason is not None:
            request.stop_reason = reason
        self.kv.free(request)
        self._stops.pop(request.request_id, None)
        self._seq.pop(request.request_id, None)
        self._finished_ids.append(request.request_id)

    # ---- one step ----------------------------------------------------------------------

    def _chunk(self, remaining: int, budget: int) -> int:
        n = min(remaining, budget)
        if self.long_prefill_token_threshold:
            n = min(n, self.long_prefill_token_threshold)
        return n

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        bisect.insort(self.waiting, request, key=self._key)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts; allocates their KV slots."""
        budget = self.max_num_batched_tokens
        out = SchedulerOutput(finished_ids=self._finished_ids)
        self._finished_ids = []

        # running requests, most important first; the least important one is running[-1]
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = self._chunk(req.num_tokens - req.num_computed_tokens, budget)
            if n <= 0:  # nothing to compute (its sampled token has not come back): skip it
                i += 1
                continue
            while self.kv.allocate_slots(req, n) is None:
                victim = self.running[-1]  # never one already scheduled: those come before i
                self._preempt(victim)
                out.preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens, self.kv.block_table(req.request_id)))
                budget -= n
                i += 1

        # waiting requests, unless this step had to preempt (admitting more would only thrash)
        admitted = False
        while not out.preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            hits, num_hit = self.kv.get_computed_blocks(req)
            n = self._chunk(req.num_tokens - num_hit, budget)
            if self.kv.allocate_slots(req, n, hits) is None:
                break  # strict FCFS: nothing behind the head jumps ahead of it
            self.waiting.pop(0)
            if req.status == RequestStatus.WAITING:
                req.num_cached_tokens = num_hit
            req.num_computed_tokens = num_hit
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            admitted = True
            out.scheduled.append(ScheduledRequest(req, n, num_hit, self.kv.block_table(req.request_id)))
            budget -= n
        if admitted:  # a preempted or high-priority request may belong before older ones
            self.running.sort(key=self._key)
        out.num_batched_tokens = self.max_num_batched_tokens - budget
        return out

    def update_from_output(self, out: SchedulerOutput, sampled: dict[str, list[int] | int]) -> list[Request]:
        """Record a step's results: advance progress, append sampled tokens, finish, cache blocks.

        `sampled` maps request id -> the token(s) sampled for every scheduled request whose step
        reached the end of its sequence; returns the requests that finished in this step.
        """
        finished: list[Request] = []
        for sr in out.scheduled:
            req = sr.request
            if req.status != RequestStatus.RUNNING:  # aborted or stopped after schedule()
                continue
            req.num_computed_tokens = sr.start + sr.num_new_tokens
            if sr.produces_token:
                tokens = sampled.get(req.request_id)
                if isinstance(tokens, int):
                    tokens = [tokens]
                if not tokens:
                    raise RuntimeError(f"request {req.request_id!r} finished its prefill but no token was sampled")
                status, reason = self._append(req, tokens)
                if status is not None:
                    finished.append(req)
                    # cache before freeing, so the finished request leaves its prefix behind
                    self.kv.cache_full_blocks(req, req.num_computed_tokens)
                    del self.requests[req.request_id]
                    self._retire(req, status, reason)
                    continue
            self.kv.cache_full_blocks(req, req.num_computed_tokens)
        if finished:
            done = {id(r) for r in finished}
            self.running = [r for r in self.running if id(r) not in done]
        return finished

    def _append(self, req: Request, tokens: list[int]) -> tuple[RequestStatus | None, int | None]:
        # append one token at a time: a stop token in the middle of several drops the rest
        stops, max_tokens = self._stops[req.request_id], req.sampling_params.max_tokens
        for t in tokens:
            req.append_output_token_ids(t)
            if t in stops:
                return RequestStatus.FINISHED_STOPPED, t
            if req.num_output_tokens >= max_tokens:
                return RequestStatus.FINISHED_LENGTH, None
            if self.max_model_len is not None and req.num_tokens >= self.max_model_len:
                return RequestStatus.FINISHED_LENGTH, None
        return None, None
