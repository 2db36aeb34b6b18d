"""builtin::rag: the `knowledge_search` tool over vector stores (herd/rag), as Llama Stack's agents use it.

An agent names the stores in the tool group's args, which the agent loop merges into every call:

    toolgroups: [{"name": "builtin::rag/knowledge_search", "args": {"vector_db_ids": ["docs"]}}]

The result is the retrieved chunks laid out for the model (herd.rag.search.format_results), and its
metadata lists what was used: `document_ids`, `chunks`, `scores` (the turn's tool_execution step shows
them; `results` adds file names and attributes, which the Responses API's file_search_call shows). The
RagService is reached through a callable, so the group costs nothing until it is used.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from herd.errors import HerdError
from herd.rag.filters import parse_filter
from herd.rag.search import DEFAULT_TEMPLATE, Ranker, format_results
from herd.tools.base import Tool, ToolResult

GROUP_ID = "builtin::rag"
PROVIDER_ID = "rag-runtime"
TOOL = "knowledge_search"


class RagToolGroup:
    """The builtin::rag tool group over a RagService (given as a callable that makes or returns it)."""

    id = GROUP_ID
    provider_id = PROVIDER_ID

    def __init__(self, service: Callable[[], Any], default_chunks: int = 5) -> None:
        self._service = service
        self.default_chunks = default_chunks

    def list_tools(self) -> list[Tool]:
        return [Tool(TOOL, "Search for information in a database.", {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "The query to search for. Can be a natural "
                                     "language sentence or keywords."}},
            "required": ["query"]}, toolgroup_id=GROUP_ID, provider_id=PROVIDER_ID)]

    async def invoke(self, tool_name: str, kwargs: dict[str, Any], *, session_id: str | None = None) -> ToolResult:
        if tool_name != TOOL:
            return ToolResult.error(f"{GROUP_ID} has no tool {tool_name!r}", code=1)
        query = kwargs.get("query")
        if not isinstance(query, str) or not query.strip():
            return ToolResult.error("knowledge_search needs a non-empty query", code=1)
        ids = kwargs.get("vector_db_ids") or kwargs.get("vector_store_ids")
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
            return ToolResult.error("knowledge_search needs vector_db_ids: give them in the tool group's args, e.g. "
                                    '{"name": "builtin::rag/knowledge_search", "args": {"vector_db_ids": ["docs"]}}',
                                    code=1)
        cfg = kwargs.get("query_config") or {}
        if not isinstance(cfg, dict):
            return ToolResult.error("query_config must be an object", code=1)
        try:
            k = int(cfg.get("max_chunks", self.default_chunks))
            ranker = Ranker.parse(cfg.get("ranker"), "query_config.ranker")
            where = parse_filter(cfg.get("filters"), "query_config.filters")
            threshold = cfg.get("score_threshold")
            hits = await asyncio.to_thread(self._service().search, ids, query, mode=cfg.get("mode") or "hybrid",
                                           k=k, where=where, ranker=ranker,
                                           score_threshold=None if threshold is None else float(threshold))
            max_tokens = cfg.get("max_tokens_in_context", 4096)
            text, used = format_results(query, hits, max_tokens if isinstance(max_tokens, int) else None,
                                        cfg.get("chunk_template") or DEFAULT_TEMPLATE)
        except (HerdError, ValueError, TypeError) as e:
            return ToolResult.error(f"knowledge_search: {e}", code=1)
        names = await asyncio.to_thread(self._service().filenames, [h.chunk.document_id for h in used])
        results = [{"file_id": h.chunk.document_id, "filename": names.get(h.chunk.document_id, h.chunk.document_id),
                    "score": round(h.score, 6), "text": h.chunk.text,
                    "attributes": {k: v for k, v in h.chunk.metadata.items() if isinstance(v, (str, int, float, bool))}}
                   for h in used]
        return ToolResult(text, metadata={"document_ids": [h.chunk.document_id for h in used],
                                          "chunks": [h.chunk.text for h in used],
                                          "scores": [round(h.score, 6) for h in used], "results": results})

    async def end_session(self, session_id: str) -> None:
        return None

    async def close(self) -> None:
        return None
