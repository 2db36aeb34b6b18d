"""Continual pre-training: text files (JSONL `text` records and plain text) packed with document masks, a
block's loss equal to its documents' losses computed alone, and a tiny model learning a repeated corpus."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from herd.config import ModelArgs
from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.train.data import DataError
from herd.train.loop import TrainConfig, block_tensors
from herd.train.pretrain import load_text_data, run_pretrain
from herd.train.sft import lm_loss

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32, max_seq_len=256)
SENTENCES = ["the cat sat on the mat.", "a dog ran in the park!", "birds sing at dawn; owls hoot at night.",
             "rain falls on green hills", "she sells sea shells by the sea shore"]


class CharTokenizer:
    """Bytes 32..126 as ids 2..96; BOS 0, EOS 1."""

    bos_id, eos_id = 0, 1

    def encode(self, text: str) -> list[int]:
        return [min(max(ord(c), 32), 126) - 30 for c in text]


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARGS)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    return model


@pytest.fixture
def corpus(tmp_path):
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES * 4) + "\n"
                     + json.dumps({"text": "   "}) + "\n")
    txt = tmp_path / "notes.txt"
    txt.write_text("a plain text file is one document.\n")
    return jsonl, txt


def test_load_text_data_packs_documents_with_masks(corpus):
    jsonl, txt = corpus
    tok = CharTokenizer()
    blocks, stats = load_text_data([jsonl, txt], tok, 64)
    docs = [[0, *tok.encode(s), 1] for s in SENTENCES * 4] + [[0, *tok.encode(txt.read_text()), 1]]
    stream = [t for d in docs for t in d]
    assert stats.records == 22 and stats.examples == 21 and stats.skipped == 1 and stats.tokens == len(stream)
    assert len(blocks) == len(stream) // 64 and all(len(b.input_ids) == 64 for b in blocks)
    assert [t for b in blocks for t in b.input_ids] == stream[:64 * len(blocks)]
    for b in blocks:
        assert b.labels == b.input_ids
        for i in range(1, 64):  # positions restart at each document, and only there
            assert (b.positions[i] == 0) == (b.doc_ids[i] != b.doc_ids[i - 1]) == (b.input_ids[i] == 0)
    targets = sum(int((block_tensors(b)["targets"] != -100).sum()) for b in blocks)
    assert stats.trained_tokens == targets > 0


def test_bad_text_data_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_text_data(bad, CharTokenizer(), 8)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(HerdError, match="do not fill one block"):
        load_text_data(short, CharTokenizer(), 64)


def test_a_block_loss_is_the_sum_of_its_documents_alone(corpus):
    blocks, _ = load_text_data(corpus[0], CharTokenizer(), 96)
    model = tiny().eval()
    for block in blocks[:3]:
        with torch.no_grad():
            packed, n_packed = lm_loss(model, block_tensors(block))
            total, n_total = torch.zeros(()), 0
            ids, pos, docs = block.input_ids, block.positions, block.doc_ids
            start = 0
            while start < len(ids):  # each document's piece of the block, run alone at its own positions
                end = start
                while end < len(ids) and docs[end] == docs[start]:
                    end += 1
                piece = torch.tensor([ids[start:end]])
                h = model.norm(model.hidden(piece, torch.tensor(pos[start:end]), 0, None))
                logits = model.output(h)[0, :-1].float()
                total += F.cross_entropy(logits, piece[0, 1:], reduction="sum")
                n_total += end - start - 1
                start = end
        assert n_packed == n_total and len(set(docs)) > 1
        torch.testing.assert_close(packed, total, atol=1e-4, rtol=1e-5)


def test_a_tiny_model_learns_a_repeated_corpus(corpus, tmp_path):
    blocks, stats = load_text_data(corpus, CharTokenizer(), 64)
    model = tiny()
    cfg = TrainConfig(lr=3e-3, max_steps=60, seq_len=64, grad_accum=2, warmup_steps=5, seed=0, save_every=30)
    rows = []
    out = tmp_path / "out"
    result = run_pretrain(model, blocks, stats, out, cfg, on_step=rows.append)
    assert result.steps == 60 and len(rows) == 60
    first = sum(r["loss"] for r in rows[:3]) / 3
    last = sum(r["loss"] for r in rows[-3:]) / 3
    assert first > 3.5 and last < 0.25 * first, (first, last)
    assert json.loads((out / "data.json").read_text())["examples"] == stats.examples
    assert (out / "merged" / "model.safetensors").is_file() and (out / "checkpoints" / "step-60").is_dir()
    assert not (out / "adapter").exists()


def test_pretrain_with_lora_trains_only_the_adapter(corpus, tmp_path):
    from herd.model.lora import LoRAConfig

    blocks, stats = load_text_data(corpus[0], CharTokenizer(), 64)
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=3e-3, max_steps=4, seq_len=64, seed=0)
    run_pretrain(model, blocks, stats, tmp_path, cfg, lora=LoRAConfig(rank=4, alpha=8))
    frozen = {n.replace(".base.", "."): p for n, p in model.named_parameters() if "lora_" not in n}
    assert frozen.keys() == before.keys() and all(torch.equal(frozen[n], t) for n, t in before.items())
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # the adapter learnt
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (tmp_path / "merged").is_dir()
    with pytest.raises(HerdError, match="longer than seq_len"):
        run_pretrain(tiny(), blocks, stats, tmp_path / "x", TrainConfig(seq_len=32))
