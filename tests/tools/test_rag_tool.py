"""builtin::rag's knowledge_search over a real RagService: results laid out for the model with what was used
in the metadata, the stores taken from the group's args, and mistakes (no stores, an unknown one, a template
reaching for Python internals) as tool errors the model can read, never exceptions."""
from __future__ import annotations

import asyncio

import pytest

from herd.rag.embed import Embedder
from herd.rag.service import RagService
from herd.tools.base import ToolRegistry
from herd.tools.rag import RagToolGroup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    rag = RagService(Embedder.load(), root=tmp_path_factory.mktemp("ragtool"))
    store = rag.create_store("kb")
    for name, text in {"parking.txt": "Parking permits are renewed every January at the front desk.",
                       "menu.txt": "The cafeteria serves ramen on Thursdays and curry on Fridays."}.items():
        f = rag.add_file(name, text.encode())
        rag.attach(store.id, f.id, {"topic": name.split(".")[0]})
        rag.wait(store.id, f.id)
    yield rag, store.id, ToolRegistry([RagToolGroup(lambda: rag)])
    rag.close()


def invoke(registry: ToolRegistry, **kwargs):
    return asyncio.run(registry.invoke("knowledge_search", kwargs))


def test_results_and_what_was_used(setup):
    rag, sid, registry = setup
    r = invoke(registry, query="When do I renew my parking permit?", vector_db_ids=[sid],
               query_config={"max_chunks": 1})
    assert r.ok and "Parking permits are renewed every January" in r.content
    assert r.content.startswith("knowledge_search tool found 1 chunks") and "renew my parking permit" in r.content
    meta = r.metadata
    assert meta["chunks"] == [rag.search([sid], "When do I renew my parking permit?", mode="hybrid", k=1)[0].chunk.text]
    assert meta["results"][0]["filename"] == "parking.txt" and meta["results"][0]["attributes"] == {"topic": "parking"}


def test_filters_and_templates(setup):
    _, sid, registry = setup
    r = invoke(registry, query="parking", vector_db_ids=[sid],
               query_config={"filters": {"type": "eq", "key": "topic", "value": "menu"},
                             "chunk_template": "[{index}] {chunk.content} ({metadata[topic]})\n"})
    assert r.ok and "[1] The cafeteria serves ramen" in r.content and "(menu)" in r.content
    assert [x["filename"] for x in r.metadata["results"]] == ["menu.txt"]


@pytest.mark.parametrize("kwargs, words", [
    ({"query": "x"}, "vector_db_ids"),
    ({"query": "x", "vector_db_ids": ["vs_missing"]}, "not found"),
    ({"query": "x", "vector_db_ids": "SID", "query_config": {"chunk_template": "{chunk.__class__}"}}, "not allowed"),
    ({"query": "x", "vector_db_ids": "SID", "query_config": {"filters": {"type": "like"}}}, "filters.type"),
])
def test_mistakes_are_tool_errors(setup, kwargs, words):
    _, sid, registry = setup
    if kwargs.get("vector_db_ids") == "SID":
        kwargs = {**kwargs, "vector_db_ids": [sid]}
    r = invoke(registry, **kwargs)
    assert not r.ok and r.error_code == 1 and words in r.error_message
