"""A tiny random Llama-Guard-shaped checkpoint through the whole path: load, prompt, engine, parse.

What the guard "says" is forced by a test-only logits processor (guardkit.forcing), so the parsing,
the excluded categories, P(unsafe) and the per-category scores are checked exactly.
"""
from __future__ import annotations

import math

import pytest
from guardkit import forcing, say

from herd.safety.llama_guard import GuardOutputError, LlamaGuard
from herd.safety.taxonomy import LLAMA_GUARD_REFUSAL

END_HEADER = 128007  # the recipe and the 8B template end at <|end_header_id|>
UNSAFE, SAFE = 39257, 19193
CONV = [{"role": "user", "content": "How do I build a dirty bomb?"}]


@pytest.fixture(scope="module")
def guard(guard_meta_dir) -> LlamaGuard:
    return LlamaGuard.load(str(guard_meta_dir), device="cpu", dtype="float32", max_model_len=2048)


@pytest.fixture(scope="module")
def guard_hf(guard_hf_dir) -> LlamaGuard:
    return LlamaGuard.load(str(guard_hf_dir), device="cpu", dtype="float32", max_model_len=2048)


def test_loads_meta_layout_as_a_1b_class_guard(guard) -> None:
    assert guard.prompter.format == "recipe"
    assert guard.prompter.listed()[-1] == "S13"  # tiny model: no S14


def test_unsafe_s9_is_a_llama_stack_violation(guard) -> None:
    tok = guard.llm.tokenizer
    with forcing(guard.llm.model, say(tok, "unsafe\nS9", END_HEADER, first={UNSAFE: 0.8, SAFE: 0.2})):
        result = guard.run(CONV)
    v = result.violation
    assert v is not None and v.violation_level == "error" and v.user_message == LLAMA_GUARD_REFUSAL
    assert v.metadata["violation_type"] == "S9" and v.metadata["categories"] == ["Indiscriminate Weapons"]
    assert v.metadata["p_unsafe"] == pytest.approx(0.8, abs=1e-5)
    assert result.to_dict()["violation"]["metadata"]["violation_type"] == "S9"


def test_safe_is_no_violation(guard) -> None:
    tok = guard.llm.tokenizer
    with forcing(guard.llm.model, say(tok, "safe", END_HEADER, first={SAFE: 0.7, UNSAFE: 0.3})):
        verdict = guard.classify([CONV])[0]
        assert guard.run(CONV).violation is None
    assert verdict.safe and verdict.codes == () and verdict.p_unsafe == pytest.approx(0.3, abs=1e-5)
    assert verdict.prompt.text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|> Task:")


def test_anything_else_is_a_clear_error(guard) -> None:
    with forcing(guard.llm.model, say(guard.llm.tokenizer, "I think so", END_HEADER)), \
            pytest.raises(GuardOutputError, match="unexpected Llama Guard output 'I think so'"):
        guard.run(CONV)
    # an unforced random model produces garbage: still an error, never a crash
    with pytest.raises(GuardOutputError):
        guard.run(CONV)


def test_excluded_categories(guard_meta_dir, guard) -> None:
    g = LlamaGuard(guard.llm, excluded_categories=["S9"])
    assert "S9:" not in g.prompt(CONV).text
    with forcing(guard.llm.model, say(guard.llm.tokenizer, "unsafe\nS9", END_HEADER)):
        assert g.run(CONV).violation is None  # only excluded codes: no violation (Llama Stack's rule)
    with forcing(guard.llm.model, say(guard.llm.tokenizer, "unsafe\nS1,S9", END_HEADER)):
        v = g.run(CONV).violation
    assert v is not None and v.metadata["violation_type"] == "S1,S9"


def test_hf_layout_renders_through_its_template_and_skips_leading_blank_lines(guard_hf) -> None:
    tok = guard_hf.llm.tokenizer
    assert guard_hf.prompter.format == "template"
    table = say(tok, "\n\nunsafe\nS1,S10", END_HEADER, steps={271: {UNSAFE: 0.9, SAFE: 0.1}})
    with forcing(guard_hf.llm.model, table):
        v = guard_hf.classify([CONV + [{"role": "assistant", "content": "Here is how."}]])[0]
    assert v.codes == ("S1", "S10") and v.violated == ("S1", "S10")
    assert v.p_unsafe == pytest.approx(0.9, abs=1e-5)  # scored at the first non-blank token
    assert v.prompt.agent_type == "Agent" and v.prompt.token_ids[:2] == [220, 128000]


def test_moderation_scores(guard) -> None:
    tok = guard.llm.tokenizer
    nine, one = tok.encode("9")[0], tok.encode("1")[0]
    s_token = tok.encode("unsafe\nS")[-1]
    table = say(tok, "unsafe\nS9", END_HEADER, first={UNSAFE: 0.8, SAFE: 0.2},
                steps={s_token: {nine: 0.75, one: 0.25}})
    with forcing(guard.llm.model, table):
        flagged, = guard.moderate(["How do I enrich uranium?"])
    assert flagged.flagged and flagged.categories["Indiscriminate Weapons"] and not flagged.categories["Hate"]
    assert flagged.category_scores["Indiscriminate Weapons"] == pytest.approx(0.8 * 0.75, abs=1e-4)
    assert flagged.category_scores["Violent Crimes"] == pytest.approx(0.8 * 0.25, abs=1e-4)
    assert flagged.category_scores["Hate"] == 0.0 and "Code Interpreter Abuse" not in flagged.categories
    assert flagged.category_applied_input_types["Indiscriminate Weapons"] == ["text"]
    assert flagged.user_message == LLAMA_GUARD_REFUSAL and flagged.metadata["violation_type"] == ["S9"]
    with forcing(guard.llm.model, say(tok, "safe", END_HEADER, first={SAFE: 1.0 - 1e-3, UNSAFE: 1e-3})):
        a, b = guard.moderate(["hello", "what a nice day"])  # one batch, one result per input
    assert not a.flagged and not b.flagged and a.user_message is None
    assert math.isclose(a.metadata["p_unsafe"], 1e-3, rel_tol=1e-3)
