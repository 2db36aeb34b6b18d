"""Checkpoint I/O: Meta, Hugging Face and GGUF tensors to our (Meta) names, and back.

Every reader yields `(our_name, tensor)` pairs one tensor at a time from memory-mapped
files, so `load_model` can build the Transformer on the `meta` device and fill it with
about one copy of the weights in memory. Q/K rows are kept in Meta's interleaved-RoPE
order; HF checkpoints store them in rotate_half order and are permuted on the way in/out.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from herd.config import ModelArgs, detect_layout, read_json
from herd.errors import HerdError
from herd.model.gguf import gguf_model_args, open_gguf
from herd.model.llama import Transformer
from herd.model.tensors import (
    NAME_TABLE,
    TensorIter,
    check_shape,
    complete,
    expected_shapes,
    name_map,
    no_init,
    split_dim,
    threads_for,
)

Layout = Literal["hf", "meta", "gguf"]
# NAME_TABLE, name_map, split_dim, expected_shapes, check_shape live in tensors.py (shared with gguf.py)


def empty_model(args: ModelArgs) -> Transformer:
    """The Transformer for `args` on the `meta` device: no memory taken and no random init run."""
    with no_init(), torch.device("meta"):
        return Transformer(args)


# ---- the HF rotate_half <-> Meta interleaved Q/K row order ---------------------------------


def hf_to_meta_qk(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder Q or K rows from HF's half-split RoPE layout to Meta's adjacent pairs."""
    dim = w.shape[-1]
    # per head HF has [x0..x_{h/2-1}, y0..y_{h/2-1}]; Meta wants [x0, y0, x1, y1, ...]
    return w.reshape(n_heads, 2, head_dim // 2, dim).transpose(1, 2).reshape(n_heads * head_dim, dim)


def meta_to_hf_qk(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Inverse of hf_to_meta_qk (what HF's converter applies to Meta's wq/wk)."""
    dim = w.shape[-1]
    return w.reshape(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(n_heads * head_dim, dim)


def _qk_heads(name: str, args: ModelArgs) -> int | None:
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.kv_heads
    return None


# ---- layout detection (herd.config.detect_layout: 'gguf' / 'hf' / 'meta') ----------------------


def _parse_args(file: Path, parse: Callable[[dict], ModelArgs]) -> ModelArgs:
    try:
        return parse(read_json(file))
    except KeyError as e:
        raise HerdError(f"{file}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise HerdError(f"{file}: bad value ({e})") from None
    except HerdError as e:
        if str(file) in str(e):  # read_json already named the file
            raise
        raise HerdError(f"{file}: {e}") from None


# ---- Hugging Face ----------------------------------------------------------------------


def _hf_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HerdError(f"{index}: no 'weight_map' object")
        files = [path / f for f in sorted(set(weight_map.values()))]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise HerdError(f"{path}: no model.safetensors or model.safetensors.index.json")
    for f in files:
        if not f.is_file():
            raise HerdError(f"{f}: file not found (listed in {index.name})")
    return files


def _iter_hf(path: Path, args: ModelArgs) -> TensorIter:
    from safetensors import safe_open

    names, shapes = name_map(args.n_layers, "hf"), expected_shapes(args)
    for file in _hf_files(path):
        try:
            handle = safe_open(str(file), framework="pt")  # mmap; get_tensor copies one tensor
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise HerdError(f"{file}: not a valid safetensors file ({e})") from None
        with handle as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if key.endswith("rotary_emb.inv_freq"):  # a buffer some old exports saved
                    continue
                ours = names.get(key)
                if ours is None:
                    raise HerdError(f"{file}: unknown tensor {key!r} (not a Llama weight)")
                if ours == "output.weight" and args.tie_embeddings:
                    continue
                check_shape(file, key, ours, tuple(f.get_slice(key).get_shape()), shapes)
                try:
                    t = f.get_tensor(key)
                except Exception as e:
                    raise HerdError(f"{file}: cannot read tensor {key!r} ({e})") from None
                heads = _qk_heads(ours, args)
                yield ours, (t if heads is None else hf_to_meta_qk(t, heads, args.hd))


def open_hf(path: str | Path) -> tuple[ModelArgs, TensorIter]:
    """ModelArgs from config.json and a lazy iterator over (our_name, tensor)."""
    path = Path(path)
    args = _parse_args(path / "config.json", ModelArgs.from_hf_config)
    return args, complete(path, args, _iter_hf(path, args))


def load_hf(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A Hugging Face LlamaForCausalLM directory as ModelArgs and a state dict in our names."""
    args, it = open_hf(path)
    return args, dict(it)


# ---- Meta ------------------------------------------------------------------------------


def _load_pth(file: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        raise HerdError(f"{file}: cannot read this checkpoint shard ({e})") from None


def _iter_meta(path: Path, args: ModelArgs, files: list[Path]) -> TensorIter:
    shards = [_load_pth(f) for f in files]  # mmap'd: opening all of them costs no memory
    shapes = expected_shapes(args)
    for name in shards[0]:
        if name == "rope.freqs":  # a buffer Llama 2 checkpoints carry; we recompute it
            continue
        try:
            dim = split_dim(name)
        except KeyError:
            raise HerdError(f"{files[0]}: unknown tensor {name!r} (not a Llama weight)") from None
        if name == "output.weight" and args.tie_embeddings:
            continue
        parts = []
        for f, shard in zip(files, shards):
            if name not in shard:
                raise HerdError(f"{f}: tensor {name!r} missing from this shard")
            parts.append(shard[name])
        if dim is None or len(parts) == 1:
            t = parts[0]
        else:
            exp = shapes.get(name)
            if name == "tok_embeddings.weight" and exp and sum(p.shape[1] for p in parts) == exp[1]:
                dim = 1  # Llama 2 split the embedding on the model dim
            try:
                t = torch.cat(parts, dim=dim)
            except RuntimeError as e:
                raise HerdError(f"{path}: shards of {name!r} do not concatenate on dim {dim} ({e})") from None
        check_shape(files[0] if len(files) == 1 else path, name, name, tuple(t.shape), shapes)
        yield name, t
    for f, shard in zip(files[1:], shards[1:]):
        extra = set(shard) - set(shards[0])
        if extra:
            raise HerdError(f"{f}: tensors not in {files[0].name}: {', '.join(sorted(extra)[:5])}")


def open_meta(path: str | Path) -> tuple[ModelArgs, TensorIter]:
    """ModelArgs from params.json and a lazy iterator merging the consolidated.NN.pth shards."""
    path = Path(path)
    args = _parse_args(path / "params.json", ModelArgs.from_meta_params)
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise HerdError(f"{path}: no consolidated.NN.pth files next to params.json")
    return args, complete(path, args, _iter_meta(path, args, files))


def load_meta(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A Meta checkpoint directory (any number of MP shards) as ModelArgs and a state dict."""
    args, it = open_meta(path)
    return args, dict(it)


# ---- any layout ------------------------------------------------------------------------


def open_checkpoint(path: str | Path) -> tuple[ModelArgs, TensorIter]:
    """ModelArgs and a lazy (our_name, tensor) iterator for a checkpoint in any layout."""
    layout = detect_layout(path)
    if layout == "hf":
        return open_hf(path)
    if layout == "meta":
        return open_meta(path)
    return open_gguf(path)


def load_gguf(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A llama-architecture GGUF file, dequantized to fp32, as ModelArgs and a state dict."""
    args, it = open_gguf(path)
    return args, dict(it)


def _assign(model: nn.Module, name: str, t: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    setattr(mod, leaf, nn.Parameter(t, requires_grad=getattr(mod, leaf).requires_grad))


def checkpoint_args(path: str | Path) -> ModelArgs:
    """A checkpoint's ModelArgs from its config / params / GGUF header, without reading weights."""
    layout = detect_layout(path)
    path = Path(path)
    if layout == "hf":
        return _parse_args(path / "config.json", ModelArgs.from_hf_config)
    if layout == "meta":
        return _parse_args(path / "params.json", ModelArgs.from_meta_params)
    return gguf_model_args(path)


BlockHook = Callable[[Transformer, int], None]


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_seq_len: int | None = None,
    on_block: BlockHook | None = None,
) -> Transformer:
    """Build the Transformer for a checkpoint and fill it one tensor at a time (~1x memory).

    on_block(model, i) runs as soon as block i has all its weights (e.g. to fuse and quantize
    it), so a quantized model never holds more than one block at the loaded precision."""
    layout = detect_layout(path)
    args, tensors = open_checkpoint(path)
    if max_seq_len is not None:
        args = args.replace(max_seq_len=max_seq_len)
    model = empty_model(args)  # no allocation and no random init for weights we overwrite
    waiting = {i: {f"layers.{i}.{n}" for n, _ in block.named_parameters()} for i, block in enumerate(model.layers)}
    for name, t in tensors:
        u = t.to(device=device, dtype=dtype)
        if u is t and layout == "meta":  # still a view of the memory-mapped .pth: own it
            u = t.clone()
        _assign(model, name, u)  # HF and GGUF readers already hand out fresh tensors
        del t, u
        if on_block is not None and name.startswith("layers."):
            i = int(name.split(".", 2)[1])
            left = waiting.get(i)
            if left is not None:
                left.discard(name)
                if not left:
                    del waiting[i]
                    on_block(model, i)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval()


# ---- saving ----------------------------------------------------------------------------


def _state_dict(model_or_sd: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd


def _hf_items(sd: Mapping[str, torch.Tensor], args: ModelArgs, dtype: torch.dtype | None) -> TensorIter:
    to_hf = {ours: hf for hf, ours in name_map(args.n_layers, "hf").items()}
    for ours, hf in to_hf.items():
        if ours == "output.weight" and args.tie_embeddings:
            continue  # HF ties lm_head to embed_tokens when the file has no lm_head
        if ours not in sd:
            raise HerdError(f"state dict has no tensor {ours!r}")
        t = sd[ours].detach().to("cpu", dtype=dtype or sd[ours].dtype)
        heads = _qk_heads(ours, args)
        yield hf, (t if heads is None else meta_to_hf_qk(t, heads, args.hd)).contiguous()


def save_hf(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Write config.json and model.safetensors (sharded with an index above max_shard_bytes)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = _state_dict(model_or_state_dict)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    total = 0
    for hf, t in _hf_items(sd, args, dtype):
        n = t.numel() * t.element_size()
        if shards[-1] and sizes[-1] + n > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][hf] = t
        sizes[-1] += n
        total += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    dt = str(dtype or sd["tok_embeddings.weight"].dtype).removeprefix("torch.")
    cfg = args.to_hf_config(torch_dtype=dt, dtype=dt)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def save_meta(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    *,
    mp: int = 1,
    dtype: torch.dtype | None = None,
) -> None:
    """Write params.json and consolidated.00..NN.pth split for `mp` model-parallel ranks."""
    for what, n in (("n_kv_heads", args.kv_heads), ("n_heads", args.n_heads), ("FFN width", args.ffn_dim),
                    ("vocab_size", args.vocab_size)):
        if mp < 1 or n % mp:
            raise HerdError(f"cannot split {what}={n} into mp={mp} model-parallel shards")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = _state_dict(model_or_state_dict)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(mp)]
    for name in expected_shapes(args):
        # Meta's reference loads with strict=True, so a tied model still ships output.weight
        src = "tok_embeddings.weight" if name == "output.weight" and args.tie_embeddings else name
        if src not in sd:
            raise HerdError(f"state dict has no tensor {src!r}")
        t = sd[src].detach().to("cpu", dtype=dtype or sd[src].dtype)
        dim = split_dim(name)
        parts = [t] * mp if dim is None else t.chunk(mp, dim=dim)
        for shard, p in zip(shards, parts):
            # torch.save writes a view's whole base storage, so give each slice its own
            whole = p.untyped_storage().nbytes() == p.numel() * p.element_size()
            shard[name] = p if whole and p.is_contiguous() else p.clone()
    for i, shard in enumerate(shards):
        torch.save(shard, out / f"consolidated.{i:02d}.pth")
    (out / "params.json").write_text(json.dumps(args.to_meta_params(), indent=2) + "\n")


__all__ = [
    "NAME_TABLE",
    "Layout",
    "checkpoint_args",
    "detect_layout",
    "empty_model",
    "expected_shapes",
    "hf_to_meta_qk",
    "load_gguf",
    "load_hf",
    "load_meta",
    "load_model",
    "meta_to_hf_qk",
    "name_map",
    "open_checkpoint",
    "open_hf",
    "open_meta",
    "save_hf",
    "save_meta",
    "split_dim",
    "threads_for",
]
