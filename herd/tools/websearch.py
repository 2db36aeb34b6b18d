"""`builtin::websearch`: the `web_search` tool (Llama 3.1's built-in `brave_search` maps to it).

Three backends answer the same tool: Brave (`BRAVE_API_KEY`), Tavily (`TAVILY_API_KEY`) and an offline one
that ranks the files of a local corpus (a directory of .txt / .md / .html files) with SQLite FTS5's BM25,
so the tool works with no key and no network. The result is compact JSON the model reads:
`{"query", "backend", "results": [{"title", "url", "snippet"}]}` (for the offline backend `url` is the
file's path). A backend that fails (no network, 401, 429, a bad answer) gives an error result naming the
backend and the status, never an exception. Which backend a configuration picks: herd/tools/builtin.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

from herd.tools.base import Tool, ToolResult

TOOL_NAME = "web_search"
GROUP_ID = "builtin::websearch"
DEFAULT_MAX_RESULTS = 5
CORPUS_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
MAX_FILE_BYTES = 4 * 2**20  # a larger corpus file is indexed by its first 4 MiB
_TAG = re.compile(r"<[^>]+>")
# words that match nearly every document; left out of a query unless it has nothing else
STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "how", "i", "in", "is", "it", "of", "on", "or", "that", "the", "this", "to", "was", "what", "when", "where", "which", "who", "why", "will", "with"])


@dataclass
class SearchHit:
    """One result as the model sees it."""

    title: str
    url: str
    snippet: str


class SearchError(Exception):
    """A backend could not answer: the message names the backend and why (HTTP status when there is one)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SearchBackend(Protocol):
    name: str  # "brave", "tavily", "offline"
    provider_id: str  # the Llama Stack provider id: brave-search, tavily-search, offline-search

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        """The top `limit` hits; SearchError when the backend cannot answer."""


def _plain(text: Any) -> str:
    """A search API's snippet without its <strong> markup or HTML entities."""
    return " ".join(html.unescape(_TAG.sub("", str(text or ""))).split())


# ---- HTTP backends ---------------------------------------------------------------------------


async def _request(backend: str, method: str, url: str, timeout: float, **kw: Any) -> Any:
    """One JSON API call; every failure becomes a SearchError naming the backend and the status."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.request(method, url, **kw)
    except httpx.HTTPError as e:
        raise SearchError(f"{backend}: cannot reach {url}: {type(e).__name__}: {e}".rstrip(": ")) from None
    if r.status_code >= 400:
        why = {401: "the API key was refused", 403: "the API key is not allowed this request",
               429: "rate limited; try again later"}.get(r.status_code, r.text[:200].strip() or r.reason_phrase)
        raise SearchError(f"{backend}: HTTP {r.status_code} ({why})", r.status_code)
    try:
        return r.json()
    except ValueError:
        raise SearchError(f"{backend}: the answer is not JSON (HTTP {r.status_code})", r.status_code) from None


class BraveSearch:
    """Brave's web search API: GET /res/v1/web/search?q=..., key in X-Subscription-Token."""

    name, provider_id = "brave", "brave-search"

    def __init__(self, api_key: str, base_url: str = "https://api.search.brave.com", timeout: float = 15.0):
        self.api_key, self.base_url, self.timeout = api_key, base_url.rstrip("/"), timeout

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        data = await _request("brave search", "GET", f"{self.base_url}/res/v1/web/search", self.timeout,
                              params={"q": query, "count": limit},
                              headers={"X-Subscription-Token": self.api_key, "Accept": "application/json"})
        results = ((data or {}).get("web") or {}).get("results") or [] if isinstance(data, dict) else []
        return [SearchHit(_plain(r.get("title")), str(r.get("url", "")), _plain(r.get("description")))
                for r in results[:limit] if isinstance(r, dict)]


class TavilySearch:
    """Tavily's search API: POST /search {query, max_results}, key as a Bearer token."""

    name, provider_id = "tavily", "tavily-search"

    def __init__(self, api_key: str, base_url: str = "https://api.tavily.com", timeout: float = 15.0):
        self.api_key, self.base_url, self.timeout = api_key, base_url.rstrip("/"), timeout

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        data = await _request("tavily search", "POST", f"{self.base_url}/search", self.timeout,
                              json={"query": query, "max_results": limit},
                              headers={"Authorization": f"Bearer {self.api_key}"})
        results = data.get("results") or [] if isinstance(data, dict) else []
        return [SearchHit(_plain(r.get("title")), str(r.get("url", "")), _plain(r.get("content")))
                for r in results[:limit] if isinstance(r, dict)]


# ---- the offline backend: BM25 over a local corpus -------------------------------------------


class _HTMLText(HTMLParser):
    """The visible text and the <title> of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title, self.parts, self._skip, self._in_title = "", [], 0, False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style", "noscript"):
            self._skip += 1
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript") and self._skip:
            self._skip -= 1
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def read_document(path: Path) -> tuple[str, str]:
    """(title, text) of a corpus file: an HTML page's <title>, a markdown file's first heading, else the
    first line of the text; the file name when there is none."""
    with path.open("rb") as f:
        raw = f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
    if path.suffix.lower() in (".html", ".htm"):
        parser = _HTMLText()
        parser.feed(raw)
        title, text = " ".join(parser.title.split()), " ".join(" ".join(parser.parts).split())
    else:
        text = raw
        lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
        heading = next((ln for ln in lines if ln.startswith("#")), None) if path.suffix.lower() != ".txt" else None
        title = (heading or (lines[0] if lines else "")).lstrip("#").strip()
    return (title[:200] or path.stem), text


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(title, body, path UNINDEXED, tokenize='porter unicode61');
"""


class CorpusIndex:
    """A full-text index of a directory, in an SQLite file (or in memory), brought up to date before every
    search: new and changed files (by mtime and size) are re-read, removed ones dropped."""

    def __init__(self, corpus: str | Path, index_path: str | Path | None = None) -> None:
        self.corpus = Path(corpus).expanduser().resolve()
        if not self.corpus.is_dir():
            from herd.errors import HerdError

            raise HerdError(f"search corpus {corpus} is not a directory", "search_corpus")
        self.index_path = str(index_path) if index_path is not None else ":memory:"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @staticmethod
    def default_index_path(corpus: str | Path) -> Path:
        """`<herd_home>/search/<hash of the corpus path>.sqlite`: one index per corpus directory."""
        from herd.home import herd_home

        key = hashlib.sha256(str(Path(corpus).expanduser().resolve()).encode()).hexdigest()[:16]
        return herd_home() / "search" / f"{key}.sqlite"

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.index_path != ":memory:":
                Path(self.index_path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.index_path, timeout=30, check_same_thread=False)
            if self.index_path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _files(self) -> Iterator[Path]:
        for p in sorted(self.corpus.rglob("*")):
            rel = p.relative_to(self.corpus).parts
            if p.suffix.lower() in CORPUS_SUFFIXES and p.is_file() and not any(s.startswith(".") for s in rel):
                yield p

    def refresh(self) -> int:
        """Bring the index up to date with the directory; the number of files (re)indexed or dropped."""
        with self._lock:
            db = self._connect()
            known = {path: (m, s) for path, m, s in db.execute("SELECT path, mtime_ns, size FROM files")}
            changed = 0
            with db:  # one transaction: a crash leaves the previous index whole
                seen = set()
                for p in self._files():
                    key = str(p)
                    try:
                        st = p.stat()
                        if known.get(key) == (st.st_mtime_ns, st.st_size):
                            seen.add(key)
                            continue
                        title, body = read_document(p)
                    except OSError:  # removed while we looked, or unreadable: not in the index
                        continue
                    seen.add(key)
                    db.execute("DELETE FROM docs WHERE path = ?", (key,))
                    db.execute("INSERT INTO docs (title, body, path) VALUES (?, ?, ?)", (title, body, key))
                    db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (key, st.st_mtime_ns, st.st_size))
                    changed += 1
                for gone in set(known) - seen:
                    db.execute("DELETE FROM docs WHERE path = ?", (gone,))
                    db.execute("DELETE FROM files WHERE path = ?", (gone,))
                    changed += 1
            return changed

    def search(self, query: str, limit: int) -> list[SearchHit]:
        """BM25-ranked hits (title words weigh 5x); any word of the query may match."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            raise SearchError("offline search: the query has no words to search for")
        words = [w for w in words if w not in STOPWORDS] or words
        self.refresh()
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))  # quoted: FTS5 syntax in a query is text
        with self._lock:
            rows = self._connect().execute(
                "SELECT title, path, snippet(docs, 1, '', '', ' ... ', 32) FROM docs WHERE docs MATCH ? "
                "ORDER BY bm25(docs, 5.0, 1.0) LIMIT ?", (match, limit)).fetchall()
        return [SearchHit(title, path, " ".join(snip.split())) for title, path, snip in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class OfflineSearch:
    """Searches a local corpus (no network, no key); without a corpus every search is an error saying
    how to configure one."""

    name, provider_id = "offline", "offline-search"

    def __init__(self, corpus: str | Path | None, index_path: str | Path | None = None) -> None:
        if corpus is None:
            self.index = None
        else:
            path = CorpusIndex.default_index_path(corpus) if index_path is None else index_path
            self.index = CorpusIndex(corpus, None if str(path) == ":memory:" else path)

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        if self.index is None:
            raise SearchError("offline search: no search corpus is configured and no BRAVE_API_KEY or "
                              "TAVILY_API_KEY is set (set tools.search_corpus in the server config, or "
                              "--search-corpus DIR)")
        return await asyncio.to_thread(self.index.search, query, limit)

    def close(self) -> None:
        if self.index is not None:
            self.index.close()


# ---- the tool group --------------------------------------------------------------------------


class WebSearchGroup:
    """`builtin::websearch`: one tool, `web_search(query)`, answered by one backend."""

    id = GROUP_ID

    def __init__(self, backend: SearchBackend, *, max_results: int = DEFAULT_MAX_RESULTS) -> None:
        self.backend = backend
        self.max_results = max_results

    @property
    def provider_id(self) -> str:
        return self.backend.provider_id

    def list_tools(self) -> list[Tool]:
        return [Tool(TOOL_NAME, "Search the web for current information; returns the top results as JSON "
                     "(title, url, snippet).",
                     {"type": "object", "properties": {"query": {"type": "string", "minLength": 1,
                                                                 "description": "The search query"}},
                      "required": ["query"]},
                     toolgroup_id=self.id, provider_id=self.provider_id, metadata={"backend": self.backend.name})]

    async def invoke(self, tool_name: str, kwargs: dict[str, Any], *, session_id: str | None = None) -> ToolResult:
        query = str(kwargs.get("query", "")).strip()
        if not query:
            return ToolResult.error("web_search: the query is empty", code=1)
        try:
            hits = await self.backend.search(query, self.max_results)
        except SearchError as e:
            extra = {"status": e.status} if e.status is not None else {}
            return ToolResult.error(str(e), backend=self.backend.name, **extra)
        body = {"query": query, "backend": self.backend.name, "results": [asdict(h) for h in hits]}
        return ToolResult(json.dumps(body, ensure_ascii=False), metadata={"backend": self.backend.name,
                                                                          "count": len(hits)})

    async def end_session(self, session_id: str) -> None:
        return None

    async def close(self) -> None:
        closer = getattr(self.backend, "close", None)
        if closer is not None:
            closer()
