"""Model configuration: the frozen ModelArgs dataclass and the named presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from herd.errors import HerdError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency scaling of RoPE (factor 8 for 3.1, 32 for 3.2 1B/3B)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    """Shape and hyper-parameters of a Llama-architecture decoder."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 128256
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # explicit FFN width (HF intermediate_size); else derived
    head_dim: int | None = None  # explicit (SmolLM2, 3.2-1B: 64); else dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    max_seq_len: int = 131072

    def __post_init__(self) -> None:
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise HerdError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={kv}")
        if self.head_dim is None and self.dim % self.n_heads:
            raise HerdError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.hd % 2:
            raise HerdError(f"head_dim={self.hd} must be even for RoPE")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        h = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            h = int(self.ffn_dim_multiplier * h)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    def replace(self, **kw: Any) -> ModelArgs:
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        attn = self.dim * self.hd * (2 * self.n_heads + 2 * self.kv_heads)
        ffn = 3 * self.dim * self.ffn_dim
        per_layer = attn + ffn + 2 * self.dim
        emb = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + emb + self.dim

    # ---- conversions -------------------------------------------------------------------

    @classmethod
    def from_meta_params(cls, params: dict[str, Any]) -> ModelArgs:
        """From a Meta `params.json` dict (unknown keys such as quantization_args ignored)."""
        scaling = None
        if params.get("use_scaled_rope"):
            d = RopeScaling()
            scaling = RopeScaling(
                factor=float(params.get("rope_scaling_factor", 8.0)),
                # herd-only keys, written by to_meta_params when they differ from Meta's constants
                low_freq_factor=float(params.get("rope_scaling_low_freq_factor", d.low_freq_factor)),
                high_freq_factor=float(params.get("rope_scaling_high_freq_factor", d.high_freq_factor)),
                original_max_position_embeddings=int(
                    params.get("rope_scaling_original_max_position_embeddings", d.original_max_position_embeddings)
                ),
            )
        return cls(
            dim=params["dim"],
            n_layers=params["n_layers"],
            n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads"),
            vocab_size=params.get("vocab_size", 128256),
            multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=params.get("rope_theta", 500000.0),
            rope_scaling=scaling,
            hidden_dim=params.get("hidden_dim"),
            head_dim=params.get("head_dim"),
            tie_embeddings=params.get("tie_embeddings", False),
        )

    def to_meta_params(self) -> dict[str, Any]:
        """Meta `params.json` dict; hidden_dim is written when it is not the derived one."""
        p: dict[str, Any] = {
            "dim": self.dim,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.kv_heads,
            "vocab_size": self.vocab_size,
            "multiple_of": self.multiple_of,
            "ffn_dim_multiplier": self.ffn_dim_multiplier,
            "norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "use_scaled_rope": self.rope_scaling is not None,
        }
        if self.rope_scaling is not None:
            p["rope_scaling_factor"] = self.rope_scaling.factor
            d = RopeScaling()
            for f in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if getattr(self.rope_scaling, f) != getattr(d, f):
                    p[f"rope_scaling_{f}"] = getattr(self.rope_scaling, f)
        if self.tie_embeddings:
            p["tie_embeddings"] = True
        if self.head_dim is not None and self.head_dim != self.dim // self.n_heads:
            p["head_dim"] = self.head_dim
        if self.hidden_dim is not None:
            p["hidden_dim"] = self.hidden_dim
        return p

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelArgs:
        """From a Hugging Face `config.json` dict of a LlamaForCausalLM."""
        arch = cfg.get("model_type", "llama")
        if arch != "llama":
            raise HerdError(f"unsupported model_type {arch!r} (only 'llama' is supported)")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise HerdError("checkpoints with attention or MLP biases are not Llama 3")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise HerdError(f"unsupported hidden_act {act!r} (Llama uses 'silu')")
        # transformers >= 5 writes `rope_parameters` (rope_theta inside it); older ones write
        # top-level `rope_theta` and `rope_scaling`
        rp = cfg.get("rope_parameters") or {}
        rs = rp or cfg.get("rope_scaling")
        scaling = None
        if rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
            kind = rs.get("rope_type", rs.get("type"))
            if kind != "llama3":
                raise HerdError(f"unsupported rope_scaling type {kind!r} (only 'llama3')")
            scaling = RopeScaling(
                factor=float(rs["factor"]),
                low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
                high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)),
            )
        dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim")
        return cls(
            dim=dim,
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads", n_heads),
            vocab_size=cfg["vocab_size"],
            hidden_dim=cfg["intermediate_size"],
            head_dim=head_dim if head_dim and head_dim != dim // n_heads else None,
            norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(cfg.get("rope_theta", rp.get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_seq_len=int(cfg.get("max_position_embeddings", 131072)),
        )

    def to_hf_config(self, **extra: Any) -> dict[str, Any]:
        """Hugging Face `config.json` dict (LlamaForCausalLM)."""
        cfg: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hd,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_seq_len,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float32",
        }
        if self.rope_scaling is not None:
            cfg["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        cfg.update(extra)
        return cfg


LLAMA31_ROPE = RopeScaling(factor=8.0)
LLAMA32_ROPE = RopeScaling(factor=32.0)

PRESETS: dict[str, ModelArgs] = {
    "llama3.1-8b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
        ffn_dim_multiplier=1.3, rope_scaling=LLAMA31_ROPE,
    ),
    "llama3.1-70b": ModelArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
        ffn_dim_multiplier=1.3, rope_scaling=LLAMA31_ROPE,
    ),
    "llama3.1-405b": ModelArgs(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, multiple_of=4096,
        ffn_dim_multiplier=1.2, rope_scaling=LLAMA31_ROPE,
    ),
    "llama3.2-1b": ModelArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=256,
        ffn_dim_multiplier=1.5, rope_scaling=LLAMA32_ROPE, tie_embeddings=True,
    ),
    "llama3.2-3b": ModelArgs(
        dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=256,
        ffn_dim_multiplier=1.0, rope_scaling=LLAMA32_ROPE, tie_embeddings=True,
    ),
    # Llama 3.0: identical to 3.1 without the RoPE frequency scaling.
    "llama3-8b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
        ffn_dim_multiplier=1.3, max_seq_len=8192,
    ),
}


def preset(name: str) -> ModelArgs:
    """Look up a preset by name; raises HerdError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise HerdError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def detect_layout(path: str | Path) -> Literal["hf", "meta", "gguf"]:
    """'gguf' for a file starting with the GGUF magic; 'hf' (config.json) / 'meta' (params.json) for a directory."""
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


# ---- memory: what a model's weights and KV cache take, per precision -------------------------

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bytes per weight of a quantized projection (herd/model/quantize.py): int8 is Q8_0 (32 int8 and an
# fp16 scale per group of 32), int4 is Q4_1 (16 bytes and an fp16 scale and minimum per 32)
QUANT_BYTES = {"int8": 34 / 32, "int4": 20 / 32}


def weight_bytes(args: ModelArgs, dtype: str = "float32", quantize: str | None = None) -> int:
    """Bytes of a model's weights as hub.load leaves them: `dtype` for everything, or with
    `quantize` ("bf16" / "int8" / "int4") its projections and output head quantized while the
    embedding and norms keep `dtype` (int4 keeps the head, and a projection whose input width is
    not a multiple of 32, at int8)."""
    b = DTYPE_BYTES[dtype]
    q_dim, kv_dim, ffn = args.n_heads * args.hd, args.kv_heads * args.hd, args.ffn_dim
    # (out, in) of every projection of one block
    shapes = [(q_dim, args.dim), (kv_dim, args.dim), (kv_dim, args.dim), (args.dim, q_dim),
              (ffn, args.dim), (ffn, args.dim), (args.dim, ffn)]
    emb = args.vocab_size * args.dim
    norms = (2 * args.n_layers + 1) * args.dim * b
    if quantize in (None, "none"):
        head = 0 if args.tie_embeddings else emb
        return int((args.n_layers * sum(o * i for o, i in shapes) + emb + head) * b + norms)

    def per_weight(in_features: int, head: bool = False) -> float:
        if quantize == "bf16":
            return 2
        if quantize == "int4" and not head and in_features % 32 == 0:
            return QUANT_BYTES["int4"]
        return QUANT_BYTES["int8"]

    blocks = args.n_layers * sum(o * i * per_weight(i) for o, i in shapes)
    # a quantized head is its own copy, also of a tied embedding (but bf16 of a bf16 one is shared)
    head = 0 if quantize == "bf16" and args.tie_embeddings and b == 2 else emb * per_weight(args.dim, head=True)
    return int(blocks + head + emb * b + norms)


def kv_bytes_per_token(args: ModelArgs, dtype: str = "float32") -> int:
    """Bytes of K and V one token takes in the cache, over all layers."""
    return 2 * args.n_layers * args.kv_heads * args.hd * DTYPE_BYTES[dtype]


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object file with errors that name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HerdError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise HerdError(f"{path}: expected a JSON object")
    return data



KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class EngineConfig:
    """Inference engine settings (continuous batching over a paged KV cache)."""

    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # explicit KV pool size; else sized from kv_cache_memory
    kv_cache_memory: int | None = None  # bytes for the KV pool; None: kv_cache_fraction of free memory
    kv_cache_fraction: float = 0.25
    max_num_batched_tokens: int = 2048  # token budget of one step (prefill chunks + decodes)
    max_num_seqs: int = 64  # most sequences running at once
    long_prefill_token_threshold: int = 0  # cap one prompt's chunk per step (0: budget only)
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # prompt + output cap; None: the model's context length
    compile_decode: bool = False  # torch.compile the decode-only steps (slow first steps, then faster)
    # K/V storage: "auto" (the model's dtype) or one of KV_CACHE_DTYPES; bfloat16 halves the
    # bytes decode attention reads per token (and doubles the tokens a pool holds)
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise HerdError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 2:
            raise HerdError(f"num_blocks must be >= 2, got {self.num_blocks}")
        if not 0 < self.kv_cache_fraction <= 0.95:
            raise HerdError(f"kv_cache_fraction must be in (0, 0.95], got {self.kv_cache_fraction}")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise HerdError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise HerdError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
