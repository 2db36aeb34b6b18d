"""Llama Stack datasets on the shared real server, through `llama-stack-client` 0.2.12 (register, list,
retrieve, iterrows, unregister) and raw HTTP (append-rows): rows, a local JSONL file and a data: CSV URL as
sources, rows checked against the purpose, remote URIs refused, and a page walk that sees every row once."""
from __future__ import annotations

import base64
import json

import pytest
from servekit import API_KEY


@pytest.fixture(scope="module")
def ls(server):
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=60)


ROWS = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(7)]


def test_register_rows_page_through_and_unregister(ls, http):
    ds = ls.datasets.register(purpose="post-training/messages", source={"type": "rows", "rows": ROWS},
                              dataset_id="sft-rows", metadata={"note": "seven"})
    assert ds.identifier == "sft-rows" and ds.purpose == "post-training/messages" and ds.metadata == {"note": "seven"}
    assert "sft-rows" in [d.identifier for d in ls.datasets.list()]
    assert ls.datasets.retrieve("sft-rows").identifier == "sft-rows"
    seen, start = [], 0
    while True:
        page = ls.datasets.iterrows("sft-rows", start_index=start, limit=3)
        seen += page.data
        start += len(page.data)
        if not page.has_more:
            break
    assert seen == ROWS
    r = http.post("/v1/datasetio/append-rows/sft-rows", json={"rows": ROWS[:2]})
    assert r.status_code == 200, r.text
    assert ls.datasets.iterrows("sft-rows").data == ROWS + ROWS[:2]
    r = http.post("/v1/datasetio/append-rows/sft-rows", json={"rows": [{"question": "x"}]})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    assert http.post("/v1/datasets", json={"purpose": "post-training/messages", "dataset_id": "sft-rows",
                                           "source": {"type": "rows", "rows": ROWS}}).status_code == 409
    ls.datasets.unregister("sft-rows")
    assert http.get("/v1/datasets/sft-rows").status_code == 404
    assert http.get("/v1/datasetio/iterrows/sft-rows").status_code == 404


def test_register_a_local_file_and_a_data_url(ls, server_home, tmp_path):
    (server_home / "datasets").mkdir(exist_ok=True)
    path = server_home / "datasets" / "qa.jsonl"
    qa = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "2+2?", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in qa))
    ds = ls.datasets.register(purpose="eval/question-answer", source={"type": "uri", "uri": f"file://{path}"})
    assert ds.source.uri == f"file://{path}" and ls.datasets.iterrows(ds.identifier).data == qa
    csv = base64.b64encode(b"question,answer\nCapital of Italy?,Rome\n").decode()
    ds = ls.datasets.register(purpose="eval/question-answer",
                              source={"type": "uri", "uri": f"data:text/csv;base64,{csv}"}, dataset_id="qa-csv")
    assert ls.datasets.iterrows("qa-csv").data == [{"question": "Capital of Italy?", "answer": "Rome"}]


@pytest.mark.parametrize("body, param, words", [
    ({"purpose": "eval/question-answer", "source": {"type": "rows", "rows": [{"question": "q"}]}},
     "source.rows[0]", "answer"),
    ({"purpose": "post-training/messages", "source": {"type": "rows", "rows": [{"messages": []}]}},
     "source.rows[0].messages", "non-empty"),
    ({"purpose": "post-training/messages", "source": {"type": "uri", "uri": "https://example.com/d.jsonl"}},
     "source.uri", "network"),
    ({"purpose": "post-training/messages", "source": {"type": "uri", "uri": "missing.jsonl"}},
     "source.uri", "no such file"),
    ({"purpose": "post-training/messages", "source": {"type": "uri", "uri": "/etc/passwd"}},
     "source.uri", "only from"),
    ({"purpose": "post-training/messages", "source": {"type": "uri", "uri": "file://../../etc/passwd"}},
     "source.uri", "only from"),
    ({"purpose": "post-training/messages", "source": {"type": "uri", "uri": "../outside.jsonl"}},
     "source.uri", "only from"),
    ({"purpose": "training", "source": {"type": "rows", "rows": []}}, "purpose", "post-training/messages"),
])
def test_bad_datasets_are_400s_and_nothing_is_kept(http, body, param, words):
    before = http.get("/v1/datasets").json()["data"]
    r = http.post("/v1/datasets", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param and words in r.json()["error"]["message"]
    assert http.get("/v1/datasets").json()["data"] == before
