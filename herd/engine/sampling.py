"""Logits to next tokens for a whole batch in one pass: penalties, grammar masks, greedy,
temperature, top-k, top-p, min-p, per-request seeds, logprobs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from herd.engine.request import SamplingParams


@dataclass
class SamplingBatch:
    """Per-row sampling settings of one step as tensors (built once per step)."""

    params: list[SamplingParams]
    generators: list[torch.Generator | None]  # per-request generators for seeded requests
    prompt_ids: list[Sequence[int]] | None = None  # only needed for repetition_penalty
    output_ids: list[Sequence[int]] | None = None  # needed for any penalty

    def __post_init__(self) -> None:
        ps = self.params
        self.all_greedy = all(p.greedy for p in ps)
        self.any_penalty = any(
            p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty for p in ps
        )
        self.any_top_k = any(p.top_k > 0 for p in ps)
        self.any_top_p = any(p.top_p < 1.0 for p in ps)
        self.any_min_p = any(p.min_p > 0 for p in ps)
        self.max_logprobs = max((p.logprobs for p in ps if p.logprobs is not None), default=None)


def _pad(rows: Sequence[Sequence[int]], fill: int, device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out.to(device)


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition (prompt + output, divide positive / multiply negative logits), frequency and
    presence (output only, OpenAI's formula) penalties, vectorised over the batch."""
    m, v = logits.shape
    dev = logits.device
    out_ids = _pad(batch.output_ids or [[]] * m, v, dev)
    out_counts = torch.zeros(m, v + 1, device=dev)  # column v swallows the padding
    out_counts.scatter_add_(1, out_ids, torch.ones(out_ids.shape, device=dev))
    out_counts = out_counts[:, :v]
    freq = torch.tensor([p.frequency_penalty for p in batch.params], device=dev)[:, None]
    pres = torch.tensor([p.presence_penalty for p in batch.params], device=dev)[:, None]
    logits = logits - freq * out_counts - pres * (out_counts > 0)
    rep = torch.tensor([p.repetition_penalty for p in batch.params], device=dev)[:, None]
    if (rep != 1.0).any():
        seen = out_counts > 0
        if batch.prompt_ids is not None:
            in_prompt = torch.zeros(m, v + 1, dtype=torch.bool, device=dev)
            in_prompt.scatter_(1, _pad(batch.prompt_ids, v, dev), True)
            seen |= in_prompt[:, :v]
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalised, logits)
    return logits


def _exponential_noise(shape: tuple[int, int], batch: SamplingBatch, device) -> torch.Tensor:
    """Exp(1) noise; a seeded row draws from its own generator, so it is batch-independent."""
    noise = torch.empty(shape, device=device).exponential_()
    for i, g in enumerate(batch.generators):
        if g is not None:
            noise[i].exponential_(generator=g)
    return noise


def sample_batch(
    logits: torch.Tensor, batch: SamplingBatch, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """Sample one token per row of logits (M, V).

    Returns (tokens (M,), chosen-token logprobs (M,) or None, top (logprobs, ids) (M, k) or None).
    `masks` (M, V) bool marks allowed tokens (structured output); logprobs are the model's own.
    """
    logits = logits.float()
    raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.max_logprobs is not None else None
    if batch.any_penalty:
        logits = apply_penalties(logits, batch)
    if masks is not None:
        logits = logits.masked_fill(~masks, float("-inf"))
    greedy = logits.argmax(dim=-1)
    if batch.all_greedy:
        tokens = greedy
    else:
        tokens = _sample_random(logits, batch)
        is_greedy = torch.tensor([p.greedy for p in batch.params], device=logits.device)
        tokens = torch.where(is_greedy, greedy, tokens)
    if raw_logprobs is None:
        return tokens, None, None
    chosen = raw_logprobs.gather(1, tokens[:, None])[:, 0]
    top = torch.topk(raw_logprobs, batch.max_logprobs, dim=-1) if batch.max_logprobs else None
    return tokens, chosen, (top.values, top.indices) if top is not None else None


def _filtered(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature, top-k, top-p and min-p applied: (unnormalised probs, sort index or None)."""
    dev = logits.device
    temp = torch.tensor([1.0 if p.greedy else p.temperature for p in batch.params], device=dev)
    x = logits / temp[:, None]
    if not (batch.any_top_k or batch.any_top_p or batch.any_min_p):
        return torch.softmax(x, dim=-1), None
    x, idx = x.sort(dim=-1, descending=True)
    if batch.any_top_k:
        k = torch.tensor([p.top_k or x.shape[-1] for p in batch.params], device=dev)
        x = x.masked_fill(torch.arange(x.shape[-1], device=dev)[None, :] >= k[:, None], float("-inf"))
    probs = torch.softmax(x, dim=-1)
    remove = torch.zeros_like(probs, dtype=torch.bool)
    if batch.any_top_p:
        # drop a token when the mass before it already exceeds top_p; the top token always stays
        top_p = torch.tensor([p.top_p for p in batch.params], device=dev)[:, None]
        # rows with top_p = 1 are left alone (rounding must not drop their tail tokens)
        remove |= ((probs.cumsum(dim=-1) - probs) > top_p) & (top_p < 1.0)
    if batch.any_min_p:
        min_p = torch.tensor([p.min_p for p in batch.params], device=dev)
        remove |= probs < min_p[:, None] * probs[:, :1]
    return probs.masked_fill(remove, 0.0), idx


def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    probs, idx = _filtered(logits, batch)
    # exponential race: argmax(p / E) with E ~ Exp(1) samples i with probability p_i / sum(p);
    # the noise is indexed by token id, so a seeded row draws the same token sorted or not
    noise = _exponential_noise(probs.shape, batch, logits.device)
    if idx is None:
        return (probs / noise).argmax(dim=-1)
    choice = (probs / noise.gather(1, idx)).argmax(dim=-1)
    return idx.gather(1, choice[:, None])[:, 0]


def sampling_distribution(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """The distribution (M, V) the sampler draws from, in vocabulary order (for tests and tools)."""
    logits = logits.float()
    if batch.any_penalty:
        logits = apply_penalties(logits, batch)
    probs, idx = _filtered(logits, batch)
    if idx is not None:
        probs = torch.empty_like(probs).scatter_(1, idx, probs)
    return probs / probs.sum(dim=-1, keepdim=True)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One token from fp32 logits (V,) — the batch sampler with one row."""
    batch = SamplingBatch([params], [generator])
    return int(sample_batch(logits[None], batch)[0][0])
