"""GGUF (llama.cpp) checkpoints of architecture `llama`: metadata to ModelArgs, tensors dequantized.

The header comes from herd's own reader (herd/gguf_meta.py, shared with the tokenizer); tensor
bytes are memory-mapped and dequantized one tensor at a time. F32/F16/BF16/Q8_0/Q4_0/Q4_1 are
dequantized here with torch (bit-identical to gguf-py's numpy code, which transformers uses);
other types (Q5_x, K-quants, ...) go through gguf-py's `dequantize`.

GGUF's attn_q/attn_k rows are already in Meta's interleaved-RoPE order (llama.cpp's
converter permutes HF weights the way Meta's checkpoints are laid out), so they load as-is.
GGUF lists a tensor's dims fastest-first (ne0 = columns), the reverse of torch's order.
"""
from __future__ import annotations

import mmap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.config import ModelArgs, RopeScaling
from herd.errors import HerdError
from herd.gguf_meta import GGUFHeader, TensorInfo, read_header
from herd.model.llama import rope_frequencies
from herd.model.tensors import (
    TensorIter,
    check_shape,
    complete,
    expected_shapes,
    name_map,
    threads_for,
)

_REQUIRED = object()
_CHUNK_BLOCKS = 1 << 16  # blocks dequantized per step (its scratch: 2 MiB)


def _value(header: GGUFHeader, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value (str, number, or tuple for arrays)."""
    if key not in header.metadata:
        if default is _REQUIRED:
            raise HerdError(f"{header.path}: GGUF metadata has no {key!r}")
        return default
    return header.metadata[key]


def _scaling_from_factors(factors: np.ndarray, hd: int, theta: float, path: Path) -> RopeScaling | None:
    """Recover Llama 3 RoPE scaling from llama.cpp's rope_freqs tensor (per-frequency divisors)."""
    factors = factors.astype(np.float64).reshape(-1)
    if factors.shape[0] != hd // 2:
        raise HerdError(f"{path}: rope_freqs has {factors.shape[0]} entries, expected head_dim/2 = {hd // 2}")
    factor = float(factors.max())
    if np.allclose(factors, 1.0, rtol=1e-6):
        return None
    candidates = [RopeScaling(factor=factor)]
    base = rope_frequencies(hd, theta, None).double().numpy()
    blended = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    if blended.sum() >= 2:
        # smooth = (L/wavelen - lf) / (hf - lf) is linear in 1/wavelen; fit it and read off
        # the band edges 1/low_wavelen and 1/high_wavelen (taking low_freq_factor = 1)
        inv_wl = base[blended] / (2 * np.pi)
        smooth = (1 / factors[blended] - 1 / factor) / (1 - 1 / factor)
        a, b = np.polyfit(inv_wl, smooth, 1)
        inv_low, inv_high = -b / a, 1 / a - b / a
        if inv_low > 0 and inv_high > inv_low:
            orig = round(1 / inv_low)
            # round away fp noise (configs use round numbers); the check below still guards
            candidates.append(RopeScaling(factor, 1.0, float(f"{orig * inv_high:.6g}"), orig))
    for cand in candidates:
        got = base / rope_frequencies(hd, theta, cand).double().numpy()
        if np.allclose(got, factors, rtol=1e-4):
            return cand
    raise HerdError(f"{path}: rope_freqs tensor is not a Llama 3 RoPE scaling that herd can represent")


def gguf_args(header: GGUFHeader) -> ModelArgs:
    """ModelArgs from a GGUF header's llama.* metadata and tensor table."""
    path = header.path
    arch = header.get("general.architecture")
    if arch != "llama":
        raise HerdError(f"{path}: unsupported GGUF architecture {arch!r} (only 'llama' is supported)")
    tensors = {t.name: t for t in header.tensors}

    def get(key: str, default: Any = _REQUIRED) -> Any:
        return _value(header, f"llama.{key}", default)

    dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    n_kv = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv, tuple):
        raise HerdError(f"{path}: per-layer head_count_kv is not a Llama 3 model")
    hd = int(get("attention.key_length", 0) or get("rope.dimension_count", 0) or dim // n_heads)
    theta = float(get("rope.freq_base", 10000.0))
    emb = tensors.get("token_embd.weight")
    if emb is not None:
        vocab = int(emb.shape[0])  # torch order (vocab, dim)
    else:  # reported as a missing tensor later; size the model from the metadata meanwhile
        vocab = int(get("vocab_size", 0) or len(header.get("tokenizer.ggml.tokens", ())))
    kind = get("rope.scaling.type", None)
    if kind not in (None, "none"):
        raise HerdError(f"{path}: unsupported RoPE scaling type {kind!r} in GGUF metadata")
    scaling = None
    if "rope_freqs.weight" in tensors:
        factors = _dequantize(tensors["rope_freqs.weight"], _open(path), path).numpy()
        scaling = _scaling_from_factors(factors, hd, theta, path)
    try:
        return ModelArgs(
            dim=dim,
            n_layers=int(get("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(n_kv),
            vocab_size=vocab,
            hidden_dim=int(get("feed_forward_length")),
            head_dim=hd if hd != dim // n_heads else None,
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_embeddings="output.weight" not in tensors,
            max_seq_len=int(get("context_length", 131072)),
        )
    except HerdError as e:
        raise HerdError(f"{path}: {e}") from None


# ---- dequantization -------------------------------------------------------------------------


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte `start` of every block, as fp32 (n, 1)."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, nib: torch.Tensor) -> torch.Tensor:
    """(n, 16) bytes -> nib (n, 32): low nibbles are elements 0..15, high nibbles 16..31."""
    torch.bitwise_and(qs, 15, out=nib[:, :16])
    torch.bitwise_right_shift(qs, 4, out=nib[:, 16:])
    return nib


# Each writes the fp32 values of (n, block bytes) straight into `out` (n, 32): the integers are
# converted in place and scaled there, so the only fresh memory a tensor touches is its own; the
# products and sums round as gguf-py's numpy (d * q, then + m), so the results are bit-identical.
def _q8_0(blocks: torch.Tensor, out: torch.Tensor, nib: torch.Tensor) -> None:
    out.copy_(blocks[:, 2:].view(torch.int8))
    out.mul_(_half(blocks, 0))


def _q4_0(blocks: torch.Tensor, out: torch.Tensor, nib: torch.Tensor) -> None:
    out.copy_(_nibbles(blocks[:, 2:], nib))
    out.sub_(8.0)
    out.mul_(_half(blocks, 0))


def _q4_1(blocks: torch.Tensor, out: torch.Tensor, nib: torch.Tensor) -> None:
    out.copy_(_nibbles(blocks[:, 4:], nib))
    out.mul_(_half(blocks, 0))
    out.add_(_half(blocks, 2))


# ggml type id -> (bytes per block, elements per block, dequantizer into an (n_blocks, block) fp32 view)
_BLOCK_KERNELS: dict[int, tuple[int, int, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]]] = {
    8: (34, 32, _q8_0), 2: (18, 32, _q4_0), 3: (20, 32, _q4_1),
}
_PLAIN = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}


def _open(path: Path) -> mmap.mmap:
    """The file mapped copy-on-write: writable for torch.frombuffer, never written back."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _raw(t: TensorInfo, buf: mmap.mmap) -> torch.Tensor:
    return torch.frombuffer(buf, dtype=torch.uint8, count=t.nbytes, offset=t.offset)


def _dequantize(t: TensorInfo, buf: mmap.mmap, path: Path) -> torch.Tensor:
    """One tensor as fp32 in torch dim order, in its own memory."""
    with threads_for(t.numel):
        return _dequantize_with(t, buf, path)


def _dequantize_with(t: TensorInfo, buf: mmap.mmap, path: Path) -> torch.Tensor:
    raw = _raw(t, buf)
    if t.type_id in _PLAIN:
        return raw.view(_PLAIN[t.type_id]).to(torch.float32, copy=True).view(t.shape)
    out = torch.empty(t.shape, dtype=torch.float32)
    kernel = _BLOCK_KERNELS.get(t.type_id)
    if kernel is not None:
        size, block, fn = kernel
        blocks, flat = raw.view(-1, size), out.view(-1, block)
        nib = torch.empty(min(blocks.shape[0], _CHUNK_BLOCKS), block, dtype=torch.uint8)  # reused scratch
        for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            part = blocks[i:i + _CHUNK_BLOCKS]
            fn(part, flat[i:i + _CHUNK_BLOCKS], nib[:part.shape[0]])
        return out
    _dequantize_gguf_py(t, raw.numpy(), out.numpy(), path)
    return out


def _dequantize_gguf_py(t: TensorInfo, raw: np.ndarray, out: np.ndarray, path: Path) -> None:
    """The other types through gguf-py (numpy), a few MiB of rows at a time."""
    from gguf.quants import dequantize

    rows = t.shape[0] if len(t.shape) > 1 else 1
    data, flat = raw.reshape(rows, -1), out.reshape(rows, -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    try:
        for i in range(0, rows, step):
            flat[i:i + step] = dequantize(data[i:i + step], t.type_id)
    except NotImplementedError:
        raise HerdError(f"{path}: tensor {t.name!r} has unsupported GGUF type {t.type_name}") from None


def _supported(type_id: int) -> bool:
    if type_id in _PLAIN or type_id in _BLOCK_KERNELS:
        return True
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    try:  # dequantize one zero block: the cheap, public way to ask gguf-py
        qt = GGMLQuantizationType(type_id)
        dequantize(np.zeros((1, GGML_QUANT_SIZES[qt][1]), dtype=np.uint8), qt)
        return True
    except (NotImplementedError, ValueError, KeyError):
        return False


def _check_types(header: GGUFHeader) -> None:
    """Reject unsupported quant types before anything is allocated."""
    ok: dict[int, bool] = {}
    for t in header.tensors:
        if t.type_id not in ok:
            ok[t.type_id] = _supported(t.type_id)
        if not ok[t.type_id]:
            raise HerdError(f"{header.path}: tensor {t.name!r} has unsupported GGUF type {t.type_name}")


def _iter_gguf(header: GGUFHeader, args: ModelArgs) -> TensorIter:
    path = header.path
    names, shapes = name_map(args.n_layers, "gguf"), expected_shapes(args)
    buf = _open(path)
    for t in header.tensors:
        if t.name == "rope_freqs.weight":  # folded into args.rope_scaling
            continue
        ours = names.get(t.name)
        if ours is None:
            raise HerdError(f"{path}: unknown tensor {t.name!r} (not a Llama weight)")
        check_shape(path, t.name, ours, t.shape, shapes)
        yield ours, _dequantize(t, buf, path)


def gguf_model_args(path: str | Path) -> ModelArgs:
    """ModelArgs of a .gguf file from its header alone (no tensor is read but rope_freqs)."""
    return gguf_args(read_header(path))


def open_gguf(path: str | Path) -> tuple[ModelArgs, TensorIter]:
    """ModelArgs and a lazy iterator of (our_name, fp32 tensor), one tensor dequantized at a time."""
    header = read_header(path)
    args = gguf_args(header)
    _check_types(header)
    return args, complete(header.path, args, _iter_gguf(header, args))
