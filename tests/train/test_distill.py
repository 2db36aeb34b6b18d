"""Knowledge distillation: the recipe's loss is losses.distillation_loss on separate student and teacher
forwards (documents run alone), a tiny student distilled from a different tiny teacher comes closer to it,
a top-k teacher with k = vocab is the full teacher, a resumed run is exact, and a teacher on another
vocabulary is refused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_loop import ARGS, examples, tiny

from herd.config import ModelArgs
from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.train.data import IGNORE, PackedBlock
from herd.train.distill import (
    distill_kl,
    make_distill_loss,
    run_distill,
    teacher_outputs,
)
from herd.train.loop import TrainConfig, block_tensors, pack_examples
from herd.train.losses import distillation_loss

# another architecture (wider, deeper, no GQA) on the same 97-token vocabulary
TEACHER_ARGS = ModelArgs(dim=96, n_layers=3, n_heads=4, n_kv_heads=4, vocab_size=97, multiple_of=32, max_seq_len=256)


def teacher(seed: int = 7, std: float = 0.15, args: ModelArgs = TEACHER_ARGS) -> Transformer:
    """A random teacher with sharper distributions than the student's init (KL(teacher || student) ~ 1)."""
    torch.manual_seed(seed)
    model = Transformer(args)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std) if p.ndim > 1 else None
    return model


def alone(model: Transformer, block: PackedBlock) -> torch.Tensor:
    """The logits (1, T, V) of a block's documents, each run through `model` by itself, concatenated."""
    pieces, start, docs = [], 0, block.doc_ids
    while start < len(docs):
        end = start
        while end < len(docs) and docs[end] == docs[start]:
            end += 1
        pieces.append(model(torch.tensor([block.input_ids[start:end]]))[0])
        start = end
    return torch.cat(pieces)[None]


@pytest.mark.parametrize("top_k", [None, 10])
def test_the_loss_is_distillation_loss_on_separate_forwards(top_k):
    student, teach = tiny(), teacher().eval()
    [block] = pack_examples(examples(5), 128)
    batch = block_tensors(block)
    targets = batch["targets"]
    assert 0 < int((targets != IGNORE).sum()) < targets.numel()  # only the answers are learnt
    loss, n = make_distill_loss(teach, temperature=2.0, alpha=0.3, top_k=top_k)(student, batch)
    loss.backward()
    got = {k: p.grad.clone() for k, p in student.named_parameters()}
    student.zero_grad()

    with torch.no_grad():
        t_logits = alone(teach, block)
    if top_k is None:
        t_out = t_logits
    else:
        top = t_logits.log_softmax(-1).topk(top_k, dim=-1)
        t_out = (top.indices, top.values)
    want = distillation_loss(alone(student, block), t_out, targets, temperature=2.0, alpha=0.3, reduction="sum")
    want.loss.backward()
    assert n == want.n_tokens == int((targets != IGNORE).sum())
    torch.testing.assert_close(loss, want.loss, atol=1e-4, rtol=1e-5)
    for k, p in student.named_parameters():
        torch.testing.assert_close(got[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)


def test_top_k_of_the_whole_vocabulary_is_the_full_teacher():
    student, teach = tiny(), teacher().eval()
    [block] = pack_examples(examples(5), 128)
    batch = block_tensors(block)
    ids, lps = teacher_outputs(teach, batch, top_k=ARGS.vocab_size)
    learnt = batch["targets"] != IGNORE
    assert ids.shape == lps.shape == (1, len(block.input_ids), ARGS.vocab_size)
    assert torch.equal(ids[~learnt], torch.zeros_like(ids[~learnt]))  # nothing computed where nothing is learnt
    full = teacher_outputs(teach, batch)
    torch.testing.assert_close(lps[learnt].exp().sum(-1), torch.ones(int(learnt.sum())))
    torch.testing.assert_close(full.log_softmax(-1)[learnt].gather(-1, ids[learnt]), lps[learnt])
    results = []
    for top_k in (None, ARGS.vocab_size):
        loss, n = make_distill_loss(teach, temperature=2.0, alpha=0.5, top_k=top_k)(student, batch)
        loss.backward()
        results.append((loss.detach(), n, [p.grad.clone() for p in student.parameters()]))
        student.zero_grad()
    (a, na, ga), (b, nb, gb) = results
    assert na == nb
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)
    small, _ = make_distill_loss(teach, temperature=2.0, alpha=0.5, top_k=5)(student, batch)
    assert torch.isfinite(small) and not torch.isclose(small, a)


def test_distilling_brings_the_student_closer_to_the_teacher(tmp_path):
    exs = examples(20)
    kl = {}
    for alpha in (0.9, 0.0):  # distillation, and plain cross-entropy for comparison
        student, teach = tiny(), teacher()
        before = distill_kl(student, teach, exs, seq_len=64)
        rows = []
        cfg = TrainConfig(lr=3e-3, max_steps=48, seq_len=64, warmup_steps=3, seed=0)
        result = run_distill(student, teach, exs, None, tmp_path / str(alpha), cfg, temperature=2.0, alpha=alpha,
                             on_step=rows.append)
        assert result.steps == 48 and len(rows) == 48 and {"kd", "ce"} <= rows[0].keys()
        assert all(not p.requires_grad for p in teach.parameters()) and not teach.training
        kl[alpha] = distill_kl(student, teach, exs, seq_len=64)
        if alpha:
            assert rows[-1]["kd"] < rows[0]["kd"]
            torch.testing.assert_close(rows[0]["loss"], alpha * 4 * rows[0]["kd"] + (1 - alpha) * rows[0]["ce"])
    assert before > 0.5 and kl[0.9] < 0.6 * before and kl[0.9] < 0.5 * kl[0.0], (before, kl)
    out = tmp_path / "0.9"
    assert json.loads((out / "distill.json").read_text()) == {"temperature": 2.0, "alpha": 0.9, "top_k": None}
    assert (out / "merged" / "model.safetensors").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 48


def test_text_blocks_and_lora_resume_exactly(tmp_path):
    """Text blocks (every token learnt), a LoRA student, top-k teacher: a run that crashes after its step-4
    checkpoint and is resumed ends with the weights of an uninterrupted run."""
    from herd.model.lora import LoRAConfig, lora_state_dict
    from herd.train.data import pack

    g = torch.Generator().manual_seed(0)
    docs = [[1, *torch.randint(3, 97, (int(n),), generator=g).tolist(), 2] for n in torch.randint(5, 30, (30,), generator=g)]
    blocks = list(pack(docs, 48))
    cfg = TrainConfig(lr=2e-3, max_steps=8, seq_len=48, grad_accum=2, save_every=2, seed=1)
    lora = LoRAConfig(rank=4, alpha=8)
    kw = {"temperature": 1.5, "alpha": 0.7, "top_k": 8, "lora": lora}

    whole = tiny()
    run_distill(whole, teacher(), blocks, None, tmp_path / "whole", cfg, **kw)

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        run_distill(tiny(), teacher(), blocks, None, tmp_path / "broken", cfg, on_step=crash, **kw)
    with pytest.raises(HerdError, match="same distillation settings"):
        run_distill(tiny(), teacher(), blocks, None, tmp_path / "broken", cfg, resume=True, **{**kw, "top_k": 4})
    resumed = tiny()
    result = run_distill(resumed, teacher(), blocks, None, tmp_path / "broken", cfg, resume=True, **kw)
    assert result.resumed_from == 4 and result.steps == 4
    a, b = lora_state_dict(whole), lora_state_dict(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "broken" / "adapter" / "adapter_config.json").is_file()
    rows = [json.loads(x) for x in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x)["loss"] for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == want


def test_a_teacher_that_cannot_teach_is_refused(tmp_path):
    student = tiny()
    exs = examples(4)
    cfg = TrainConfig(max_steps=1, seq_len=64)
    other_vocab = teacher(args=ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=101, multiple_of=32))
    with pytest.raises(HerdError, match=r"vocabulary \(101 tokens\) is not the student's \(97 tokens\)"):
        run_distill(student, other_vocab, exs, None, tmp_path, cfg)
    with pytest.raises(HerdError, match="same model"):
        run_distill(student, student, exs, None, tmp_path, cfg)
    with pytest.raises(HerdError, match="must be a herd Transformer"):
        run_distill(student, torch.nn.Linear(4, 4), exs, None, tmp_path, cfg)
    with pytest.raises(HerdError, match="top_k"):
        run_distill(student, teacher(), exs, None, tmp_path, cfg, top_k=98)
    assert not any(tmp_path.iterdir())  # nothing written for a refused run
    assert all(p.requires_grad for p in student.parameters())
