"""Prompt Guard on a tiny random DeBERTa-v2 classifier built with transformers: windowing and scoring."""
from __future__ import annotations

from pathlib import Path

import pytest

from guardkit import ATTACK, BENIGN, build_prompt_guard

from herd.errors import HerdError
from herd.safety.prompt_guard import PROMPT_GUARD_REFUSAL, PromptGuard

@pytest.fixture(scope="module")
def pg_dir(tmp_path_factory) -> Path:
    return build_prompt_guard(tmp_path_factory.mktemp("prompt_guard"))


@pytest.fixture(scope="module")
def pg(pg_dir) -> PromptGuard:
    return PromptGuard.load(pg_dir, device="cpu")


def long_text(n_benign: int, n_attack: int) -> str:
    words = [BENIGN[i % len(BENIGN)] for i in range(n_benign)] + [ATTACK[i % len(ATTACK)] for i in range(n_attack)]
    return " ".join(words)


def test_3000_token_input_is_scored_by_its_last_window(pg) -> None:
    body = 512 - 2  # [CLS] ... [SEP]
    text = long_text(2550, 450)  # 3,000 tokens: windows 0..4 benign, window 5 (the last) the attack
    assert len(pg.tokenizer(text, add_special_tokens=False)["input_ids"]) == 3000
    s, = pg.score([text])
    assert s.windows == 6 == -(-3000 // body)
    assert s.jailbreak_window == 5 and s.jailbreak > 0.99
    last, = pg.score([long_text(0, 450)])
    assert s.jailbreak == pytest.approx(last.jailbreak, abs=1e-5)  # the max over windows is that window
    first_only, = pg.score([long_text(510, 0)])  # all Llama Stack looks at
    assert first_only.jailbreak < 0.01
    v = pg.run([{"role": "user", "content": text}]).violation
    assert v is not None and v.user_message == PROMPT_GUARD_REFUSAL
    assert v.metadata["violation_type"].startswith("prompt_injection:embedded=")


def test_batches_and_order_do_not_change_scores(pg_dir) -> None:
    texts = [long_text(100, 0), long_text(2550, 450), long_text(0, 30), long_text(900, 0)]
    a = PromptGuard.load(pg_dir, device="cpu", batch_size=16).score(texts)
    b = PromptGuard.load(pg_dir, device="cpu", batch_size=1).score(texts)
    for x, y in zip(a, b):
        assert x.jailbreak == pytest.approx(y.jailbreak, abs=1e-5) and x.windows == y.windows
    assert [x.jailbreak > 0.9 for x in a] == [False, True, True, False]


def test_scores_temperature_and_guard_types(pg_dir) -> None:
    attack = [{"role": "user", "content": long_text(0, 40)}]
    hot = PromptGuard.load(pg_dir, device="cpu", temperature=100.0)
    s, = hot.score([long_text(0, 40)])
    assert 0.3 < s.jailbreak < 0.4  # softmax(logits / T) flattens toward 1/3
    assert s.injection == pytest.approx(s.jailbreak + (1 - s.jailbreak) / 2, abs=0.02)  # p[INJ] + p[JB]
    jb = PromptGuard.load(pg_dir, device="cpu", guard_type="jailbreak", threshold=0.5)
    assert jb.run(attack).violation.metadata["violation_type"].startswith("prompt_injection:malicious=")
    assert jb.run([{"role": "user", "content": "the cats sleep"}]).violation is None


def test_injection_mode_reads_tool_results(pg) -> None:
    conv = [{"role": "user", "content": "summarize the page"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": long_text(510, 60)},
            {"role": "user", "content": "the weather today"}]
    assert pg.run(conv).violation is not None  # the third-party content carries the injection
    jb = PromptGuard(pg.model, pg.tokenizer, guard_type="jailbreak")
    assert jb.run(conv).violation is None  # jailbreak mode screens the user's last message only


def test_moderation_shape(pg) -> None:
    flagged, clean = pg.moderate([long_text(0, 20), long_text(20, 0)])
    assert flagged.flagged and flagged.categories == {"jailbreak": True, "prompt_injection": True}
    assert not clean.flagged and clean.category_scores["jailbreak"] < 0.01


def test_bad_params_and_paths(pg_dir, tmp_path) -> None:
    with pytest.raises(HerdError, match="no config.json"):
        PromptGuard.load(tmp_path)
    with pytest.raises(HerdError, match="unknown param"):
        PromptGuard.load(pg_dir, thresold=0.5)
    with pytest.raises(HerdError, match="guard_type"):
        PromptGuard.load(pg_dir, guard_type="both")
    with pytest.raises(HerdError, match="temperature"):
        PromptGuard.load(pg_dir, temperature=0)
