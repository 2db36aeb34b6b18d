"""GGUF (llama.cpp) checkpoints of architecture `llama`: metadata to ModelArgs, tensors dequantized.

GGUF's attn_q/attn_k rows are already in Meta's interleaved-RoPE order (llama.cpp's
converter permutes HF weights the way Meta's checkpoints are laid out), so they load as-is.
GGUF lists a tensor's dims fastest-first (ne0 = columns), the reverse of torch's order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.config import ModelArgs, RopeScaling
from herd.errors import HerdError
from herd.model.llama import rope_frequencies
from herd.model.weights import (
    TensorIter,
    _complete,
    check_shape,
    expected_shapes,
    name_map,
)

_REQUIRED = object()


def _reader(path: Path) -> Any:
    import gguf

    if not path.is_file():
        raise HerdError(f"{path}: file not found")
    try:
        return gguf.GGUFReader(path)  # np.memmap: tensor bytes stay on disk until dequantized
    except Exception as e:  # a truncated file surfaces as a numpy reshape/index error
        raise HerdError(f"{path}: not a readable GGUF file, truncated or corrupt ({type(e).__name__}: {e})") from None


def _value(reader: Any, path: Path, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value (str, number, or list for arrays)."""
    from gguf import GGUFValueType

    f = reader.fields.get(key)
    if f is None:
        if default is _REQUIRED:
            raise HerdError(f"{path}: GGUF metadata has no {key!r}")
        return default

    def one(part: np.ndarray, vtype: Any) -> Any:
        return bytes(part).decode("utf-8") if vtype == GGUFValueType.STRING else part[0].item()

    if f.types[0] == GGUFValueType.ARRAY:
        return [one(f.parts[i], f.types[-1]) for i in f.data]
    return one(f.parts[f.data[0]], f.types[0])


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


def gguf_args(reader: Any, path: Path) -> ModelArgs:
    """ModelArgs from a GGUF reader's llama.* metadata and tensor list."""
    arch = _value(reader, path, "general.architecture", None)
    if arch != "llama":
        raise HerdError(f"{path}: unsupported GGUF architecture {arch!r} (only 'llama' is supported)")
    tensors = {t.name: t for t in reader.tensors}

    def get(key: str, default: Any = _REQUIRED) -> Any:
        return _value(reader, path, f"llama.{key}", default)

    dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    n_kv = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):
        raise HerdError(f"{path}: per-layer head_count_kv is not a Llama 3 model")
    hd = int(get("attention.key_length", 0) or get("rope.dimension_count", 0) or dim // n_heads)
    theta = float(get("rope.freq_base", 10000.0))
    emb = tensors.get("token_embd.weight")
    if emb is not None:
        vocab = int(emb.shape[-1])  # GGUF dims are (ne0=dim, ne1=vocab)
    else:  # reported as a missing tensor later; size the model from the metadata meanwhile
        vocab = int(get("vocab_size", 0) or len(_value(reader, path, "tokenizer.ggml.tokens", [])))
    kind = get("rope.scaling.type", None)
    if kind not in (None, "none"):
        raise HerdError(f"{path}: unsupported RoPE scaling type {kind!r} in GGUF metadata")
    scaling = None
    if "rope_freqs.weight" in tensors:
        scaling = _scaling_from_factors(_dequantize(tensors["rope_freqs.weight"], path), hd, theta, path)
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


def _dequantize(t: Any, path: Path) -> np.ndarray:
    """One tensor as fp32 numpy in torch dim order, in its own memory."""
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    out = np.empty(shape, dtype=np.float32)
    data = t.data.reshape(shape[0], -1) if len(shape) > 1 else t.data.reshape(1, -1)
    flat = out.reshape(data.shape[0], -1)
    # a few MiB of rows at a time: gguf-py's temporaries for a whole embedding would be 2-3x its size
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    try:
        for i in range(0, data.shape[0], step):
            flat[i : i + step] = dequantize(data[i : i + step], t.tensor_type)
    except NotImplementedError:
        raise HerdError(f"{path}: tensor {t.name!r} has unsupported GGUF type {t.tensor_type.name}") from None
    return out


def _check_types(reader: Any, path: Path) -> None:
    """Reject unsupported quant types before anything is allocated."""
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    ok: dict[Any, bool] = {}
    for t in reader.tensors:
        qt = t.tensor_type
        if qt not in ok:
            _, type_size = GGML_QUANT_SIZES[qt]
            try:  # dequantize one zero block: the cheap, public way to ask gguf-py
                dequantize(np.zeros((1, type_size), dtype=np.uint8), qt)
                ok[qt] = True
            except NotImplementedError:
                ok[qt] = False
        if not ok[qt]:
            raise HerdError(f"{path}: tensor {t.name!r} has unsupported GGUF type {qt.name}")


def _iter_gguf(path: Path, reader: Any, args: ModelArgs) -> TensorIter:
    names, shapes = name_map(args.n_layers, "gguf"), expected_shapes(args)
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # folded into args.rope_scaling
            continue
        ours = names.get(t.name)
        if ours is None:
            raise HerdError(f"{path}: unknown tensor {t.name!r} (not a Llama weight)")
        check_shape(path, t.name, ours, tuple(int(d) for d in reversed(t.shape.tolist())), shapes)
        yield ours, torch.from_numpy(_dequantize(t, path))


def open_gguf(path: str | Path) -> tuple[ModelArgs, TensorIter]:
    """ModelArgs and a lazy iterator of (our_name, fp32 tensor), one tensor dequantized at a time."""
    path = Path(path)
    reader = _reader(path)
    args = gguf_args(reader, path)
    _check_types(reader, path)
    return args, _complete(path, args, _iter_gguf(path, reader, args))

