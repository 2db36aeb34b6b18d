"""LLMEngine: step() = schedule → run → update. LLM: the offline batch API on top of it."""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from herd.config import EngineConfig
from herd.engine.generate import Detokenizer
from herd.engine.kv_cache import KVCacheManager, cdiv
from herd.engine.request import (
    CompletionOutput,
    Request,
    RequestOutput,
    RequestStatus,
    SamplingParams,
)
from herd.engine.runner import ModelRunner, PagedKVCache
from herd.engine.sampling import SamplingBatch, sample_batch
from herd.engine.scheduler import Scheduler, SchedulerOutput
from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.tokenizer.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger("herd.engine")
# one sampled row: (token, its logprob or None, the top (ids, logprobs) or None)
Row = tuple[int, float | None, tuple[list[int], list[float]] | None]


@dataclass
class _Seq:
    """Engine-side state of one sequence (one of a request's n completions)."""

    group: str
    request: Request
    out: CompletionOutput
    detok: Detokenizer
    generator: torch.Generator | None
    matcher: Any = None  # structured.GrammarMatcher


@dataclass
class _Group:
    request_id: str
    prompt_ids: list[int]
    seq_ids: list[str] = field(default_factory=list)
    finished: bool = False
    held: list[Request] = field(default_factory=list)  # n > 1: siblings waiting for the prompt's KV


@dataclass(frozen=True)
class Capacity:
    """What one engine can hold (fixed once it is built)."""

    max_model_len: int  # prompt + output tokens of one sequence: the context, or the configured cap
    kv_blocks: int  # usable KV-cache blocks in the pool
    block_size: int  # tokens per block

    @property
    def max_request_tokens(self) -> int:
        """The most tokens one sequence can hold: its context and the whole pool both bound it."""
        return min(self.max_model_len, self.kv_blocks * self.block_size)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the queues and the KV pool (for /metrics)."""

    running: int  # sequences
    waiting: int
    kv_usage: float  # fraction of KV blocks held by requests
    free_blocks: int  # free or evictable
    usable_blocks: int


def available_memory(device: torch.device) -> int:
    """Free bytes on the device (CUDA: free HBM; CPU: MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class LLMEngine:
    """Continuous batching over a paged KV cache with prefix caching and chunked prefill."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: EngineConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config = config or EngineConfig()
        w = model.tok_embeddings.weight
        self.device = w.device
        self.max_model_len = min(config.max_model_len or model.args.max_seq_len, model.args.max_seq_len)
        # K/V storage: "auto" is the model's dtype
        self.kv_dtype = w.dtype if config.kv_cache_dtype == "auto" else DTYPES[config.kv_cache_dtype]
        num_blocks = config.num_blocks or self._blocks_for_memory()
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv, config.max_num_batched_tokens, config.max_num_seqs,
            config.long_prefill_token_threshold, tokenizer.stop_ids, self.max_model_len, self.context_name,
        )
        self.runner = ModelRunner(model, num_blocks, config.block_size, config.compile_decode, self.kv_dtype)
        self.seqs: dict[str, _Seq] = {}
        self.groups: dict[str, _Group] = {}
        self._grammars = None
        self._ids = itertools.count()
        self._holding: dict[str, None] = {}  # groups whose siblings wait for the first prefill

    def _blocks_for_memory(self) -> int:
        c = self.config
        per_block = PagedKVCache.bytes_per_block(self.model, c.block_size, self.kv_dtype)
        budget = c.kv_cache_memory or int(available_memory(self.device) * c.kv_cache_fraction)
        # never more than every sequence at full length needs
        most = c.max_num_seqs * cdiv(self.max_model_len, c.block_size) + 1
        blocks = min(budget // per_block, most)
        if blocks < 2:
            raise HerdError(f"KV cache memory {budget} bytes holds no block ({per_block} bytes per block)")
        return int(blocks)

    # ---- requests -------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str | None,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
    ) -> str:
        """Queue a request (n sequences when params.n > 1); returns its id."""
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.groups:
            raise HerdError(f"request id {request_id!r} is already in use")
        prompt = list(prompt_ids)
        if not prompt:
            raise HerdError("the prompt is empty", "prompt")
        if len(prompt) >= self.max_model_len:
            raise HerdError(f"the prompt has {len(prompt)} tokens; {self.context_name} is {self.max_model_len}",
                            "prompt")
        grammar = self._compile(params.response_format)
        group = _Group(request_id, prompt)
        added: list[str] = []
        # n > 1 with prefix caching: the first sequence prefills the prompt; its siblings join once
        # it has (step), and find the prompt's full blocks in the prefix cache instead of
        # computing them again
        fork = params.n > 1 and self.config.enable_prefix_caching and len(prompt) > self.config.block_size
        try:
            for i in range(params.n):
                seq_id = request_id if params.n == 1 else f"{request_id}#{i}"
                p = params if params.seed is None or i == 0 else params.replace(seed=params.seed + i)
                gen = None
                if p.seed is not None:
                    gen = torch.Generator(device=self.device).manual_seed(p.seed)
                req = Request(seq_id, prompt, p, priority=priority)
                if fork and i > 0:
                    group.held.append(req)
                else:
                    self.scheduler.add_request(req)
                    added.append(seq_id)
                out = CompletionOutput(prompt, index=i, logprobs=[] if p.logprobs is not None else None)
                matcher = grammar.matcher() if grammar is not None else None
                self.seqs[seq_id] = _Seq(request_id, req, out, Detokenizer(self.tokenizer, p.stop, p.skip_special_tokens), gen, matcher)
                group.seq_ids.append(seq_id)
        except HerdError:
            self.scheduler.abort(added)
            for s in added:
                self.seqs.pop(s, None)
            raise
        self.groups[request_id] = group
        if group.held:
            self._holding[request_id] = None
        return request_id

    def _compile(self, response_format: Any):
        if response_format is None:
            return None
        from herd.engine.structured import GrammarCompiler, ResponseFormat

        if not isinstance(response_format, ResponseFormat):
            response_format = ResponseFormat.from_openai(response_format)
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer)
        return self._grammars.compile(response_format)

    def abort(self, request_id: str) -> None:
        """Stop a request now; its KV blocks go back to the pool."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return
        self.scheduler.abort(group.seq_ids)
        for sid in group.seq_ids:
            self.seqs.pop(sid, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    @property
    def context_name(self) -> str:
        """What bounds a sequence, in the user's terms: their max_model_len, or the model's context."""
        capped = self.max_model_len < self.model.args.max_seq_len
        return "max_model_len (--max-model-len)" if capped else "the model's context"

    def capacity(self) -> Capacity:
        """The context and KV-pool sizes (fixed)."""
        return Capacity(self.max_model_len, self.kv.num_usable_blocks, self.kv.block_size)

    def stats(self) -> EngineStats:
        """Queue lengths and KV-pool use now (read from another thread, a snapshot may be a step old)."""
        s, kv = self.scheduler, self.kv
        return EngineStats(s.num_running, s.num_waiting, kv.usage, kv.num_free_blocks, kv.num_usable_blocks)

    @property
    def num_requests(self) -> int:
        return len(self.groups)

    # ---- the step -------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward pass, sample, update; outputs of the requests that advanced.

        A request whose computation fails (a bug or a broken kernel, not bad input) ends alone: its
        output carries `error`, its blocks are freed, and the requests batched with it go on."""
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return []
        failed: list[RequestOutput] = []
        logits, ids = self._execute(sched, failed)
        seqs = [self.seqs[i] for i in ids]
        rows = self._sample(logits, seqs, failed)
        live = [(s, r) for s, r in zip(seqs, rows) if s.group in self.groups]
        for s, _ in live:
            s.out.delta_text, s.out.delta_token_ids = "", []
        self.scheduler.update_from_output(sched, {s.request.request_id: [r[0]] for s, r in live})
        touched: dict[str, None] = {}
        for s, r in live:
            if s.group not in self.groups:  # a sibling failed in _advance
                continue
            try:
                self._advance(s, r)
            except Exception as e:  # noqa: BLE001 - this request ends; the step goes on
                self._fail(s.group, e, failed)
                continue
            touched[s.group] = None
        outputs = [self._group_output(g) for g in touched if g in self.groups]
        self._release_siblings()
        return outputs + failed

    def _execute(self, sched: SchedulerOutput, failed: list[RequestOutput]) -> tuple[torch.Tensor, list[str]]:
        """The step's forward pass. If it fails, each request is run alone, so that only those that
        fail alone are failed (their KV writes are their own slots; a rerun writes the same values)."""
        try:
            return self.runner.execute(sched)
        except Exception as e:  # noqa: BLE001
            if len(sched.scheduled) == 1:
                self._fail(self.seqs[sched.scheduled[0].request.request_id].group, e, failed)
                return self._no_logits(), []
            log.warning("engine step of %d requests failed (%s: %s); running them one by one",
                        len(sched.scheduled), type(e).__name__, e)
        parts, ids = [], []
        for sr in sched.scheduled:
            seq = self.seqs.get(sr.request.request_id)
            if seq is None or seq.group not in self.groups:  # a sibling failed already
                continue
            try:
                logits, got = self.runner.execute(SchedulerOutput([sr], sr.num_new_tokens))
            except Exception as e:  # noqa: BLE001
                self._fail(seq.group, e, failed)
                continue
            parts.append(logits)
            ids += got
        keep = [i for i, sid in enumerate(ids) if sid in self.seqs]  # drop siblings of failed ones
        logits = torch.cat(parts) if parts else self._no_logits()
        return logits[keep], [ids[i] for i in keep]

    def _no_logits(self) -> torch.Tensor:
        return torch.empty(0, self.model.args.vocab_size, device=self.device)

    def _fail(self, gid: str, error: BaseException, failed: list[RequestOutput]) -> None:
        """End request `gid` with an error output (logged with its id); frees its blocks."""
        group = self.groups.get(gid)
        if group is None:
            return
        log.error("request %s failed: %s: %s", gid, type(error).__name__, error, exc_info=error)
        outs = [self.seqs[s].out for s in group.seq_ids]
        for o in outs:
            o.finish_reason = o.finish_reason or "error"
            o.delta_text, o.delta_token_ids = "", []
        first = self.seqs[group.seq_ids[0]].request
        failed.append(RequestOutput(gid, group.prompt_ids, outs, True, first.num_cached_tokens,
                                    error=f"{type(error).__name__}: {error}"))
        self.abort(gid)
        self._holding.pop(gid, None)

    def _release_siblings(self) -> None:
        """Schedule the held siblings of groups whose first sequence has produced a token (its
        prompt blocks are computed and in the prefix cache by now)."""
        for gid in list(self._holding):
            group = self.groups.get(gid)
            if group is None:  # aborted
                del self._holding[gid]
                continue
            if self.seqs[group.seq_ids[0]].request.output_token_ids:
                for req in group.held:
                    self.scheduler.add_request(req)
                group.held.clear()
                del self._holding[gid]

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq], failed: list[RequestOutput]) -> list[Row | None]:
        """One sampled row per sequence; if sampling the batch fails, each row is sampled alone and
        the requests whose row fails are failed (their row is None)."""
        if not seqs:
            return []
        try:
            return self._sample_rows(logits, seqs)
        except Exception as e:  # noqa: BLE001
            if len(seqs) > 1:
                log.warning("sampling %d rows failed (%s: %s); sampling them one by one", len(seqs),
                            type(e).__name__, e)
        rows: list[Row | None] = []
        for i, s in enumerate(seqs):
            try:
                rows.append(self._sample_rows(logits[i : i + 1], [s])[0])
            except Exception as e:  # noqa: BLE001
                self._fail(s.group, e, failed)
                rows.append(None)
        return rows

    def _sample_rows(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[Row]:
        batch = SamplingBatch(
            [s.request.sampling_params for s in seqs],
            [s.generator for s in seqs],
            prompt_ids=[s.request.prompt_token_ids for s in seqs],
            output_ids=[s.request.output_token_ids for s in seqs],
        )
        constrained = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            from herd.engine.structured import apply_masks, fill_masks

            masks = self._grammars.allocate_masks(len(constrained))
            fill_masks([seqs[i].matcher for i in constrained], masks)
            apply_masks(logits, masks, constrained)
        tokens, chosen, top = sample_batch(logits, batch)
        chosen_list = chosen.tolist() if chosen is not None else [None] * len(seqs)
        rows: list[Row] = []
        for i, (s, t, c) in enumerate(zip(seqs, tokens.tolist(), chosen_list)):
            k = s.request.sampling_params.logprobs or 0
            alts = (top[1][i, :k].tolist(), top[0][i, :k].tolist()) if k and top is not None else None
            rows.append((t, c, alts))
        return rows

    def _advance(self, s: _Seq, row: Row) -> None:
        token, chosen, alts = row
        req, out = s.request, s.out
        out.token_ids.append(token)
        out.delta_token_ids.append(token)
        if s.matcher is not None:
            s.matcher.accept(token)
        if out.logprobs is not None:
            entry = {token: float(chosen)} if chosen is not None else {}
            if alts is not None:
                entry.update(zip(*alts))
            out.logprobs.append(entry)
        stopped_by_token = req.status == RequestStatus.FINISHED_STOPPED and req.stop_reason == token
        if not stopped_by_token:
            out.delta_text += s.detok.add(token)
            if s.detok.stopped and not req.is_finished():
                self.scheduler.finish_request(req.request_id, RequestStatus.FINISHED_STOPPED, s.detok.stop_hit)
        if req.is_finished():
            if not s.detok.stopped:
                out.delta_text += s.detok.finish()
            out.finish_reason = req.finish_reason
            out.stop_reason = req.stop_reason
            out.stop_token_id = token if stopped_by_token else None
        out.text = s.detok.text

    def _group_output(self, gid: str) -> RequestOutput:
        group = self.groups[gid]
        outs = [self.seqs[s].out for s in group.seq_ids]
        done = all(o.finish_reason is not None for o in outs)
        first = self.seqs[group.seq_ids[0]].request
        result = RequestOutput(gid, group.prompt_ids, outs, done, first.num_cached_tokens)
        if done:  # the engine forgets finished requests once reported
            del self.groups[gid]
            for s in group.seq_ids:
                del self.seqs[s]
        return result

    def run(self) -> Iterator[RequestOutput]:
        """Step until every queued request is finished, yielding each step's outputs."""
        while self.has_unfinished_requests():
            yield from self.step()

    def run_one(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> list[CompletionOutput]:
        """Run one request to the end (alongside whatever else is queued); its n completions."""
        rid = self.add_request(None, prompt_ids, params)
        for out in self.run():
            if out.request_id == rid and out.finished:
                return out.outputs
        raise RuntimeError("request vanished")  # pragma: no cover - aborted from elsewhere
