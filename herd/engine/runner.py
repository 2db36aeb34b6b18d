"""Scheduled batch → tensors → one forward pass → next tokens. The engine's only device code.

The KV cache is paged: per layer one tensor of `num_blocks * block_size` slots, (slots, Hkv, hd).
A request's block table maps its positions to slots; attention reads K/V through it. The cache
is what the runner passes to the model: a `DecodeCache` (herd/model/fused.py), so a fused model's
decode steps run every block in one kernel call on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from herd.engine.scheduler import SchedulerOutput
from herd.model import cpu_kernels
from herd.model.fused import PagedStep
from herd.model.llama import Transformer, attention, causal_mask


@dataclass
class _Prefill:
    q_start: int  # first row of this request in the flattened batch
    q_len: int
    slots: torch.Tensor  # (S,) cache slots of positions 0..S-1 (S = start + q_len)


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
    """llama.attention for a short prefill chunk on the CPU: q (B, H, T, hd) over k/v (B, Hkv, S, hd)
    as plain matmuls, the query heads of each KV head grouped (no repeated K/V)."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = h // hkv
    if q.device.type != "cpu" or t > 16:
        return attention(q, k, v, start_pos)
    qg = q.reshape(b, hkv, rep * t, d)  # rows ordered (head in group, query)
    scores = (qg @ k.transpose(-1, -2)).float() * d**-0.5  # (B, Hkv, rep*T, S)
    mask = causal_mask(t, s, start_pos, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask.repeat(rep, 1), float("-inf"))
    out = torch.softmax(scores, dim=-1).type_as(q) @ v  # (B, Hkv, rep*T, hd)
    return out.view(b, h, t, d)


class PagedKVCache:
    """Paged K/V tensors plus the per-step view (which tokens go where, who attends to what).
    A `herd.model.fused.DecodeCache`: `attend` for any step, `decode_step` for decode-only ones."""

    def __init__(self, model: Transformer, num_blocks: int, block_size: int, dtype: torch.dtype | None = None):
        a = model.args
        w = model.tok_embeddings.weight
        self.dtype = dtype or w.dtype  # K/V storage; attention computes in the activations' dtype
        # (Hkv, slots, hd): a gather of slots gives each KV head a contiguous (slots, hd) matrix,
        # so batched decode attention runs as plain batched matmuls without relayout copies
        shape = (a.kv_heads, num_blocks * block_size, a.hd)
        # one tensor per layer, not a view of one big tensor: torch.compile then updates a layer's
        # slots in place instead of copying the whole cache back after the write
        # empty, not zeros: the OS maps pages as they are first written, so a large pool costs no
        # time or RSS up front; a slot is always written before it is read, except the null block
        # (padding of decode batches, masked out), which must hold finite values: zero it
        self.k = [torch.empty(shape, dtype=self.dtype, device=w.device) for _ in range(a.n_layers)]
        self.v = [torch.empty(shape, dtype=self.dtype, device=w.device) for _ in range(a.n_layers)]
        for t in (*self.k, *self.v):
            t[:, :block_size].zero_()
        self.block_size = block_size
        self.device = w.device
        # herd's paged decode-attention kernel: reads each sequence's K/V in place through its
        # slot list (no gather copy, no padded columns); it takes fp32 queries, so fp32 models on
        # the CPU, and an fp32 or bf16 cache
        ops = cpu_kernels.ops_for(self.device)
        ok = ops is not None and w.dtype is torch.float32 and self.dtype in (torch.float32, torch.bfloat16)
        self._paged = ops.paged_decode if ok else None
        self._step: PagedStep | None = None

    @staticmethod
    def bytes_per_block(model: Transformer, block_size: int, dtype: torch.dtype) -> int:
        a = model.args
        return 2 * a.n_layers * block_size * a.kv_heads * a.hd * torch.empty(0, dtype=dtype).element_size()

    def slots_for(self, block_ids: list[int], start: int, end: int) -> torch.Tensor:
        """Cache slots of positions [start, end) for a block table."""
        pos = torch.arange(start, end)
        table = torch.as_tensor(block_ids, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def prepare(self, sched: SchedulerOutput) -> None:
        """Precompute, once per step, the slot mapping and attention plan shared by all layers."""
        slot_mapping, self.prefills = [], []
        dec_rows, dec_slots, dec_lens = [], [], []
        row = 0
        for s in sched.scheduled:
            end = s.start + s.num_new_tokens
            slots = self.slots_for(s.block_ids, 0, end)
            slot_mapping.append(slots[s.start :])
            if s.num_new_tokens == 1:
                dec_rows.append(row)
                dec_slots.append(slots)
                dec_lens.append(end)
            else:
                self.prefills.append(_Prefill(row, s.num_new_tokens, slots.to(self.device)))
            row += s.num_new_tokens
        self.slot_mapping = torch.cat(slot_mapping).to(self.device)
        self.n_tokens = row
        self.dec_rows = torch.tensor(dec_rows, dtype=torch.long, device=self.device)
        if dec_rows:
            # decode requests are batched: pad their slot lists to the longest; pad slots point at
            # the null block 0 and are masked out
            width = max(dec_lens)
            padded = torch.zeros(len(dec_rows), width, dtype=torch.long)
            for i, sl in enumerate(dec_slots):
                padded[i, : len(sl)] = sl
            self.dec_slots = padded.to(self.device)
            self.dec_lens = torch.tensor(dec_lens, device=self.device)
            if self._paged is None:  # the PyTorch path's flat gather index and padding mask
                self.dec_slots_flat = self.dec_slots.view(-1)
                valid = torch.arange(width, device=self.device)[None, :] < self.dec_lens[:, None]  # (Bd, S)
                self.dec_pad = ~valid[None, :, None, :]  # (1, Bd, 1, S), computed once per step
        self._step = None
        if not self.prefills and self._paged is not None:  # every row one sequence's next token
            self._step = PagedStep(self.k, self.v, self.slot_mapping, self.dec_slots, self.dec_lens)

    def decode_step(self) -> PagedStep | None:
        """This step's K/V for the one-call kernels (`cpu_kernels.decode_layers`) when every row
        is one sequence's next token and the kernels read this cache, else None."""
        return self._step

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """q (1, H, N, hd), k/v (1, Hkv, N, hd) for the N packed tokens → (1, H, N, hd)."""
        kc, vc = self.k[layer], self.v[layer]
        kc.index_copy_(1, self.slot_mapping, k[0].to(kc.dtype))  # (Hkv, N, hd) into their slots
        vc.index_copy_(1, self.slot_mapping, v[0].to(vc.dtype))
        if not self.prefills:  # all rows decode, in order: no scatter into an output buffer
            return self._decode(q[0], kc, vc).transpose(0, 1)[None]
        out = torch.empty_like(q)
        for p in self.prefills:
            rows = slice(p.q_start, p.q_start + p.q_len)
            ks = kc.index_select(1, p.slots)[None].to(q.dtype)  # (1, Hkv, S, hd)
            vs = vc.index_select(1, p.slots)[None].to(q.dtype)
            out[:, :, rows] = few_query_attention(q[:, :, rows], ks, vs, p.slots.shape[0] - p.q_len)
        if len(self.dec_rows):
            out[0, :, self.dec_rows] = self._decode(q[0, :, self.dec_rows], kc, vc).transpose(0, 1)
        return out

    def _decode(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        """One query per request: q (H, Bd, hd) → (Bd, H, hd), over each request's own slots."""
        if self._paged is not None:
            return self._paged(q.transpose(0, 1).contiguous(), kc, vc, self.dec_slots, self.dec_lens)
        h, bd, d = q.shape
        hkv = kc.shape[0]
        # index_select of whole rows: a plain gather, far cheaper per call than advanced indexing
        ks = kc.index_select(1, self.dec_slots_flat).view(hkv, bd, -1, d).to(q.dtype)  # (Hkv, Bd, S, hd)
        vs = vc.index_select(1, self.dec_slots_flat).view(ks.shape).to(q.dtype)
        qg = q.view(hkv, h // hkv, bd, d).transpose(1, 2)  # (Hkv, Bd, rep, hd): heads grouped by KV head
        # matmuls rather than einsum: same contraction, less per-call overhead in decode
        scores = (qg @ ks.transpose(-1, -2)).float() * d**-0.5  # (Hkv, Bd, rep, S)
        scores = scores.masked_fill(self.dec_pad, float("-inf"))
        probs = torch.softmax(scores, dim=-1).type_as(q)
        out = probs @ vs  # (Hkv, Bd, rep, hd)
        return out.permute(1, 0, 2, 3).reshape(bd, h, d)  # (Bd, H, hd)


class ModelRunner:
    """Runs the model over a SchedulerOutput and returns logits of the rows that sample."""

    def __init__(self, model: Transformer, num_blocks: int, block_size: int, compile_decode: bool = False,
                 kv_dtype: torch.dtype | None = None):
        self.model = model
        self.cache = PagedKVCache(model, num_blocks, block_size, kv_dtype)
        self.device = model.tok_embeddings.weight.device
        # steps that only decode run a compiled forward (Python per-op overhead dominates a small
        # model's decode); steps with prefills stay eager, so prompt shapes never recompile it
        self._decode_forward = None
        if compile_decode:  # measured on the 2-core CPU: minutes to compile and no faster (BENCHMARKS.md)
            self._decode_forward = torch.compile(model.forward_flat, dynamic=True)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[torch.Tensor, list[str]]:
        """Forward every scheduled token; logits (M, V) for the M requests that produce a token."""
        tokens, positions, logits_rows, sampling_ids = [], [], [], []
        row = 0
        for s in sched.scheduled:
            tokens.extend(s.token_ids)
            positions.append(torch.arange(s.start, s.start + s.num_new_tokens))
            row += s.num_new_tokens
            if s.produces_token:
                logits_rows.append(row - 1)
                sampling_ids.append(s.request.request_id)
        self.cache.prepare(sched)
        tok = torch.tensor(tokens, dtype=torch.long, device=self.device)
        pos = torch.cat(positions).to(self.device)
        idx = torch.tensor(logits_rows, dtype=torch.long, device=self.device)
        forward = self.model.forward_flat
        if self._decode_forward is not None and not self.cache.prefills:
            forward = self._decode_forward
        logits = forward(tok, pos, self.cache, idx)
        return logits, sampling_ids
