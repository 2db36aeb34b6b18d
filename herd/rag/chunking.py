"""Chunking: a document's text cut into overlapping windows of the embedding model's tokens.

Strategies as the OpenAI vector-store API names them:
  - `static`: `max_chunk_size_tokens` (100-4096, default 800) with `chunk_overlap_tokens` (at most half
    of it, default 400), OpenAI's defaults;
  - `auto`: windows that fit the embedding model (all-MiniLM-L6-v2 reads 256 tokens: 254-token chunks
    with 127 overlapping), capped at 800/400, so each chunk's vector sees its whole text.

Chunks never split a token, and cut at the token spans of the embedding tokenizer, so a chunk's text
is a verbatim slice of the document. Each chunk carries the metadata of the section it starts in
(`page` for PDFs, `section` for headings, `record` for JSONL) and its position in the document.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Literal

from herd.errors import HerdError
from herd.rag.extract import Document

MAX_TOKENS, OVERLAP = 800, 400  # OpenAI's static defaults
MIN_SIZE, MAX_SIZE = 100, 4096  # OpenAI's bounds on max_chunk_size_tokens


@dataclass(frozen=True)
class Chunking:
    """How to cut documents; `resolve(window)` turns `auto` into numbers for one embedding model."""

    type: Literal["auto", "static"] = "auto"
    max_tokens: int = MAX_TOKENS
    overlap: int = OVERLAP

    def __post_init__(self) -> None:
        if self.type not in ("auto", "static"):
            raise HerdError(f"chunking_strategy.type must be 'auto' or 'static', got {self.type!r}",
                            "chunking_strategy.type")
        if self.max_tokens < 1 or not 0 <= self.overlap < self.max_tokens:
            raise HerdError(f"chunks need at least 1 token and an overlap smaller than their size; got "
                            f"{self.max_tokens} and {self.overlap}", "chunking_strategy")

    @staticmethod
    def check_openai_bounds(size: int, overlap: int, param: str = "chunking_strategy") -> None:
        """OpenAI's rules for a requested static strategy: size 100..4096, overlap at most half of it."""
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise HerdError(f"{param}.static.max_chunk_size_tokens must be in {MIN_SIZE}..{MAX_SIZE}, "
                            f"got {size}", f"{param}.static.max_chunk_size_tokens")
        if not 0 <= overlap <= size // 2:
            raise HerdError(f"{param}.static.chunk_overlap_tokens must be in 0..{size // 2} "
                            f"(at most half of max_chunk_size_tokens), got {overlap}",
                            f"{param}.static.chunk_overlap_tokens")

    @classmethod
    def parse(cls, raw: Any, param: str = "chunking_strategy") -> Chunking:
        """From the OpenAI shape: None / {"type": "auto"} / {"type": "static", "static": {...}}."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or raw.get("type") not in ("auto", "static"):
            raise HerdError(f"{param} must be {{'type': 'auto'}} or {{'type': 'static', 'static': "
                            "{'max_chunk_size_tokens': N, 'chunk_overlap_tokens': M}}", param)
        if raw["type"] == "auto":
            return cls()
        static = raw.get("static")
        if not isinstance(static, dict):
            raise HerdError(f"{param}.static is required for the static strategy", f"{param}.static")
        size, overlap = static.get("max_chunk_size_tokens", MAX_TOKENS), static.get("chunk_overlap_tokens", OVERLAP)
        for name, value in (("max_chunk_size_tokens", size), ("chunk_overlap_tokens", overlap)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise HerdError(f"{param}.static.{name} must be an integer", f"{param}.static.{name}")
        cls.check_openai_bounds(size, overlap, param)
        return cls("static", size, overlap)

    @classmethod
    def static(cls, max_tokens: int = MAX_TOKENS, overlap: int = OVERLAP) -> Chunking:
        return cls("static", max_tokens, overlap)

    def resolve(self, window: int) -> Chunking:
        """`auto` for a model that reads `window` tokens: min(800, window) with half of it overlapping."""
        if self.type == "static":
            return self
        size = max(MIN_SIZE, min(MAX_TOKENS, window))
        return Chunking("static", size, size // 2)

    def to_openai(self) -> dict[str, Any]:
        """What OpenAI reports on a vector store file (always the static numbers used)."""
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_tokens,
                                             "chunk_overlap_tokens": self.overlap}}


@dataclass
class Chunk:
    """A piece of a document as stored and retrieved."""

    text: str
    document_id: str
    position: int = 0  # index of the chunk within its document
    metadata: dict[str, Any] = field(default_factory=dict)
    token_count: int = 0
    chunk_id: str = ""  # given by the store


def chunk_document(doc: Document, document_id: str, tokens_of: Any, chunking: Chunking,
                   metadata: dict[str, Any] | None = None) -> list[Chunk]:
    """Cut a document into chunks. `tokens_of(text) -> (ids, spans)` is the embedding model's tokenizer
    (Embedder.tokens); `chunking` must be resolved (static); `metadata` is added to every chunk."""
    sections = [s for s in doc.sections if s.text.strip()]
    text, starts = "", []
    for s in sections:
        if text:
            text += "\n\n"
        starts.append(len(text))
        text += s.text
    _, spans = tokens_of(text)
    size, step = chunking.max_tokens, chunking.max_tokens - chunking.overlap
    chunks: list[Chunk] = []
    for first in range(0, max(len(spans), 1), step):
        window = spans[first:first + size]
        if not window:
            break
        begin, end = window[0][0], window[-1][1]
        section = sections[max(0, bisect.bisect_right(starts, begin) - 1)] if sections else None
        meta = {**(section.metadata if section else {}), **(metadata or {})}
        chunks.append(Chunk(text[begin:end], document_id, len(chunks), meta, len(window)))
        if first + size >= len(spans):
            break
    return chunks
