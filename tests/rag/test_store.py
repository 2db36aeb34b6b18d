"""The retrieval library below HTTP: chunking (verbatim slices, sizes, overlap, page metadata), embeddings
(short texts as the sentence encoder gives them, long ones as the mean of their windows), the SQLite store
(sqlite-vec + FTS5: exact neighbours with and without filters against numpy, keyword search, deletes,
metadata updates, all-or-none writes) and the service (ingestion status, bad files, restart, resume,
concurrent attaches)."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from herd.errors import HerdError
from herd.rag.chunking import Chunk, Chunking, chunk_document
from herd.rag.extract import CorruptDocument, Document, Section, extract
from herd.rag.filters import matches, parse_filter
from herd.rag.service import NotFound, RagService
from herd.rag.store import SQLiteVecStore, fts_query

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()


def words(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n))


# ---- chunking -------------------------------------------------------------------------------------


def test_chunks_are_verbatim_windows_with_overlap(embedder):
    text = words(1500, 1) + ". The end."
    doc = Document("a.txt", "text/plain", [Section(text)])
    chunking = Chunking.static(200, 50)
    chunks = chunk_document(doc, "doc", embedder.tokens, chunking, {"lang": "en"})
    ids, spans = embedder.tokens(text)
    assert len(chunks) == -(-(len(ids) - 50) // 150)  # ceil((n - overlap) / step)
    for i, c in enumerate(chunks):
        assert c.position == i and c.document_id == "doc" and c.metadata == {"lang": "en"}
        assert c.text in text and 0 < c.token_count <= 200
        start = i * 150
        assert c.text == text[spans[start][0]:spans[min(start + 200, len(spans)) - 1][1]]
    assert chunks[-1].text.endswith("The end.")
    assert chunks[0].text.startswith(text[:20])


def test_chunks_carry_the_page_they_start_on(embedder):
    doc = Document("r.pdf", "application/pdf", [Section(words(300, 2), {"page": 1}), Section(words(300, 3), {"page": 2})])
    chunks = chunk_document(doc, "r", embedder.tokens, Chunking.static(100, 0))
    pages = [c.metadata["page"] for c in chunks]
    assert pages[0] == 1 and pages[-1] == 2 and pages == sorted(pages)


def test_auto_fits_the_embedding_model(embedder):
    auto = Chunking().resolve(embedder.window)
    assert embedder.window == 254 and (auto.max_tokens, auto.overlap) == (254, 127)
    assert Chunking.parse({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
                          ).resolve(254) == Chunking("static", 800, 400)


@pytest.mark.parametrize("raw, param", [
    ({"type": "static", "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 201}},
     "chunking_strategy.static.chunk_overlap_tokens"),
    ({"type": "static"}, "chunking_strategy.static"),
    ({"type": "semantic"}, "chunking_strategy"),
])
def test_bad_chunking_strategies(raw, param):
    with pytest.raises(HerdError) as e:
        Chunking.parse(raw)
    assert e.value.param == param


# ---- embeddings ------------------------------------------------------------------------------------


def test_short_texts_embed_as_the_sentence_encoder_does(embedder):
    texts = ["The gripper lifts 4.5 kg.", "Expense claims are due within 30 days."]
    np.testing.assert_allclose(embedder.embed(texts), embedder.encoder.encode(texts), atol=1e-5)


def test_long_texts_are_the_mean_of_their_windows(embedder):
    text = words(700, 4)
    ids, _ = embedder.tokens(text)
    assert len(ids) > 2 * embedder.window
    head, tail = embedder.encoder.tokenizer.encode("").ids[:1], embedder.encoder.tokenizer.encode("").ids[1:]
    windows = [head + ids[i:i + embedder.window] + tail for i in range(0, len(ids), embedder.window)]
    mean = embedder.encoder.encode_ids(windows).mean(0)
    np.testing.assert_allclose(embedder.embed([text])[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert abs(np.linalg.norm(embedder.embed([text, "short"]), axis=1) - 1).max() < 1e-5


# ---- the store ------------------------------------------------------------------------------------


@pytest.fixture()
def store(tmp_path):
    s = SQLiteVecStore(tmp_path / "rag.sqlite")
    yield s
    s.close()


def _random_chunks(n: int, dim: int, seed: int = 0) -> tuple[list[Chunk], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [Chunk(words(12, seed * 1000 + i), f"doc{i % 7}", i, {"n": i, "even": i % 2 == 0,
                                                                   "tag": ["a", "b", "c"][i % 3]}, 12)
              for i in range(n)]
    return chunks, vectors


def test_vector_search_is_exact_with_and_without_filters(store):
    chunks, vectors = _random_chunks(400, 32)
    store.create_collection("c", 32)
    store.add("c", chunks, vectors)
    rng = np.random.default_rng(9)
    where = parse_filter({"type": "and", "filters": [{"type": "eq", "key": "tag", "value": "b"},
                                                     {"type": "gte", "key": "n", "value": 100}]})
    allowed = np.array([matches(where, c.metadata) for c in chunks])
    for _ in range(20):
        q = rng.normal(size=32).astype(np.float32)
        q /= np.linalg.norm(q)
        sims = vectors @ q
        want = [chunks[i].chunk_id for i in np.argsort(-sims)[:10]]
        hits = store.vector_search("c", q, 10)
        assert [h.chunk.chunk_id for h in hits] == want
        np.testing.assert_allclose([h.score for h in hits], np.sort(sims)[::-1][:10], atol=1e-5)
        filtered = np.where(allowed, sims, -np.inf)
        want = [chunks[i].chunk_id for i in np.argsort(-filtered)[:10]]
        assert [h.chunk.chunk_id for h in store.vector_search("c", q, 10, where)] == want


def test_keyword_search_ranks_rare_words_and_filters(store):
    chunks = [Chunk("the gripper raises error E-219 when the jaw stalls", "manual", 0, {"lang": "en"}, 9),
              Chunk("the gripper is blue and the jaw is steel", "brochure", 0, {"lang": "en"}, 9),
              Chunk("le préhenseur signale l'erreur E-219", "manuel", 0, {"lang": "fr"}, 6)]
    store.create_collection("k", 4)
    store.add("k", chunks, np.eye(4, dtype=np.float32)[:3])
    hits = store.keyword_search("k", "what is error E-219?", 5)
    assert [h.chunk.document_id for h in hits][:2] in (["manual", "manuel"], ["manuel", "manual"])
    assert "brochure" not in [h.chunk.document_id for h in hits[:2]]
    fr = store.keyword_search("k", "E-219", 5, parse_filter({"type": "eq", "key": "lang", "value": "fr"}))
    assert [h.chunk.document_id for h in fr] == ["manuel"]
    assert store.keyword_search("k", "prehenseur", 5)[0].chunk.document_id == "manuel"  # diacritics folded
    assert store.keyword_search("k", "?? !!", 5) == [] and fts_query("E-219 v2.3") == '"E 219" OR "v2 3"'


def test_deletes_updates_and_replacement(store):
    chunks, vectors = _random_chunks(30, 8, seed=2)
    store.create_collection("d", 8)
    store.add("d", chunks, vectors)
    assert store.count("d") == 30
    assert store.delete_document("d", "doc3") == len([c for c in chunks if c.document_id == "doc3"])
    assert all(h.chunk.document_id != "doc3" for h in store.vector_search("d", vectors[3], 30))
    assert all(h.chunk.document_id != "doc3" for h in store.keyword_search("d", " ".join(WORDS), 30))
    store.update_metadata("d", "doc1", {"tag": "z", "new": 1})
    got = store.document_chunks("d", "doc1")
    assert got and all(c.metadata["tag"] == "z" and c.metadata["new"] == 1 for c in got)
    assert [c.position for c in got] == sorted(c.position for c in got)
    store.add("d", [Chunk("replacement", "doc1", 0, {}, 1)], vectors[:1], replace_documents=True)
    assert [c.text for c in store.document_chunks("d", "doc1")] == ["replacement"]
    store.drop_collection("d")
    with pytest.raises(HerdError):
        store.count("d")


def test_writes_are_all_or_none(store):
    store.create_collection("w", 8)
    chunks, vectors = _random_chunks(5, 8)
    with pytest.raises(HerdError):
        store.add("w", chunks, vectors[:, :4])  # wrong dimension
    with pytest.raises(HerdError):
        store.add("w", chunks, vectors[:4])  # one vector short
    chunks[3].chunk_id = chunks[1].chunk_id = "same-id"  # the second insert fails in the database
    with pytest.raises(HerdError, match="same-id"):
        store.add("w", chunks, vectors)
    assert store.count("w") == 0 and store.vector_search("w", vectors[0], 5) == []


# ---- the service ----------------------------------------------------------------------------------------


def test_service_ingests_searches_and_survives_a_restart(tmp_path, embedder):
    rag = RagService(embedder, root=tmp_path)
    vs = rag.create_store("docs", metadata={"team": "x"})
    good = rag.add_file("a.md", b"# Gripper\n\nThe NR-7741 gripper lifts at most 4.5 kilograms.")
    rec = rag.attach(vs.id, good.id, {"kind": "manual"})
    assert rec.status in ("in_progress", "completed")
    assert rag.wait(vs.id, good.id).status == "completed"
    bad = rag.add_file("b.pdf", b"%PDF-1.4 broken")
    with pytest.raises(CorruptDocument):
        rag.attach(vs.id, bad.id)
    assert rag.get_store(vs.id).file_counts["total"] == 1
    hits = rag.search([vs.id], "How heavy a load can the gripper take?", mode="hybrid", k=3)
    assert hits[0].chunk.document_id == good.id and hits[0].chunk.metadata == {"section": "Gripper", "kind": "manual"}
    rag.close()
    again = RagService(embedder, root=tmp_path)
    assert again.get_store(vs.id).file_counts["completed"] == 1
    assert again.search([vs.id], "NR-7741", mode="keyword", k=1)[0].chunk.document_id == good.id
    again.close()


def test_a_shutdown_mid_ingestion_leaves_it_to_resume(tmp_path, embedder):
    rag = RagService(embedder, root=tmp_path)
    vs = rag.create_store("docs", chunking=Chunking.static(100, 0))
    text = "Parking permits are renewed every January. " + words(16000, 5)  # ~200 chunks: several batches
    f = rag.add_file("a.txt", text.encode())
    rag.attach(vs.id, f.id)
    rag.close()  # while the first batch embeds: the job stops at its next batch
    again = RagService(embedder, root=tmp_path)
    assert again.get_store_file(vs.id, f.id).status == "in_progress" and again.store.count(vs.id) == 0
    assert again.resume() == 1
    assert again.wait(vs.id, f.id).status == "completed"
    assert again.store.count(vs.id) > 2 * 64
    assert again.search([vs.id], "parking permits", mode="keyword", k=1)[0].chunk.document_id == f.id
    again.close()


def test_concurrent_attaches_lose_no_chunks(tmp_path, embedder):
    rag = RagService(embedder, root=tmp_path, workers=2)
    vs = rag.create_store("docs")
    texts = {f"f{i}.txt": f"Note {i} says the code is zulu{i}. " + words(150 + 60 * i, i) for i in range(8)}

    def one(name: str) -> str:
        f = rag.add_file(name, texts[name].encode())
        rag.attach(vs.id, f.id)
        return f.id

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = dict(zip(texts, pool.map(one, texts)))
    for fid in ids.values():
        assert rag.wait(vs.id, fid).status == "completed"
    chunking = Chunking().resolve(embedder.window)
    expected = sum(len(chunk_document(extract(n, t.encode()), "x", embedder.tokens, chunking)) for n, t in texts.items())
    assert rag.store.count(vs.id) == expected > 8
    for i, (name, fid) in enumerate(ids.items()):
        assert rag.search([vs.id], f"zulu{i}", mode="keyword", k=1)[0].chunk.document_id == fid
    rag.close()


def test_bad_requests_to_the_service(tmp_path, embedder):
    rag = RagService(embedder, root=tmp_path, max_file_bytes=100)
    with pytest.raises(HerdError, match="empty"):
        rag.add_file("e.txt", b"")
    with pytest.raises(HerdError, match="100 bytes"):
        rag.add_file("big.txt", b"x" * 101)
    vs = rag.create_store("s")
    with pytest.raises(HerdError, match="already exists"):
        rag.create_store("again", store_id=vs.id)
    with pytest.raises(HerdError, match="not served"):
        rag.create_store("other", embedding_model="text-embedding-3-small")
    with pytest.raises(NotFound, match="not in vector store"):
        rag.update_attributes(vs.id, "file-x", {})
    f = rag.add_file("a.txt", b"some text")
    with pytest.raises(HerdError, match="at most 16"):
        rag.attach(vs.id, f.id, {f"k{i}": i for i in range(17)})
    assert rag.get_store(vs.id).file_counts["total"] == 0
    assert [p.name for p in tmp_path.joinpath("files").iterdir()] == [f.id]  # only the good upload kept
    rag.close()


def test_another_embedding_model_directory(tmp_path, embedder):
    """Any sentence-transformers directory embeds (its name becomes the store's model); a store is searched
    only with the model that built it."""
    import shutil

    from herd.model.bert import minilm_dir
    from herd.rag.embed import Embedder

    own = tmp_path / "my-encoder"
    shutil.copytree(minilm_dir(), own)
    other = Embedder.load(own)
    assert other.model_id == "my-encoder" and other.dim == 384
    rag = RagService(other, root=tmp_path / "a")
    vs = rag.create_store("s")
    rag.insert_document(vs.id, "d", Document("d.txt", "text/plain", [Section("The cafeteria serves ramen.")]))
    assert rag.get_store(vs.id).embedding_model == "my-encoder"
    assert rag.search([vs.id], "noodles", k=1)[0].chunk.document_id == "d"
    rag.close()
    default = RagService(embedder, root=tmp_path / "a")
    with pytest.raises(HerdError, match="my-encoder"):
        default.search([vs.id], "noodles")
    default.close()
