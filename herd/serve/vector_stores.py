"""Retrieval over HTTP: the logic of OpenAI's `/v1/files` and `/v1/vector_stores/*` and of Llama Stack
0.2's `/v1/vector-dbs`, `/v1/vector-io/*` and `/v1/tool-runtime/rag-tool/*` (routes: herd/serve/routes.py),
over one herd.rag RagService (`app.state.rag`, made on first use, in `<herd_home>/rag` by default).

A Llama Stack vector DB is a vector store whose id the client chose: both APIs see the same stores.
Bad input is refused before anything changes: an unsupported type, an empty file, a corrupt PDF is a 400
at upload (purpose `assistants` / `user_data`) or when attaching, a file over `rag.max_file_bytes` a 413.
Ingestion (chunking and embedding) runs in the background: the file's status goes `in_progress` ->
`completed` / `failed` with `last_error`, as OpenAI reports it.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI

from herd.errors import HerdError
from herd.rag.chunking import Chunk, Chunking
from herd.rag.embed import Embedder
from herd.rag.extract import Document, ExtractionError, Section, extract
from herd.rag.filters import parse_filter
from herd.rag.search import DEFAULT_TEMPLATE, Ranker, format_results
from herd.rag.service import (
    BatchRecord,
    Conflict,
    FileRecord,
    NotFound,
    RagService,
    StoreFileRecord,
    StoreRecord,
)
from herd.rag.settings import RagSettings
from herd.rag.store import Hit
from herd.serve import protocol as p
from herd.serve.errors import APIError, bad_request, not_found
from herd.serve.models import ModelRegistry
from herd.serve.stored import DEFAULT_LIMIT, MAX_LIMIT, page_args

log = logging.getLogger("herd.serve")
T = TypeVar("T")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
RETRIEVAL_PURPOSES = ("assistants", "user_data")  # checked for readable text at upload


# ---- the service of an app -----------------------------------------------------------------------


def service(app: FastAPI) -> RagService:
    """The app's RagService, made on first use (the embedding model is the registry's: no second copy)."""
    state = app.state
    rag = getattr(state, "rag", None)
    if rag is None:
        settings: RagSettings = state.config.rag
        if not settings.enabled:
            raise APIError(404, "retrieval is turned off on this server (rag.enabled: false)", code="rag_disabled")
        registry: ModelRegistry = state.registry
        model = registry.embedding(settings.embedding_model, "embedding_model")
        rag = state.rag = RagService(Embedder(model.encoder, model.id), settings.path,
                                     workers=settings.workers, max_file_bytes=settings.max_file_bytes)
    return rag


def start(app: FastAPI) -> None:
    """At start-up: where a retrieval state exists, open it and go on with the files left in progress."""
    settings: RagSettings = app.state.config.rag
    if not settings.enabled:
        return
    from herd.home import herd_home

    db = Path(settings.path or herd_home(create=False) / "rag") / "rag.sqlite"
    if not db.exists():
        return
    try:
        n = service(app).resume()
    except (APIError, HerdError) as e:
        log.warning("retrieval: cannot resume ingestion in %s: %s", db, e)
        return
    if n:
        log.info("retrieval: ingesting %d file(s) left in progress", n)


def close(app: FastAPI) -> None:
    rag = getattr(app.state, "rag", None)
    if rag is not None:
        rag.close()


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking RagService work off the event loop, mapping its errors to HTTP ones."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except NotFound as e:
        raise not_found(str(e), e.param) from None
    except Conflict as e:
        raise APIError(409, str(e), param=e.param, code="conflict") from None
    except ExtractionError as e:
        raise bad_request(str(e), "file", type(e).__name__) from None
    except HerdError as e:
        raise bad_request(str(e), e.param) from None


# ---- shapes --------------------------------------------------------------------------------------


def file_object(f: FileRecord) -> dict[str, Any]:
    return p.dump(p.FileObject(id=f.id, bytes=f.bytes, created_at=f.created_at, filename=f.filename, purpose=f.purpose))


def _counts(c: Mapping[str, int]) -> p.FileCounts:
    return p.FileCounts(**{k: c.get(k, 0) for k in ("in_progress", "completed", "failed", "cancelled", "total")})


def store_object(s: StoreRecord) -> dict[str, Any]:
    expires_at = s.last_active_at + 86400 * s.expires_after["days"] if s.expires_after else None
    status = "expired" if expires_at is not None and expires_at < time.time() else s.status
    return p.dump(p.VectorStoreObject(id=s.id, created_at=s.created_at, name=s.name, usage_bytes=s.usage_bytes,
                                      file_counts=_counts(s.file_counts), status=status, expires_after=s.expires_after,
                                      expires_at=expires_at, last_active_at=s.last_active_at, metadata=s.metadata))


def store_file_object(f: StoreFileRecord) -> dict[str, Any]:
    return p.dump(p.VectorStoreFileObject(id=f.file_id, created_at=f.created_at, vector_store_id=f.store_id,
                                          status=f.status, usage_bytes=f.usage_bytes, last_error=f.last_error,
                                          chunking_strategy=f.chunking.to_openai(), attributes=f.attributes))


def batch_object(b: BatchRecord) -> dict[str, Any]:
    return p.dump(p.FileBatchObject(id=b.id, created_at=b.created_at, vector_store_id=b.store_id, status=b.status,
                                    file_counts=_counts(b.file_counts)))


def page(items: Sequence[dict[str, Any]], q: Mapping[str, str]) -> dict[str, Any]:
    """An OpenAI cursor page of items listed newest first: `limit`, `order`, `after`, `before`."""
    limit, order, _ = page_args(q, "desc")
    items = list(items) if order == "desc" else list(reversed(items))
    ids = [x["id"] for x in items]
    for cursor in ("after", "before"):
        value = q.get(cursor)
        if value:
            if value not in ids:
                raise bad_request(f"{cursor}: no object {value!r} in this list", cursor)
            i = ids.index(value)
            items, ids = (items[i + 1:], ids[i + 1:]) if cursor == "after" else (items[:i], ids[:i])
    data = items[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit}


PAGE_PARAMS = [{"name": n, "in": "query", "required": False, "schema": s} for n, s in (
    ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
    ("order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"}),
    ("after", {"type": "string"}), ("before", {"type": "string"}))]


def _chunking(raw: Any) -> Chunking | None:
    return None if raw is None else Chunking.parse(raw)


# ---- OpenAI files --------------------------------------------------------------------------------


async def upload_file(rag: RagService, filename: str | None, data: bytes, purpose: str) -> dict[str, Any]:
    """POST /v1/files (multipart: file, purpose)."""
    if purpose not in PURPOSES:
        raise bad_request(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", "purpose")
    if len(data) > rag.max_file_bytes:
        raise APIError(413, f"{filename or 'the file'} is {len(data)} bytes; this server takes files up to "
                       f"{rag.max_file_bytes} bytes (rag.max_file_bytes)", param="file", code="file_too_large")
    if purpose in RETRIEVAL_PURPOSES and data:  # refused now rather than failing later in a vector store
        await call(extract, filename or "", data)
    return file_object(await call(rag.add_file, filename or "", data, purpose))


async def list_files(rag: RagService, q: Mapping[str, str]) -> dict[str, Any]:
    files = await call(rag.list_files, q.get("purpose") or None)
    return page([file_object(f) for f in files], q)


async def get_file(rag: RagService, file_id: str) -> dict[str, Any]:
    return file_object(await call(rag.get_file, file_id))


async def file_content(rag: RagService, file_id: str) -> tuple[bytes, str]:
    rec = await call(rag.get_file, file_id)
    return await call(rag.file_content, file_id), rec.filename


async def delete_file(rag: RagService, file_id: str) -> dict[str, Any]:
    await call(rag.delete_file, file_id)
    return p.dump(p.FileDeleted(id=file_id))


# ---- OpenAI vector stores ---------------------------------------------------------------------------


async def create_store(rag: RagService, body: p.VectorStoreCreateRequest) -> dict[str, Any]:
    chunking = await call(_chunking, body.chunking_strategy)
    for fid in body.file_ids:  # every file readable before the store exists
        await call(rag.extract_file, fid)
    store = await call(rag.create_store, body.name, metadata=body.metadata, chunking=chunking,
                       embedding_model=body.embedding_model, dim=body.embedding_dimension,
                       expires_after=body.expires_after.model_dump() if body.expires_after else None)
    for fid in dict.fromkeys(body.file_ids):
        await call(rag.attach, store.id, fid)
    return store_object(await call(rag.get_store, store.id))


async def list_stores(rag: RagService, q: Mapping[str, str]) -> dict[str, Any]:
    return page([store_object(s) for s in await call(rag.list_stores)], q)


async def get_store(rag: RagService, store_id: str) -> dict[str, Any]:
    return store_object(await call(rag.get_store, store_id))


async def update_store(rag: RagService, store_id: str, body: p.VectorStoreUpdateRequest) -> dict[str, Any]:
    return store_object(await call(rag.update_store, store_id, name=body.name, metadata=body.metadata,
                                   expires_after=body.expires_after.model_dump() if body.expires_after else None))


async def delete_store(rag: RagService, store_id: str) -> dict[str, Any]:
    await call(rag.delete_store, store_id)
    return p.dump(p.VectorStoreDeleted(id=store_id))


async def attach_file(rag: RagService, store_id: str, body: p.VectorStoreFileCreateRequest) -> dict[str, Any]:
    chunking = await call(_chunking, body.chunking_strategy)
    return store_file_object(await call(rag.attach, store_id, body.file_id, body.attributes, chunking))


async def list_store_files(rag: RagService, store_id: str, q: Mapping[str, str],
                           batch_id: str | None = None) -> dict[str, Any]:
    if batch_id is not None:
        await call(rag.get_batch, store_id, batch_id)
    files = await call(rag.list_store_files, store_id, q.get("filter") or None, batch_id)
    return page([store_file_object(f) for f in files], q)


async def get_store_file(rag: RagService, store_id: str, file_id: str) -> dict[str, Any]:
    return store_file_object(await call(rag.get_store_file, store_id, file_id))


async def update_store_file(rag: RagService, store_id: str, file_id: str,
                            body: p.VectorStoreFileUpdateRequest) -> dict[str, Any]:
    return store_file_object(await call(rag.update_attributes, store_id, file_id, body.attributes))


async def detach_file(rag: RagService, store_id: str, file_id: str) -> dict[str, Any]:
    await call(rag.detach, store_id, file_id)
    return p.dump(p.VectorStoreFileDeleted(id=file_id))


async def store_file_content(rag: RagService, store_id: str, file_id: str) -> dict[str, Any]:
    """The file's chunks as text items (a single page), as the `openai` client reads them."""
    chunks = await call(rag.store_file_chunks, store_id, file_id)
    return {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": c.text} for c in chunks],
            "has_more": False, "next_page": None}


async def create_batch(rag: RagService, store_id: str, body: p.FileBatchCreateRequest) -> dict[str, Any]:
    chunking = await call(_chunking, body.chunking_strategy)
    return batch_object(await call(rag.create_batch, store_id, body.file_ids, body.attributes, chunking))


async def get_batch(rag: RagService, store_id: str, batch_id: str) -> dict[str, Any]:
    return batch_object(await call(rag.get_batch, store_id, batch_id))


async def cancel_batch(rag: RagService, store_id: str, batch_id: str) -> dict[str, Any]:
    return batch_object(await call(rag.cancel_batch, store_id, batch_id))


def _ranking(opts: p.RankingOptions | None) -> tuple[Ranker, float | None]:
    if opts is None:
        return Ranker(), None
    ranker = Ranker()
    if opts.hybrid_search:
        ew, tw = float(opts.hybrid_search.get("embedding_weight", 1.0)), float(opts.hybrid_search.get("text_weight", 1.0))
        if ew < 0 or tw < 0 or ew + tw <= 0:
            raise bad_request("ranking_options.hybrid_search weights must be >= 0 and not both 0",
                              "ranking_options.hybrid_search")
        ranker = Ranker("weighted", alpha=ew / (ew + tw))
    return ranker, opts.score_threshold


async def search_store(rag: RagService, store_id: str, body: p.VectorStoreSearchRequest) -> dict[str, Any]:
    """POST /v1/vector_stores/{id}/search: a page of results (file id, filename, score, attributes, text)."""
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    if not queries or not all(isinstance(x, str) and x.strip() for x in queries):
        raise bad_request("query must be a non-empty string or a list of them", "query")
    where = await call(parse_filter, body.filters)
    ranker, threshold = _ranking(body.ranking_options)
    hits = await call(rag.search, [store_id], " ".join(queries), mode=body.search_mode, k=body.max_num_results,
                      where=where, ranker=ranker, score_threshold=threshold)
    return {"object": "vector_store.search_results.page", "search_query": queries,
            "data": await search_results(rag, hits), "has_more": False, "next_page": None}


async def search_results(rag: RagService, hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits in OpenAI's search-result shape (also the Responses API's file_search results)."""
    names = await call(rag.filenames, [h.chunk.document_id for h in hits])
    return [{"file_id": h.chunk.document_id, "filename": names.get(h.chunk.document_id, h.chunk.document_id),
             "score": round(h.score, 6), "attributes": _public(h.chunk.metadata),
             "content": [{"type": "text", "text": h.chunk.text}]} for h in hits]


def _public(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}


# ---- Llama Stack 0.2: vector-dbs, vector-io, rag-tool ---------------------------------------------------


def vector_db(s: StoreRecord) -> dict[str, Any]:
    return p.dump(p.VectorDBResource(identifier=s.id, provider_resource_id=s.id, embedding_model=s.embedding_model,
                                     embedding_dimension=s.dim, vector_db_name=s.name))


async def register_vector_db(rag: RagService, body: p.RegisterVectorDBRequest) -> dict[str, Any]:
    """POST /v1/vector-dbs: a vector store with the client's id; registering the same one again is a no-op."""
    try:
        existing = await call(rag.get_store, body.vector_db_id)
    except APIError as e:
        if e.status != 404:
            raise
        existing = None
    if existing is not None:
        if body.embedding_model not in (existing.embedding_model, *_aliases(existing)):
            raise APIError(409, f"vector DB {body.vector_db_id!r} exists with embedding model "
                           f"{existing.embedding_model}", param="embedding_model", code="conflict")
        return vector_db(existing)
    store = await call(rag.create_store, body.vector_db_id, store_id=body.vector_db_id,
                       embedding_model=body.embedding_model, dim=body.embedding_dimension)
    return vector_db(store)


def _aliases(s: StoreRecord) -> tuple[str, ...]:
    from herd.model.bert import MINILM_NAMES

    return MINILM_NAMES if s.embedding_model in MINILM_NAMES else ()


async def list_vector_dbs(rag: RagService) -> dict[str, Any]:
    return {"data": [vector_db(s) for s in await call(rag.list_stores)]}


async def get_vector_db(rag: RagService, vector_db_id: str) -> dict[str, Any]:
    return vector_db(await call(rag.get_store, vector_db_id))


async def delete_vector_db(rag: RagService, vector_db_id: str) -> None:
    await call(rag.delete_store, vector_db_id)


def content_text(content: Any, param: str) -> str:
    """The text of Llama Stack content: a string, a text item, or a list of them (images are a 400)."""
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    parts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        else:
            raise bad_request(f"{param}[{i}]: only text content can be stored and searched", param)
    return "".join(parts)


async def insert_chunks(rag: RagService, body: p.VectorIOInsertRequest) -> None:
    """POST /v1/vector-io/insert: chunks (metadata.document_id names their document) with optional
    precomputed embeddings (all or none of them; of the store's dimension)."""
    store = await call(rag.get_store, body.vector_db_id)
    chunks, vectors = [], []
    for i, c in enumerate(body.chunks):
        text = content_text(c.content, f"chunks[{i}].content")
        if not text.strip():
            raise bad_request(f"chunks[{i}].content is empty", f"chunks[{i}].content")
        doc = str(c.metadata.get("document_id") or (c.chunk_metadata or {}).get("document_id")
                  or f"doc-{uuid.uuid4().hex[:16]}")  # a chunk without a document is a document of its own
        chunks.append(Chunk(text, doc, int(c.metadata.get("position", 0)) if isinstance(
            c.metadata.get("position"), int) else 0, dict(c.metadata), 0, c.chunk_id or c.stored_chunk_id or ""))
        vectors.append(c.embedding)
    given = [v is not None for v in vectors]
    if any(given) and not all(given):
        raise bad_request("give an embedding for every chunk or for none", "chunks")
    array = None
    if all(given) and chunks:
        import numpy as np

        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != store.dim:
            raise bad_request(f"embeddings must have {store.dim} dimensions (the store's)", "chunks.embedding")
        array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
    for c in chunks:
        c.token_count = len(c.text.split())
    await call(rag.insert_chunks, store.id, chunks, array)


def _query_params(raw: Mapping[str, Any] | None, param: str) -> dict[str, Any]:
    """Llama Stack query parameters: max_chunks, score_threshold, mode, ranker (and herd's `filters`)."""
    raw = dict(raw or {})
    k = raw.get("max_chunks", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise bad_request(f"{param}.max_chunks must be an integer in 1..1000", f"{param}.max_chunks")
    mode = raw.get("mode") or "vector"
    if mode not in ("vector", "keyword", "hybrid"):
        raise bad_request(f"{param}.mode must be vector, keyword or hybrid, got {mode!r}", f"{param}.mode")
    threshold = raw.get("score_threshold")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise bad_request(f"{param}.score_threshold must be a number", f"{param}.score_threshold")
    try:
        ranker = Ranker.parse(raw.get("ranker"), f"{param}.ranker")
        where = parse_filter(raw.get("filters"), f"{param}.filters")
    except HerdError as e:
        raise bad_request(str(e), e.param) from None
    return {"k": k, "mode": mode, "score_threshold": None if threshold is None else float(threshold),
            "ranker": ranker, "where": where}


def stack_chunk(c: Chunk) -> dict[str, Any]:
    return {"content": c.text, "metadata": {"document_id": c.document_id, **c.metadata}, "chunk_id": c.chunk_id,
            "stored_chunk_id": c.chunk_id}


async def query_chunks(rag: RagService, body: p.VectorIOQueryRequest) -> dict[str, Any]:
    """POST /v1/vector-io/query: {chunks, scores}, best first."""
    text = content_text(body.query, "query")
    params = _query_params(body.params, "params")
    hits = await call(rag.search, [body.vector_db_id], text, **params)
    return {"chunks": [stack_chunk(h.chunk) for h in hits], "scores": [h.score for h in hits]}


def _document(doc: p.RagDocumentIn, i: int) -> Document:
    """A rag-tool document's text: a string, text items, or a data: URL (decoded and extracted by type)."""
    content, where = doc.content, f"documents[{i}].content"
    uri = content.get("uri") if isinstance(content, dict) and "uri" in content else content if isinstance(
        content, str) and content.startswith("data:") else None
    if isinstance(uri, dict):
        uri = uri.get("uri")
    if isinstance(uri, str):
        if not uri.startswith("data:"):
            raise bad_request(f"{where}: herd does not fetch URLs ({uri[:60]!r}); send the text or a data: URL", where)
        head, _, payload = uri.partition(",")
        mime = head[5:].split(";")[0] or doc.mime_type or "text/plain"
        data = base64.b64decode(payload) if ";base64" in head else urllib.parse.unquote_to_bytes(payload)
        try:
            return extract(doc.document_id, data, mime)
        except ExtractionError as e:
            raise bad_request(f"{where}: {e}", where) from None
    text = content_text(content, where)
    if not text.strip():
        raise bad_request(f"{where} is empty", where)
    return Document(doc.document_id, doc.mime_type or "text/plain", [Section(text)])


async def rag_insert(rag: RagService, body: p.RagInsertRequest) -> None:
    """POST /v1/tool-runtime/rag-tool/insert: documents chunked (chunk_size_in_tokens, a quarter overlapping)."""
    store = await call(rag.get_store, body.vector_db_id)
    docs = [_document(d, i) for i, d in enumerate(body.documents)]  # all checked before any is stored
    size = body.chunk_size_in_tokens
    chunking = Chunking.static(size, size // 4)  # Llama Stack's sizes may be under OpenAI's 100
    for d, doc in zip(body.documents, docs):
        await call(rag.insert_document, store.id, d.document_id, doc, d.metadata, chunking)


async def rag_query(rag: RagService, body: p.RagQueryRequest) -> dict[str, Any]:
    """POST /v1/tool-runtime/rag-tool/query: {content, metadata: {document_ids, chunks, scores}}."""
    text = content_text(body.content, "content")
    cfg = dict(body.query_config or {})
    params = _query_params({"max_chunks": cfg.get("max_chunks", 5), "mode": cfg.get("mode"),
                            "ranker": cfg.get("ranker"), "filters": cfg.get("filters")}, "query_config")
    hits = await call(rag.search, body.vector_db_ids, text, **params)
    max_tokens = cfg.get("max_tokens_in_context", 4096)
    template = cfg.get("chunk_template") or DEFAULT_TEMPLATE
    try:
        out, used = format_results(text, hits, max_tokens if isinstance(max_tokens, int) else None, template)
    except (ValueError, IndexError, KeyError) as e:
        raise bad_request(f"query_config.chunk_template: {e}", "query_config.chunk_template") from None
    return {"content": [{"type": "text", "text": out}],
            "metadata": {"document_ids": [h.chunk.document_id for h in used], "chunks": [h.chunk.text for h in used],
                         "scores": [h.score for h in used]}}
