"""builtin::websearch: the offline BM25 backend over a real corpus and a real SQLite index, and the Brave and
Tavily backends against fake APIs on loopback that speak their real JSON."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from toolfakes import BRAVE_KEY, TAVILY_KEY, FakeAPI, brave, tavily

from herd.errors import HerdError
from herd.tools.builtin import ToolSettings, default_registry, search_backend
from herd.tools.websearch import (
    BraveSearch,
    CorpusIndex,
    OfflineSearch,
    TavilySearch,
    WebSearchGroup,
)


def run(coro):
    return asyncio.run(coro)


def search(group: WebSearchGroup, query: str) -> dict:
    result = run(group.invoke("web_search", {"query": query}))
    assert result.ok, result.error_message
    return json.loads(result.content)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "llama.md").write_text("# Llama 3.1\n\nLlama 3.1 models come in 8B, 70B and 405B sizes and read "
                                "128K tokens of context.\n")
    (d / "sub" / "paris.html").write_text("<html><head><title>Paris, France</title><style>.x{color:red}</style>"
                                          "</head><body><script>var hidden = 'zebra';</script><p>Paris is the "
                                          "capital of France.</p></body></html>")
    (d / "fruit.txt").write_text("Bananas\nBananas are yellow and rich in potassium.\n")
    (d / "notes.json").write_text('{"capital": "not indexed: wrong suffix"}')
    (d / ".hidden.md").write_text("capital capital capital")
    return d


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_offline_ranks_the_right_file_first_with_title_path_and_snippet(corpus: Path, home: Path) -> None:
    group = WebSearchGroup(OfflineSearch(corpus))
    out = search(group, "what is the capital of France?")
    assert out["backend"] == "offline" and out["query"] == "what is the capital of France?"
    first = out["results"][0]
    assert first == {"title": "Paris, France", "url": str((corpus / "sub" / "paris.html").resolve()),
                     "snippet": "Paris is the capital of France."}
    assert [r["url"] for r in out["results"]] == [first["url"]]  # .json and dot-files are not in the corpus
    llama = search(group, "Llama context tokens")["results"][0]
    assert llama["title"] == "Llama 3.1" and "128K tokens" in llama["snippet"]
    assert search(group, "zebra color")["results"] == []  # <script> and <style> are not text


def test_offline_index_is_a_file_under_herd_home_and_follows_changes(corpus: Path, home: Path) -> None:
    group = WebSearchGroup(OfflineSearch(corpus))
    assert search(group, "bananas")["results"][0]["title"] == "Bananas"
    index = CorpusIndex.default_index_path(corpus)
    assert index.parent == home / "search" and index.exists()
    rows = sqlite3.connect(index).execute("SELECT count(*) FROM files").fetchone()[0]
    assert rows == 3
    # a second index on the same file reads what is there: nothing to re-read
    assert CorpusIndex(corpus, index).refresh() == 0

    (corpus / "fruit.txt").write_text("Cherries\nCherries are red.\n")
    os.utime(corpus / "fruit.txt", ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    (corpus / "sub" / "paris.html").unlink()
    (corpus / "new.md").write_text("# Kiwis\nKiwis are green and fuzzy.\n")
    assert search(group, "bananas")["results"] == []
    assert search(group, "cherries")["results"][0]["title"] == "Cherries"
    assert search(group, "capital France")["results"] == []
    assert search(group, "fuzzy green")["results"][0]["url"] == str((corpus / "new.md").resolve())


def test_offline_returns_the_top_five_and_reads_query_syntax_as_text(tmp_path: Path) -> None:
    d = tmp_path / "many"
    d.mkdir()
    for i in range(8):
        (d / f"doc{i}.txt").write_text(f"Document {i}\n" + "alpaca " * (i + 1))
    group = WebSearchGroup(OfflineSearch(d, ":memory:"))
    hits = search(group, "alpaca")["results"]
    assert len(hits) == 5
    assert hits[0]["title"] == "Document 7"  # the densest match ranks first
    for tricky in ('"alpaca', "alpaca AND OR NOT", "NEAR(alpaca", "alpaca*", "col:alpaca"):
        assert search(group, tricky)["results"], tricky
    empty = run(group.invoke("web_search", {"query": "?!"}))
    assert not empty.ok and "no words" in empty.error_message


def test_without_corpus_or_keys_the_tool_says_how_to_configure_it() -> None:
    registry = default_registry(ToolSettings(), environ={})
    result = run(registry.invoke("web_search", {"query": "llamas"}))
    assert not result.ok and result.error_code == 2
    assert "no search corpus" in result.error_message and "BRAVE_API_KEY" in result.error_message
    bad = run(registry.invoke("web_search", {}))
    assert bad.error_code == 1 and "'query' is a required property" in bad.error_message


def test_a_missing_corpus_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HerdError, match="is not a directory"):
        default_registry(ToolSettings(search_corpus=str(tmp_path / "nope")), environ={})


def test_backend_choice_follows_settings_and_environment(tmp_path: Path) -> None:
    auto = ToolSettings(search_corpus=str(tmp_path))
    assert isinstance(search_backend(auto, {"BRAVE_API_KEY": "k", "TAVILY_API_KEY": "t"}), BraveSearch)
    assert isinstance(search_backend(auto, {"TAVILY_API_KEY": "t"}), TavilySearch)
    assert isinstance(search_backend(auto, {}), OfflineSearch)
    assert search_backend(ToolSettings(brave_api_key="from-config"), {}).api_key == "from-config"
    assert isinstance(search_backend(ToolSettings(search_backend="offline", search_corpus=str(tmp_path)),
                                     {"BRAVE_API_KEY": "k"}), OfflineSearch)
    with pytest.raises(HerdError, match="no Brave API key"):
        search_backend(ToolSettings(search_backend="brave"), {})


def test_brave_sends_key_and_query_and_reads_web_results() -> None:
    fake = FakeAPI(brave)
    try:
        group = WebSearchGroup(BraveSearch(BRAVE_KEY, fake.url), max_results=3)
        assert group.list_tools()[0].name == "web_search" and group.provider_id == "brave-search"
        out = search(group, "llama")
        (seen,) = fake.seen
        assert seen.method == "GET" and seen.path == "/res/v1/web/search"
        assert seen.query["q"] == ["llama"] and seen.query["count"] == ["3"]
        assert seen.headers["x-subscription-token"] == BRAVE_KEY
        assert out["backend"] == "brave"
        assert out["results"][0] == {"title": "llama - Wikipedia", "url": "https://en.wikipedia.org/wiki/Llama",
                                     "snippet": "The llama is a domesticated South American camelid & more."}
        assert len(out["results"]) == 2
    finally:
        fake.close()


def test_tavily_posts_the_query_with_a_bearer_key() -> None:
    fake = FakeAPI(tavily)
    try:
        out = search(WebSearchGroup(TavilySearch(TAVILY_KEY, fake.url)), "alpacas")
        (seen,) = fake.seen
        assert seen.method == "POST" and seen.path == "/search"
        assert seen.body == {"query": "alpacas", "max_results": 5}
        assert seen.headers["authorization"] == f"Bearer {TAVILY_KEY}"
        assert out["results"] == [{"title": "About alpacas", "url": "https://tavily.example/1",
                                   "snippet": "alpacas explained."}]
    finally:
        fake.close()


def test_http_failures_are_error_results_naming_backend_and_status() -> None:
    fake = FakeAPI(brave)
    limited = FakeAPI(lambda seen: (429, {"error": "too many requests"}))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    try:
        refused = run(WebSearchGroup(BraveSearch("wrong-key", fake.url)).invoke("web_search", {"query": "x"}))
        assert not refused.ok and refused.error_message.startswith("brave search: HTTP 401")
        assert refused.metadata == {"backend": "brave", "status": 401}
        r429 = run(WebSearchGroup(TavilySearch(TAVILY_KEY, limited.url)).invoke("web_search", {"query": "x"}))
        assert r429.error_message == "tavily search: HTTP 429 (rate limited; try again later)"
        down = run(WebSearchGroup(BraveSearch(BRAVE_KEY, dead, timeout=5)).invoke("web_search", {"query": "x"}))
        assert not down.ok and down.error_message.startswith(f"brave search: cannot reach {dead}")
        garbage = FakeAPI(lambda seen: (200, b"<html>not json</html>"))
        try:
            bad = run(WebSearchGroup(BraveSearch(BRAVE_KEY, garbage.url)).invoke("web_search", {"query": "x"}))
            assert bad.error_message == "brave search: the answer is not JSON (HTTP 200)"
        finally:
            garbage.close()
    finally:
        fake.close()
        limited.close()


def test_registry_uses_brave_from_environment(tmp_path: Path) -> None:
    fake = FakeAPI(brave)
    try:
        registry = default_registry(ToolSettings(brave_base_url=fake.url), environ={"BRAVE_API_KEY": BRAVE_KEY})
        assert registry.group("builtin::websearch").provider_id == "brave-search"
        result = run(registry.invoke("web_search", {"query": "vicuna"}))
        assert json.loads(result.content)["results"][0]["title"] == "vicuna - Wikipedia"
    finally:
        fake.close()
