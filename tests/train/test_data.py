"""Training data: which tokens a dialog trains (golden, in the Llama 3.1 format with tools and in SmolLM2's
Jinja template), preference pairs, packing with document masks, and bad records reported as file:line."""
from __future__ import annotations

import json

import pytest
import torch

from herd.hub import smollm2_gguf_path
from herd.tokenizer.prompter import Prompter
from herd.tokenizer.tokenizer import Llama3Tokenizer, load_tokenizer
from herd.train.data import (
    IGNORE,
    TRAIN_DATE,
    DataError,
    DataStats,
    chat_examples,
    chat_tokens,
    document_mask,
    pack,
    preference_examples,
    text_documents,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
DIALOG = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21C"},
    {"role": "assistant", "content": "It is sunny."},
]


@pytest.fixture(scope="module")
def llama3() -> Prompter:
    return Prompter(Llama3Tokenizer.default())


@pytest.fixture(scope="module")
def smol() -> Prompter:
    return Prompter(load_tokenizer(smollm2_gguf_path()))


def trained(prompter: Prompter, ids: list[int], labels: list[int]) -> list[str]:
    """The learnt spans, decoded."""
    spans, cur = [], []
    for i, label in zip(ids, labels):
        if label != IGNORE:
            assert label == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return [prompter.tokenizer.decode(s) for s in spans]


def test_llama31_tool_dialog_trains_the_calls_and_answers(llama3):
    ids, labels = chat_tokens(llama3, DIALOG, [WEATHER])
    assert trained(llama3, ids, labels) == [
        '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is sunny.<|eot_id|>"]
    assert ids == llama3.encode(DIALOG, tools=[WEATHER], add_generation_prompt=False,
                                today=TRAIN_DATE)
    text = llama3.tokenizer.decode(ids)
    assert "Today Date: 26 July 2024" in text and "get_weather" in text.split("<|eot_id|>")[1]  # tools in the prompt


def test_llama31_builtin_call_ends_with_eom(llama3):
    dialog = [{"role": "user", "content": "Search for llamas"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"id": "c1", "type": "function", "function": {"name": "brave_search",
                                                                "arguments": json.dumps({"query": "llamas"})}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "Llamas are camelids."},
              {"role": "assistant", "content": "They are camelids."}]
    ids, labels = chat_tokens(llama3, dialog, [{"type": "brave_search"}])
    assert trained(llama3, ids, labels) == ['<|python_tag|>brave_search.call(query="llamas")<|eom_id|>',
                                            "They are camelids.<|eot_id|>"]


def test_jinja_template_trains_the_assistant_turns(smol):
    ids, labels = chat_tokens(smol, DIALOG[:2] + [{"role": "assistant", "content": "Sunny."},
                                                  {"role": "user", "content": "Thanks"},
                                                  {"role": "assistant", "content": "You are welcome."}])
    spans = trained(smol, ids, labels)
    assert len(spans) == 2 and spans[0].startswith("Sunny.") and spans[1].startswith("You are welcome.")
    assert all(s.rstrip("\n").endswith("<|im_end|>") for s in spans)  # the turn's end token is learnt
    assert "Weather in Paris?" not in "".join(spans)


def test_files_stream_with_stats_and_overflow(tmp_path, llama3):
    path = tmp_path / "train.jsonl"
    long = {"messages": [{"role": "user", "content": "hi " * 600}, {"role": "assistant", "content": "ok"}]}
    path.write_text("\n".join(json.dumps(r) for r in [{"messages": DIALOG, "tools": [WEATHER]}, long]) + "\n\n")
    stats = DataStats()
    short, full = list(chat_examples(path, llama3, stats=stats))
    assert (short.source, full.source) == (f"{path}:1", f"{path}:2") and stats.examples == stats.records == 2
    assert stats.trained_tokens == sum(x != IGNORE for e in (short, full) for x in e.labels)
    n, learnt = len(full.input_ids), sum(x != IGNORE for x in full.labels)
    assert len(short.input_ids) < n - learnt and full.labels[-learnt:] == full.input_ids[-learnt:]

    def run(max_seq_len: int, overflow: str) -> tuple[list, DataStats]:
        st = DataStats()
        return list(chat_examples(path, llama3, max_seq_len=max_seq_len, overflow=overflow, stats=st)), st

    kept, st = run(n - 1, "skip")
    assert [e.source for e in kept] == [short.source] and st.skipped == 1 and st.truncated == 0
    kept, st = run(n - 1, "truncate")
    assert st.truncated == 1 and kept[1].input_ids == full.input_ids[:n - 1] and kept[1].labels == full.labels[:n - 1]
    # a truncation that cuts every learnt token away leaves nothing to learn: skipped, counted
    kept, st = run(n - learnt, "truncate")
    assert [e.source for e in kept] == [short.source] and st.truncated == 0 and st.skipped == 1


@pytest.mark.parametrize("line, words", [
    ('{"messages": [', "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"text": "hi"}', "`messages` list"),
    ('{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "role"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "tools": 3}', "tools"),
])
def test_bad_records_name_file_and_line(tmp_path, llama3, line, words):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        list(chat_examples(path, llama3))
    assert str(e.value).startswith(f"{path}:2:") and words in str(e.value)


def test_preference_pairs_share_the_prompt(tmp_path, llama3):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}) + "\n")
    [pair] = list(preference_examples(path, llama3))
    for ex, answer in ((pair.chosen, "Paris."), (pair.rejected, "Lyon.")):
        assert trained(llama3, ex.input_ids, ex.labels) == [answer + "<|eot_id|>"]
    start = next(i for i, x in enumerate(pair.chosen.labels) if x != IGNORE)
    assert pair.chosen.input_ids[:start] == pair.rejected.input_ids[:start]


def test_packing_keeps_documents_apart(tmp_path, llama3):
    path = tmp_path / "corpus.jsonl"
    texts = ["alpha " * 5, "beta " * 12, "gamma " * 3, "delta " * 20]
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    tok = llama3.tokenizer
    docs = list(text_documents(path, tok))
    assert all(d[0] == tok.bos_id and d[-1] == tok.eos_id for d in docs)
    assert [tok.decode(d[1:-1]) for d in docs] == texts
    blocks = list(pack(docs, 16))
    flat = [t for d in docs for t in d]
    assert [t for b in blocks for t in b.input_ids] == flat[:len(blocks) * 16] and len(flat) - len(blocks) * 16 < 16
    for b in blocks:
        assert len(b.input_ids) == len(b.positions) == len(b.doc_ids) == 16 and b.labels == b.input_ids
        for i in range(1, 16):  # positions restart exactly where a document starts
            assert (b.positions[i] == 0) == (b.doc_ids[i] != b.doc_ids[i - 1])
        m = document_mask(b.doc_ids)
        d = torch.tensor(b.doc_ids)
        want = (d[:, None] == d[None, :]) & torch.ones(16, 16, dtype=torch.bool).tril()
        assert torch.equal(m, want) and m.diagonal().all()
    with pytest.raises(DataError):
        list(pack(docs, 1))
