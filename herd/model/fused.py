"""Decode-friendly module swaps, applied from outside the model (as quantization is).

    fuse_model(model)   # in place: QKV and gate/up projections concatenated, fused element-wise ops

A small model's decode step is bound less by its weights than by the number of operations it
runs: ~60 PyTorch ops per layer, each a Python call and a dispatch of a few microseconds. The
fused modules compute the same function with fewer, larger steps:

- `FusedAttention`: one projection for Q, K and V (their weights concatenated by rows), RoPE
  for Q and K in one pass each;
- `FusedFeedForward`: one projection for the gate and up weights, SiLU(gate) * up in one pass;
- `FastRMSNorm`: the norm in one pass;
- `FusedBlock`: the block of those; in a decode step (one new token per sequence, a paged
  cache that offers `decode_args`, every projection on a herd kernel) the whole block runs as
  one C++ call (`cpu_kernels.decode_layer`), the same kernels in the same order.

On the CPU, with fp32 activations and no autograd, the fused element-wise ops run herd's
kernels (`cpu_kernels`); anywhere else they fall back to the PyTorch ops of `llama.py`. The
concatenated projections stay `nn.Linear`, so `quantize_model` can swap them afterwards.
Parameter names change (wqkv, w13): save checkpoints from an unfused model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from herd.model import cpu_kernels
from herd.model.llama import (
    Attention,
    FeedForward,
    KVCache,
    RMSNorm,
    Transformer,
    TransformerBlock,
    apply_rope,
    attention,
)
from herd.model.quantize import DENSE_ROWS, kernel_args


def use_kernels(x: torch.Tensor) -> bool:
    """Whether herd's CPU kernels can take this activation: fp32 on the CPU, no autograd."""
    return x.dtype is torch.float32 and x.is_cpu and not torch.is_grad_enabled() and cpu_kernels.available()


def _concat_linear(*linears: nn.Linear) -> nn.Linear:
    w = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    out = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    out.weight = nn.Parameter(w, requires_grad=False)
    return out


class FastRMSNorm(nn.Module):
    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self._kernel = cpu_kernels.kernel("rms_norm") if cpu_kernels.available() else None

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
        self.wqkv = _concat_linear(attn.wq, attn.wk, attn.wv)
        self.wo = attn.wo
        self._rope = cpu_kernels.kernel("rope") if cpu_kernels.available() else None

    def forward(self, x: torch.Tensor, cos, sin, start_pos: int, cache: KVCache | None) -> torch.Tensor:
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
        self.w13 = _concat_linear(ff.w1, ff.w3)  # rows: gate, then up
        self.w2 = ff.w2
        self._silu_mul = cpu_kernels.kernel("silu_mul") if cpu_kernels.available() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = self.w13(x)
        if self._silu_mul is not None and use_kernels(gu):
            return self.w2(self._silu_mul(gu.reshape(-1, 2 * self.hidden)).view(*x.shape[:-1], self.hidden))
        return self.w2(F.silu(gu[..., : self.hidden]) * gu[..., self.hidden :])


class FusedBlock(nn.Module):
    def __init__(self, block: TransformerBlock):
        super().__init__()
        self.attention = FusedAttention(block.attention)
        self.feed_forward = FusedFeedForward(block.feed_forward)
        self.attention_norm = FastRMSNorm(block.attention_norm)
        self.ffn_norm = FastRMSNorm(block.ffn_norm)
        self._layer = cpu_kernels.kernel("decode_layer") if cpu_kernels.available() else None
        self._plan: tuple | None = None
        # plain attributes (submodule attributes go through nn.Module.__getattr__, a cost per call
        # that adds up over 30 blocks a step)
        a = self.attention
        self._layer_id, self._heads, self._kv_heads = a.layer_id, a.n_heads, a.n_kv_heads
        self._eps = block.attention_norm.eps

    def _projections(self) -> tuple[nn.Module, ...]:
        return self.attention.wqkv, self.attention.wo, self.feed_forward.w13, self.feed_forward.w2

    def _decode_plan(self) -> tuple | None:
        """The tensors and formats `decode_layer` takes, built once (and again if a projection
        was swapped since, e.g. by quantize_model); None when a part has no kernel."""
        mods = self._projections()
        if self._plan is not None and all(a is b for a, b in zip(self._plan[0], mods)):
            return self._plan[1]
        self._plan = (mods, None)
        norms = (self.attention_norm.weight, self.ffn_norm.weight)
        args = [kernel_args(m) for m in mods]
        if any(a is None for a in args) or any(w.dtype is not torch.float32 for w in norms):
            return None
        if self.attention_norm.eps != self.ffn_norm.eps:
            return None
        tensors = [*norms] + [t for _, a, b in args for t in (a, b)]
        self._plan = (mods, (tensors, [f for f, _, _ in args]))
        return self._plan[1]

    def one_call(self, x: torch.Tensor, cache) -> tuple | None:
        """The plan and cache arguments when this step can run the block in one kernel call:
        every row decodes (one token per sequence), few rows, fp32 on the CPU, kernels for
        every projection; else None."""
        if self._layer is None or cache is None or x.shape[0] != 1 or x.shape[1] > DENSE_ROWS:
            return None
        decode_args = getattr(cache, "decode_args", None)
        args = decode_args(self._layer_id) if decode_args is not None else None
        if args is None or not use_kernels(x):  # (a cache with args holds fp32 or bf16 K/V)
            return None
        plan = self._decode_plan()
        return None if plan is None else (plan, args)

    def forward(self, x, cos, sin, start_pos: int, cache: KVCache | None) -> torch.Tensor:
        call = self.one_call(x, cache)
        if call is not None:
            (tensors, formats), args = call
            out = self._layer(x[0].contiguous(), tensors, formats, self._eps, self._heads, self._kv_heads, cos, sin, *args)
            return out.view(x.shape)
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class DecodeStack:
    """All of a fused model's blocks for a decode step in one kernel call (`decode_layers`):
    the same kernels in the same order as block by block, so the results are identical, without
    ~10 us of Python per block and step. The blocks' plans are read once; `reset()` after
    swapping projections (quantize_model does)."""

    def __init__(self, model: Transformer):
        self.blocks = list(model.layers)
        self._kernel = cpu_kernels.kernel("decode_layers")
        self._flat: tuple | None | bool = None  # (tensors, formats, block 0); False: no stack

    def reset(self) -> None:
        self._flat = None

    def _build(self) -> tuple | bool:
        plans = [b._decode_plan() if isinstance(b, FusedBlock) and b._layer is not None else None for b in self.blocks]
        if not plans or any(p is None for p in plans):
            return False
        return [t for p in plans for t in p[0]], [f for p in plans for f in p[1]], self.blocks[0]

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor | None:
        if h.shape[0] != 1 or h.shape[1] > DENSE_ROWS or not use_kernels(h):
            return None
        stack_args = getattr(cache, "decode_stack_args", None)
        args = stack_args() if stack_args is not None else None
        if args is None:  # (a cache with args holds fp32 or bf16 K/V)
            return None
        if self._flat is None:
            self._flat = self._build()
        if self._flat is False:
            return None
        tensors, formats, b0 = self._flat
        out = self._kernel(h[0].contiguous(), tensors, formats, b0._eps, b0._heads, b0._kv_heads, cos, sin, *args)
        return out.view(h.shape)


@torch.no_grad()
def fuse_model(model: Transformer) -> Transformer:
    """Swap every block (and the final norm) for the fused modules, in place."""
    for i, layer in enumerate(model.layers):
        if type(layer) is TransformerBlock:
            model.layers[i] = FusedBlock(layer)
    if isinstance(model.norm, RMSNorm):
        model.norm = FastRMSNorm(model.norm)
    if cpu_kernels.available():
        model.decode_stack = DecodeStack(model)
    return model
