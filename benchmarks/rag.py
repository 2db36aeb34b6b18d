"""Retrieval: search quality, ingestion throughput and query latency of herd/rag (SQLite + sqlite-vec + FTS5).

    .venv/bin/python benchmarks/rag.py                          # full run: sizes 10k and 100k, 200 queries
    .venv/bin/python benchmarks/rag.py --cache ~/.cache/herd-bench --write   # reuse the stores; update BENCHMARKS.md
    .venv/bin/python benchmarks/rag.py --quick                  # sizes 2000, 50 queries (a smoke test)
    .venv/bin/python benchmarks/rag.py --render --json r.json --write       # re-render saved numbers

Embedding is the slow part (item 2: ~350 chunks, ~80 s on a busy 2-core machine); the 100k store takes
~400 MiB of disk (in a temporary folder unless --cache).

One run, three tables (markdown, on stdout; `--write` puts them between `<!-- rag:begin -->` and
`<!-- rag:end -->` in BENCHMARKS.md):
1. Quality on the labelled corpus of tests/rag/corpus.py (Larkspur Robotics: 42 documents, 94 questions,
   each answered by one document): every document goes through RagService.insert_document (default
   chunking: `auto`, 254-token windows with 127 overlapping, embedded by all-MiniLM-L6-v2), then each
   question is searched (k=20) by vector, keyword (BM25), hybrid weighted (the default: alpha 0.75), hybrid weighted alpha 0.5 and hybrid rrf.
   Hits are reduced to documents (first occurrence = best rank); recall@5 and MRR of the labelled
   document, overall and per question kind. A brute-force numpy cosine scan over the very vectors the
   store received must rank exactly as vector mode does (asserted).
2. Ingestion: chunks/s of RagService.insert_document (chunk + embed + store) over the corpus, repeated
   until at least --ingest-chunks chunks; and store-only chunks/s, SQLiteVecStore.add of precomputed
   vectors in batches of 1000 (synthetic chunks as in 3).
3. Query latency at --sizes chunks: synthetic chunks (seeded random unit vectors of dim 384; texts of
   --words words drawn from a made-up vocabulary of 5000 words with a Zipf-Mandelbrot distribution, so
   BM25 posting lists look like real text's), stored with SQLiteVecStore.add. Each query (a random unit
   vector, and 3 words drawn from the same distribution) runs vector_search (k=10), keyword_search
   (k=10), hybrid (herd.rag.search.search, rrf) and a numpy scan (`vectors @ q`, argpartition top 10)
   over the same matrix in memory, in a rotated order; p50 / p95 in ms, the recall of sqlite-vec's
   top 10 against numpy's (exact search: 1.0 expected) and the database file size. `--cache DIR` keeps
   each built store (a file named by size, seed and text shape) for the next run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# numpy's scan on one BLAS thread, as sqlite-vec scans on one (export OPENBLAS_NUM_THREADS to change it): on a
# busy 2-core machine, waking OpenBLAS's threads for each query cost more than a 10k-row scan itself
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import benchkit

BEGIN, END = "<!-- rag:begin -->", "<!-- rag:end -->"
DIM = 384
VOCAB = 5000
ZIPF_S, ZIPF_Q = 1.0, 2.7  # Zipf-Mandelbrot p(rank) ~ 1 / (rank + q)^s, a fit to English word frequencies
QUALITY_K, RECALL_AT = 20, 5
LATENCY_K = 10
STORE_BATCH = 1000
GENERATOR = 1  # bump when the synthetic data changes: cached stores are keyed by it
COLLECTION = "bench"
KIND_ORDER = ("paraphrase", "identifier", "plain")


# ---- the machine ---------------------------------------------------------------------------------


def machine() -> dict:
    info = benchkit.machine(("numpy", "torch", "apsw", "sqlite-vec", "llama-herd"))
    import apsw

    info["sqlite"] = apsw.sqlite_lib_version()
    info["blas_threads"] = os.environ["OPENBLAS_NUM_THREADS"]
    return info


def percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


# ---- 1. quality ----------------------------------------------------------------------------------


def recording_store(path: Path):
    """A SQLiteVecStore that also keeps what it was given (the brute-force scan reads the same vectors)
    and how long its add() took."""
    from herd.rag.store import SQLiteVecStore

    class RecordingStore(SQLiteVecStore):
        def __init__(self, p: Path) -> None:
            super().__init__(p)
            self.added: dict[str, tuple[list, np.ndarray]] = {}  # collection -> ([(chunk id, doc id)], vectors)
            self.add_seconds = 0.0

        def add(self, collection_id, chunks, vectors, *, replace_documents=False):
            t0 = time.perf_counter()
            ids = super().add(collection_id, chunks, vectors, replace_documents=replace_documents)
            self.add_seconds += time.perf_counter() - t0
            keys, vecs = self.added.get(collection_id, ([], np.zeros((0, DIM), dtype=np.float32)))
            self.added[collection_id] = (keys + [(c.chunk_id, c.document_id) for c in chunks],
                                         np.concatenate([vecs, np.asarray(vectors, dtype=np.float32)]))
            return ids

    return RecordingStore(path)


def as_document(doc_id: str, text: str):
    from herd.rag.extract import extract

    return extract(f"{doc_id}.txt", text.encode())


def doc_ranking(document_ids) -> list[str]:
    """Documents in the order of their best-ranked chunk."""
    return list(dict.fromkeys(document_ids))


def score(rankings: list[list[str]], questions: list[tuple[str, str]], kinds: list[str]) -> dict:
    """recall@5 and MRR of the labelled document, overall and per kind."""
    groups: dict[str, list[int | None]] = {"all": []}
    for ranking, (_, doc), kind in zip(rankings, questions, kinds):
        rank = ranking.index(doc) + 1 if doc in ranking else None
        groups["all"].append(rank)
        groups.setdefault(kind, []).append(rank)
    out = {}
    for name, ranks in groups.items():
        out[name] = {"n": len(ranks),
                     "recall": sum(r is not None and r <= RECALL_AT for r in ranks) / len(ranks),
                     "mrr": sum(1.0 / r for r in ranks if r is not None) / len(ranks)}
    return out


def quality(embedder, workdir: Path) -> dict:
    from herd.rag.search import Ranker
    from herd.rag.service import RagService
    from tests.rag.corpus import DOCUMENTS, KINDS, QUESTIONS

    root = workdir / "quality"
    store = recording_store(root / "rag.sqlite")
    rag = RagService(embedder, root=root, store=store)
    try:
        sid = rag.create_store("corpus").id
        t0 = time.perf_counter()
        n_chunks = 0
        for doc_id, text in tqdm(DOCUMENTS.items(), desc="quality: ingest corpus", unit="doc"):
            n_chunks += len(rag.insert_document(sid, doc_id, as_document(doc_id, text)))
        ingest_s = time.perf_counter() - t0
        chunking = rag.get_store(sid).chunking.resolve(embedder.window)

        modes = {"vector": ("vector", None), "keyword": ("keyword", None),
                 "hybrid weighted (default, alpha 0.75)": ("hybrid", Ranker()),
                 "hybrid weighted (alpha 0.5)": ("hybrid", Ranker("weighted", alpha=0.5)),
                 "hybrid rrf (k 60)": ("hybrid", Ranker("rrf"))}
        rankings: dict[str, list[list[str]]] = {m: [] for m in modes}
        rankings["numpy brute force (cosine)"] = []
        keys, vectors = store.added[sid]
        unit = vectors.astype(np.float64)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        mismatched_lists = 0
        for question, _ in tqdm(QUESTIONS, desc="quality: search", unit="question"):
            for name, (mode, ranker) in modes.items():
                hits = rag.search([sid], question, mode=mode, k=QUALITY_K, ranker=ranker)
                rankings[name].append(doc_ranking(h.chunk.document_id for h in hits))
                if name == "vector":
                    vector_chunks = [h.chunk.chunk_id for h in hits]
            q = embedder.embed_query(question).astype(np.float64)  # what RagService.search embeds
            sims = unit @ (q / np.linalg.norm(q))
            top = np.argsort(-sims, kind="stable")[:QUALITY_K]
            rankings["numpy brute force (cosine)"].append(doc_ranking(keys[i][1] for i in top))
            mismatched_lists += [keys[i][0] for i in top] != vector_chunks
        scores = {name: score(r, QUESTIONS, KINDS) for name, r in rankings.items()}
        # exact search is exact: the scan ranks the labelled documents as sqlite-vec does
        for i, ((question, doc), a, b) in enumerate(zip(QUESTIONS, rankings["vector"],
                                                        rankings["numpy brute force (cosine)"])):
            ra = a.index(doc) + 1 if doc in a else None
            rb = b.index(doc) + 1 if doc in b else None
            assert ra == rb, f"question {i} ({question!r}): vector mode ranks {doc} at {ra}, numpy at {rb}"
        assert scores["vector"] == scores["numpy brute force (cosine)"], (scores["vector"],
                                                                         scores["numpy brute force (cosine)"])
        return {"documents": len(DOCUMENTS), "questions": len(QUESTIONS), "chunks": n_chunks,
                "chunk_tokens": chunking.max_tokens, "overlap": chunking.overlap, "ingest_s": ingest_s,
                "chunk_lists_differing": mismatched_lists, "scores": scores}
    finally:
        rag.close()


# ---- 2. ingestion ---------------------------------------------------------------------------------


def ingestion(embedder, workdir: Path, min_chunks: int, corpus_chunks: int) -> dict:
    from herd.rag.service import RagService
    from tests.rag.corpus import DOCUMENTS

    root = workdir / "ingest"
    store = recording_store(root / "rag.sqlite")
    rag = RagService(embedder, root=root, store=store)
    try:
        sid = rag.create_store("ingest").id
        passes = max(1, math.ceil(min_chunks / max(corpus_chunks, 1)))
        docs = [(f"{doc_id}~{p}", as_document(doc_id, text)) for p in range(passes) for doc_id, text in DOCUMENTS.items()]
        n_chunks = n_tokens = 0
        t0 = time.perf_counter()
        for doc_id, doc in tqdm(docs, desc=f"ingest: insert_document x{passes} passes", unit="doc"):
            chunks = rag.insert_document(sid, doc_id, doc)
            n_chunks += len(chunks)
            n_tokens += sum(c.token_count for c in chunks)
        seconds = time.perf_counter() - t0
        return {"passes": passes, "documents": len(docs), "chunks": n_chunks, "tokens": n_tokens,
                "seconds": seconds, "add_seconds": store.add_seconds}
    finally:
        rag.close()


def store_only(workdir: Path, n: int, seed: int, words: int) -> dict:
    from herd.rag.store import SQLiteVecStore

    data = Synthetic(n, seed, words)
    path = workdir / "store-only.sqlite"
    store = SQLiteVecStore(path)
    try:
        store.create_collection(COLLECTION, DIM)
        chunks = data.chunks(0, n)
        rates, t_all = [], 0.0
        for start in tqdm(range(0, n, STORE_BATCH), desc=f"store only: add {n} chunks", unit="batch"):
            t0 = time.perf_counter()
            store.add(COLLECTION, chunks[start:start + STORE_BATCH], data.vectors[start:start + STORE_BATCH])
            dt = time.perf_counter() - t0
            t_all += dt
            rates.append(min(STORE_BATCH, n - start) / dt)
    finally:
        store.close()
    return {"chunks": n, "seconds": t_all, "first_batch": rates[0], "last_batch": rates[-1], "words": words}


# ---- 3. latency -------------------------------------------------------------------------------------


def made_up_vocabulary(seed: int) -> list[str]:
    """VOCAB distinct pronounceable non-words (consonant-vowel syllables; no e, s or y, so Porter stemming
    leaves them whole)."""
    rng = np.random.default_rng([seed, 1])
    cons, vows = list("bdfgklmnprtvz"), list("aiou")
    words: dict[str, None] = {}
    while len(words) < VOCAB:
        syl = int(rng.integers(2, 5))
        w = "".join(cons[int(rng.integers(len(cons)))] + vows[int(rng.integers(len(vows)))] for _ in range(syl))
        if int(rng.integers(3)) == 0:
            w += cons[int(rng.integers(len(cons)))]
        words.setdefault(w)
    return list(words)


class Synthetic:
    """n seeded chunks: unit vectors (float32, DIM) and texts of `words` Zipf-distributed made-up words."""

    def __init__(self, n: int, seed: int, words: int) -> None:
        self.n, self.seed, self.words = n, seed, words
        self.vocab = np.array(made_up_vocabulary(seed), dtype=object)
        w = 1.0 / (np.arange(1, VOCAB + 1) + ZIPF_Q) ** ZIPF_S
        self.p = w / w.sum()
        v = np.random.default_rng([seed, 2]).standard_normal((n, DIM), dtype=np.float32)
        self.vectors = v / np.linalg.norm(v, axis=1, keepdims=True)

    def texts(self, start: int, stop: int) -> list[str]:
        out, block = [], 10_000  # each block of chunks draws from its own stream: any slice is reproducible
        for b in range(start // block, (stop - 1) // block + 1):
            ids = np.random.default_rng([self.seed, 3, b]).choice(VOCAB, size=(block, self.words), p=self.p)
            lo, hi = max(start - b * block, 0), min(stop - b * block, block)
            out += [" ".join(self.vocab[row]) for row in ids[lo:hi]]
        return out

    def chunks(self, start: int, stop: int) -> list:
        from herd.rag.chunking import Chunk

        return [Chunk(t, f"s{start + i}", 0, {}, self.words) for i, t in enumerate(self.texts(start, stop))]

    def queries(self, n: int) -> tuple[np.ndarray, list[str]]:
        rng = np.random.default_rng([self.seed, 4])
        v = rng.standard_normal((n, DIM), dtype=np.float32)
        texts = [" ".join(self.vocab[rng.choice(VOCAB, size=3, replace=False, p=self.p)]) for _ in range(n)]
        return v / np.linalg.norm(v, axis=1, keepdims=True), texts


def build_store(path: Path, data: Synthetic) -> float:
    """Write data's chunks to a new store at path; chunks/s of the adds."""
    from herd.rag.store import SQLiteVecStore

    tmp = path.with_name(path.name + ".partial")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    store = SQLiteVecStore(tmp)
    seconds = 0.0
    try:
        store.create_collection(COLLECTION, DIM)
        bar = tqdm(total=data.n, desc=f"latency: build {data.n} chunks", unit="chunk")
        for start in range(0, data.n, 10_000):
            stop = min(data.n, start + 10_000)
            chunks = data.chunks(start, stop)
            for s in range(0, len(chunks), STORE_BATCH):
                t0 = time.perf_counter()
                store.add(COLLECTION, chunks[s:s + STORE_BATCH], data.vectors[start + s:start + s + STORE_BATCH])
                seconds += time.perf_counter() - t0
                bar.update(len(chunks[s:s + STORE_BATCH]))
        bar.close()
    finally:
        store.close()
    tmp.rename(path)
    return data.n / seconds


def latency(size: int, n_queries: int, seed: int, words: int, cache: Path | None, workdir: Path) -> dict:
    from herd.rag.search import Query, search
    from herd.rag.store import SQLiteVecStore

    data = Synthetic(size, seed, words)
    folder = cache if cache is not None else workdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rag-bench-g{GENERATOR}-n{size}-seed{seed}-w{words}-d{DIM}.sqlite"
    build_rate = None
    if not path.exists():
        build_rate = build_store(path, data)
    store = SQLiteVecStore(path)
    try:
        count = store.count(COLLECTION)
        if count != size:
            raise SystemExit(f"{path} holds {count} chunks, not {size}: delete it and run again")
        db_bytes = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
        qv, qt = data.queries(n_queries)
        matrix = data.vectors

        def numpy_scan(q: np.ndarray) -> np.ndarray:
            s = matrix @ q
            top = np.argpartition(-s, LATENCY_K)[:LATENCY_K]
            return top[np.argsort(-s[top])]

        methods = {
            "vector": lambda i: store.vector_search(COLLECTION, qv[i], LATENCY_K),
            "keyword": lambda i: store.keyword_search(COLLECTION, qt[i], LATENCY_K),
            "hybrid": lambda i: search(store, [COLLECTION], Query(qt[i], qv[i], "hybrid", LATENCY_K)),
            "numpy": lambda i: numpy_scan(qv[i]),
        }
        names = list(methods)
        for i in range(min(5, n_queries)):  # warm-up: page cache, statement cache
            for name in names:
                methods[name](i)
        times: dict[str, list[float]] = {m: [] for m in names}
        overlap = []
        for i in tqdm(range(n_queries), desc=f"latency: {size} chunks", unit="query"):
            results = {}
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                results[name] = methods[name](i)
                times[name].append(time.perf_counter() - t0)
            vec = {int(h.chunk.document_id[1:]) for h in results["vector"]}
            overlap.append(len(vec & {int(j) for j in results["numpy"]}) / LATENCY_K)
    finally:
        store.close()
    out = {"size": size, "queries": n_queries, "db_bytes": db_bytes, "build_chunks_s": build_rate,
           "cached": cache is not None and build_rate is None, "recall": statistics.mean(overlap),
           "min_recall": min(overlap)}
    for name, ts in times.items():
        out[name] = {"p50_ms": 1e3 * percentile(ts, 50), "p95_ms": 1e3 * percentile(ts, 95)}
    return out


# ---- the report --------------------------------------------------------------------------------------


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "## Retrieval (RAG)",
        "",
        (f"Generated by `benchmarks/rag.py` on {m['date']}: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, "
         f"{m['ram_gb']} GB RAM; Python {m['python']}, numpy {m['numpy']}, torch {m['torch']}, "
         f"SQLite {m['sqlite']} (apsw {m['apsw']}), sqlite-vec {m['sqlite-vec']}; load average "
         f"{m['load_before']:.2f} before, {m['load_after']:.2f} after. Run: `{r['command']}` ({r['seconds']:.0f} s)."),
    ]
    q = r.get("quality")
    if q:
        kinds = [k for k in KIND_ORDER if k in q["scores"]["vector"]]
        s0 = q["scores"]["vector"]
        lines += [
            "",
            "### Search quality (tests/rag/corpus.py)",
            "",
            (f"{q['documents']} documents ingested with `RagService.insert_document` (default chunking: "
             f"{q['chunk_tokens']}-token chunks, {q['overlap']} overlapping; {q['chunks']} chunks; all-MiniLM-L6-v2), "
             f"{q['questions']} questions, each answered by one document. Search k={QUALITY_K}, hits reduced to "
             f"documents (best rank kept); recall@{RECALL_AT} and MRR of the labelled document. The numpy scan "
             f"(cosine over the vectors the store received) ranks every labelled document exactly as vector mode "
             f"does (asserted); its top-{QUALITY_K} chunk lists match sqlite-vec's for "
             f"{q['questions'] - q['chunk_lists_differing']} of {q['questions']} questions."),
            "",
            "| method | " + " | ".join(f"{g} (n={s0[g]['n']}) R@{RECALL_AT} | MRR" for g in ["all", *kinds]) + " |",
            "|---|" + "---:|---:|" * (1 + len(kinds)),
        ]
        for name, s in q["scores"].items():
            lines.append(f"| {name} | " + " | ".join(f"{s[g]['recall']:.3f} | {s[g]['mrr']:.3f}"
                                                      for g in ["all", *kinds]) + " |")
    ing, so = r.get("ingest"), r.get("store_only")
    if ing or so:
        lines += ["", "### Ingestion throughput", "",
                  "| path | chunks | seconds | chunks/s | notes |", "|---|---:|---:|---:|---|"]
        if ing:
            lines.append(f"| `RagService.insert_document` (chunk + embed + store) | {ing['chunks']} | {ing['seconds']:.1f} | "
                         f"{ing['chunks'] / ing['seconds']:.1f} | the corpus x{ing['passes']} ({ing['documents']} "
                         f"documents, {ing['tokens']} tokens: {ing['tokens'] / ing['seconds']:.0f} tokens/s) |")
            lines.append(f"| of which `SQLiteVecStore.add` | {ing['chunks']} | {ing['add_seconds']:.2f} | "
                         f"{ing['chunks'] / ing['add_seconds']:.0f} | {100 * ing['add_seconds'] / ing['seconds']:.1f}% "
                         "of the time; the rest is tokenizing and embedding |")
        if so:
            lines.append(f"| `SQLiteVecStore.add` only (precomputed vectors, batches of {STORE_BATCH}) | {so['chunks']} | "
                         f"{so['seconds']:.1f} | {so['chunks'] / so['seconds']:.0f} | synthetic {so['words']}-word chunks; "
                         f"first batch {so['first_batch']:.0f}/s, last {so['last_batch']:.0f}/s |")
    lat = r.get("latency")
    if lat:
        l0 = lat[0]
        lines += [
            "",
            "### Query latency",
            "",
            (f"Synthetic chunks: seeded random unit vectors (dim {DIM}), texts of {r['words']} words drawn from "
             f"{VOCAB} made-up words (Zipf-Mandelbrot, s={ZIPF_S}, q={ZIPF_Q}). {l0['queries']} queries per size "
             f"(random unit vectors; 3 words from the same distribution, matched with OR), each method in a rotated "
             f"order, after a warm-up of 5. k={LATENCY_K}; hybrid is `herd.rag.search.search` (the default weighted fusion, both lists "
             f"50 deep); numpy is `vectors @ q` + argpartition over the same matrix in memory "
             f"(OPENBLAS_NUM_THREADS={r['machine']['blas_threads']}; sqlite-vec scans on one thread too). Recall: sqlite-vec's "
             f"top {LATENCY_K} against numpy's (both exact). Milliseconds, p50 / p95."),
            "",
            "| chunks | DB file | build (chunks/s) | vector | keyword | hybrid | numpy scan | recall@10 | numpy vs sqlite-vec (p50) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for x in lat:
            build = "cached" if x["build_chunks_s"] is None else f"{x['build_chunks_s']:.0f}"
            def cell(k: str, x: dict = x) -> str:
                return f"{x[k]['p50_ms']:.2f} / {x[k]['p95_ms']:.2f}"

            ratio = x["vector"]["p50_ms"] / x["numpy"]["p50_ms"]
            speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
            lines.append(f"| {x['size']:,} | {x['db_bytes'] / 2**20:.1f} MiB | {build} | {cell('vector')} | "
                         f"{cell('keyword')} | {cell('hybrid')} | {cell('numpy')} | {x['recall']:.3f} | {speed} |")
    return "\n".join(lines) + "\n"


def write_section(md: Path, section: str) -> bool:
    return benchkit.write_section(md, BEGIN, END, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="store sizes (chunks) for latency")
    ap.add_argument("--queries", type=int, default=200, help="queries per size")
    ap.add_argument("--quick", action="store_true", help="sizes 2000, 50 queries, store-only 2000 (a smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--words", type=int, default=180, help="words per synthetic chunk (~254 MiniLM tokens of English)")
    ap.add_argument("--ingest-chunks", type=int, default=300, help="insert_document until at least this many chunks")
    ap.add_argument("--store-chunks", type=int, default=20_000, help="chunks for the store-only throughput")
    ap.add_argument("--cache", type=Path, default=None, help="keep the latency stores here and reuse them")
    ap.add_argument("--only", default="quality,ingest,latency", help="comma list of: quality, ingest, latency")
    ap.add_argument("--write", action="store_true", help="update the rag section of BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--json", type=Path, default=None, help="also save the raw numbers here")
    ap.add_argument("--render", action="store_true", help="only render --json (and --write it); measure nothing")
    a = ap.parse_args()
    if a.render:
        if a.json is None:
            ap.error("--render needs --json FILE")
        section = render(json.loads(a.json.read_text()))
        print(section)
        if a.write and write_section(a.out, section):
            print(f"wrote the rag section of {a.out}", file=sys.stderr)
        return
    if a.quick:
        a.sizes, a.queries, a.store_chunks = [2000], 50, 2000
    if a.queries < 1 or any(n <= LATENCY_K for n in a.sizes):
        ap.error(f"need at least one query and sizes above {LATENCY_K}")
    only = set(a.only.split(","))
    t_start = time.perf_counter()
    results: dict = {"machine": machine(), "words": a.words, "seed": a.seed,
                     "command": "benchmarks/rag.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="herd-rag-bench-") as tmp:
        work = Path(tmp)
        if only & {"quality", "ingest"}:
            from herd.rag.embed import Embedder

            embedder = Embedder.load()
            q = quality(embedder, work)  # the ingest phase needs the corpus's chunk count
            if "quality" in only:
                results["quality"] = q
            if "ingest" in only:
                results["ingest"] = ingestion(embedder, work, a.ingest_chunks, q["chunks"])
        if "ingest" in only:
            results["store_only"] = store_only(work, a.store_chunks, a.seed, a.words)
        if "latency" in only:
            results["latency"] = [latency(n, a.queries, a.seed, a.words, a.cache, work) for n in a.sizes]
    results["machine"]["load_after"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - t_start
    section = render(results)
    print(section)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    if a.write and write_section(a.out, section):
        print(f"wrote the rag section of {a.out}", file=sys.stderr)
    for x in results.get("latency", []):
        if x["recall"] < 1.0:
            print(f"note: at {x['size']} chunks sqlite-vec's top {LATENCY_K} missed some of numpy's "
                  f"(recall {x['recall']:.4f}, worst query {x['min_recall']:.1f})", file=sys.stderr)


if __name__ == "__main__":
    main()
