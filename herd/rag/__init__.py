"""Retrieval: documents in, chunks embedded and stored (SQLite with sqlite-vec and FTS5), searched by
vector, keyword or both. No HTTP here: herd/serve serves it, herd/cli/rag.py drives it.

    from herd.rag import Embedder, RagService
    rag = RagService(Embedder.load())
"""
from __future__ import annotations

from typing import Any

__all__ = ["Embedder", "RagService"]


def __getattr__(name: str) -> Any:  # lazily: herd.rag.filters and friends import without torch
    if name == "Embedder":
        from herd.rag.embed import Embedder

        return Embedder
    if name == "RagService":
        from herd.rag.service import RagService

        return RagService
    raise AttributeError(name)
