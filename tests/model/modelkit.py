"""Test helpers for the model tests: tiny random HF Llama checkpoints and GGUF writers."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Tiny LlamaForCausalLM configs covering what the loaders must get right.
HF_CONFIGS: dict[str, dict[str, Any]] = {
    # GQA + llama3 RoPE scaling with a small original context so all three bands are used
    "gqa_scaled": {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160,
        "vocab_size": 320, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
    },
    "tied": {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128,
        "vocab_size": 256, "rope_theta": 500000.0, "tie_word_embeddings": True,
    },
    # head_dim 32 != 64 / 4, with 3.2-style factor 32
    "head_dim": {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 96,
        "vocab_size": 300, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32},
    },
    # tied + GQA + head_dim != dim/n_heads, as SmolLM2 / Llama 3.2 combine them
    "tied_gqa": {
        "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 160,
        "vocab_size": 288, "rope_theta": 100000.0, "tie_word_embeddings": True,
    },
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits are O(1) and a Q/K row mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def build_hf(name: str, seed: int = 0, n_layers: int = 2) -> Any:
    """A tiny random transformers LlamaForCausalLM for HF_CONFIGS[name], in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=n_layers, max_position_embeddings=16384, rms_norm_eps=1e-5,
                      **HF_CONFIGS[name])
    model = LlamaForCausalLM(cfg)
    randomize(model, seed)
    return model.eval()


# ---- GGUF writing (test-only, independent of herd's name table) ---------------------------

_HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF q/k rows -> GGUF order)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_kquant_blocks(qtype: Any, n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """Valid random Q4_K/Q6_K bytes (gguf-py cannot quantize to K-quants): sane f16 scales."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_rows * n_cols // block, size), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d (f16), dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        raw[:, 0:2] = np.full((len(raw), 1), 2e-4, np.float16).view(np.uint8)
        raw[:, 2:4] = np.full((len(raw), 1), 2e-4, np.float16).view(np.uint8)
    elif qtype == Q.Q6_K:  # ql 128, qh 64, int8 scales 16, d (f16) last
        raw[:, -2:] = np.full((len(raw), 1), 6e-5, np.float16).view(np.uint8)
    else:
        raise ValueError(qtype)
    return raw.reshape(n_rows, n_cols // block * size)


def write_gguf(
    path: Path,
    hf_model: Any,
    qtypes: dict[str, Any] | None = None,
    *,
    arch: str = "llama",
    rope_freqs: np.ndarray | None = None,
    permute: bool = True,
) -> Path:
    """Write hf_model as a llama.cpp-style GGUF; qtypes maps a GGUF name suffix to a type."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    cfg = hf_model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(hd)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(1)
    sd = hf_model.state_dict()
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    for name, t in sd.items():
        suffix = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
        gname = _HF_TO_GGUF[suffix]
        if name.startswith("model.layers."):
            gname = f"blk.{name.split('.')[2]}.{gname}"
        arr = t.detach().float().numpy().copy()
        if permute and suffix == "self_attn.q_proj.weight":
            arr = llama_cpp_permute(arr, n_heads)
        elif permute and suffix == "self_attn.k_proj.weight":
            arr = llama_cpp_permute(arr, n_kv)
        qt = Q.F32 if arr.ndim == 1 else next((q for k, q in (qtypes or {}).items() if k in gname), Q.F32)
        if qt in (Q.Q4_K, Q.Q6_K):
            w.add_tensor(gname, random_kquant_blocks(qt, *arr.shape, seed=len(gname)), raw_dtype=qt)
        elif qt in (Q.F32, Q.F16):
            w.add_tensor(gname, arr.astype(np.float32 if qt == Q.F32 else np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(arr, qt), raw_dtype=qt)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_from_gguf(path: Path) -> Any:
    """transformers' own GGUF reading (config + dequantize + q/k un-permute) into LlamaForCausalLM.

    from_pretrained(gguf_file=...) needs `accelerate`, which is not installed; this calls the
    same transformers loader (`load_gguf_checkpoint`) it uses.
    """
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # it parses the file twice (config, then tensors); share one parse (seconds for a real vocab)
    real, reader = gguf.GGUFReader, gguf.GGUFReader(str(path))
    gguf.GGUFReader = lambda *a, **k: reader
    try:
        cfg = dict(load_gguf_checkpoint(str(path))["config"])
        cfg.pop("model_type", None)
        cfg.pop("_model_name_or_path", None)
        model = LlamaForCausalLM(LlamaConfig(**cfg))
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    finally:
        gguf.GGUFReader = real
    model.gguf_tensor_types = {t.name: t.tensor_type.name for t in reader.tensors}
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result
    assert set(result.missing_keys) <= {"lm_head.weight"}, result
    if cfg.get("tie_word_embeddings"):
        model.tie_weights()
    return model.eval()
