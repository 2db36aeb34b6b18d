"""Retrieval through `herd serve`, with the real clients against a real server process: OpenAI files and
vector stores (`openai`: upload, create_and_poll, search, attributes filters, batches, content, delete),
Llama Stack vector DBs, vector-io and the rag tool (`llama-stack-client` 0.2.12), the Responses API's
file_search and an agent's builtin::rag (forced calls through the grammar with SmolLM2), bad input (4xx
and nothing changed), parallel uploads into one store (no chunk lost), and a restart keeping it all."""
from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response
from servekit import EMBED_ID, SMOL_ID, ServerProcess

MAX_FILE_BYTES = 300_000

DOCS = {
    "gripper.txt": ("The NR-7741 gripper lifts at most 4.5 kilograms. When its jaw stalls, the controller "
                    "raises error E-219 and opens the jaw again after two seconds. Replace the jaw pads every "
                    "9000 cycles with kit NR-7741-P."),
    "travel.md": ("# Travel policy\n\nExpense claims for a business trip must be submitted within 30 days of "
                  "your return.\n\n## Hotels\n\nBook hotels through the Wayfarer portal; rooms above 180 euros a "
                  "night need a manager's approval."),
    "release.pdf": ("Release notes for Atlas 2.3. Atlas 2.3 adds offline maps for the Andes region and fixes "
                    "a crash when exporting routes longer than 400 kilometres. The minimum supported Android "
                    "version is now 11."),
}
QUESTIONS = [  # (question, the only file that answers it)
    ("How much weight can the NR-7741 gripper lift?", "gripper.txt"),
    ("How long do I have to hand in my receipts after a business trip?", "travel.md"),
    ("Which Android version does Atlas 2.3 need?", "release.pdf"),
    ("What does error E-219 mean?", "gripper.txt"),
    ("Who must approve an expensive hotel room?", "travel.md"),
]


def make_pdf(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def file_bytes(name: str) -> bytes:
    return make_pdf(DOCS[name]) if name.endswith(".pdf") else DOCS[name].encode()


def start(home: Path) -> ServerProcess:
    cfg = home.parent / "server.yaml"
    cfg.write_text(f"version: 1\nmodels:\n  - {{id: {SMOL_ID}, engine: {{num_blocks: 160, max_num_seqs: 4}}}}\n"
                   f"  - {{id: {EMBED_ID}, type: embedding}}\n"
                   f"rag: {{max_file_bytes: {MAX_FILE_BYTES}}}\n")
    return ServerProcess("--config", str(cfg), env={"HERD_HOME": str(home)})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag") / "herd-home"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    """The server; the restart test (last) stops it."""
    srv = start(home)
    yield srv
    assert srv.stop() == 0, srv.output()[-3000:]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def kb(client: openai.OpenAI) -> dict[str, Any]:
    """A vector store holding the three files (uploaded with the openai client, polled to completed)."""
    files = {name: client.files.create(file=(name, file_bytes(name)), purpose="assistants") for name in DOCS}
    store = client.vector_stores.create(name="kb", metadata={"team": "docs"})
    for name, f in files.items():
        vsf = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id,
                                                         attributes={"kind": name.rsplit(".", 1)[1]},
                                                         poll_interval_ms=100)
        assert vsf.status == "completed", vsf.last_error
    return {"store": store, "files": files, "by_id": {f.id: name for name, f in files.items()}}


def test_files_round_trip(client, kb):
    f = kb["files"]["travel.md"]
    assert f.object == "file" and f.filename == "travel.md" and f.purpose == "assistants"
    assert f.bytes == len(DOCS["travel.md"].encode())
    assert client.files.retrieve(f.id).filename == "travel.md"
    assert client.files.content(f.id).read() == DOCS["travel.md"].encode()
    listed = [x.id for x in client.files.list(purpose="assistants")]
    assert set(kb["by_id"]) <= set(listed)


def test_store_reports_its_files(client, kb):
    s = client.vector_stores.retrieve(kb["store"].id)
    assert s.status == "completed" and s.name == "kb" and s.metadata == {"team": "docs"}
    assert s.file_counts.completed == 3 and s.file_counts.total == 3 and s.usage_bytes > 0
    files = client.vector_stores.files.list(vector_store_id=s.id)
    assert {x.id for x in files} == set(kb["by_id"])
    pdf = client.vector_stores.files.retrieve(file_id=kb["files"]["release.pdf"].id, vector_store_id=s.id)
    assert pdf.attributes == {"kind": "pdf"} and pdf.chunking_strategy.type == "static"
    content = client.vector_stores.files.content(file_id=pdf.id, vector_store_id=s.id)
    text = " ".join(part.text for part in content)
    assert "offline maps for the Andes" in text  # the PDF's text, extracted


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_search_finds_the_only_answering_file_first(client, kb, mode):
    for question, name in QUESTIONS:
        if mode == "keyword" and name == "travel.md" and "receipts" in question:
            continue  # a paraphrase shares no word with its answer: keyword search cannot find it
        page = client.vector_stores.search(vector_store_id=kb["store"].id, query=question, max_num_results=3,
                                           extra_body={"search_mode": mode})
        assert page.data, (mode, question)
        top = page.data[0]
        assert kb["by_id"][top.file_id] == name, (mode, question, [kb["by_id"][d.file_id] for d in page.data])
        assert top.filename == name and top.content[0].type == "text" and top.content[0].text
        assert 0 < top.score <= 1.0


def test_attribute_filters_and_updates(client, kb):
    sid, md = kb["store"].id, kb["files"]["travel.md"].id
    q = "What does error E-219 mean?"
    only_md = client.vector_stores.search(vector_store_id=sid, query=q, filters={
        "type": "eq", "key": "kind", "value": "md"})
    assert {d.file_id for d in only_md.data} == {md}
    not_txt = client.vector_stores.search(vector_store_id=sid, query=q, filters={
        "type": "or", "filters": [{"type": "eq", "key": "kind", "value": "md"},
                                  {"type": "eq", "key": "kind", "value": "pdf"}]})
    assert kb["files"]["gripper.txt"].id not in {d.file_id for d in not_txt.data} and not_txt.data
    client.vector_stores.files.update(file_id=md, vector_store_id=sid, attributes={"kind": "markdown", "year": 2026})
    assert not client.vector_stores.search(vector_store_id=sid, query=q, filters={
        "type": "eq", "key": "kind", "value": "md"}).data
    hits = client.vector_stores.search(vector_store_id=sid, query=q, filters={"type": "gte", "key": "year", "value": 2026})
    assert [d.file_id for d in hits.data] == [md] and hits.data[0].attributes["year"] == 2026
    client.vector_stores.files.update(file_id=md, vector_store_id=sid, attributes={"kind": "md"})


def test_score_threshold_and_result_count(client, kb):
    sid = kb["store"].id
    many = client.vector_stores.search(vector_store_id=sid, query="Atlas offline maps", max_num_results=2)
    assert len(many.data) == 2
    strict = client.vector_stores.search(vector_store_id=sid, query="Atlas offline maps",
                                         ranking_options={"score_threshold": 0.99})
    assert all(d.score >= 0.99 for d in strict.data) and len(strict.data) < 3


def test_deleting_a_file_removes_its_chunks(client):
    f = client.files.create(file=("zebra.txt", b"Zebra crossings in Quokka City are painted violet."),
                            purpose="assistants")
    store = client.vector_stores.create(name="deletions", file_ids=[f.id])
    vsf = client.vector_stores.files.poll(file_id=f.id, vector_store_id=store.id, poll_interval_ms=100)
    assert vsf.status == "completed"

    def found() -> list[str]:
        return [d.file_id for d in client.vector_stores.search(vector_store_id=store.id, query="violet zebra crossing",
                                                               extra_body={"search_mode": "keyword"}).data]

    assert found() == [f.id]
    assert client.files.delete(f.id).deleted
    assert found() == []
    assert client.vector_stores.retrieve(store.id).file_counts.total == 0
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_file_batches_and_detach(client):
    ids = [client.files.create(file=(f"n{i}.txt", f"Note {i}: the locker code is {1000 + i}.".encode()),
                               purpose="assistants").id for i in range(3)]
    store = client.vector_stores.create(name="batches")
    batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=ids,
                                                              poll_interval_ms=100)
    assert batch.status == "completed" and batch.file_counts.completed == 3
    listed = client.vector_stores.file_batches.list_files(batch_id=batch.id, vector_store_id=store.id)
    assert sorted(x.id for x in listed) == sorted(ids)
    client.vector_stores.files.delete(file_id=ids[0], vector_store_id=store.id)
    hits = client.vector_stores.search(vector_store_id=store.id, query="locker code 1000",
                                       extra_body={"search_mode": "keyword"})
    assert ids[0] not in {d.file_id for d in hits.data} and hits.data
    assert client.files.retrieve(ids[0]).id == ids[0]  # detaching keeps the file
    client.vector_stores.update(store.id, name="renamed")
    assert client.vector_stores.retrieve(store.id).name == "renamed"
    assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


@pytest.mark.parametrize("name, data, status, words", [
    ("tool.exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff", 400, "supported"),
    ("empty.txt", b"", 400, "empty"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", 400, "broken.pdf"),
    ("big.txt", b"a" * (MAX_FILE_BYTES + 1), 413, str(MAX_FILE_BYTES)),
])
def test_bad_uploads_are_refused_and_nothing_is_kept(client, http, name, data, status, words):
    before = {f.id for f in client.files.list()}
    r = http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "assistants"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert {f.id for f in client.files.list()} == before


def test_bad_attach_leaves_the_store_unchanged(client, http, kb):
    sid = kb["store"].id
    before = client.vector_stores.retrieve(sid).file_counts
    odd = client.files.create(file=("data.bin", bytes(range(256)) * 4), purpose="batch")  # not for retrieval
    r = http.post(f"/v1/vector_stores/{sid}/files", json={"file_id": odd.id})
    assert r.status_code == 400 and "supported" in r.json()["error"]["message"]
    assert http.post(f"/v1/vector_stores/{sid}/files", json={"file_id": "file-nope"}).status_code == 404
    assert http.post("/v1/vector_stores/vs_nope/search", json={"query": "x"}).status_code == 404
    r = http.post(f"/v1/vector_stores/{sid}/search", json={"query": "x", "filters": {"type": "like", "key": "a"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "filters.type"
    r = http.post("/v1/vector_stores", json={"name": "x", "chunking_strategy": {
        "type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}}})
    assert r.status_code == 400 and "100..4096" in r.json()["error"]["message"]
    assert http.post("/v1/files", content=b"{}", headers={"content-type": "application/json"}).status_code == 415
    assert client.vector_stores.retrieve(sid).file_counts == before


def test_parallel_uploads_into_one_store_lose_no_chunks(client):
    store = client.vector_stores.create(name="parallel")
    n = 8

    def one(i: int) -> str:
        text = f"Parallel note {i}. The secret word of note {i} is quasar{i}x. " + "Filler sentence. " * (40 * (i + 1))
        f = client.files.create(file=(f"p{i}.txt", text.encode()), purpose="assistants")
        vsf = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id, poll_interval_ms=100)
        assert vsf.status == "completed", vsf.last_error
        return f.id

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(one, range(n)))
    assert client.vector_stores.retrieve(store.id).file_counts.completed == n
    for i, fid in enumerate(ids):
        chunks = list(client.vector_stores.files.content(file_id=fid, vector_store_id=store.id))
        assert chunks and f"quasar{i}x" in chunks[0].text
        hits = client.vector_stores.search(vector_store_id=store.id, query=f"quasar{i}x", max_num_results=1,
                                           extra_body={"search_mode": "keyword"})
        assert [d.file_id for d in hits.data] == [fid]


def test_llama_stack_vector_io_and_rag_tool(server):
    from llama_stack_client import LlamaStackClient

    ls = LlamaStackClient(base_url=server.url, max_retries=0, timeout=120)
    db = ls.vector_dbs.register(vector_db_id="stack-db", embedding_model=EMBED_ID, embedding_dimension=384)
    assert db.identifier == "stack-db" and db.embedding_dimension == 384
    assert "stack-db" in [d.identifier for d in ls.vector_dbs.list()]
    ls.vector_io.insert(vector_db_id="stack-db", chunks=[
        {"content": "The cafeteria serves ramen on Thursdays.", "metadata": {"document_id": "menu"}},
        {"content": "Parking permits are renewed every January.", "metadata": {"document_id": "parking"}}])
    res = ls.vector_io.query(vector_db_id="stack-db", query="When is there ramen?")
    assert res.chunks[0].metadata["document_id"] == "menu" and res.scores[0] >= res.scores[-1]
    ls.tool_runtime.rag_tool.insert(vector_db_id="stack-db", chunk_size_in_tokens=128, documents=[
        {"document_id": "handbook", "content": "New employees receive a laptop and a badge on their first day.",
         "mime_type": "text/plain", "metadata": {"source": "hr"}}])
    out = ls.tool_runtime.rag_tool.query(vector_db_ids=["stack-db"], content="What do new employees get?",
                                         query_config={"max_chunks": 2, "mode": "hybrid"})
    assert out.metadata["document_ids"][0] == "handbook"
    assert "laptop and a badge" in out.content[0].text
    # all or none: a repeated chunk id fails the whole insert, which stores nothing
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/v1/vector-io/insert", json={"vector_db_id": "stack-db", "chunks": [
            {"content": "Lockers are emptied every Friday evening.", "metadata": {"document_id": "lockers"},
             "chunk_id": "dup"},
            {"content": "Lockers are cleaned on Saturdays.", "metadata": {"document_id": "lockers"}, "chunk_id": "dup"}]})
        assert r.status_code == 400 and "dup" in r.json()["error"]["message"]
        r = http.post("/v1/vector-io/insert", json={"vector_db_id": "stack-db", "chunks": [
            {"content": "x", "embedding": [0.1, 0.2]}]})
        assert r.status_code == 400 and "384" in r.json()["error"]["message"]
    res = ls.vector_io.query(vector_db_id="stack-db", query="lockers emptied", params={"mode": "keyword"})
    assert "lockers" not in [c.metadata["document_id"] for c in res.chunks]
    ls.vector_dbs.unregister("stack-db")
    assert "stack-db" not in [d.identifier for d in ls.vector_dbs.list()]


def test_responses_file_search(client, kb):
    r = client.responses.create(model=SMOL_ID, temperature=0, input="Which Android version does Atlas 2.3 need?",
                                tools=[{"type": "file_search", "vector_store_ids": [kb["store"].id],
                                        "max_num_results": 2}],
                                tool_choice={"type": "file_search"}, include=["file_search_call.results"],
                                max_tool_calls=1, max_output_tokens=40)
    Response.model_validate(r.model_dump())
    call = next(o for o in r.output if o.type == "file_search_call")
    assert call.status == "completed" and call.queries and call.results
    assert kb["by_id"][call.results[0].file_id] == "release.pdf" and "Android" in call.results[0].text
    assert r.output[-1].type == "message"


def test_agent_rag_tool_reads_the_store(server, kb):
    from llama_stack_client import LlamaStackClient

    ls = LlamaStackClient(base_url=server.url, max_retries=0, timeout=120)
    agent = ls.agents.create(agent_config={
        "model": SMOL_ID, "instructions": "Answer from the knowledge base.", "max_infer_iters": 2,
        "toolgroups": [{"name": "builtin::rag/knowledge_search", "args": {"vector_db_ids": [kb["store"].id]}}],
        "tool_config": {"tool_choice": "required"}, "sampling_params": {"strategy": {"type": "greedy"},
                                                                        "max_tokens": 48}})
    session = ls.agents.session.create(agent.agent_id, session_name="rag")
    turn = ls.agents.turn.create(session_id=session.session_id, agent_id=agent.agent_id, stream=False,
                                 messages=[{"role": "user", "content": "What does error E-219 mean?"}])
    steps = [s for s in turn.steps if s.step_type == "tool_execution"]
    assert steps, [s.step_type for s in turn.steps]
    response = steps[0].tool_responses[0]
    assert response.tool_name == "knowledge_search"
    meta = response.metadata
    query = steps[0].tool_calls[0].arguments["query"]
    assert isinstance(query, str) and query.strip()
    # the chunks used are what the store returns for the model's query (hybrid, 5 results) ...
    c = openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=120)
    page = c.vector_stores.search(vector_store_id=kb["store"].id, query=query, max_num_results=5)
    assert meta["document_ids"] == [d.file_id for d in page.data] and set(meta["document_ids"]) <= set(kb["by_id"])
    assert meta["chunks"] == [d.content[0].text for d in page.data]
    # ... and the model read them
    text = str(response.content)
    assert "knowledge_search tool found" in text and all(chunk in text for chunk in meta["chunks"])


def test_store_survives_a_restart(server, home, kb):
    """Last: stops the module's server, starts another on the same home."""
    assert server.stop() == 0, server.output()[-3000:]
    again = start(home)
    try:
        c = openai.OpenAI(base_url=again.v1, api_key="none", max_retries=0, timeout=120)
        s = c.vector_stores.retrieve(kb["store"].id)
        assert s.file_counts.completed == 3
        page = c.vector_stores.search(vector_store_id=s.id, query="How much weight can the NR-7741 gripper lift?")
        assert kb["by_id"][page.data[0].file_id] == "gripper.txt"
        assert c.files.content(kb["files"]["travel.md"].id).read() == DOCS["travel.md"].encode()
    finally:
        assert again.stop() == 0, again.output()[-3000:]

