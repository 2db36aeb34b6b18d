"""Ranking over any VectorStore: vector, keyword and hybrid search, score thresholds and result counts.

Hybrid search asks both searches for a deeper candidate list and fuses them:
  - `weighted` (default): relative score fusion, alpha * vector + (1 - alpha) * keyword, each list's
    scores min-max normalised to 0..1 first (a chunk missing from a list gets 0 there); alpha 0.75 by
    default — Weaviate's defaults (relativeScoreFusion since 1.24, alpha 0.75);
  - `rrf`: reciprocal-rank fusion, sum over the lists of 1 / (impact_factor + rank), rank from 1,
    impact_factor 60 as in the RRF paper (Llama Stack's ranker), scaled to 0..1 (1 = first in both).
BENCHMARKS.md (Retrieval quality) compares them on the labelled set of the tests.
Reported scores are in 0..1 for every mode (vector: cosine similarity; keyword: BM25 s as s / (1 + s);
hybrid: as above). `score_threshold` drops results below it, on the reported score of the mode used.
"""
from __future__ import annotations

import _string  # str.format's field-name parser, as string.Formatter uses it
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from herd.errors import HerdError
from herd.rag.filters import Filter
from herd.rag.store import Hit, VectorStore

Mode = Literal["vector", "keyword", "hybrid"]
MODES = ("vector", "keyword", "hybrid")
RRF_K = 60.0
ALPHA = 0.75  # weighted fusion: the vector search's share
# how format_results lays out one chunk (Llama Stack's rag tool `chunk_template`)
DEFAULT_TEMPLATE = "Result {index}\nContent: {chunk.content}\nMetadata: {metadata}\n"


@dataclass(frozen=True)
class Ranker:
    """How hybrid search fuses its two lists."""

    type: Literal["rrf", "weighted"] = "weighted"
    impact_factor: float = RRF_K  # rrf
    alpha: float = ALPHA  # weighted: the vector search's share

    def __post_init__(self) -> None:
        if self.type not in ("rrf", "weighted"):
            raise HerdError(f"ranker.type must be 'rrf' or 'weighted', got {self.type!r}", "ranker.type")
        if self.impact_factor <= 0:
            raise HerdError(f"ranker.impact_factor must be > 0, got {self.impact_factor}", "ranker.impact_factor")
        if not 0.0 <= self.alpha <= 1.0:
            raise HerdError(f"ranker.alpha must be in 0..1, got {self.alpha}", "ranker.alpha")

    @classmethod
    def parse(cls, raw: Any, param: str = "ranker") -> Ranker:
        """From Llama Stack's {"type": "rrf", "impact_factor": 60} / {"type": "weighted", "alpha": 0.5}
        (None: the default, weighted with alpha 0.75)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise HerdError(f"{param} must be an object with a type ('rrf' or 'weighted')", param)
        kind = raw.get("type", "rrf")
        try:
            return cls(kind, float(raw.get("impact_factor", RRF_K)), float(raw.get("alpha", ALPHA)))
        except (TypeError, ValueError):
            raise HerdError(f"{param}: impact_factor and alpha must be numbers", param) from None


@dataclass(frozen=True)
class Query:
    """One search: its text (and vector, for vector and hybrid), how many, which, ranked how."""

    text: str
    vector: np.ndarray | None = None
    mode: Mode = "vector"
    k: int = 10
    where: Filter | None = None
    ranker: Ranker = Ranker()
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HerdError(f"search mode must be one of {', '.join(MODES)}, got {self.mode!r}", "mode")
        if not 1 <= self.k <= 1000:
            raise HerdError(f"the number of results must be in 1..1000, got {self.k}", "max_num_results")
        if self.mode != "keyword" and self.vector is None:
            raise HerdError(f"{self.mode} search needs the query's embedding")


def search(store: VectorStore, collection_ids: Sequence[str], q: Query) -> list[Hit]:
    """The best `q.k` chunks over one or more collections (of one embedding model), best first."""
    hits: list[Hit] = []
    for cid in collection_ids:
        hits += _one(store, cid, q)
    hits.sort(key=lambda h: -h.score)
    if q.score_threshold is not None:
        hits = [h for h in hits if h.score >= q.score_threshold]
    return hits[:q.k]


def _one(store: VectorStore, cid: str, q: Query) -> list[Hit]:
    if q.mode == "vector":
        return [Hit(h.chunk, h.score, {"vector": h.score}) for h in store.vector_search(cid, q.vector, q.k, q.where)]
    if q.mode == "keyword":  # BM25 is unbounded: reported as s / (1 + s), in 0..1 like the other modes
        return [Hit(h.chunk, max(h.score, 0.0) / (1.0 + max(h.score, 0.0)), {"keyword": h.score})
                for h in store.keyword_search(cid, q.text, q.k, q.where)]
    depth = max(4 * q.k, 50)
    lists = {"vector": store.vector_search(cid, q.vector, depth, q.where),
             "keyword": store.keyword_search(cid, q.text, depth, q.where)}
    return fuse(lists, q.ranker)


def fuse(lists: dict[str, list[Hit]], ranker: Ranker) -> list[Hit]:
    """Fuse ranked lists (each best first) into one, best first; each hit keeps its per-list scores."""
    chunks: dict[str, Any] = {}
    raw: dict[str, dict[str, float]] = {}
    fused: dict[str, float] = {}
    for name, hits in lists.items():
        if ranker.type == "weighted" and hits:
            top, low = hits[0].score, hits[-1].score
            span = top - low
        for rank, h in enumerate(hits, 1):
            key = h.chunk.chunk_id
            chunks.setdefault(key, h.chunk)
            raw.setdefault(key, {})[name] = h.score
            if ranker.type == "rrf":
                part = 1.0 / (ranker.impact_factor + rank)
            else:
                norm = (h.score - low) / span if span > 0 else 1.0
                part = (ranker.alpha if name == "vector" else 1.0 - ranker.alpha) * norm
            fused[key] = fused.get(key, 0.0) + part
    if ranker.type == "rrf":  # scaled so that first in every list scores 1
        best = len(lists) / (ranker.impact_factor + 1)
        fused = {k: v / best for k, v in fused.items()}
    out = [Hit(chunks[k], s, raw[k]) for k, s in fused.items()]
    out.sort(key=lambda h: -h.score)
    return out


def format_results(query: str, hits: Sequence[Hit], max_tokens: int | None = None,
                   template: str = DEFAULT_TEMPLATE) -> tuple[str, list[Hit]]:
    """The retrieved chunks as the model reads them (Llama Stack's knowledge_search layout), within max_tokens
    (counted as words); the hits used."""
    used, parts, budget = [], [], max_tokens
    for h in hits:
        cost = len(h.chunk.text.split())
        if budget is not None and used and cost > budget:
            break
        if budget is not None:
            budget -= cost
        used.append(h)
    for i, h in enumerate(used, 1):
        meta = {"document_id": h.chunk.document_id, **{k: v for k, v in h.chunk.metadata.items()
                                                        if isinstance(v, (str, int, float, bool))}}
        parts.append(_SafeFormatter().vformat(template, (), {"index": i, "metadata": meta, "chunk": {
            "content": h.chunk.text, "chunk_id": h.chunk.chunk_id, "metadata": meta}}))
    head = f"knowledge_search tool found {len(used)} chunks:\nBEGIN of knowledge_search tool results.\n"
    tail = (f"END of knowledge_search tool results.\nThe above results were retrieved to help answer the user's "
            f"query: \"{query}\". Use them as supporting information only in answering this query.\n")
    return head + "".join(parts) + tail, used


class _SafeFormatter(string.Formatter):
    """str.format for client-written templates: fields name only what format_results provides, so a
    template like {chunk.__class__.__init__.__globals__} cannot reach into the process."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, parts = _string.formatter_field_name_split(field_name)
        rest = list(parts)
        if not isinstance(first, str) or any(not isinstance(k, str) or k.startswith("_") for _, k in rest):
            raise ValueError(f"template field {{{field_name}}} is not allowed; use {{index}}, {{chunk.content}}, "
                             "{chunk.chunk_id} or {metadata}")
        obj = kwargs.get(first, "")
        for _, key in rest:
            obj = obj.get(key, "") if isinstance(obj, dict) else ""
        return obj, first
