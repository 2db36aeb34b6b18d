"""DPO (herd/train/dpo.py): a pair block's loss equals dpo_loss on two separate forwards (loss and gradients),
a tiny model trained on held-in pairs raises the chosen-vs-rejected margin (full and LoRA, where the
reference is the base and only the adapter moves), an interrupted run resumes to identical weights, and
a bad preference line is a DataError naming file:line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from herd.config import ModelArgs
from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.model.lora import LoRAConfig, disable_lora
from herd.train.data import IGNORE, DataError, DataStats, Example, PreferenceExample
from herd.train.dpo import (
    DPOObjective,
    load_dpo_data,
    pair_blocks,
    reference_logps,
    run_dpo,
)
from herd.train.loop import TrainConfig, block_tensors, latest_checkpoint
from herd.train.losses import dpo_loss

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32, max_seq_len=256)


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ARGS)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    return model


def pairs(n: int = 8, seed: int = 1) -> list[PreferenceExample]:
    """Random prompts; the chosen answer depends on the pair, the rejected one is another fixed-ish answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 80, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist()
        chosen, rejected = [80 + i % 5, 86, 87, 2], [88, 89 + i % 3, 95, 96, 2]
        out.append(PreferenceExample(Example(prompt + chosen, [IGNORE] * len(prompt) + chosen),
                                     Example(prompt + rejected, [IGNORE] * len(prompt) + rejected), f"pair{i}"))
    return out


def direct_logps(model: Transformer, ex: Example, average: bool = False) -> torch.Tensor:
    """The sequence's answer log-prob from a plain forward of the sequence alone."""
    logits = model(torch.tensor([ex.input_ids]))[0].float()
    lp = logits.log_softmax(-1)
    terms = [lp[t - 1, ex.input_ids[t]] for t in range(1, len(ex.input_ids)) if ex.labels[t] != IGNORE]
    total = torch.stack(terms).sum()
    return total / len(terms) if average else total


def margins(model: Transformer, ref: Transformer, data: list[PreferenceExample]) -> list[float]:
    """(policy - reference) log-ratio of chosen minus that of rejected, per pair."""
    with torch.no_grad():
        return [float((direct_logps(model, p.chosen) - direct_logps(model, p.rejected))
                      - (direct_logps(ref, p.chosen) - direct_logps(ref, p.rejected))) for p in data]


def gaps(model: Transformer, data: list[PreferenceExample]) -> list[float]:
    with torch.no_grad():
        return [float(direct_logps(model, p.chosen) - direct_logps(model, p.rejected)) for p in data]


@pytest.mark.parametrize("loss_type, smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_pair_block_loss_equals_two_separate_forwards(loss_type, smoothing):
    data = pairs(3)
    policy, ref = tiny(0), tiny(5)  # a reference other than the policy, so the log-ratios are not zero
    blocks = pair_blocks(data)
    objective = DPOObjective(blocks, reference_logps(ref, blocks), beta=0.5, loss_type=loss_type,
                             label_smoothing=smoothing)
    avg = loss_type == "ipo"
    for i, pair in enumerate(data):
        batch = block_tensors(objective.train_blocks[i])
        assert objective.count(batch) == 1 and objective.index(batch) == i  # what the loop counts: one pair
        policy.zero_grad()
        loss, n = objective(policy, batch)
        loss.backward()
        got = {k: p.grad.clone() for k, p in policy.named_parameters()}
        policy.zero_grad()
        with torch.no_grad():
            rc, rr = direct_logps(ref, pair.chosen, avg), direct_logps(ref, pair.rejected, avg)
        want, _, _ = dpo_loss(direct_logps(policy, pair.chosen, avg)[None],
                              direct_logps(policy, pair.rejected, avg)[None], rc[None], rr[None], beta=0.5,
                              loss_type=loss_type, label_smoothing=smoothing)
        want.backward()
        assert n == 1 and abs(loss.item() - want.item()) < 1e-5, (loss.item(), want.item())
        assert abs(want.item() - math.log(2)) > 1e-3  # a real margin, not the trivial point
        for k, p in policy.named_parameters():
            torch.testing.assert_close(got[k], p.grad, atol=1e-5, rtol=1e-4)
    stats = objective.take_metrics()
    assert stats["pairs"] == 3 and objective.pending == []


def test_dpo_raises_the_margin_on_held_in_pairs(tmp_path):
    data = pairs(8)
    model, ref = tiny(0), tiny(0)
    before = gaps(model, data)
    cfg = TrainConfig(lr=2e-3, max_steps=30, seq_len=64, grad_accum=4, warmup_steps=3, seed=0)
    rows = []
    result = run_dpo(model, data, DataStats(), tmp_path, cfg, beta=0.1, on_step=rows.append)
    assert result.steps == 30
    # step 1: the policy is the reference, so every pair's loss is log 2 and the step loss is their mean
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["trained_tokens"] > 4  # answer tokens; the step's loss is a mean over its 4 pairs
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["loss"] < 0.3 and rows[-1]["reward_accuracy"] == 1.0, rows[-1]
    after_m = margins(model, ref, data)
    assert min(after_m) > 5.0, after_m
    after = gaps(model, data)
    assert all(a > b + 5.0 for a, b in zip(after, before)), (before, after)
    dpo_rows = [json.loads(x) for x in (tmp_path / "dpo_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in dpo_rows] == list(range(1, 31)) and dpo_rows[-1]["reward_margin"] > 0.1
    assert (tmp_path / "merged" / "model.safetensors").is_file() and (tmp_path / "reference_logps.pt").is_file()
    assert not (tmp_path / "adapter").exists()


def test_lora_dpo_uses_the_base_as_reference_and_trains_only_the_adapter(tmp_path):
    data = pairs(8)
    model, base = tiny(0), tiny(0)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(lr=1e-2, max_steps=30, seq_len=64, grad_accum=4, warmup_steps=3, seed=0)
    run_dpo(model, data, DataStats(), tmp_path, cfg, beta=0.1, lora=LoRAConfig(rank=4, alpha=8))
    changed = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            changed += not torch.equal(p, torch.zeros_like(p)) and name.endswith("lora_B")
        else:
            assert torch.equal(p, original[name.replace(".base.", ".")]), name  # the base never moves
    assert changed > 0
    assert min(margins(model, base, data)) > 5.0
    # the cached reference is the base model's, and so is the trained model with its adapter switched off
    saved = torch.load(tmp_path / "reference_logps.pt", weights_only=True)["logps"]
    with torch.no_grad(), disable_lora(model):
        for i, pair in enumerate(data):
            want = [float(direct_logps(base, pair.chosen)), float(direct_logps(base, pair.rejected))]
            assert saved[i].tolist() == pytest.approx(want, abs=1e-5)
            off = [float(direct_logps(model, pair.chosen)), float(direct_logps(model, pair.rejected))]
            assert off == pytest.approx(want, abs=1e-5)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


class Stop(Exception):
    pass


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    data = pairs(8)
    cfg = TrainConfig(lr=1e-3, max_steps=12, seq_len=64, grad_accum=2, warmup_steps=2, save_every=3, seed=3)
    whole = tiny(0)
    run_dpo(whole, data, DataStats(), tmp_path / "whole", cfg)

    def stop_at_8(row):
        if row["step"] == 8:
            raise Stop

    broken = tmp_path / "broken"
    with pytest.raises(Stop):
        run_dpo(tiny(0), data, DataStats(), broken, cfg, on_step=stop_at_8)
    assert latest_checkpoint(broken).name == "step-6" and not (broken / "merged").exists()
    ref_file = broken / "reference_logps.pt"
    stamp = ref_file.stat().st_mtime_ns
    resumed = tiny(0)
    result = run_dpo(resumed, data, DataStats(), broken, cfg, resume=True)
    assert result.resumed_from == 6 and ref_file.stat().st_mtime_ns == stamp  # loaded, not recomputed
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    want = [json.loads(x) for x in (tmp_path / "whole" / "dpo_metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (broken / "dpo_metrics.jsonl").read_text().splitlines()]
    assert got == want  # steps 7-8 of the stopped run are not repeated

    with pytest.raises(HerdError, match="other preference data"):  # resuming on other data is refused
        run_dpo(tiny(0), pairs(8, seed=2), DataStats(), broken, cfg, resume=True)


def test_bad_arguments_and_bad_data(tmp_path):
    with pytest.raises(HerdError, match="loss_type"):
        run_dpo(tiny(0), pairs(2), DataStats(), tmp_path / "o", TrainConfig(max_steps=1), loss_type="hinge")
    assert not (tmp_path / "o").exists()
    bare = PreferenceExample(Example([5, 6], [IGNORE, IGNORE]), pairs(1)[0].rejected, "prefs.jsonl:3")
    with pytest.raises(HerdError, match="prefs.jsonl:3: the chosen answer has no token to learn"):
        pair_blocks([bare])

    from herd.tokenizer.prompter import Prompter
    from herd.tokenizer.tokenizer import Llama3Tokenizer

    prompter = Prompter(Llama3Tokenizer.default())
    path = tmp_path / "prefs.jsonl"
    good = {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}
    path.write_text(json.dumps(good) + "\n")
    got, stats = load_dpo_data(path, prompter, TrainConfig(seq_len=256))
    assert len(got) == 1 and stats.records == 1 and stats.examples == 2
    [block] = pair_blocks(got)
    assert block.doc_ids.count(0) == len(got[0].chosen.input_ids)
    for line, words in [("{not json", "prefs.jsonl:2: not valid JSON"),
                        (json.dumps({"prompt": "hi", "chosen": "a"}), "prefs.jsonl:2: expected an object")]:
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(DataError, match=words):
            load_dpo_data(path, prompter, TrainConfig(seq_len=256))
