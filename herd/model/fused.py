"""Decode-friendly module swaps, applied from outside the model (as quantization is).

    fuse_model(model)   # in place: fused blocks, the stack of them as one module

A small model's decode step is bound less by its weights than by the number of operations it
runs: ~60 PyTorch ops per layer, each a Python call and a dispatch of a few microseconds. The
fused modules compute the same function with fewer, larger steps:

- `FusedAttention`: one projection for Q, K and V (their weights concatenated by rows), RoPE
  for Q and K in one pass each;
- `FusedFeedForward`: one projection for the gate and up weights, SiLU(gate) * up in one pass;
- `FastRMSNorm`: the norm in one pass;
- `FusedBlock`: the block of those, described for the kernels by its `LayerPlan`;
- `FusedStack` (in place of the model's `Blocks`): in a decode step whose cache is a
  `DecodeCache` (the engine's paged cache is), every block in one C++ call
  (`cpu_kernels.decode_layers`): the same kernels in the same order, so the same results.

Whether herd's kernels run is decided once, by `cpu_kernels.ops_for(device)`; per call they
take fp32 activations on the CPU without autograd, and anything else runs the PyTorch ops of
`llama.py`. Fusing and quantizing commute: `quantize_model(fuse_model(m), q)` and
`fuse_model(quantize_model(m, q))` give the same model (quantize.concat_rows keeps each
format's rows exactly), and the plans follow any projection swapped since they were built.
Parameter names change (wqkv, w13): save checkpoints from an unfused model.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from herd.model import cpu_kernels
from herd.model.cpu_kernels import LayerPlan
from herd.model.llama import (
    Attention,
    Blocks,
    Cache,
    FeedForward,
    RMSNorm,
    Transformer,
    TransformerBlock,
    apply_rope,
    attention,
)
from herd.model.quantize import DENSE_ROWS, concat_rows, kernel_args


@dataclass(frozen=True)
class PagedStep:
    """A decode step's paged K/V as the one-call kernels take them: every row of the step is
    one sequence's next token."""

    k: list[torch.Tensor]  # per layer (Hkv, slots, hd), fp32 or bf16
    v: list[torch.Tensor]
    slot_mapping: torch.Tensor  # (N,) int64: the cache slot of each row's new K/V
    slots: torch.Tensor  # (N, W) int64: each sequence's slots, padded
    lens: torch.Tensor  # (N,) int64: positions each sequence attends to


@runtime_checkable
class DecodeCache(Cache, Protocol):
    """The fast path's contract: a `Cache` that can also hand this step's paged K/V to the
    one-call kernels (`herd.engine.runner.PagedKVCache` does)."""

    def decode_step(self) -> PagedStep | None:
        """This step's K/V when every row decodes and the kernels can read the cache, else None."""
        ...


def use_kernels(x: torch.Tensor) -> bool:
    """Whether herd's CPU kernels can take this activation: fp32 on the CPU, no autograd."""
    return x.dtype is torch.float32 and x.is_cpu and not torch.is_grad_enabled()


def _op(name: str, like: torch.Tensor):
    """The kernel `name` for modules whose weights are `like`, or None (PyTorch ops)."""
    ops = cpu_kernels.ops_for(like.device)
    return getattr(ops, name) if ops is not None else None


def _decode_step(kernel, x: torch.Tensor, cache: Cache | None) -> PagedStep | None:
    """The cache's step tensors when x (1, N, dim) can run as one kernel call: N sequences'
    next tokens, few rows, fp32 on the CPU, a `DecodeCache` that offers them; else None."""
    if kernel is None or x.shape[0] != 1 or x.shape[1] > DENSE_ROWS or not use_kernels(x):
        return None
    decode_step = getattr(cache, "decode_step", None)  # DecodeCache's method (a cheap probe per step)
    return decode_step() if decode_step is not None else None


class FastRMSNorm(nn.Module):
    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self._kernel = _op("rms_norm", norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is not None and self.weight.dtype is torch.float32 and use_kernels(x):
            d = x.shape[-1]
            return self._kernel(x.reshape(-1, d).contiguous(), self.weight, self.eps).view(x.shape)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class FusedAttention(nn.Module):
    def __init__(self, attn: Attention):
        super().__init__()
        self.layer_id = attn.layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.wqkv = concat_rows(attn.wq, attn.wk, attn.wv)
        self.wo = attn.wo
        self._rope = _op("rope", self.wqkv.weight)

    def forward(self, x: torch.Tensor, cos, sin, start_pos: int, cache: Cache | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x).view(b * t, h + 2 * hkv, hd)  # (rows, heads of q | k | v, hd)
        if self._rope is not None and use_kernels(qkv) and cos.dim() == 2:
            # the kernels read the q / k heads in place and write contiguous (rows, heads, hd)
            q = self._rope(qkv[:, :h], cos, sin).view(b, t, h, hd).transpose(1, 2)
            k = self._rope(qkv[:, h : h + hkv], cos, sin).view(b, t, hkv, hd).transpose(1, 2)
        else:
            q = apply_rope(qkv[:, :h].view(b, t, h, hd).transpose(1, 2), cos, sin)
            k = apply_rope(qkv[:, h : h + hkv].view(b, t, hkv, hd).transpose(1, 2), cos, sin)
        v = qkv[:, h + hkv :].view(b, t, hkv, hd).transpose(1, 2)
        out = cache.attend(self.layer_id, q, k, v, start_pos) if cache is not None else attention(q, k, v, 0)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FusedFeedForward(nn.Module):
    def __init__(self, ff: FeedForward):
        super().__init__()
        self.hidden = ff.w1.out_features
        self.w13 = concat_rows(ff.w1, ff.w3)  # rows: gate, then up
        self.w2 = ff.w2
        self._silu_mul = _op("silu_mul", self.w13.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = self.w13(x)
        if self._silu_mul is not None and use_kernels(gu):
            return self.w2(self._silu_mul(gu.reshape(-1, 2 * self.hidden)).view(*x.shape[:-1], self.hidden))
        return self.w2(F.silu(gu[..., : self.hidden]) * gu[..., self.hidden :])


class FusedBlock(nn.Module):
    PROJECTIONS = ((0, "wqkv"), (0, "wo"), (1, "w13"), (1, "w2"))  # (part: attention / feed_forward, name)

    def __init__(self, block: TransformerBlock):
        super().__init__()
        self.attention = FusedAttention(block.attention)
        self.feed_forward = FusedFeedForward(block.feed_forward)
        self.attention_norm = FastRMSNorm(block.attention_norm)
        self.ffn_norm = FastRMSNorm(block.ffn_norm)
        self._kernel = _op("decode_layer", block.attention_norm.weight)
        self._layer_id = block.attention.layer_id
        # plain references (submodule attributes go through nn.Module.__getattr__, a cost per
        # call that adds up over 30 blocks a step): where the projections live, and the plan
        self._parts = (self.attention._modules, self.feed_forward._modules)
        self._native: tuple[tuple, Any] = ((), None)  # (the projections it was built from, plan)

    def projections(self) -> tuple[nn.Module, ...]:
        """wqkv, wo, w13, w2 as they are now (quantize_model may swap them, before or after fusing)."""
        return tuple(self._parts[part][name] for part, name in self.PROJECTIONS)

    def plan(self) -> LayerPlan | None:
        """This block as the one-call kernel takes it; None when a part has no kernel."""
        projections = [kernel_args(m) for m in self.projections()]
        n1, n2 = self.attention_norm, self.ffn_norm
        if any(p is None for p in projections) or n1.eps != n2.eps:
            return None
        if n1.weight.dtype is not torch.float32 or n2.weight.dtype is not torch.float32:
            return None
        a = self.attention
        return LayerPlan(n1.weight, n2.weight, n1.eps, a.n_heads, a.n_kv_heads, *projections)

    def native_plan(self) -> Any | None:
        """plan() as the C++ struct: built once, again only after a projection was swapped."""
        mods = self.projections()
        if mods != self._native[0]:
            plan = self.plan()
            self._native = (mods, plan.native() if plan is not None else None)
        return self._native[1]

    def forward(self, x, cos, sin, start_pos: int, cache: Cache | None) -> torch.Tensor:
        step = _decode_step(self._kernel, x, cache)
        plan = self.native_plan() if step is not None else None
        if plan is not None:
            i = self._layer_id
            out = self._kernel(x[0].contiguous(), plan, cos, sin, step.k[i], step.v[i], step.slot_mapping, step.slots, step.lens)
            return out.view(x.shape)
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class FusedStack(Blocks):
    """The blocks; in a decode step on a `DecodeCache`, all of them in one kernel call
    (`decode_layers`), without ~10 us of Python per block. Else block by block."""

    def __init__(self, blocks: Iterable[nn.Module]):
        super().__init__(blocks)
        first = next(iter(self), None)
        self._kernel = _op("decode_layers", first.attention_norm.weight) if isinstance(first, FusedBlock) else None
        # what the plans were built from: the blocks, and where each projection lives (a dict of
        # modules, a name) with the module it held
        self._blocks: list[nn.Module] = []
        self._where: tuple[list[dict], list[str]] = ([], [])
        self._projections: list[nn.Module] = []
        self._plans: Any = None

    def native_plans(self) -> Any | None:
        """Every block's plan as the C++ list (None when a block has none): built once, again
        after a block or a projection was swapped (two list comparisons a step)."""
        blocks = list(self._modules.values())
        if blocks != self._blocks or list(map(dict.__getitem__, *self._where)) != self._projections:
            fused = [b for b in blocks if type(b) is FusedBlock]
            self._blocks = blocks
            self._where = ([b._parts[part] for b in fused for part, _ in b.PROJECTIONS],
                           [name for _ in fused for _, name in FusedBlock.PROJECTIONS])
            self._projections = list(map(dict.__getitem__, *self._where))
            plans = [b.plan() if type(b) is FusedBlock else None for b in blocks]
            self._plans = None if None in plans else cpu_kernels.native_plans(plans)
        return self._plans

    def forward(self, h, cos, sin, start_pos: int, cache: Cache | None) -> torch.Tensor:
        step = _decode_step(self._kernel, h, cache)
        plans = self.native_plans() if step is not None else None
        if plans is None:
            return super().forward(h, cos, sin, start_pos, cache)
        out = self._kernel(h[0].contiguous(), plans, cos, sin, step.k, step.v, step.slot_mapping, step.slots, step.lens)
        return out.view(h.shape)


@torch.no_grad()
def fuse_model(model: Transformer) -> Transformer:
    """Swap the blocks for fused ones, their stack for FusedStack and the final norm, in place
    (a fused model is left as it is); before or after quantize_model."""
    if not isinstance(model.layers, FusedStack):
        model.layers = FusedStack(FusedBlock(b) if type(b) is TransformerBlock else b for b in model.layers)
    if type(model.norm) is RMSNorm:
        model.norm = FastRMSNorm(model.norm)
    return model
