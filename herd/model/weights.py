"""Checkpoint I/O: Meta, Hugging Face and GGUF tensors to our (Meta) names, and back.

Every reader yields `(our_name, tensor)` pairs one tensor at a time from memory-mapped
files, so `load_model` can build the Transformer on the `meta` device and fill it with
about one copy of the weights in memory. Q/K rows are kept in Meta's interleaved-RoPE
order; HF checkpoints store them in rotate_half order and are permuted on the way in/out.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from herd.config import ModelArgs, read_json
from herd.errors import HerdError
from herd.model.llama import Transformer

Layout = Literal["hf", "meta", "gguf"]
TensorIter = Iterator[tuple[str, torch.Tensor]]

# The one name table: our (Meta) name, HF name, GGUF name, and the dim Meta's model-parallel
# shards split on (None: replicated). "{i}" is the layer index.
NAME_TABLE: tuple[tuple[str, str, str, int | None], ...] = (
    ("tok_embeddings.weight", "model.embed_tokens.weight", "token_embd.weight", 0),
    ("norm.weight", "model.norm.weight", "output_norm.weight", None),
    ("output.weight", "lm_head.weight", "output.weight", 0),
    ("layers.{i}.attention.wq.weight", "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", 0),
    ("layers.{i}.attention.wk.weight", "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", 0),
    ("layers.{i}.attention.wv.weight", "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", 0),
    ("layers.{i}.attention.wo.weight", "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", 1),
    ("layers.{i}.feed_forward.w1.weight", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", 0),
    ("layers.{i}.feed_forward.w2.weight", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", 1),
    ("layers.{i}.feed_forward.w3.weight", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", 0),
    ("layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", None),
    ("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", None),
)
_COLUMN = {"meta": 0, "hf": 1, "gguf": 2}


def name_map(n_layers: int, fmt: Literal["hf", "gguf"]) -> dict[str, str]:
    """{name in `fmt` -> our name} for a model with n_layers."""
    col = _COLUMN[fmt]
    out: dict[str, str] = {}
    for row in NAME_TABLE:
        for i in range(n_layers) if "{i}" in row[0] else [None]:
            out[row[col].format(i=i)] = row[0].format(i=i)
    return out


def split_dim(name: str) -> int | None:
    """The dim Meta's model-parallel shards split `name` on (None: replicated)."""
    generic = ".".join("{i}" if p.isdigit() else p for p in name.split("."))
    for row in NAME_TABLE:
        if row[0] == generic:
            return row[3]
    raise KeyError(name)


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Our tensor names and shapes for `args`, read off a Transformer built on `meta`."""
    return dict(_shapes(args))


@functools.lru_cache(maxsize=8)
def _shapes(args: ModelArgs) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = Transformer(args)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


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


def check_shape(
    file: Path | str, src: str, ours: str, found: tuple[int, ...], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """HerdError naming the file, the tensor and both shapes if `found` is not expected."""
    if ours not in shapes:
        raise HerdError(f"{file}: unexpected tensor {src!r} for this model config")
    if tuple(found) != shapes[ours]:
        raise HerdError(
            f"{file}: tensor {src!r} ({ours}) has shape {list(found)}, expected {list(shapes[ours])}"
        )


def _complete(path: Path, args: ModelArgs, items: TensorIter) -> TensorIter:
    """Pass `items` through, rejecting duplicates and, at the end, missing tensors."""
    need = set(expected_shapes(args))
    if args.tie_embeddings:
        need.discard("output.weight")  # the embedding doubles as the output projection
    seen: set[str] = set()
    for name, t in items:
        if name in seen:
            raise HerdError(f"{path}: tensor {name!r} appears twice")
        seen.add(name)
        yield name, t
    missing = sorted(need - seen)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise HerdError(f"{path}: missing tensors {', '.join(missing[:5])}{more}")


# ---- layout detection ------------------------------------------------------------------


def detect_layout(path: str | Path) -> Layout:
    """'gguf' for a file starting with the GGUF magic; 'hf' / 'meta' for a directory."""
    path = Path(path)
    if not path.exists():
        raise HerdError(f"{path}: no such file or directory")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise HerdError(f"{path}: not a GGUF file (a checkpoint directory or a .gguf file is expected)")
    if (path / "config.json").is_file():
        return "hf"
    if (path / "params.json").is_file():
        return "meta"
    raise HerdError(f"{path}: neither a Hugging Face (config.json) nor a Meta (params.json) checkpoint")


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
    return args, _complete(path, args, _iter_hf(path, args))


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
    return args, _complete(path, args, _iter_meta(path, args, files))


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
    from herd.model.gguf import open_gguf  # gguf-py is only needed for .gguf files

    return open_gguf(path)


def load_gguf(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A llama-architecture GGUF file, dequantized to fp32, as ModelArgs and a state dict."""
    from herd.model.gguf import open_gguf

    args, it = open_gguf(path)
    return args, dict(it)


def _assign(model: nn.Module, name: str, t: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    setattr(mod, leaf, nn.Parameter(t, requires_grad=getattr(mod, leaf).requires_grad))


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_seq_len: int | None = None,
) -> Transformer:
    """Build the Transformer for a checkpoint and fill it one tensor at a time (~1x memory)."""
    layout = detect_layout(path)
    args, tensors = open_checkpoint(path)
    if max_seq_len is not None:
        args = args.replace(max_seq_len=max_seq_len)
    with torch.device("meta"):  # no allocation and no random init for weights we overwrite
        model = Transformer(args)
    for name, t in tensors:
        u = t.to(device=device, dtype=dtype)
        if u is t and layout == "meta":  # still a view of the memory-mapped .pth: own it
            u = t.clone()
        _assign(model, name, u)  # HF and GGUF readers already hand out fresh tensors
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
    "NAME_TABLE", "Layout", "detect_layout", "expected_shapes", "hf_to_meta_qk", "load_gguf",
    "load_hf", "load_meta", "load_model", "meta_to_hf_qk", "name_map", "open_checkpoint",
    "open_hf", "open_meta", "save_hf", "save_meta", "split_dim",
]
