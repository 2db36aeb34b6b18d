"""LoRA and QLoRA as a module swap, applied from outside the model (as quantization is).

    apply_lora(model, LoRAConfig(rank=8, alpha=16))   # in place: chosen projections -> LoRALinear
    opt = torch.optim.AdamW(lora_parameters(model))  # everything else is frozen
    ...
    save_peft_adapter(model, config, "OUT/adapter", "meta-llama/Llama-3.2-1B")  # loadable by peft
    strip_lora(merge_lora(model))                     # the plain model again, delta merged in

`LoRALinear` keeps the projection it wraps (`base`) frozen and adds a low-rank update:
y = base(x) + (alpha / rank) * B(A(dropout(x))), with A (rank x in) drawn like an nn.Linear weight
(kaiming-uniform, as the LoRA paper's code and peft do) and B (out x rank) zero, so a fresh adapter
changes nothing. The base may be an nn.Linear or one of quantize.py's layers (DenseLinear,
Int8Linear, Int4Linear): LoRA over a frozen int8 / int4 base is QLoRA. Quantize the *unfused*
model (`quantize_model(model, "int4")`) and then apply LoRA: fused projections (wqkv, w13, what
hub.load builds when asked to quantize) are refused, since an adapter of q_proj is not one of
q|k|v stacked.

Merging adds the delta into a floating-point base weight (unmerge subtracts it again: the
original weights within rounding). A quantized base cannot take the delta without being
re-rounded; its exports use `merged_weight()` / `merged_state_dict()` instead, which return the
dequantized base plus the delta in floating point.

PEFT format: `save_peft_adapter` / `load_peft_adapter` write and read peft's
`adapter_config.json` + `adapter_model.safetensors` for the Hugging Face LlamaForCausalLM of the
same checkpoint. Herd keeps Q/K rows in Meta's interleaved-RoPE order, HF in rotate-half order:
the loader permutes wq/wk rows (weights.hf_to_meta_qk), so the rows of lora_B (out x rank) of q
and k are permuted the same way on the way in and back on the way out (lora_A, rank x in, has
no such rows).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from herd.config import read_json
from herd.errors import HerdError
from herd.model.llama import Attention, FeedForward
from herd.model.quantize import DenseLinear, Int4Linear, Int8Linear
from herd.model.weights import hf_to_meta_qk, meta_to_hf_qk, name_map

# target -> (module in the block, herd's attribute, the HF / peft module name)
TARGETS: dict[str, tuple[str, str, str]] = {
    "q": ("attention", "wq", "q_proj"),
    "k": ("attention", "wk", "k_proj"),
    "v": ("attention", "wv", "v_proj"),
    "o": ("attention", "wo", "o_proj"),
    "gate": ("feed_forward", "w1", "gate_proj"),
    "up": ("feed_forward", "w3", "up_proj"),
    "down": ("feed_forward", "w2", "down_proj"),
}
DEFAULT_TARGETS: tuple[str, ...] = tuple(TARGETS)
# every name a target may be given by: herd's short name, the HF name, herd's attribute
_ALIASES: dict[str, str] = {
    alias: short for short, (_, attr, hf) in TARGETS.items() for alias in (short, hf, attr)
}
_ALL = ("all", "all-linear")  # peft's "all-linear" (every projection but the output head)

PACKED = (Int8Linear, Int4Linear)  # quantized bases: LoRA over them is QLoRA, merge is refused
BASES = (nn.Linear, DenseLinear, *PACKED)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> LlamaForCausalLM


def known_targets() -> str:
    """The accepted target names, for error messages."""
    hf = ", ".join(hf for _, _, hf in TARGETS.values())
    return f"{', '.join(TARGETS)} (or {hf}; 'all-linear' for all of them)"


def normalize_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Targets as herd's short names in the canonical order (q, k, v, o, gate, up, down), each once.
    A string is a comma-separated list (as a command line gives it). HerdError for an unknown one."""
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    chosen: set[str] = set()
    for raw in names:
        if not isinstance(raw, str):
            raise HerdError(f"LoRA targets are names, not {type(raw).__name__}; known: {known_targets()}",
                            param="targets")
        name = raw.strip()
        if name.lower() in _ALL:
            chosen.update(TARGETS)
        elif name in _ALIASES:
            chosen.add(_ALIASES[name])
        else:
            raise HerdError(f"unknown LoRA target {name!r}; known targets: {known_targets()}", param="targets")
    if not chosen:
        raise HerdError(f"no LoRA targets given; known targets: {known_targets()}", param="targets")
    return tuple(t for t in TARGETS if t in chosen)


@dataclass(frozen=True)
class LoRAConfig:
    """What to adapt and how: rank r, alpha (the update is scaled by alpha / r), dropout on the
    LoRA input, and the projections (`targets`, herd's or HF's names; normalised to herd's)."""

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise HerdError(f"LoRA rank must be a positive integer, got {self.rank!r}", param="rank")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise HerdError(f"LoRA alpha must be a positive number, got {self.alpha!r}", param="alpha")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise HerdError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}", param="dropout")
        object.__setattr__(self, "targets", normalize_targets(self.targets))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def hf_targets(self) -> list[str]:
        """The targets as peft / HF module names (q_proj, ...)."""
        return [TARGETS[t][2] for t in self.targets]


# ---- the layer ----------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen projection plus a trainable low-rank update (see the module docstring).

    lora_A (rank, in) and lora_B (out, rank) are fp32 by default whatever the base (as peft keeps
    adapters of a bf16 model): the input is cast to their dtype and the update back to the base's
    output dtype."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 *, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(base, BASES):
            raise HerdError(f"LoRA wraps nn.Linear, DenseLinear, Int8Linear or Int4Linear, not {type(base).__name__}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # an nn.Linear(in, rank) weight's init
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # the delta is in the base weight
        self.enabled = True  # False: the base alone (disable_lora)

    @property
    def quantized(self) -> bool:
        return isinstance(self.base, PACKED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged or not self.enabled:
            return out
        h = self.dropout(x).to(self.lora_A.dtype)
        delta = F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling
        return out + delta.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A (out, in), in the adapter's dtype (with autograd when it is on)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def _float_weight(self, action: str) -> torch.Tensor:
        if self.quantized:
            raise HerdError(
                f"cannot {action} LoRA into a quantized {type(self.base).__name__} base (it would be "
                "re-rounded): export merged_weight() / merged_state_dict(), the dequantized base plus the delta")
        return self.base.weight

    @torch.no_grad()
    def merge(self) -> None:
        """Add the delta into the base weight (no-op when merged); the forward is then the base's."""
        if self.merged:
            return
        w = self._float_weight("merge")
        w.add_(self.delta_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the delta from the base weight again (no-op when not merged)."""
        if not self.merged:
            return
        w = self._float_weight("unmerge")
        w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False

    @torch.no_grad()
    def merged_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The base weight (dequantized if quantized) plus the delta, as a new (out, in) tensor.
        Computed in fp32; exact for the merged state too (the delta is not added twice)."""
        if self.quantized:
            w = self.base.dequantize(torch.float32)
        else:
            w = self.base.weight.detach().to(torch.float32, copy=True)
        if not self.merged:
            w += self.delta_weight().float()
        return w.to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, merged={self.merged}")


# ---- applying to a model ------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by module name ("layers.0.attention.wq", ...), in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _is_fused(model: nn.Module) -> bool:
    return any(hasattr(m, "wqkv") or hasattr(m, "w13") for m in model.modules())


def apply_lora(model: nn.Module, config: LoRAConfig, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Wrap the configured projections of every block in LoRALinear, in place; returns the model
    (as quantize_model does). Every other parameter is frozen (requires_grad False), so
    `model.parameters()` with grads are exactly `lora_parameters(model)`. HerdError for a model
    that already has LoRA layers, a fused model, or one with no projection to adapt."""
    if lora_layers(model):
        raise HerdError("the model already has LoRA layers: strip_lora() them first")
    if _is_fused(model):
        raise HerdError("cannot apply LoRA to a fused model (wqkv / w13 projections): apply it to the "
                        "unfused model (quantize_model on it for QLoRA), then fuse after strip_lora if wanted")
    chosen: list[tuple[nn.Module, str, nn.Module]] = []  # checked whole before anything changes
    for parent_name, parent in model.named_modules():
        kind = "attention" if isinstance(parent, Attention) else "feed_forward" if isinstance(parent, FeedForward) \
            else None
        for target in config.targets if kind is not None else ():
            where, attr, _ = TARGETS[target]
            if where != kind:
                continue
            child = getattr(parent, attr)
            if not isinstance(child, BASES):
                name = f"{parent_name}.{attr}" if parent_name else attr
                raise HerdError(f"{name}: cannot apply LoRA to a {type(child).__name__}")
            chosen.append((parent, attr, child))
    if not chosen:
        raise HerdError("no projection to apply LoRA to: expected herd Transformer blocks "
                        "(layers.N.attention / layers.N.feed_forward)")
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, attr, child in chosen:
        layer = LoRALinear(child, config.rank, config.alpha, config.dropout, dtype=dtype)
        setattr(parent, attr, layer.train(parent.training))  # dropout follows the model's mode
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every lora_A and lora_B of the model (what the optimizer trains)."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"layers.0.attention.wq.lora_A": tensor, ...}: the adapter in herd's names (detached, not
    copied, as state_dict() returns them)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a lora_state_dict() into the model's LoRA layers: the same keys and shapes, or HerdError."""
    own = lora_state_dict(model)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise HerdError(f"LoRA weights do not fit this model: {'; '.join(parts)}")
    layers = lora_layers(model)
    if any(layers[k.rsplit(".", 1)[0]].merged for k in own):
        raise HerdError("unmerge the LoRA layers before loading other adapter weights")
    for key, t in state.items():
        if tuple(t.shape) != tuple(own[key].shape):
            raise HerdError(f"LoRA weight {key!r} has shape {list(t.shape)}, expected {list(own[key].shape)}")
    for key, t in state.items():
        own[key].copy_(t)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer's delta into its (floating-point) base weight; returns the model."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora; returns the model."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def strip_lora(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Put each LoRA layer's base back in its place (parameter names as before apply_lora), in
    place; returns the model. merge=True merges every unmerged delta first (HerdError for a
    quantized base: export merged_state_dict() instead); merge=False drops unmerged adapters (the
    base model again) and keeps merged ones. The bases stay frozen (requires_grad False)."""
    layers = lora_layers(model)
    if merge:
        quantized = [n for n, layer in layers.items() if layer.quantized and not layer.merged]
        if quantized:
            raise HerdError(f"cannot merge LoRA into quantized bases ({quantized[0]}, ...): save "
                            "merged_state_dict(model) instead, or strip_lora(model, merge=False) to drop the adapters")
        merge_lora(model)
    for name, layer in layers.items():
        _replace(model, name, layer.base)
    return model


@contextlib.contextmanager
def disable_lora(model: nn.Module) -> Iterator[None]:
    """Within the block the model computes without its (unmerged) adapters: the base model, e.g. a
    DPO reference without a second copy of the weights."""
    layers = list(lora_layers(model).values())
    if any(layer.merged for layer in layers):
        raise HerdError("cannot disable merged LoRA layers: unmerge_lora() first")
    saved = [layer.enabled for layer in layers]
    try:
        for layer in layers:
            layer.enabled = False
        yield
    finally:
        for layer, was in zip(layers, saved):
            layer.enabled = was


@torch.no_grad()
def merged_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A plain floating-point state dict in the unwrapped model's names (what weights.save_hf and
    save_meta take): LoRA layers as base + delta (dequantized for QLoRA), int8 / int4 layers
    dequantized, the rest as it is. The model is not changed. dtype casts every floating tensor;
    None keeps float bases' dtype and gives dequantized weights in fp32."""
    replaced: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            w = m.merged_weight(torch.float32)
            replaced[name] = w if m.quantized else w.to(m.base.weight.dtype)
        elif isinstance(m, PACKED) and not any(name.startswith(f"{n}.") for n in replaced):
            replaced[name] = m.dequantize(torch.float32)
    prefixes = tuple(f"{n}." for n in replaced)
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if not key.startswith(prefixes):
            out[key] = t.detach()
    for name, w in replaced.items():
        out[f"{name}.weight"] = w
    args = getattr(model, "args", None)
    if getattr(args, "tie_embeddings", False) and "tok_embeddings.weight" in out and "output.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]  # a quantized head's copy must not replace it
    if dtype is not None:
        out = {k: t.to(dtype) if t.is_floating_point() else t for k, t in out.items()}
    return out


# ---- PEFT format --------------------------------------------------------------------------------


def _layer_count(model: nn.Module, what: str) -> int:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise HerdError(f"{what} needs a whole herd Transformer (with .layers), not {type(model).__name__}")
    return len(layers)


def _peft_names(model: nn.Module, what: str) -> dict[str, str]:
    """{herd LoRA module name -> peft key prefix "base_model.model.model.layers.0.self_attn.q_proj"}."""
    to_hf = {ours: hf for hf, ours in name_map(_layer_count(model, what), "hf").items()}
    out: dict[str, str] = {}
    for name in lora_layers(model):
        hf = to_hf.get(f"{name}.weight")
        if hf is None:
            raise HerdError(f"{what}: LoRA layer {name!r} has no Hugging Face name (not a Llama projection)")
        out[name] = _PEFT_PREFIX + hf.removesuffix(".weight")
    return out


def _qk_rows(model: nn.Module, name: str) -> tuple[int, int] | None:
    """(heads, head_dim) when `name` is a wq / wk projection (rows in interleaved-RoPE order)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, Attention) and attr in ("wq", "wk"):
        return (parent.n_heads if attr == "wq" else parent.n_kv_heads), parent.head_dim
    return None


def _targets_of(layers: Iterable[str]) -> tuple[str, ...]:
    return normalize_targets({_ALIASES[name.rpartition(".")[2]] for name in layers})


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def peft_config_dict(config: LoRAConfig, base_model_name_or_path: str | None) -> dict[str, Any]:
    """adapter_config.json for `config`: peft's LoraConfig fields (those not given take peft's
    defaults when it reads the file)."""
    alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.rank,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.hf_targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_peft_adapter(model: nn.Module, config: LoRAConfig, out_dir: str | Path,
                      base_model_name_or_path: str | None, *, dtype: torch.dtype | None = None) -> Path:
    """Write the model's adapter as peft does for the HF LlamaForCausalLM: out_dir/adapter_config.json
    and adapter_model.safetensors (keys base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight,
    ...; q/k lora_B rows in HF order). Each file is written whole or not at all. dtype: the saved
    tensors' dtype (default: the adapter's). Returns out_dir."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise HerdError("the model has no LoRA layers to save")
    for name, layer in layers.items():
        if (layer.rank, layer.alpha) != (config.rank, config.alpha):
            raise HerdError(f"{name} has rank {layer.rank} / alpha {layer.alpha}, but the config says "
                            f"{config.rank} / {config.alpha}")
    if _targets_of(layers) != config.targets:
        raise HerdError(f"the model's LoRA layers adapt {', '.join(_targets_of(layers))}, but the config "
                        f"says {', '.join(config.targets)}")
    prefixes = _peft_names(model, "save_peft_adapter")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        a, b = layer.lora_A.detach(), layer.lora_B.detach()
        qk = _qk_rows(model, name)
        if qk is not None:
            b = meta_to_hf_qk(b, *qk)
        for key, t in ((f"{prefixes[name]}.lora_A.weight", a), (f"{prefixes[name]}.lora_B.weight", b)):
            tensors[key] = t.to("cpu", dtype=dtype or t.dtype).contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.dumps(peft_config_dict(config, base_model_name_or_path), indent=2) + "\n"
    _write_atomic(out / ADAPTER_WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _write_atomic(out / ADAPTER_CONFIG, lambda p: p.write_text(cfg))
    return out


_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_LAYER = re.compile(r"^model\.layers\.(?P<i>\d+)\.")
# peft features this loader does not implement: a file using one is refused rather than misread
_UNSUPPORTED = ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out", "modules_to_save", "rank_pattern",
                "alpha_pattern", "layers_to_transform", "layer_replication", "trainable_token_indices",
                "target_parameters", "use_qalora")


def _adapter_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    if not file.is_file():
        raise HerdError(f"{file}: file not found")
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types for bad headers)
        raise HerdError(f"{file}: not a valid safetensors file ({e})") from None


def _layer_targets(file: Path, keys: Iterable[str]) -> dict[int, set[str]]:
    """{layer index -> targets} of an adapter's tensor names; HerdError for a tensor not a LoRA
    A/B of a Llama projection (lm_head, embeddings, DoRA magnitudes, ...)."""
    per_layer: dict[int, set[str]] = {}
    for key in keys:
        m = _PEFT_KEY.match(key)
        layer = _LAYER.match(m["module"]) if m else None
        proj = m["module"].rpartition(".")[2] if m else ""
        if m is None or layer is None or proj not in _ALIASES or proj != TARGETS[_ALIASES[proj]][2]:
            raise HerdError(f"{file}: tensor {key!r} is not a LoRA A/B of a Llama projection "
                            f"(herd adapts {known_targets()})")
        per_layer.setdefault(int(layer["i"]), set()).add(_ALIASES[proj])
    return per_layer


def read_peft_config(adapter_dir: str | Path) -> LoRAConfig:
    """The LoRAConfig of a peft LoRA adapter directory. The targets are read off the weights file
    (peft's target_modules may be a regex or name modules the model lacks); every layer must have
    the same ones. HerdError for another peft type or a LoRA feature herd does not implement."""
    adapter = Path(adapter_dir)
    file = adapter / ADAPTER_CONFIG
    cfg = read_json(file)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise HerdError(f"{file}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("bias", "none") != "none":
        raise HerdError(f"{file}: bias {cfg['bias']!r} is not supported (only 'none')")
    for field in _UNSUPPORTED:
        if cfg.get(field):
            raise HerdError(f"{file}: {field} = {cfg[field]!r} is not supported by herd's LoRA")
    weights = adapter / ADAPTER_WEIGHTS
    per_layer = _layer_targets(weights, _adapter_keys(weights))
    sets = {frozenset(t) for t in per_layer.values()}
    if not sets:
        raise HerdError(f"{weights}: no LoRA tensors")
    if len(sets) > 1:
        raise HerdError(f"{weights}: the layers adapt different projections (not supported)")
    try:
        return LoRAConfig(rank=cfg.get("r", 8), alpha=cfg.get("lora_alpha", 8), dropout=cfg.get("lora_dropout", 0.0),
                          targets=tuple(next(iter(sets))))
    except HerdError as e:
        raise HerdError(f"{file}: {e}") from None


@torch.no_grad()
def load_peft_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Load a peft LoRA adapter (saved for the HF LlamaForCausalLM of this checkpoint) into a herd
    Transformer: applies LoRA with the adapter's config first (a model already holding LoRA
    layers must have the same targets, rank and alpha); q/k lora_B rows are permuted to herd's
    order. Returns the model. HerdError for a file that does not fit the model."""
    from safetensors.torch import load_file

    adapter = Path(adapter_dir)
    config = read_peft_config(adapter)
    weights = adapter / ADAPTER_WEIGHTS
    n_layers = _layer_count(model, "load_peft_adapter")
    covered = set(_layer_targets(weights, _adapter_keys(weights)))
    if covered != set(range(n_layers)):
        raise HerdError(f"{weights}: adapts layers {sorted(covered)[:8]}, the model has layers 0..{n_layers - 1} "
                        "(an adapter for another model, or one for some layers only: not supported)")
    layers = lora_layers(model)
    if not layers:
        apply_lora(model, config)
        layers = lora_layers(model)
    else:
        ranks = {(layer.rank, layer.alpha) for layer in layers.values()}
        if _targets_of(layers) != config.targets or ranks != {(config.rank, config.alpha)}:
            raise HerdError(f"{adapter}: the model's LoRA layers do not match this adapter's "
                            f"(targets {', '.join(config.targets)}, rank {config.rank}, alpha {config.alpha})")
        for layer in layers.values():
            layer.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
            layer.dropout.train(layer.training)
    prefixes = _peft_names(model, "load_peft_adapter")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
        raise HerdError(f"{weights}: cannot read ({e})") from None
    state: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        for ab, param in (("A", layer.lora_A), ("B", layer.lora_B)):
            key = f"{prefixes[name]}.lora_{ab}.weight"
            t = tensors.pop(key, None)
            if t is None:
                raise HerdError(f"{weights}: tensor {key!r} missing")
            if tuple(t.shape) != tuple(param.shape):
                raise HerdError(f"{weights}: tensor {key!r} has shape {list(t.shape)}, expected {list(param.shape)} "
                                "(an adapter for another model?)")
            qk = _qk_rows(model, name)
            if ab == "B" and qk is not None:
                t = hf_to_meta_qk(t, *qk)
            state[f"{name}.lora_{ab}"] = t
    if tensors:
        raise HerdError(f"{weights}: unexpected tensors {', '.join(sorted(tensors)[:3])}")
    load_lora_state_dict(model, state)
    return model


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_TARGETS",
    "TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "disable_lora",
    "known_targets",
    "load_lora_state_dict",
    "load_peft_adapter",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "merged_state_dict",
    "normalize_targets",
    "peft_config_dict",
    "read_peft_config",
    "save_peft_adapter",
    "strip_lora",
    "unmerge_lora",
]
