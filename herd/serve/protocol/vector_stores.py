"""Retrieval and data shapes: OpenAI files and vector stores (as the `openai` client sends and reads them),
Llama Stack 0.2 vector-dbs, vector-io, the rag tool and datasets (as llama-stack-client 0.2.12 does)."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field

from herd.serve.protocol.common import Int, Metadata, RequestModel, ResponseModel

__all__ = ['AppendRowsRequest', 'RegisterDatasetRequest', 'ExpiresAfter', 'RankingOptions', 'FileBatchCreateRequest', 'FileObject', 'FileDeleted', 'RagDocumentIn', 'RagInsertRequest',
           'RagQueryRequest', 'RegisterVectorDBRequest', 'StackChunkIn', 'VectorIOInsertRequest',
           'VectorIOQueryRequest', 'VectorDBResource', 'VectorStoreCreateRequest', 'VectorStoreDeleted',
           'VectorStoreFileCreateRequest', 'VectorStoreFileDeleted', 'VectorStoreFileObject',
           'VectorStoreFileUpdateRequest', 'VectorStoreObject', 'VectorStoreSearchRequest',
           'VectorStoreUpdateRequest', 'FileBatchObject', 'FileCounts']

Attributes = dict[str, Union[str, float, bool]]


# ---- OpenAI requests --------------------------------------------------------------------------


class ExpiresAfter(RequestModel):
    anchor: Literal["last_active_at"] = "last_active_at"
    days: Int = Field(ge=1, le=365)


class VectorStoreCreateRequest(RequestModel):
    name: str | None = Field(None, max_length=256)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    chunking_strategy: dict[str, Any] | None = None
    metadata: Metadata | None = Field(None, max_length=16)
    expires_after: ExpiresAfter | None = None
    # Llama Stack 0.2 extensions of the same route
    embedding_model: str | None = None
    embedding_dimension: Int | None = None
    provider_id: str | None = None


class VectorStoreUpdateRequest(RequestModel):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = Field(None, max_length=16)
    expires_after: ExpiresAfter | None = None


class VectorStoreFileCreateRequest(RequestModel):
    file_id: str = Field(min_length=1)
    attributes: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None


class VectorStoreFileUpdateRequest(RequestModel):
    attributes: dict[str, Any]


class FileBatchCreateRequest(RequestModel):
    file_ids: list[str] = Field(min_length=1, max_length=500)
    attributes: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None


class RankingOptions(RequestModel):
    ranker: str | None = None  # "auto", "default-2024-11-15", "none" (all the same here)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    hybrid_search: dict[str, float] | None = None  # {embedding_weight, text_weight}: weighted fusion


class VectorStoreSearchRequest(RequestModel):
    query: Union[str, list[str]]
    filters: dict[str, Any] | None = None
    max_num_results: Int = Field(10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False
    # herd extension: vector, keyword or hybrid (default hybrid, as OpenAI's file search)
    search_mode: Literal["vector", "keyword", "hybrid"] = "hybrid"


# ---- OpenAI responses ---------------------------------------------------------------------------


class FileObject(ResponseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None


class FileDeleted(ResponseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileCounts(ResponseModel):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(ResponseModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str | None
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: dict[str, Any] | None = None
    expires_at: int | None = None
    last_active_at: int | None
    metadata: dict[str, Any]


class VectorStoreDeleted(ResponseModel):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool = True


class VectorStoreFileObject(ResponseModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    usage_bytes: int
    last_error: dict[str, str] | None
    chunking_strategy: dict[str, Any]
    attributes: dict[str, Any]


class VectorStoreFileDeleted(ResponseModel):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool = True


class FileBatchObject(ResponseModel):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    file_counts: FileCounts


# ---- Llama Stack 0.2 ---------------------------------------------------------------------------------


class RegisterVectorDBRequest(RequestModel):
    vector_db_id: str = Field(min_length=1, max_length=256)
    embedding_model: str = Field(min_length=1)
    embedding_dimension: Int | None = None
    provider_id: str | None = None
    provider_vector_db_id: str | None = None


class VectorDBResource(ResponseModel):
    identifier: str
    provider_id: str = "herd"
    provider_resource_id: str
    type: Literal["vector_db"] = "vector_db"
    embedding_model: str
    embedding_dimension: int
    vector_db_name: str | None = None


class StackChunkIn(RequestModel):
    content: Any  # a string or interleaved content (text items)
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = None
    stored_chunk_id: str | None = None
    chunk_id: str | None = None
    chunk_metadata: dict[str, Any] | None = None


class VectorIOInsertRequest(RequestModel):
    vector_db_id: str = Field(min_length=1)
    chunks: list[StackChunkIn] = Field(max_length=10000)
    ttl_seconds: Int | None = None


class VectorIOQueryRequest(RequestModel):
    vector_db_id: str = Field(min_length=1)
    query: Any  # a string or interleaved content
    params: dict[str, Any] | None = None  # max_chunks, score_threshold, mode, ranker


class RagDocumentIn(RequestModel):
    document_id: str = Field(min_length=1)
    content: Any  # a string, a data: URL, {"uri": ...} / {"type": "text", ...} items
    mime_type: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class RagInsertRequest(RequestModel):
    documents: list[RagDocumentIn] = Field(min_length=1, max_length=1000)
    vector_db_id: str = Field(min_length=1)
    chunk_size_in_tokens: Int = Field(512, ge=16, le=4096)


class RagQueryRequest(RequestModel):
    content: Any
    vector_db_ids: list[str] = Field(min_length=1)
    query_config: dict[str, Any] | None = None


# ---- Llama Stack 0.2 datasets (herd/serve/datasets.py) ---------------------------------------------------


class RegisterDatasetRequest(RequestModel):
    purpose: str = Field(min_length=1)
    source: dict[str, Any]
    dataset_id: str | None = Field(None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None


class AppendRowsRequest(RequestModel):
    rows: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)
