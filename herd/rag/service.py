"""Retrieval as one object: files, vector stores, ingestion jobs and search — what `herd serve` (the
OpenAI files / vector-stores and Llama Stack vector-io / rag-tool APIs), the agents' `builtin::rag`, the
Responses API's `file_search` and `herd rag` all use, over the same state in Herd's home:

    <herd_home>/rag/rag.sqlite      the catalog (files, vector stores, their files, batches) and,
                                    with the default SQLiteVecStore, the chunks, vectors and keywords
    <herd_home>/rag/files/<id>      uploaded file bytes (written to a temporary name, then renamed)

    rag = RagService(Embedder.load())
    vs = rag.create_store("docs")
    f = rag.add_file("guide.pdf", data)
    rag.attach(vs.id, f.id)                     # extracted now (bad input raises), embedded in the background
    rag.wait(vs.id, f.id)
    hits = rag.search([vs.id], "how do I reset it?", mode="hybrid", k=5)

Blocking and thread-safe; async callers use `asyncio.to_thread`. Ingestion runs on a small thread pool;
a file's status goes `in_progress` -> `completed` / `failed` (with `last_error`) / `cancelled`, as
OpenAI reports it, and files still `in_progress` when the process stopped are ingested again by
`resume()` when it starts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from herd.errors import HerdError
from herd.rag.chunking import Chunk, Chunking, chunk_document
from herd.rag.embed import Embedder
from herd.rag.extract import Document, ExtractionError, UnsupportedFileType, extract
from herd.rag.filters import Filter
from herd.rag.search import Mode, Query, Ranker, search
from herd.rag.settings import MAX_FILE_BYTES
from herd.rag.store import Hit, SQLiteVecStore, VectorStore

log = logging.getLogger("herd.rag")

EMBED_BATCH = 64  # chunks embedded (and progress reported) at a time


class NotFound(HerdError):
    """No such file, vector store, vector store file or batch (HTTP 404)."""


class Conflict(HerdError):
    """The request clashes with the current state (an id already used; HTTP 400/409)."""


class _Stopped(Exception):
    """The service is closing: an ingestion stops between batches and stays in_progress (resume() redoes it)."""


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _now() -> int:
    return int(time.time())


_CATALOG = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vector_stores (
    id TEXT PRIMARY KEY,
    name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    chunking TEXT NOT NULL,
    embedding_model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    expires_after TEXT,
    created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS store_files (
    store_id TEXT NOT NULL REFERENCES vector_stores(id) ON DELETE CASCADE,
    file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    chunking TEXT NOT NULL,
    last_error TEXT,
    usage_bytes INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, file_id)
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES vector_stores(id) ON DELETE CASCADE,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
"""


# ---- records ------------------------------------------------------------------------------------


@dataclass
class FileRecord:
    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int


@dataclass
class StoreRecord:
    id: str
    name: str | None
    metadata: dict[str, Any]
    chunking: Chunking
    embedding_model: str
    dim: int
    expires_after: dict[str, Any] | None
    created_at: int
    last_active_at: int
    file_counts: dict[str, int] = field(default_factory=dict)
    usage_bytes: int = 0

    @property
    def status(self) -> str:
        return "in_progress" if self.file_counts.get("in_progress") else "completed"


@dataclass
class StoreFileRecord:
    store_id: str
    file_id: str
    status: str
    attributes: dict[str, Any]
    chunking: Chunking
    last_error: dict[str, str] | None
    usage_bytes: int
    batch_id: str | None
    created_at: int


@dataclass
class BatchRecord:
    id: str
    store_id: str
    created_at: int
    cancelled: bool
    file_counts: dict[str, int]

    @property
    def status(self) -> str:
        if self.file_counts.get("in_progress"):
            return "in_progress"
        if self.cancelled:
            return "cancelled"
        return "failed" if self.file_counts.get("failed") and not self.file_counts.get("completed") else "completed"


STATUSES = ("in_progress", "completed", "failed", "cancelled")


def _counts(rows: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in rows:
        counts[status] = n
    counts["total"] = sum(counts[s] for s in STATUSES)
    return counts


def check_attributes(attributes: Any, param: str = "attributes") -> dict[str, Any]:
    """OpenAI's rules: at most 16 keys, keys up to 64 characters, values strings (up to 512), numbers or booleans."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise HerdError(f"{param} must be an object", param)
    if len(attributes) > 16:
        raise HerdError(f"{param} may have at most 16 keys, got {len(attributes)}", param)
    for k, v in attributes.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 64:
            raise HerdError(f"{param}: keys must be strings of 1-64 characters, got {k!r}", param)
        if not isinstance(v, (str, int, float, bool)) or isinstance(v, str) and len(v) > 512:
            raise HerdError(f"{param}.{k} must be a string (up to 512 characters), number or boolean", f"{param}.{k}")
    return dict(attributes)


# ---- the service ---------------------------------------------------------------------------------


class RagService:
    """Files, vector stores and their ingestion, over a VectorStore (default: the SQLite file beside the catalog)."""

    def __init__(self, embedder: Embedder | Callable[[], Embedder] | None, root: str | Path | None = None,
                 store: VectorStore | None = None, workers: int = 1, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        import apsw

        if root is None:
            from herd.home import herd_home

            root = herd_home() / "rag"
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store: VectorStore = store if store is not None else SQLiteVecStore(self.root / "rag.sqlite")
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self.max_file_bytes = max_file_bytes
        self._lock = threading.RLock()
        self._db = apsw.Connection(str(self.root / "rag.sqlite"))
        self._db.set_busy_timeout(30_000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(_CATALOG)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="herd-rag-ingest")
        self._jobs: dict[tuple[str, str], Future[None]] = {}
        self._closed = False

    # ---- plumbing ---------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The embedding model (loaded on first use when given as a loader)."""
        with self._embedder_lock:
            if self._embedder is None:
                raise HerdError("retrieval needs an embedding model; none is configured")
            if not isinstance(self._embedder, Embedder):
                self._embedder = self._embedder()
            return self._embedder

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._lock, self._db:
            self._db.execute(sql, args)
            return self._db.changes()

    def close(self) -> None:
        """Stop taking work, let a running ingestion stop at its next batch (it stays in_progress and is
        redone by the next resume()), close the files."""
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._db.close()
        self.store.close()

    # ---- files ------------------------------------------------------------------------------------
    def add_file(self, filename: str, data: bytes, purpose: str = "assistants") -> FileRecord:
        """Keep an uploaded file (bytes written atomically). Empty or over the size limit: HerdError."""
        name = os.path.basename(filename or "").strip()
        if not name:
            raise HerdError("the file needs a name", "file")
        if not data:
            raise HerdError(f"{name} is empty (0 bytes)", "file")
        if len(data) > self.max_file_bytes:
            raise HerdError(f"{name} is {len(data)} bytes; this server takes files up to {self.max_file_bytes} bytes",
                            "file")
        rec = FileRecord(_new_id("file-"), name, len(data), purpose, _now())
        tmp = self.files_dir / f".{rec.id}.tmp"
        with open(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.files_dir / rec.id)
        try:
            self._write("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", (rec.id, rec.filename, rec.bytes, rec.purpose,
                                                                        hashlib.sha256(data).hexdigest(), rec.created_at))
        except BaseException:
            (self.files_dir / rec.id).unlink(missing_ok=True)
            raise
        return rec

    def get_file(self, file_id: str) -> FileRecord:
        rows = self._rows("SELECT id, filename, bytes, purpose, created_at FROM files WHERE id = ?", (file_id,))
        if not rows:
            raise NotFound(f"file {file_id!r} not found", "file_id")
        return FileRecord(*rows[0])

    def list_files(self, purpose: str | None = None) -> list[FileRecord]:
        """Newest first."""
        rows = self._rows("SELECT id, filename, bytes, purpose, created_at FROM files "
                          "WHERE ?1 IS NULL OR purpose = ?1 ORDER BY created_at DESC, rowid DESC", (purpose,))
        return [FileRecord(*r) for r in rows]

    def file_content(self, file_id: str) -> bytes:
        self.get_file(file_id)
        return (self.files_dir / file_id).read_bytes()

    def delete_file(self, file_id: str) -> None:
        """Delete a file: detached from every vector store first (its chunks leave search), then its bytes."""
        self.get_file(file_id)
        for (store_id,) in self._rows("SELECT store_id FROM store_files WHERE file_id = ?", (file_id,)):
            self.detach(store_id, file_id)
        self._write("DELETE FROM files WHERE id = ?", (file_id,))
        (self.files_dir / file_id).unlink(missing_ok=True)

    def extract_file(self, file_id: str) -> Document:
        """The file's text (ExtractionError for a type herd cannot read, an empty or a corrupt file)."""
        rec = self.get_file(file_id)
        return extract(rec.filename, (self.files_dir / file_id).read_bytes())

    # ---- vector stores ----------------------------------------------------------------------------
    def create_store(self, name: str | None = None, *, metadata: dict[str, Any] | None = None,
                     chunking: Chunking | None = None, store_id: str | None = None,
                     embedding_model: str | None = None, dim: int | None = None,
                     expires_after: dict[str, Any] | None = None) -> StoreRecord:
        """A new empty vector store (ids: `vs_...`, or the one given, e.g. a Llama Stack vector_db_id)."""
        emb = self.embedder
        if embedding_model is not None and embedding_model not in (emb.model_id, *_aliases(emb)):
            raise HerdError(f"embedding model {embedding_model!r} is not served here; use {emb.model_id!r}",
                            "embedding_model")
        if dim is not None and dim != emb.dim:
            raise HerdError(f"{emb.model_id} makes {emb.dim}-dimensional embeddings, not {dim}", "embedding_dimension")
        sid = store_id or _new_id("vs_")
        chunking = chunking or Chunking()
        now = _now()
        with self._lock:
            if self._rows("SELECT 1 FROM vector_stores WHERE id = ?", (sid,)):
                raise Conflict(f"vector store {sid!r} already exists", "vector_store_id")
            self.store.create_collection(sid, emb.dim)
            try:
                self._write("INSERT INTO vector_stores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (sid, name, json.dumps(metadata or {}), json.dumps(chunking.__dict__), emb.model_id,
                             emb.dim, json.dumps(expires_after) if expires_after else None, now, now))
            except BaseException:
                self.store.drop_collection(sid)
                raise
        return self.get_store(sid)

    def get_store(self, store_id: str) -> StoreRecord:
        rows = self._rows("SELECT id, name, metadata, chunking, embedding_model, dim, expires_after, created_at, "
                          "last_active_at FROM vector_stores WHERE id = ?", (store_id,))
        if not rows:
            raise NotFound(f"vector store {store_id!r} not found", "vector_store_id")
        return self._store_record(rows[0])

    def _store_record(self, r: tuple[Any, ...]) -> StoreRecord:
        sid, name, meta, chunking, model, dim, expires, created, active = r
        counts = _counts(self._rows("SELECT status, count(*) FROM store_files WHERE store_id = ? GROUP BY status",
                                    (sid,)))
        usage = self._rows("SELECT coalesce(sum(usage_bytes), 0) FROM store_files WHERE store_id = ?", (sid,))[0][0]
        return StoreRecord(sid, name, json.loads(meta), Chunking(**json.loads(chunking)), model, dim,
                           json.loads(expires) if expires else None, created, active, counts, usage)

    def list_stores(self) -> list[StoreRecord]:
        """Newest first."""
        rows = self._rows("SELECT id, name, metadata, chunking, embedding_model, dim, expires_after, created_at, "
                          "last_active_at FROM vector_stores ORDER BY created_at DESC, rowid DESC")
        return [self._store_record(r) for r in rows]

    def find_store(self, name_or_id: str) -> StoreRecord:
        """A store by id, else by name (the newest of that name)."""
        rows = self._rows("SELECT id FROM vector_stores WHERE id = ?1 OR name = ?1 "
                          "ORDER BY id = ?1 DESC, created_at DESC", (name_or_id,))
        if not rows:
            raise NotFound(f"vector store {name_or_id!r} not found", "vector_store_id")
        return self.get_store(rows[0][0])

    def update_store(self, store_id: str, *, name: str | None = None, metadata: dict[str, Any] | None = None,
                     expires_after: dict[str, Any] | None = None) -> StoreRecord:
        self.get_store(store_id)
        with self._lock, self._db:
            if name is not None:
                self._db.execute("UPDATE vector_stores SET name = ? WHERE id = ?", (name, store_id))
            if metadata is not None:
                self._db.execute("UPDATE vector_stores SET metadata = ? WHERE id = ?", (json.dumps(metadata), store_id))
            if expires_after is not None:
                self._db.execute("UPDATE vector_stores SET expires_after = ? WHERE id = ?",
                                 (json.dumps(expires_after), store_id))
        return self.get_store(store_id)

    def delete_store(self, store_id: str) -> None:
        """Delete a store and its chunks (the files themselves stay)."""
        self.get_store(store_id)
        self._cancel_jobs(store_id)
        self._write("DELETE FROM vector_stores WHERE id = ?", (store_id,))
        self.store.drop_collection(store_id)

    # ---- files in stores --------------------------------------------------------------------------
    def attach(self, store_id: str, file_id: str, attributes: dict[str, Any] | None = None,
               chunking: Chunking | None = None, batch_id: str | None = None) -> StoreFileRecord:
        """Add a file to a store: its text is extracted now (ExtractionError for bad input: nothing changes),
        then chunked and embedded in the background (status in_progress until then)."""
        store = self.get_store(store_id)
        attributes = check_attributes(attributes)
        doc = self.extract_file(file_id)
        chunking = (chunking or store.chunking).resolve(self.embedder.window)
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO store_files (store_id, file_id, status, attributes, chunking, "
                             "last_error, usage_bytes, batch_id, created_at) VALUES (?, ?, 'in_progress', ?, ?, NULL, "
                             "0, ?, ?)", (store_id, file_id, json.dumps(attributes), json.dumps(chunking.__dict__),
                                          batch_id, _now()))
            self._db.execute("UPDATE vector_stores SET last_active_at = ? WHERE id = ?", (_now(), store_id))
        self._submit(store_id, file_id, doc)
        return self.get_store_file(store_id, file_id)

    def _submit(self, store_id: str, file_id: str, doc: Document | None = None) -> None:
        if self._closed:
            return
        key = (store_id, file_id)
        self._jobs[key] = self._pool.submit(self._ingest, store_id, file_id, doc)

    def _ingest(self, store_id: str, file_id: str, doc: Document | None) -> None:
        try:
            rec = self.get_store_file(store_id, file_id)
            if rec.status != "in_progress":
                return
            if doc is None:
                doc = self.extract_file(file_id)
            name = self.get_file(file_id).filename
            chunks = chunk_document(doc, file_id, self.embedder.tokens, rec.chunking, rec.attributes)
            vectors = self.embed_chunks(chunks)
            with self._lock:  # the status checked and the chunks stored under one lock: a detach waits
                current = self._rows("SELECT status FROM store_files WHERE store_id = ? AND file_id = ?",
                                     (store_id, file_id))
                if not current or current[0][0] != "in_progress":
                    return
                self.store.add(store_id, chunks, vectors, replace_documents=True)
                usage = sum(len(c.text.encode()) for c in chunks)
                self._write("UPDATE store_files SET status = 'completed', usage_bytes = ? WHERE store_id = ? AND "
                            "file_id = ?", (usage, store_id, file_id))
            log.info("vector store %s: %s (%s) ingested, %d chunks", store_id, file_id, name, len(chunks))
        except _Stopped:
            log.info("vector store %s: ingesting %s stopped by shutdown; it resumes at the next start", store_id,
                     file_id)
        except Exception as e:  # noqa: BLE001 - the failure is the file's status, not the worker's death
            code = "unsupported_file" if isinstance(e, UnsupportedFileType) else \
                "invalid_file" if isinstance(e, ExtractionError) else "server_error"
            if code == "server_error":
                log.exception("vector store %s: ingesting %s failed", store_id, file_id)
            try:
                self._write("UPDATE store_files SET status = 'failed', last_error = ? WHERE store_id = ? AND "
                            "file_id = ? AND status = 'in_progress'",
                            (json.dumps({"code": code, "message": str(e)}), store_id, file_id))
            except Exception:  # noqa: BLE001 - closing down
                log.exception("vector store %s: recording the failure of %s failed", store_id, file_id)
        finally:
            self._jobs.pop((store_id, file_id), None)

    def embed_chunks(self, chunks: Sequence[Chunk], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """The chunks' vectors, EMBED_BATCH at a time (`progress(n)` after each batch)."""
        parts = []
        for start in range(0, len(chunks), EMBED_BATCH):
            if self._closed:
                raise _Stopped()
            batch = chunks[start:start + EMBED_BATCH]
            parts.append(self.embedder.embed([c.text for c in batch]))
            if progress:
                progress(len(batch))
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), dtype=np.float32)

    def wait(self, store_id: str, file_id: str, timeout: float | None = None) -> StoreFileRecord:
        """Block until a file's ingestion has finished (any outcome); its record."""
        job = self._jobs.get((store_id, file_id))
        if job is not None:
            job.result(timeout)
        return self.get_store_file(store_id, file_id)

    def resume(self) -> int:
        """Queue again the files left in_progress by a process that stopped; how many."""
        rows = self._rows("SELECT store_id, file_id FROM store_files WHERE status = 'in_progress'")
        for store_id, file_id in rows:
            if (store_id, file_id) not in self._jobs:
                self._submit(store_id, file_id)
        return len(rows)

    def get_store_file(self, store_id: str, file_id: str) -> StoreFileRecord:
        rows = self._rows("SELECT store_id, file_id, status, attributes, chunking, last_error, usage_bytes, batch_id, "
                          "created_at FROM store_files WHERE store_id = ? AND file_id = ?", (store_id, file_id))
        if not rows:
            self.get_store(store_id)
            raise NotFound(f"file {file_id!r} is not in vector store {store_id!r}", "file_id")
        return _store_file(rows[0])

    def list_store_files(self, store_id: str, status: str | None = None,
                         batch_id: str | None = None) -> list[StoreFileRecord]:
        """Newest first."""
        self.get_store(store_id)
        if status is not None and status not in STATUSES:
            raise HerdError(f"filter must be one of {', '.join(STATUSES)}, got {status!r}", "filter")
        rows = self._rows("SELECT store_id, file_id, status, attributes, chunking, last_error, usage_bytes, batch_id, "
                          "created_at FROM store_files WHERE store_id = ?1 AND (?2 IS NULL OR status = ?2) AND "
                          "(?3 IS NULL OR batch_id = ?3) ORDER BY created_at DESC, rowid DESC",
                          (store_id, status, batch_id))
        return [_store_file(r) for r in rows]

    def update_attributes(self, store_id: str, file_id: str, attributes: dict[str, Any]) -> StoreFileRecord:
        """Replace a store file's attributes (its chunks' metadata follows: filters see the new values)."""
        old = self.get_store_file(store_id, file_id)
        attributes = check_attributes(attributes)
        with self._lock:
            self._write("UPDATE store_files SET attributes = ? WHERE store_id = ? AND file_id = ?",
                        (json.dumps(attributes), store_id, file_id))
            removed = {k: None for k in old.attributes if k not in attributes}  # json_patch: null deletes
            self.store.update_metadata(store_id, file_id, {**removed, **attributes})
        return self.get_store_file(store_id, file_id)

    def detach(self, store_id: str, file_id: str) -> None:
        """Remove a file from a store: its chunks leave search (the file itself stays)."""
        self.get_store_file(store_id, file_id)
        with self._lock:
            self._write("DELETE FROM store_files WHERE store_id = ? AND file_id = ?", (store_id, file_id))
            self.store.delete_document(store_id, file_id)

    def store_file_chunks(self, store_id: str, file_id: str) -> list[Chunk]:
        self.get_store_file(store_id, file_id)
        return self.store.document_chunks(store_id, file_id)

    def _cancel_jobs(self, store_id: str, batch_id: str | None = None) -> None:
        with self._lock:
            self._write("UPDATE store_files SET status = 'cancelled' WHERE store_id = ?1 AND status = 'in_progress' "
                        "AND (?2 IS NULL OR batch_id = ?2)", (store_id, batch_id))

    # ---- batches ----------------------------------------------------------------------------------
    def create_batch(self, store_id: str, file_ids: Sequence[str], attributes: dict[str, Any] | None = None,
                     chunking: Chunking | None = None) -> BatchRecord:
        """Attach several files as one batch; every file is checked (and extracted) before any is attached."""
        if not file_ids:
            raise HerdError("file_ids must list at least one file", "file_ids")
        self.get_store(store_id)
        for fid in file_ids:
            self.extract_file(fid)
        bid = _new_id("vsfb_")
        self._write("INSERT INTO batches VALUES (?, ?, 0, ?)", (bid, store_id, _now()))
        for fid in dict.fromkeys(file_ids):
            self.attach(store_id, fid, attributes, chunking, batch_id=bid)
        return self.get_batch(store_id, bid)

    def get_batch(self, store_id: str, batch_id: str) -> BatchRecord:
        rows = self._rows("SELECT id, store_id, created_at, cancelled FROM batches WHERE id = ? AND store_id = ?",
                          (batch_id, store_id))
        if not rows:
            self.get_store(store_id)
            raise NotFound(f"file batch {batch_id!r} not found in vector store {store_id!r}", "batch_id")
        counts = _counts(self._rows("SELECT status, count(*) FROM store_files WHERE batch_id = ? GROUP BY status",
                                    (batch_id,)))
        bid, sid, created, cancelled = rows[0]
        return BatchRecord(bid, sid, created, bool(cancelled), counts)

    def cancel_batch(self, store_id: str, batch_id: str) -> BatchRecord:
        self.get_batch(store_id, batch_id)
        self._write("UPDATE batches SET cancelled = 1 WHERE id = ?", (batch_id,))
        self._cancel_jobs(store_id, batch_id)
        return self.get_batch(store_id, batch_id)

    # ---- documents and chunks without files (Llama Stack vector-io / rag-tool) -------------------------
    def insert_chunks(self, store_id: str, chunks: Sequence[Chunk], vectors: np.ndarray | None = None) -> list[str]:
        """Store ready chunks (embedded here unless their vectors are given), all or none."""
        self.get_store(store_id)
        if vectors is None:
            vectors = self.embed_chunks(chunks)
        return self.store.add(store_id, chunks, vectors)

    def insert_document(self, store_id: str, document_id: str, doc: Document, metadata: dict[str, Any] | None = None,
                        chunking: Chunking | None = None) -> list[Chunk]:
        """Chunk, embed and store one document (its earlier chunks replaced), all or none."""
        store = self.get_store(store_id)
        chunking = (chunking or store.chunking).resolve(self.embedder.window)
        chunks = chunk_document(doc, document_id, self.embedder.tokens, chunking,
                                {"document_id": document_id, **(metadata or {})})
        self.store.add(store_id, chunks, self.embed_chunks(chunks), replace_documents=True)
        return chunks

    # ---- search ----------------------------------------------------------------------------------
    def search(self, store_ids: Sequence[str], query: str, *, mode: Mode = "vector", k: int = 10,
               where: Filter | None = None, ranker: Ranker | None = None,
               score_threshold: float | None = None) -> list[Hit]:
        """The best k chunks over the stores for a query (see herd/rag/search.py for the modes)."""
        if not isinstance(query, str) or not query.strip():
            raise HerdError("the query is empty", "query")
        stores = [self.get_store(s) for s in store_ids]
        if not stores:
            raise HerdError("name at least one vector store to search", "vector_store_ids")
        emb = self.embedder
        for s in stores:
            if s.embedding_model != emb.model_id or s.dim != emb.dim:
                raise HerdError(f"vector store {s.id!r} was embedded with {s.embedding_model}, but the embedding "
                                f"model here is {emb.model_id}: search it with the model that built it",
                                "vector_store_ids")
        vector = emb.embed_query(query) if mode != "keyword" else None
        now = _now()
        with self._lock, self._db:
            for s in stores:
                self._db.execute("UPDATE vector_stores SET last_active_at = ? WHERE id = ?", (now, s.id))
        return search(self.store, [s.id for s in stores],
                      Query(query, vector, mode, k, where, ranker or Ranker(), score_threshold))

    def filenames(self, file_ids: Iterable[str]) -> dict[str, str]:
        """file id -> filename for those that are files (others are left out)."""
        ids = list(dict.fromkeys(file_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return dict(self._rows(f"SELECT id, filename FROM files WHERE id IN ({marks})", ids))


def _aliases(emb: Embedder) -> tuple[str, ...]:
    from herd.model.bert import MINILM_NAMES

    return MINILM_NAMES if emb.model_id in MINILM_NAMES else ()


def _store_file(r: tuple[Any, ...]) -> StoreFileRecord:
    sid, fid, status, attrs, chunking, err, usage, batch, created = r
    return StoreFileRecord(sid, fid, status, json.loads(attrs), Chunking(**json.loads(chunking)),
                           json.loads(err) if err else None, usage, batch, created)
