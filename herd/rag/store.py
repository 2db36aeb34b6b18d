"""Where chunks live: the `VectorStore` protocol and its default, one SQLite file with sqlite-vec for the
vectors and FTS5 for the keywords.

The protocol is deliberately narrow — collections of chunks, nearest vectors, best keyword matches,
with a metadata filter — so that a server backend (pgvector, Qdrant) is one more file implementing
it; ranking (hybrid fusion, thresholds) lives above it, in herd/rag/search.py, the same for all.

SQLite layout (`<herd_home>/rag/rag.sqlite` by default): a `chunks` table (text, document id,
position, metadata JSON) shared by every collection, and per collection a `vec0` table (cosine
distance, exact k-nearest-neighbour scan in C) and a contentless FTS5 table (porter stemming,
BM25), both keyed by the chunk's rowid. A document's chunks are written or deleted in one
transaction, so a reader sees all of them or none. apsw is used because it loads the sqlite-vec
extension on every CPython (the stdlib module may be built without extension loading).
"""
from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from herd.errors import HerdError
from herd.rag.chunking import Chunk
from herd.rag.filters import Filter, to_sql


@dataclass
class Hit:
    """One retrieved chunk and its score (vector: cosine similarity; keyword: BM25, higher is better)."""

    chunk: Chunk
    score: float
    scores: dict[str, float] = field(default_factory=dict)  # per search mode, for hybrid results


@runtime_checkable
class VectorStore(Protocol):
    """Collections of embedded chunks. Blocking; thread-safe."""

    def create_collection(self, collection_id: str, dim: int) -> None:
        """Make an empty collection of `dim`-dimensional vectors (an existing one: HerdError)."""

    def drop_collection(self, collection_id: str) -> None:
        """Delete a collection and all its chunks (a missing one: no-op)."""

    def add(self, collection_id: str, chunks: Sequence[Chunk], vectors: np.ndarray, *,
            replace_documents: bool = False) -> list[str]:
        """Store chunks with their unit vectors, all or none; their chunk ids. `replace_documents`: the
        documents' earlier chunks are deleted in the same transaction."""

    def delete_document(self, collection_id: str, document_id: str) -> int:
        """Delete a document's chunks; how many."""

    def update_metadata(self, collection_id: str, document_id: str, metadata: dict[str, Any]) -> None:
        """Merge `metadata` into every chunk of a document."""

    def document_chunks(self, collection_id: str, document_id: str) -> list[Chunk]:
        """A document's chunks in order."""

    def count(self, collection_id: str) -> int:
        """How many chunks the collection holds."""

    def vector_search(self, collection_id: str, vector: np.ndarray, k: int, where: Filter | None = None) -> list[Hit]:
        """The k chunks nearest to `vector` (exact), best first, score = cosine similarity."""

    def keyword_search(self, collection_id: str, query: str, k: int, where: Filter | None = None) -> list[Hit]:
        """The k chunks with the best BM25 score for the query's words, best first."""

    def close(self) -> None: ...


def default_path() -> Path:
    from herd.home import herd_home

    return herd_home() / "rag" / "rag.sqlite"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id TEXT PRIMARY KEY,
    num INTEGER NOT NULL UNIQUE,
    dim INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    chunk_id TEXT NOT NULL UNIQUE,
    document_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(collection, document_id, position);
"""

_WORD = re.compile(r"\w+", re.UNICODE)


# English function words left out of keyword queries (when the query has other words): in a small
# collection their BM25 weight is noise ("what is E-219?" must not rank a text for its "is")
STOPWORDS = frozenset("""a an and are as at be but by can could did do does for from had has have how i if in
into is it its me my no not of on or our should so than that the their them then there these they this to
was we were what when where which who whom why will with would you your""".split())


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any of the text's words (function words dropped unless nothing else is left);
    a hyphenated or dotted term ("E-219", "v2.3") becomes a phrase of its parts. None when the text has no
    words."""
    terms, fallback = [], []
    for raw in text.split():
        parts = [p.replace('"', "") for p in _WORD.findall(raw)]
        if not parts:
            continue
        term = '"' + " ".join(parts) + '"'
        (fallback if len(parts) == 1 and parts[0].lower() in STOPWORDS else terms).append(term)
    return " OR ".join(dict.fromkeys(terms or fallback)) or None


class SQLiteVecStore:
    """The default VectorStore: one SQLite file (sqlite-vec + FTS5), opened through apsw."""

    def __init__(self, path: str | Path | None = None) -> None:
        import apsw
        import sqlite_vec

        self.path = Path(path) if path is not None else default_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # private: the documents may be
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.RLock()
        db = apsw.Connection(str(self.path))
        db.enable_load_extension(True)
        db.load_extension(sqlite_vec.loadable_path())
        db.enable_load_extension(False)
        db.set_busy_timeout(30_000)
        db.execute("PRAGMA mmap_size=1073741824")  # vector scans read pages mapped, not copied (~40 % faster)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(_SCHEMA)
        self._db = db
        self._nums: dict[str, int] = {}

    # ---- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Any:
        """The connection inside one transaction, under the store's lock (also for a catalog sharing the file)."""
        with self._lock, self._db:
            yield self._db

    def _num(self, collection_id: str) -> int:
        num = self._nums.get(collection_id)
        if num is None:
            row = self._db.execute("SELECT num FROM collections WHERE id = ?", (collection_id,)).fetchone()
            if row is None:
                raise HerdError(f"collection {collection_id!r} does not exist", "collection_id")
            num = self._nums[collection_id] = row[0]
        return num

    # ---- collections ---------------------------------------------------------------------------------
    def create_collection(self, collection_id: str, dim: int) -> None:
        if not isinstance(dim, int) or not 1 <= dim <= 8192:
            raise HerdError(f"embedding dimension must be in 1..8192, got {dim}", "embedding_dimension")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM collections WHERE id = ?", (collection_id,)).fetchone():
                raise HerdError(f"collection {collection_id!r} already exists", "collection_id")
            num = db.execute("SELECT coalesce(max(num), 0) + 1 FROM collections").fetchone()[0]
            db.execute("INSERT INTO collections VALUES (?, ?, ?)", (collection_id, num, dim))
            db.execute(f"CREATE VIRTUAL TABLE vec_{num} USING vec0(embedding float[{dim}] distance_metric=cosine)")
            db.execute(f"CREATE VIRTUAL TABLE fts_{num} USING fts5(text, content='', contentless_delete=1, "
                       "tokenize='porter unicode61 remove_diacritics 2')")
            self._nums[collection_id] = num

    def drop_collection(self, collection_id: str) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT num FROM collections WHERE id = ?", (collection_id,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM chunks WHERE collection = ?", (collection_id,))
            db.execute(f"DROP TABLE IF EXISTS vec_{row[0]}")
            db.execute(f"DROP TABLE IF EXISTS fts_{row[0]}")
            db.execute("DELETE FROM collections WHERE id = ?", (collection_id,))
            self._nums.pop(collection_id, None)

    def dimension(self, collection_id: str) -> int:
        with self._lock:
            self._num(collection_id)
            return self._db.execute("SELECT dim FROM collections WHERE id = ?", (collection_id,)).fetchone()[0]

    # ---- chunks -------------------------------------------------------------------------------------
    def add(self, collection_id: str, chunks: Sequence[Chunk], vectors: np.ndarray, *,
            replace_documents: bool = False) -> list[str]:
        import apsw

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(chunks):
            raise HerdError(f"{len(chunks)} chunks need {len(chunks)} vectors, got an array of shape {vectors.shape}")
        with self.transaction() as db:
            num, dim = self._num(collection_id), self.dimension(collection_id)
            if len(chunks) and vectors.shape[1] != dim:
                raise HerdError(f"collection {collection_id!r} holds {dim}-dimensional vectors; got "
                                f"{vectors.shape[1]}-dimensional ones", "embedding")
            if replace_documents:
                for doc in dict.fromkeys(c.document_id for c in chunks):
                    self._delete_document(db, collection_id, num, doc)
            ids = []
            for c, v in zip(chunks, vectors):
                cid = c.chunk_id or uuid.uuid4().hex
                try:
                    db.execute("INSERT INTO chunks (collection, chunk_id, document_id, position, text, metadata, "
                               "tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (collection_id, cid, c.document_id, c.position, c.text, json.dumps(c.metadata),
                                c.token_count))
                except apsw.ConstraintError:
                    raise HerdError(f"chunk id {cid!r} is already stored", "chunk_id") from None
                rowid = db.last_insert_rowid()
                db.execute(f"INSERT INTO vec_{num}(rowid, embedding) VALUES (?, ?)", (rowid, v.tobytes()))
                db.execute(f"INSERT INTO fts_{num}(rowid, text) VALUES (?, ?)", (rowid, c.text))
                c.chunk_id = cid
                ids.append(cid)
            return ids

    def _delete_document(self, db: Any, collection_id: str, num: int, document_id: str) -> int:
        rows = [r for (r,) in db.execute("SELECT rowid FROM chunks WHERE collection = ? AND document_id = ?",
                                         (collection_id, document_id))]
        for r in rows:
            db.execute(f"DELETE FROM vec_{num} WHERE rowid = ?", (r,))
            db.execute(f"DELETE FROM fts_{num} WHERE rowid = ?", (r,))
        db.execute("DELETE FROM chunks WHERE collection = ? AND document_id = ?", (collection_id, document_id))
        return len(rows)

    def delete_document(self, collection_id: str, document_id: str) -> int:
        with self.transaction() as db:
            return self._delete_document(db, collection_id, self._num(collection_id), document_id)

    def update_metadata(self, collection_id: str, document_id: str, metadata: dict[str, Any]) -> None:
        with self.transaction() as db:
            self._num(collection_id)
            db.execute("UPDATE chunks SET metadata = json_patch(metadata, ?) WHERE collection = ? AND document_id = ?",
                       (json.dumps(metadata), collection_id, document_id))

    def document_chunks(self, collection_id: str, document_id: str) -> list[Chunk]:
        with self._lock:
            self._num(collection_id)
            rows = self._db.execute("SELECT chunk_id, document_id, position, text, metadata, tokens FROM chunks "
                                    "WHERE collection = ? AND document_id = ? ORDER BY position",
                                    (collection_id, document_id)).fetchall()
        return [_chunk(r) for r in rows]

    def count(self, collection_id: str) -> int:
        with self._lock:
            self._num(collection_id)
            return self._db.execute("SELECT count(*) FROM chunks WHERE collection = ?", (collection_id,)).fetchone()[0]

    # ---- search -------------------------------------------------------------------------------------
    def vector_search(self, collection_id: str, vector: np.ndarray, k: int, where: Filter | None = None) -> list[Hit]:
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        with self._lock:
            num, dim = self._num(collection_id), self.dimension(collection_id)
            if len(blob) != 4 * dim:
                raise HerdError(f"collection {collection_id!r} holds {dim}-dimensional vectors; the query has "
                                f"{len(blob) // 4}", "embedding")
            if where is None:  # sqlite-vec's k-nearest scan
                rows = self._db.execute(
                    f"SELECT c.chunk_id, c.document_id, c.position, c.text, c.metadata, c.tokens, knn.distance "
                    f"FROM (SELECT rowid, distance FROM vec_{num} WHERE embedding MATCH ? AND k = ?) knn "
                    f"JOIN chunks c ON c.rowid = knn.rowid ORDER BY knn.distance", (blob, k)).fetchall()
            else:  # exact scan of the chunks that pass the filter
                cond, args = to_sql(where, "c.metadata")
                rows = self._db.execute(
                    f"SELECT c.chunk_id, c.document_id, c.position, c.text, c.metadata, c.tokens, "
                    f"vec_distance_cosine(v.embedding, ?) AS d FROM chunks c JOIN vec_{num} v ON v.rowid = c.rowid "
                    f"WHERE c.collection = ? AND {cond} ORDER BY d LIMIT ?", (blob, collection_id, *args, k)).fetchall()
        return [Hit(_chunk(r[:6]), 1.0 - r[6]) for r in rows]

    def keyword_search(self, collection_id: str, query: str, k: int, where: Filter | None = None) -> list[Hit]:
        match = fts_query(query)
        if match is None:
            return []
        cond, args = to_sql(where, "c.metadata")
        with self._lock:
            num = self._num(collection_id)
            rows = self._db.execute(
                f"SELECT c.chunk_id, c.document_id, c.position, c.text, c.metadata, c.tokens, f.score "
                f"FROM (SELECT rowid, bm25(fts_{num}) AS score FROM fts_{num} WHERE fts_{num} MATCH ? "
                f"ORDER BY score{'' if where is not None else ' LIMIT ?'}) f "
                f"JOIN chunks c ON c.rowid = f.rowid WHERE {cond} ORDER BY f.score LIMIT ?",
                (match, *(() if where is not None else (k,)), *args, k)).fetchall()
        return [Hit(_chunk(r[:6]), -r[6]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _chunk(row: Sequence[Any]) -> Chunk:
    chunk_id, document_id, position, text, metadata, tokens = row
    return Chunk(text, document_id, position, json.loads(metadata), tokens, chunk_id)
