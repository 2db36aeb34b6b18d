"""Scheduled batch → tensors → one forward pass → next tokens. The engine's only device code.

The KV cache is paged: per layer one tensor of `num_blocks * block_size` slots, (slots, Hkv, hd).
A request's block table maps its positions to slots; attention reads K/V through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from herd.engine.scheduler import SchedulerOutput
from herd.model import cpu_kernels
from herd.model.llama import Transformer, attention


@dataclass
class _Prefill:
    q_start: int  # first row of this request in the flattened batch
    q_len: int
    slots: torch.Tensor  # (S,) cache slots of positions 0..S-1 (S = start + q_len)


class PagedKVCache:
    """Paged K/V tensors plus the per-step view (which tokens go where, who attends to what)."""

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
        self._paged = None
        if (self.device.type == "cpu" and w.dtype is torch.float32 and self.dtype in (torch.float32, torch.bfloat16)
                and cpu_kernels.available()):
            self._paged = cpu_kernels.kernel("paged_decode")

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

    def decode_args(self, layer: int) -> tuple[torch.Tensor, ...] | None:
        """(K cache, V cache, slot mapping, slot lists, lengths) of a layer when every row of this
        step is one sequence's next token (what `cpu_kernels.decode_layer` runs), else None."""
        if self.prefills or self._paged is None:
            return None
        return self.k[layer], self.v[layer], self.slot_mapping, self.dec_slots, self.dec_lens

    def decode_stack_args(self) -> tuple | None:
        """decode_args for all layers at once: (K caches, V caches, slot mapping, slot lists,
        lengths), or None."""
        if self.prefills or self._paged is None:
            return None
        return self.k, self.v, self.slot_mapping, self.dec_slots, self.dec_lens

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
            out[:, :, rows] = attention(q[:, :, rows], ks, vs, p.slots.shape[0] - p.q_len)
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
