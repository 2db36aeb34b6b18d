"""`herd rag`: retrieval from the terminal. Ingest files and directories into a vector store, search it,
ask a model questions answered from it, list and delete. The stores live in Herd's home
(`<HERD_HOME>/rag`, default ~/.cache/herd/rag): the same ones `herd serve` serves at /v1/vector_stores."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from herd.errors import HerdError

EPILOG = """examples:
  herd rag ingest --store docs ./docs README.md        # directories recursively; creates the store
  herd rag ingest --store docs ./docs --chunk-size 400 --chunk-overlap 100
  herd rag search --store docs "how do I reset the device?"
  herd rag search --store docs "error E-219" --mode keyword -k 3 --json
  herd rag ask --store docs "How do I reset the device?"
  herd rag ask --store docs "What does E-219 mean?" --model ./Llama-3.1-8B-Instruct --max-tokens 512
  herd rag list                                         # the stores; --store NAME: that store's files
  herd rag delete --store docs --file guide.pdf         # one file; without --file: the whole store
Re-ingesting a path skips files whose bytes did not change and replaces the ones that did. `herd serve`
serves the same stores (OpenAI vector stores, file_search, Llama Stack vector-io / rag-tool).
exit status: 0 done, 1 some file failed to ingest (or nothing matched a question), 2 bad input (unknown
store, missing path, bad option)
"""
MODES = ("vector", "keyword", "hybrid")
SNIPPET_CHARS = 240
SYSTEM_PROMPT = ("You answer questions using only the numbered sources the user gives you. Cite the sources "
                 "you use by their numbers in brackets, like [1] or [2]. If the sources do not contain the "
                 "answer, say that they do not.")


def add_rag_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `herd rag` (ingest, search, ask, list, delete) on the main parser's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("rag", help="ingest documents into a vector store, search them, ask a model about them",
                       epilog=EPILOG, formatter_class=fmt,
                       description="Retrieval over local files: documents are extracted (text, Markdown, HTML, "
                       "PDF, DOCX, JSON, code), chunked, embedded with all-MiniLM-L6-v2 and kept in a vector "
                       "store under Herd's home, searched by vector, keyword or both.")
    actions = p.add_subparsers(dest="rag_action", metavar="ACTION")

    ing = actions.add_parser("ingest", help="add files and directories to a store (created if missing)",
                             epilog=EPILOG, formatter_class=fmt)
    _store_arg(ing, "the store to add to (a name or vs_ id; a new name creates the store)")
    ing.add_argument("paths", nargs="+", metavar="PATH",
                     help="files and directories (searched recursively; hidden entries left out)")
    ing.add_argument("--chunk-size", type=int, default=None, metavar="N",
                     help="tokens per chunk, 100-4096 (default auto: 254 tokens, the embedding model's window)")
    ing.add_argument("--chunk-overlap", type=int, default=None, metavar="M",
                     help="tokens shared by consecutive chunks, at most half the chunk size (default: half)")
    _embedding_arg(ing)
    ing.add_argument("--json", action="store_true", help="print a summary object instead of the per-file lines")

    se = actions.add_parser("search", help="the chunks that best match a query", epilog=EPILOG,
                            formatter_class=fmt)
    _store_arg(se)
    se.add_argument("query", metavar="QUERY", help="what to look for")
    se.add_argument("--mode", choices=MODES, default="hybrid",
                    help="vector (meaning), keyword (BM25 words) or hybrid (both, fused; default)")
    se.add_argument("-k", type=int, default=5, metavar="K", help="how many results (default 5)")
    _embedding_arg(se)
    se.add_argument("--json", action="store_true",
                    help="print a JSON list of {file_id, filename, score, text, metadata}")

    ask = actions.add_parser("ask", help="answer a question from the store with a model, citing sources",
                             epilog=EPILOG, formatter_class=fmt)
    _store_arg(ask)
    ask.add_argument("question", metavar="QUESTION", help="the question")
    ask.add_argument("--model", "-m", default=None,
                     help="HF or Meta checkpoint directory, .gguf file, built-in name, or random:<preset> "
                     "(default: smollm2-135m-instruct)")
    ask.add_argument("-k", type=int, default=5, metavar="K", help="how many chunks to give the model (default 5)")
    ask.add_argument("--max-tokens", type=int, default=256, help="most tokens in the answer (default 256)")
    ask.add_argument("--temperature", "-t", type=float, default=0.0,
                     help="sampling temperature (default 0: greedy and deterministic)")
    ask.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    ask.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    ask.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="weight dtype (default: float32 on CPU, bfloat16 on CUDA)")
    ask.add_argument("--quantize", choices=["none", "bf16", "int8", "int4"], default="none",
                     help="weight-only quantization for CPU decode (default none)")
    _embedding_arg(ask)
    ask.add_argument("--json", action="store_true",
                     help="print {answer, sources: [{n, file_id, filename, score, text, metadata}], messages}")
    # what commands.load_llm reads besides the flags above (herd generate's defaults)
    ask.set_defaults(top_p=1.0, top_k=0, block_size=16, kv_cache_memory=None, max_model_len=None,
                     no_prefix_caching=False, kv_cache_dtype="auto")

    ls = actions.add_parser("list", help="the stores, or one store's files", epilog=EPILOG, formatter_class=fmt)
    ls.add_argument("--store", "-s", default=None, metavar="NAME", help="list this store's files instead")
    ls.add_argument("--json", action="store_true", help="print JSON")

    rm = actions.add_parser("delete", help="delete a store, or one file from it", epilog=EPILOG, formatter_class=fmt,
                            description="Delete a store (and the uploaded copies of its files that no other "
                            "store holds), or with --file one file from it. Your own files are never touched.")
    _store_arg(rm)
    rm.add_argument("--file", default=None, metavar="FILENAME_OR_ID",
                    help="delete only this file from the store: its file- id, its path or its filename")
    p.set_defaults(handler=cmd_rag, rag_parser=p)
    return p


def _embedding_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding-model", default=None, metavar="NAME|DIR",
                   help="all-MiniLM-L6-v2 (default) or a sentence-transformers model directory; a store is "
                   "searched with the model it was built with")


def _store_arg(p: argparse.ArgumentParser, help: str = "the vector store: its name or vs_ id") -> None:
    p.add_argument("--store", "-s", required=True, metavar="NAME", help=help)


# ---- shared ------------------------------------------------------------------------------------


def _service(embedding_model: str | None = None) -> Any:
    from herd.rag.embed import Embedder
    from herd.rag.service import RagService

    # the embedding model loads only when a command needs it
    return RagService(lambda: Embedder.load(embedding_model))


def _find_store(rag: Any, name: str) -> Any:
    """The store by name or id; an unknown one is a one-line error naming the stores there are."""
    from herd.rag.service import NotFound

    try:
        return rag.find_store(name)
    except NotFound:
        stores = rag.list_stores()
        if not stores:
            raise HerdError(f"no vector store {name!r}: there are none yet "
                            f"(herd rag ingest --store {name} PATH creates it)") from None
        known = ", ".join(f"{s.name} ({s.id})" if s.name else s.id for s in stores)
        raise HerdError(f"no vector store {name!r}; the stores are: {known}") from None


def _where(metadata: dict[str, Any]) -> str:
    """' (page 3)', ' (section Install > Linux)' or ''."""
    parts = [f"{key} {metadata[key]}" for key in ("page", "section", "record") if metadata.get(key) not in (None, "")]
    return f" ({', '.join(parts)})" if parts else ""


def _snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def _hit_json(hit: Any, names: dict[str, str]) -> dict[str, Any]:
    c = hit.chunk
    return {"file_id": c.document_id, "filename": names.get(c.document_id), "score": hit.score,
            "text": c.text, "metadata": c.metadata}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _check_k(k: int) -> None:
    if not 1 <= k <= 100:
        raise HerdError(f"-k must be from 1 to 100, got {k}")


def _held_elsewhere(rag: Any, file_id: str, store_id: str) -> bool:
    """Whether another store still holds the file."""
    from herd.rag.service import NotFound

    for s in rag.list_stores():
        if s.id == store_id:
            continue
        try:
            rag.get_store_file(s.id, file_id)
            return True
        except NotFound:
            continue
    return False


def _remove(rag: Any, store_id: str, file_id: str) -> None:
    """Take a file out of a store; the copy `herd rag ingest` uploaded goes too unless another store holds it
    (files uploaded over HTTP, which have no `path` attribute, are kept)."""
    ingested = bool(rag.get_store_file(store_id, file_id).attributes.get("path"))
    rag.detach(store_id, file_id)
    if ingested and not _held_elsewhere(rag, file_id, store_id):
        rag.delete_file(file_id)


# ---- ingest ------------------------------------------------------------------------------------


def _chunking(args: argparse.Namespace) -> Any:
    from herd.rag.chunking import MAX_SIZE, MIN_SIZE, Chunking

    if args.chunk_size is None:
        if args.chunk_overlap is not None:
            raise HerdError("--chunk-overlap needs --chunk-size")
        return None
    size = args.chunk_size
    overlap = size // 2 if args.chunk_overlap is None else args.chunk_overlap
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise HerdError(f"--chunk-size must be from {MIN_SIZE} to {MAX_SIZE} tokens, got {size}")
    if not 0 <= overlap <= size // 2:
        raise HerdError(f"--chunk-overlap must be from 0 to {size // 2} (half of --chunk-size), got {overlap}")
    return Chunking.static(size, overlap)


def _collect(paths: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to ingest (supported types, each once) and the ones skipped with why. A missing path: HerdError."""
    from herd.rag.extract import SUPPORTED_TYPES

    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
        elif path.is_file():
            found.append(path)
        else:
            raise HerdError(f"{raw}: no such file or directory")
    files, skipped, seen = [], [], set()
    for f in found:
        key = f.resolve()
        if key in seen:
            continue
        seen.add(key)
        ext = f.suffix.lower()
        if ext not in SUPPORTED_TYPES:
            skipped.append((f, f"unsupported type ({ext or 'no extension'})"))
        elif f.stat().st_size == 0:
            skipped.append((f, "empty"))
        else:
            files.append(f)
    return files, skipped


def _path_attribute(path: Path) -> dict[str, str]:
    """The attributes a file is attached with: its absolute path (what tells two README.md apart)."""
    full = str(path.resolve())
    return {"path": full} if len(full) <= 512 else {}


def _by_filename(rag: Any, store_id: str) -> dict[str, list[Any]]:
    """The store's files (records) by filename, read once per ingest."""
    records = rag.list_store_files(store_id)
    names = rag.filenames(r.file_id for r in records)
    index: dict[str, list[Any]] = {}
    for r in records:
        index.setdefault(names.get(r.file_id, r.file_id), []).append(r)
    return index


def _previous(path: Path, index: dict[str, list[Any]]) -> list[Any]:
    """The store's earlier versions of a file: same filename, and the same path where one was recorded."""
    mine = _path_attribute(path).get("path")
    return [r for r in index.get(path.name, []) if r.attributes.get("path", mine) == mine]


def _ingest_one(rag: Any, store: Any, path: Path, chunking: Any, index: dict[str, list[Any]]) -> dict[str, Any]:
    """One file into the store: {status: added | replaced | unchanged | failed, file_id, chunks, error};
    `index` (the store's files by filename) is kept up to date."""
    from herd.rag.service import NotFound

    out: dict[str, Any] = {"path": str(path), "filename": path.name, "status": "failed", "file_id": None,
                           "chunks": 0, "error": None, "reason": None}
    try:
        data = path.read_bytes()
    except OSError as e:
        out["error"] = f"cannot read {path}: {e.strerror}"
        return out
    earlier = _previous(path, index)
    digest = hashlib.sha256(data).hexdigest()
    for r in earlier:
        try:
            same = hashlib.sha256(rag.file_content(r.file_id)).hexdigest() == digest
        except (NotFound, OSError):
            same = False
        if same and r.status == "completed" and (chunking is None or chunking == r.chunking):
            _replace(rag, store.id, index, path.name, [e for e in earlier if e is not r], r)  # stray copies go
            out.update(status="unchanged", file_id=r.file_id, chunks=len(rag.store_file_chunks(store.id, r.file_id)))
            return out
    try:
        rec = rag.add_file(path.name, data)
    except HerdError as e:
        out["error"] = str(e)
        return out
    out["file_id"] = rec.id
    try:
        rag.attach(store.id, rec.id, _path_attribute(path), chunking)  # bad input raises here: nothing attached
        done = rag.wait(store.id, rec.id)
        if done.status != "completed":
            raise HerdError((done.last_error or {}).get("message") or f"ingestion ended {done.status}")
    except HerdError as e:  # the store keeps what it had: the new copy goes, an earlier version stays
        try:
            rag.delete_file(rec.id)
        except NotFound:
            pass
        out.update(error=str(e), file_id=None)
        return out
    _replace(rag, store.id, index, path.name, earlier, done)
    out.update(status="replaced" if earlier else "added", chunks=len(rag.store_file_chunks(store.id, rec.id)))
    return out


def _replace(rag: Any, store_id: str, index: dict[str, list[Any]], name: str, old: list[Any], new: Any) -> None:
    """Take the old versions of a file out of the store (and the index), keeping `new`."""
    from herd.rag.service import NotFound

    for r in old:
        try:
            _remove(rag, store_id, r.file_id)
        except NotFound:  # gone meanwhile (another process)
            pass
    gone = {r.file_id for r in old} | {new.file_id}
    index[name] = [r for r in index.get(name, []) if r.file_id not in gone] + [new]


def _ingest(rag: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from herd.rag.service import NotFound

    chunking = _chunking(args)
    files, skipped = _collect(args.paths)
    try:
        store = rag.find_store(args.store)
        created = False
    except NotFound:
        store = rag.create_store(args.store, chunking=chunking)
        created = True
    say = (lambda line: None) if args.json else (lambda line: tqdm.write(line, file=sys.stdout))
    if created:
        say(f"created vector store {args.store} ({store.id})")
    results = [{"path": str(f), "filename": f.name, "status": "skipped", "file_id": None, "chunks": 0,
                "error": None, "reason": why} for f, why in skipped]
    for f, why in skipped:
        say(f"  skipped    {f}: {why}")
    index = _by_filename(rag, store.id)
    start = time.perf_counter()
    with tqdm(files, desc="ingesting", unit="file", file=sys.stderr, disable=None, leave=False) as bar:
        for f in bar:
            bar.set_postfix_str(f.name)
            r = _ingest_one(rag, store, f, chunking, index)
            results.append(r)
            if r["status"] == "failed":
                say(f"  failed     {f}: {r['error']}")
            else:
                say(f"  {r['status']:<10} {f}: {_plural(r['chunks'], 'chunk')}")
    seconds = time.perf_counter() - start
    counts = {s: sum(r["status"] == s for r in results) for s in ("added", "replaced", "unchanged", "skipped",
                                                                    "failed")}
    chunks = sum(r["chunks"] for r in results if r["status"] in ("added", "replaced"))
    rate = chunks / seconds if seconds > 0 else 0.0
    store = rag.get_store(store.id)
    if args.json:
        print(json.dumps({"store": {"id": store.id, "name": store.name, "created": created,
                                    "chunks": rag.store.count(store.id)},
                          "files": results, "counts": counts, "chunks": chunks, "seconds": round(seconds, 3),
                          "chunks_per_second": round(rate, 1)}, indent=2))
    else:
        parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        print(f"{_plural(len(results), 'file')} ({parts or 'none'}): {_plural(chunks, 'chunk')} embedded in "
              f"{seconds:.1f} s ({rate:.1f} chunks/s); store {store.name or store.id} holds "
              f"{_plural(rag.store.count(store.id), 'chunk')}")
    return 1 if counts["failed"] else 0


# ---- search and ask ------------------------------------------------------------------------------


def _search(rag: Any, args: argparse.Namespace) -> int:
    _check_k(args.k)
    store = _find_store(rag, args.store)
    hits = rag.search([store.id], args.query, mode=args.mode, k=args.k)
    names = rag.filenames(h.chunk.document_id for h in hits)
    if args.json:
        print(json.dumps([_hit_json(h, names) for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print(f"no results in {store.name or store.id} for {args.query!r}")
        return 0
    for i, h in enumerate(hits, 1):
        c = h.chunk
        print(f"{i}. {h.score:.3f}  {names.get(c.document_id, c.document_id)}{_where(c.metadata)}")
        print(f"   {_snippet(c.text)}")
    return 0


def _sources_text(hits: list[Any], names: dict[str, str]) -> str:
    parts = []
    for i, h in enumerate(hits, 1):
        c = h.chunk
        parts.append(f"[{i}] {names.get(c.document_id, c.document_id)}{_where(c.metadata)}\n{c.text.strip()}")
    return "\n\n".join(parts)


def build_messages(question: str, hits: list[Any], names: dict[str, str]) -> list[dict[str, str]]:
    """The conversation the model answers: the instructions, then the numbered sources and the question."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Sources:\n\n{_sources_text(hits, names)}\n\nQuestion: {question}"}]


def _fit(llm: Any, question: str, hits: list[Any], names: dict[str, str], max_tokens: int) -> list[Any]:
    """The best hits whose prompt leaves room for the answer in the model's context (at least one)."""
    limit = llm.engine.max_model_len
    while len(hits) > 1 and len(llm.prompter.encode(build_messages(question, hits, names))) + max_tokens > limit:
        hits = hits[:-1]
    return hits


def _ask(rag: Any, args: argparse.Namespace) -> int:
    from herd.cli.commands import load_llm

    _check_k(args.k)
    store = _find_store(rag, args.store)
    hits = rag.search([store.id], args.question, mode="hybrid", k=args.k)
    names = rag.filenames(h.chunk.document_id for h in hits)
    if not hits:
        if args.json:
            print(json.dumps({"answer": None, "sources": [], "messages": []}))
        print(f"herd rag: nothing in {store.name or store.id} matches the question", file=sys.stderr)
        return 1
    llm, params = load_llm(args)
    hits = _fit(llm, args.question, hits, names, args.max_tokens)
    messages = build_messages(args.question, hits, names)
    answer = []
    for ev in llm.stream_chat(messages, params):
        answer.append(ev.delta_text)
        if not args.json:
            sys.stdout.write(ev.delta_text)
            sys.stdout.flush()
    sources = [{"n": i, **_hit_json(h, names)} for i, h in enumerate(hits, 1)]
    if args.json:
        print(json.dumps({"answer": "".join(answer).strip(), "sources": sources, "messages": messages}, indent=2,
                         ensure_ascii=False))
        return 0
    print("\n\nsources:")
    for s in sources:
        print(f"  [{s['n']}] {s['filename'] or s['file_id']}{_where(s['metadata'])}  {s['score']:.3f}")
    return 0


# ---- list and delete ---------------------------------------------------------------------------


def _list(rag: Any, args: argparse.Namespace) -> int:
    if args.store is not None:
        return _list_files(rag, _find_store(rag, args.store), args.json)
    rows = [{"id": s.id, "name": s.name, "file_counts": s.file_counts, "chunks": rag.store.count(s.id),
             "usage_bytes": s.usage_bytes, "embedding_model": s.embedding_model, "created_at": s.created_at}
            for s in rag.list_stores()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no vector stores (herd rag ingest --store NAME PATH makes one)")
        return 0
    table = [(r["name"] or "", r["id"], _counts_text(r["file_counts"]), str(r["chunks"]), str(r["usage_bytes"]))
             for r in rows]
    _print_table(("name", "id", "files", "chunks", "bytes"), table)
    return 0


def _counts_text(counts: dict[str, int]) -> str:
    extra = ", ".join(f"{counts[s]} {s}" for s in ("in_progress", "failed", "cancelled") if counts.get(s))
    return f"{counts.get('total', 0)}" + (f" ({extra})" if extra else "")


def _list_files(rag: Any, store: Any, as_json: bool) -> int:
    records = rag.list_store_files(store.id)
    names = rag.filenames(r.file_id for r in records)
    rows = [{"file_id": r.file_id, "filename": names.get(r.file_id), "status": r.status,
             "chunks": len(rag.store_file_chunks(store.id, r.file_id)), "usage_bytes": r.usage_bytes,
             "path": r.attributes.get("path"), "last_error": r.last_error} for r in records]
    if as_json:
        print(json.dumps({"store": {"id": store.id, "name": store.name}, "files": rows}, indent=2))
        return 0
    if not rows:
        print(f"{store.name or store.id} holds no files")
        return 0
    _print_table(("filename", "status", "chunks", "file id", "path"),
                 [(r["filename"] or "", r["status"], str(r["chunks"]), r["file_id"], r["path"] or "") for r in rows])
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table on a terminal, aligned plain columns otherwise (pipes, logs)."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*header)
        for r in rows:
            table.add_row(*r)
        Console().print(table)
        return
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _delete(rag: Any, args: argparse.Namespace) -> int:
    store = _find_store(rag, args.store)
    label = store.name or store.id
    if args.file is None:
        records = rag.list_store_files(store.id)
        rag.delete_store(store.id)
        gone = 0
        for r in records:  # the copies `herd rag ingest` made (with a path attribute), held nowhere else
            if r.attributes.get("path") and not _held_elsewhere(rag, r.file_id, store.id):
                rag.delete_file(r.file_id)
                gone += 1
        print(f"deleted vector store {label} ({store.id}) and {_plural(gone, 'file')}")
        return 0
    records = rag.list_store_files(store.id)
    names = rag.filenames(r.file_id for r in records)
    full = str(Path(args.file).expanduser().resolve())
    match = ([r for r in records if r.file_id == args.file] or [r for r in records if r.attributes.get("path") == full]
             or [r for r in records if names.get(r.file_id) == args.file])
    if not match:
        held = ", ".join(sorted({names.get(r.file_id, r.file_id) for r in records})) or "no files"
        raise HerdError(f"{label} has no file {args.file!r} (it holds: {held})")
    if len(match) > 1:
        ids = ", ".join(f"{r.file_id} ({r.attributes.get('path', '?')})" for r in match)
        raise HerdError(f"{label} has {len(match)} files named {args.file!r}: {ids}; name one by its id or path")
    _remove(rag, store.id, match[0].file_id)
    print(f"deleted {names.get(match[0].file_id, args.file)} ({match[0].file_id}) from {label}")
    return 0


def cmd_rag(args: argparse.Namespace) -> int:
    """`herd rag ingest|search|ask|list|delete`."""
    if args.rag_action is None:
        args.rag_parser.print_help(sys.stderr)
        return 2
    action = {"ingest": _ingest, "search": _search, "ask": _ask, "list": _list, "delete": _delete}[args.rag_action]
    if args.rag_action == "ingest":
        _chunking(args)  # bad options: one line, exit 2, before the store is opened
    rag = _service(getattr(args, "embedding_model", None))
    try:
        return action(rag, args)
    finally:
        rag.close()
