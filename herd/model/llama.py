"""The Llama 3 decoder-only transformer, torch only.

Parameter names follow Meta's checkpoints (tok_embeddings, layers.N.attention.wq, ...);
Q/K rows are in Meta's interleaved RoPE order, so `weights.py` un-permutes HF checkpoints.
Read bottom-up: RMSNorm, RoPE, the KV cache, Attention, FeedForward, TransformerBlock, Blocks,
Transformer. Faster paths (herd/model/fused.py, quantize.py) are module swaps applied from outside.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from herd.config import ModelArgs, RopeScaling


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 whatever the activation dtype, as the reference does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


# ---- rotary embeddings ---------------------------------------------------------------


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with Llama 3 low/high-frequency scaling if given."""
    # always on the CPU: models are built under torch.device("meta") when loading
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
    if scaling is None:
        return freqs
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / freqs
    # long wavelengths are slowed down by `factor`; short ones kept; the band between blends
    scaled = torch.where(wavelen > low_wavelen, freqs / scaling.factor, freqs)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(mid, blended, scaled)


def rope_cos_sin(freqs: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (..., head_dim/2) in fp32 for integer positions (...)."""
    angles = positions.to(torch.float32)[..., None] * freqs  # (..., hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x (B, H, T, hd); cos/sin (B or 1, 1, T, hd/2)."""
    # as complex numbers x0 + i*x1 times cos + i*sin: the same products in fewer (decode-bound) ops
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, hd/2)
    return torch.view_as_real(xc * torch.complex(cos, sin)).flatten(-2).type_as(x)


# ---- KV cache -------------------------------------------------------------------------


@runtime_checkable
class Cache(Protocol):
    """What attention asks of a KV cache: KVCache below, or the engine's paged cache."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """Store k/v (B, Hkv, T, hd) of positions start.., then attend q (B, H, T, hd) over the cache."""
        ...


class KVCache(nn.Module):
    """A contiguous per-layer K/V buffer (B, n_kv_heads, max_seq_len, head_dim): a `Cache`."""

    def __init__(self, args: ModelArgs, batch: int, max_seq_len: int, dtype: torch.dtype, device=None):
        super().__init__()
        shape = (args.n_layers, batch, args.kv_heads, max_seq_len, args.hd)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_seq_len = max_seq_len

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """Store k/v (B, Hkv, T, hd) at positions [start, start+T), then attend q over all of it."""
        end = start + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache holds {self.max_seq_len} positions; asked for {end}")
        b = k.shape[0]
        self.k[layer, :b, :, start:end] = k
        self.v[layer, :b, :, start:end] = v
        return attention(q, self.k[layer, :b, :, :end], self.v[layer, :b, :, :end], start)


# ---- attention ------------------------------------------------------------------------


def causal_mask(t: int, s: int, start_pos: int, device) -> torch.Tensor | None:
    """(T, S) bool mask: query i (at position start_pos + i) sees keys j <= start_pos + i."""
    if t == 1:
        return None  # one new token sees every cached one
    qpos = torch.arange(start_pos, start_pos + t, device=device)
    return torch.arange(s, device=device)[None, :] <= qpos[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
    """Causal GQA attention: q (B, H, T, hd) over k/v (B, Hkv, S, hd) with S = start_pos + T."""
    h, t = q.shape[1], q.shape[2]
    hkv, s = k.shape[1], k.shape[2]
    rep = h // hkv
    if rep > 1:  # repeat-interleave KV heads for their query groups
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if s == t:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t, s, start_pos, q.device))


# ---- blocks ---------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.hd
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int,
        cache: Cache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            out = cache.attend(self.layer_id, q, k, v, start_pos)  # (B, H, T, hd)
        else:
            out = attention(q, k, v, 0)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, H*hd) -> (B, T, dim)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.ffn_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, start_pos: int, cache: Cache | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Blocks(nn.ModuleList):
    """The blocks, run in order: a module of its own, so the whole stack can be swapped."""

    def forward(self, h, cos, sin, start_pos: int, cache: Cache | None) -> torch.Tensor:
        for block in self:
            h = block(h, cos, sin, start_pos, cache)
        return h


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = Blocks(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # not a buffer: `.to(bfloat16)` must never round the frequencies
        self._rope_freqs = {"cpu": rope_frequencies(args.hd, args.rope_theta, args.rope_scaling)}

    def rope_freqs(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._rope_freqs:
            self._rope_freqs[key] = self._rope_freqs["cpu"].to(device)
        return self._rope_freqs[key]

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: Cache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) in fp32 for tokens (B, T) at positions start_pos.. (B, 1, V) if last_only."""
        t = tokens.shape[1]
        positions = torch.arange(start_pos, start_pos + t, device=tokens.device)
        h = self.hidden(tokens, positions, start_pos, cache)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()

    def forward_flat(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache, logits_idx: torch.Tensor
    ) -> torch.Tensor:
        """Logits (M, vocab) for a flattened batch: tokens/positions (N,) of many sequences packed
        together; the (paged) `cache` knows which sequence each token belongs to; logits_idx (M,)
        picks the rows to project (one per sequence that samples)."""
        h = self.hidden(tokens[None], positions, 0, cache)[0]  # (N, dim)
        return self.output(self.norm(h[logits_idx])).float()

    def hidden(
        self, tokens: torch.Tensor, positions: torch.Tensor, start_pos: int, cache: Cache | None
    ) -> torch.Tensor:
        """The last block's output (B, T, dim) before the final norm."""
        cos, sin = rope_cos_sin(self.rope_freqs(tokens.device), positions)  # (T, hd/2)
        return self.layers(self.tok_embeddings(tokens), cos, sin, start_pos, cache)

    def new_cache(self, batch: int, max_seq_len: int) -> KVCache:
        """A KV cache on the model's device and dtype."""
        w = self.tok_embeddings.weight
        return KVCache(self.args, batch, max_seq_len, w.dtype, w.device)
