"""The embedding side of retrieval: a sentence encoder (all-MiniLM-L6-v2 by default, or any
sentence-transformers-layout directory) used for chunks and queries, batched and L2-normalised.

    embedder = Embedder.load()                   # the embedded all-MiniLM-L6-v2
    vectors = embedder.embed(["a chunk", ...])   # (N, dim) float32, unit length
    ids, spans = embedder.tokens(text)           # the model's tokens with their character spans (chunking)

A text longer than the model's window (MiniLM reads 256 tokens) is not cut: it is embedded window by
window and the windows' vectors are averaged (then normalised), so every part of a long chunk counts.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from herd.errors import HerdError
from herd.model.bert import MINILM_NAMES, SentenceEncoder, minilm_dir

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class Embedder:
    """A SentenceEncoder seen as retrieval needs it: token spans for chunking, vectors for texts of any length."""

    def __init__(self, encoder: SentenceEncoder, model_id: str = DEFAULT_MODEL) -> None:
        self.encoder, self.model_id = encoder, model_id
        self.dim = encoder.dim
        self.window = encoder.max_seq_length - 2  # tokens of text besides [CLS] and [SEP]
        frame = encoder.tokenizer.encode("").ids  # the special tokens around every input
        self._head, self._tail = frame[:1], frame[1:]

    @classmethod
    def load(cls, name_or_path: str | Path | None = None) -> Embedder:
        """The embedded all-MiniLM-L6-v2 (None or one of its names), or a sentence-transformers directory."""
        if name_or_path is None or str(name_or_path) in MINILM_NAMES:
            return cls(SentenceEncoder(minilm_dir()), DEFAULT_MODEL)
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
            raise HerdError(f"embedding model {str(name_or_path)!r}: not a known name ({', '.join(MINILM_NAMES)}) "
                            "nor a directory with config.json, tokenizer.json and model.safetensors")
        return cls(SentenceEncoder(path), path.name)

    def tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The text's token ids (no special tokens) and each token's (start, end) character span."""
        enc = self.encoder.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def count_tokens(self, text: str) -> int:
        return len(self.encoder.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 unit vectors; a text beyond the window is the normalised mean of its windows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.encoder.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        inputs, owner = [], []
        for i, enc in enumerate(encodings):
            ids = enc.ids or []
            for start in range(0, max(len(ids), 1), self.window):
                inputs.append(self._head + ids[start:start + self.window] + self._tail)
                owner.append(i)
        vectors = self.encoder.encode_ids(inputs, batch_size=batch_size)
        if len(inputs) == len(texts):
            return vectors
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        np.add.at(out, np.asarray(owner), vectors)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]
