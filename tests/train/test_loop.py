"""The training loop: a packed block computes exactly what its documents compute one by one, a tiny model
learns a small dataset, the schedule, and a run killed with SIGKILL mid-way resumes to bit-identical
weights (in subprocesses, as a user's crash would be)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from herd.config import ModelArgs
from herd.model.llama import Transformer
from herd.train.data import IGNORE, Example
from herd.train.loop import (
    TrainConfig,
    block_tensors,
    hidden_states,
    latest_checkpoint,
    lr_factor,
    pack_examples,
    train,
)

REPO = Path(__file__).resolve().parents[2]
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32, max_seq_len=256)


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARGS)
    for p in model.parameters():  # the default init of nn.Linear/Embedding, made small and seeded
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    return model


def naive_loss(model, batch):
    logits = model.output(hidden_states(model, batch)).float()
    targets = batch["targets"]
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=IGNORE,
                           reduction="sum"), int((targets != IGNORE).sum())


def examples(n: int = 20, seed: int = 1) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 90, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        answer = [90 + i % 5, 91, 92, 2]  # a "call" that depends on the example
        out.append(Example(prompt + answer, [IGNORE] * len(prompt) + answer, f"ex{i}"))
    return out


def test_a_packed_block_equals_its_documents_alone():
    model = tiny().eval()
    exs = examples(5)
    [block] = pack_examples(exs, 128)
    batch = block_tensors(block)
    with torch.no_grad():
        packed = model.output(hidden_states(model, batch))[0]
        start = 0
        for ex in exs:
            alone = model(torch.tensor([ex.input_ids]))[0]
            torch.testing.assert_close(packed[start:start + len(ex.input_ids)], alone, atol=1e-5, rtol=1e-5)
            start += len(ex.input_ids)
    targets = batch["targets"][0].tolist()
    start = 0
    for ex in exs:  # the last token of a document predicts nothing (the next document is not its text)
        n = len(ex.input_ids)
        assert targets[start:start + n - 1] == ex.labels[1:] and targets[start + n - 1] == IGNORE
        start += n


def test_blocks_never_split_examples():
    exs = examples(20)
    blocks = pack_examples(exs, 40)
    assert sum(len(b.input_ids) for b in blocks) == sum(len(e.input_ids) for e in exs)
    assert all(len(b.input_ids) <= 40 for b in blocks)
    assert [t for b in blocks for t in b.input_ids] == [t for e in exs for t in e.input_ids]


def test_schedule():
    assert lr_factor(0, 10, 100, 0.0) == pytest.approx(0.1) and lr_factor(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_a_tiny_model_learns_the_answers(tmp_path):
    model = tiny()
    blocks = pack_examples(examples(20), 64)
    cfg = TrainConfig(lr=3e-3, max_steps=120, seq_len=64, grad_accum=1, warmup_steps=5, seed=0)
    rows = []
    result = train(model, blocks, naive_loss, cfg, tmp_path, on_step=rows.append)
    assert result.steps == 120 and rows[0]["loss"] > 2.0 and result.final_loss < 0.05, rows[-1]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 121))
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the loss curve


SCRIPT = textwrap.dedent('''
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_loop import tiny, examples, naive_loss
    from herd.train.loop import TrainConfig, pack_examples, train
    out, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    model = tiny()
    blocks = pack_examples(examples(20), 48)
    cfg = TrainConfig(lr=1e-3, max_steps=12, seq_len=48, grad_accum=2, warmup_steps=2, save_every=3, seed=3)
    def on_step(row):
        if row["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(model, blocks, naive_loss, cfg, out, resume=resume, on_step=on_step)
    torch.save(model.state_dict(), os.path.join(out, "final.pt"))
''')


def test_sigkill_mid_run_resumes_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))

    def run(out: Path, kill_at: int, resume: bool) -> int:
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at), "1" if resume else "0"],
                              cwd=REPO, capture_output=True, text=True, timeout=300).returncode

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run(whole, 0, False) == 0
    assert run(broken, 8, False) == -9  # killed after step 8; the last checkpoint is step 6
    assert latest_checkpoint(broken).name == "step-6" and not (broken / "final.pt").exists()
    assert run(broken, 0, True) == 0
    a, b = torch.load(whole / "final.pt"), torch.load(broken / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))  # steps 7-8 of the killed run are not repeated
    want = [json.loads(x)["loss"] for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == want


def test_activation_checkpointing_gives_the_same_training(tmp_path):
    """Recomputing blocks in backward changes memory, not results: the same weights after a few steps."""
    results = []
    for flag in (False, True):
        model = tiny()
        cfg = TrainConfig(lr=3e-3, max_steps=4, seq_len=64, seed=0, activation_checkpointing=flag)
        train(model, pack_examples(examples(12), 64), naive_loss, cfg, tmp_path / str(flag))
        results.append(model.state_dict())
    a, b = results
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    losses = []
    for autocast in (None, "bf16"):
        rows = []
        cfg = TrainConfig(lr=3e-3, max_steps=6, seq_len=64, seed=0, autocast=autocast)
        train(tiny(), pack_examples(examples(12), 64), naive_loss, cfg, tmp_path / str(autocast), on_step=rows.append)
        losses.append([r["loss"] for r in rows])
    fp32, bf16 = losses
    assert bf16 != fp32 and all(abs(x - y) < 0.05 * x for x, y in zip(fp32, bf16)) and bf16[-1] < bf16[0]
