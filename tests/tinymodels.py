"""Tiny random checkpoints shared by several test directories (import after adding tests/ to sys.path)."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def build_tiny_llama3(out: Path, seed: int = 0, max_seq_len: int = 16384) -> Path:
    """A 2-layer, dim-64 Llama with the Llama 3 vocabulary and a long context, in HF layout; weights
    scaled so that logits are O(1) (greedy choices are then clear, not near-ties)."""
    from herd.config import ModelArgs
    from herd.model.llama import Transformer
    from herd.model.weights import save_hf

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, hidden_dim=128,
                     rope_theta=500000.0, max_seq_len=max_seq_len)
    g = torch.Generator().manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.startswith("tok_embeddings"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    save_hf(model, args, out)
    return out


def prompt_of(n: int, salt: int = 0) -> list[int]:
    """n Llama 3 token ids: BOS then ordinary tokens (deterministic)."""
    g = torch.Generator().manual_seed(n * 7 + salt)
    return [128000, *torch.randint(1000, 100000, (n - 1,), generator=g).tolist()]
