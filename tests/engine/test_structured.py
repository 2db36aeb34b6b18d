"""Structured output: real SmolLM2 generations under a grammar mask parse and validate; masks on Llama 3."""
from __future__ import annotations

import json
import re
import time

import jsonschema
import pytest
import torch

from herd import hub
from herd.config import EngineConfig
from herd.engine.engine import LLMEngine
from herd.engine.request import SamplingParams
from herd.engine.structured import (
    GrammarCompiler,
    ResponseFormat,
    _unpack_by_shift,
    apply_masks,
    fill_masks,
    unpack_masks,
)
from herd.errors import HerdError
from herd.tokenizer.tokenizer import Llama3Tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "skills"],
    "additionalProperties": False,
}
PROMPTS = [
    "Describe a new employee as JSON.",
    "Give me a JSON record for a software engineer.",
    "Invent a character for a fantasy novel and return it as JSON.",
    "Return a JSON profile of a nurse who likes hiking.",
    "Make up a user account for a blog.",
    "JSON please: a retired teacher.",
    "Create a profile for a chef at a small restaurant.",
    "Who is the admin of this website? Answer in JSON.",
    "Write a JSON object describing a student.",
    "Describe yourself in JSON.",
]
SEEDS_PER_PROMPT = 5  # n=5 seeded samples per prompt, every prompt batched in one engine run


@pytest.fixture(scope="module")
def smol():
    model, tok = hub.load("smollm2-135m-instruct", device="cpu", dtype=torch.float32)
    return model, tok, GrammarCompiler(tok)


@pytest.fixture(scope="module")
def llama3():
    tok = Llama3Tokenizer.default()
    return tok, GrammarCompiler(tok)


def chatml(tok, user: str) -> list[int]:
    text = (f"<|im_start|>system\nYou are a helpful assistant. Answer in the requested format.<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    return tok.encode(text, allowed_special="all")


def engine_texts(smol, fmt: dict, prompts: list[str], n: int, max_tokens: int, temperature: float = 0.8) -> list[str]:
    """Generate through the engine, all prompts batched, n seeded samples each; all must end on a stop token."""
    model, tok, _ = smol
    engine = LLMEngine(model, tok, EngineConfig(num_blocks=1024, max_num_seqs=64))
    ids = [engine.add_request(None, chatml(tok, p), SamplingParams(
        temperature=temperature, top_p=1.0, seed=1000 * k, n=n, max_tokens=max_tokens, response_format=fmt))
        for k, p in enumerate(prompts)]
    done = {o.request_id: o for o in engine.run() if o.finished}
    texts = []
    for rid in ids:
        for c in done[rid].outputs:
            assert c.finish_reason == "stop" and c.stop_token_id in tok.stop_ids, c.text  # ended by the grammar
            texts.append(c.text)
    assert engine.kv.num_free_blocks == engine.kv.num_usable_blocks
    return texts


def test_50_json_schema_generations_through_the_engine_parse_and_validate(smol):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    texts = engine_texts(smol, fmt, PROMPTS, SEEDS_PER_PROMPT, max_tokens=160)
    assert len(texts) == 50
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


def test_regex_output_matches(smol):
    fmt = {"type": "regex", "pattern": r"\d{4}-\d{2}-\d{2}"}
    for text in engine_texts(smol, fmt, ["When did the first moon landing happen? Give the date."], 3, 24):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", text), text


def test_choice_output_is_one_of_the_choices(smol):
    choices = ["positive", "negative", "neutral"]
    fmt = {"type": "choice", "choices": choices}
    for text in engine_texts(smol, fmt, ["Sentiment of: 'I loved this movie!'"], 3, 8):
        assert text in choices


def test_json_object_output_parses(smol):
    fmt = {"type": "json_object"}
    for text in engine_texts(smol, fmt, ["Give the capital of France as JSON with a key 'capital'."], 2, 64):
        assert isinstance(json.loads(text), dict)


def _allowed(compiler, matcher) -> list[int]:
    masks = compiler.allocate_masks(1)
    matcher.fill_mask(masks[0])
    return unpack_masks(masks, compiler.vocab_size, torch.device("cpu"))[0].nonzero().flatten().tolist()


def test_llama3_mask_allows_only_valid_tokens(llama3):
    tok, compiler = llama3
    m = compiler.compile(ResponseFormat("json_schema", schema=PERSON)).matcher()
    first = _allowed(compiler, m)
    assert first and all(tok.token_bytes(t).startswith(b"{") for t in first)
    assert not set(first) & tok.stop_ids
    head = tok.encode('{"name": "Ada')
    for t in head:
        assert m.accept(t)
    inside = _allowed(compiler, m)  # within the "name" string: text tokens, no control tokens, no stops
    assert len(inside) > 100_000 and not set(inside) & set(tok.special_tokens.values())
    for t in tok.encode('", "age": 36, "role": "admin", "skills": ["math"]}'):
        assert m.accept(t)
    assert m.is_finished() and set(_allowed(compiler, m)) == set(tok.stop_ids)
    assert m.accept(tok.special_tokens["<|eot_id|>"])


def test_invalid_token_and_rollback(llama3):
    tok, compiler = llama3
    m = compiler.compile(ResponseFormat("regex", pattern=r"[0-9]{3}")).matcher()
    ids = tok.encode("123")
    assert all(m.accept(t) for t in ids) and m.is_accepting()
    assert m.rollback(len(ids)) and not m.is_accepting()
    assert not m.accept(tok.encode("x")[0]) and m.error
    assert set(_allowed(compiler, m)) <= set(tok.stop_ids)  # a failed matcher lets the sequence end


def test_apply_masks_rows_and_padded_vocab(llama3):
    _, compiler = llama3
    m = compiler.compile(ResponseFormat("choice", choices=("yes", "no"))).matcher()
    masks = compiler.allocate_masks(2)
    fill_masks([m, m.__class__(m._m.deep_copy(), m.width)], masks)
    single = compiler.allocate_masks(1)
    m.fill_mask(single[0])
    assert torch.equal(masks[0], single[0]) and torch.equal(masks[1], single[0])
    vocab = compiler.vocab_size + 64  # a model with padding rows past the tokenizer's vocabulary
    logits = torch.randn(3, vocab)
    before = logits.clone()
    apply_masks(logits, masks, [2, 0])
    allowed = set(_allowed(compiler, m))
    for row in (0, 2):
        finite = set(torch.isfinite(logits[row]).nonzero().flatten().tolist())
        assert finite == allowed
    assert torch.equal(logits[1], before[1])
    logits2 = before.clone()
    apply_masks(logits2, masks[:1].expand(3, -1).contiguous())
    assert torch.equal(torch.isfinite(logits2), torch.isfinite(logits)[[0, 0, 0]])


def test_shift_unpacking_for_accelerators_equals_numpy_unpacking():
    masks = torch.randint(-(2**31), 2**31 - 1, (3, 7), dtype=torch.int32)
    masks[0] = -1
    masks[1] = 0
    want = torch.tensor([[(int(w) >> b) & 1 for w in row for b in range(32)] for row in masks.tolist()], dtype=torch.bool)
    assert torch.equal(unpack_masks(masks, 224, torch.device("cpu")), want)
    assert torch.equal(_unpack_by_shift(masks), want)  # the path CUDA logits take, run on the CPU here


def test_compile_is_cached_by_format(llama3):
    _, compiler = llama3
    a = compiler.compile(ResponseFormat("json_schema", schema={"type": "object", "properties": {"a": {}, "b": {}}}))
    b = compiler.compile(ResponseFormat("json_schema", schema={"properties": {"b": {}, "a": {}}, "type": "object"}))
    assert a is b
    assert compiler.compile(ResponseFormat("text")) is None


@pytest.mark.parametrize("obj, want", [
    ({"type": "text"}, ResponseFormat("text")),
    (None, ResponseFormat("text")),
    ({"type": "json_object"}, ResponseFormat("json_object")),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}},
     ResponseFormat("json_schema", schema=PERSON)),
    ({"type": "json_schema", "json_schema": PERSON}, ResponseFormat("json_schema", schema=PERSON)),  # Llama Stack
    ({"type": "json_schema", "json_schema": {"name": "anything"}}, ResponseFormat("json_object")),
    ({"type": "regex", "pattern": "a+"}, ResponseFormat("regex", pattern="a+")),
    ({"type": "choice", "choices": ["a", "b"]}, ResponseFormat("choice", choices=("a", "b"))),
    ({"type": "grammar", "bnf": {"grammar": 'root ::= "x"'}}, ResponseFormat("grammar", grammar='root ::= "x"')),
    ({"type": "grammar", "grammar": 'root ::= "x"'}, ResponseFormat("grammar", grammar='root ::= "x"')),
])
def test_from_openai(obj, want):
    assert ResponseFormat.from_openai(obj) == want


@pytest.mark.parametrize("obj, field", [
    ("json", "response_format"),
    ({"type": "yaml"}, "response_format.type"),
    ({}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}, "response_format.json_schema.schema"),
    ({"type": "regex"}, "response_format.pattern"),
    ({"type": "choice", "choices": []}, "response_format.choices"),
    ({"type": "choice", "choices": ["a", 1]}, "response_format.choices"),
    ({"type": "grammar"}, "response_format.grammar"),
])
def test_from_openai_errors_name_the_field(obj, field):
    with pytest.raises(HerdError) as e:
        ResponseFormat.from_openai(obj)
    msg = str(e.value)
    assert msg.startswith(field + ":") and "\n" not in msg


@pytest.mark.parametrize("fmt, field", [
    (ResponseFormat("regex", pattern="(\\d"), "response_format.pattern"),
    (ResponseFormat("json_schema", schema={"type": "objectx"}), "response_format.json_schema.schema"),
    (ResponseFormat("grammar", grammar="root ::= ("), "response_format.grammar"),
])
def test_invalid_grammars_are_herd_errors(llama3, fmt, field):
    with pytest.raises(HerdError) as e:
        llama3[1].compile(fmt)
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)


@torch.inference_mode()
def test_print_mask_cost_vs_decode_step(smol, capsys):
    """Not asserted: the mask (fill + apply) must stay well under a decode step; printed for BENCHMARKS."""
    model, tok, compiler = smol
    ids = chatml(tok, "Describe a new employee as JSON.")
    doc = tok.encode('{"name": "Ada Lovelace", "age": 36, "role": "admin", "skills": ["math", "poetry"]}')
    cache = model.new_cache(1, len(ids) + len(doc) + 1)
    model(torch.tensor([ids]), 0, cache, last_only=True)
    t0 = time.perf_counter()
    grammar = compiler.compile(ResponseFormat("json_schema", schema=PERSON | {"title": "timing"}))
    compile_ms = (time.perf_counter() - t0) * 1e3
    m = grammar.matcher()
    masks = compiler.allocate_masks(1)
    fwd, fill, apply = [], [], []
    for i, t in enumerate(doc):
        t0 = time.perf_counter()
        logits = model(torch.tensor([[t]]), len(ids) + i, cache)[:, -1]
        t1 = time.perf_counter()
        m.fill_mask(masks[0])
        t2 = time.perf_counter()
        apply_masks(logits, masks)
        t3 = time.perf_counter()
        assert m.accept(t)
        fwd.append(t1 - t0), fill.append(t2 - t1), apply.append(t3 - t2)

    def med(xs):
        return sorted(xs)[len(xs) // 2] * 1e3

    with capsys.disabled():
        print(f"\n[structured] SmolLM2 batch 1, {len(doc)} steps: decode step median {med(fwd):.2f} ms; "
              f"mask fill median {med(fill):.3f} ms (max {max(fill) * 1e3:.3f}); apply median {med(apply):.3f} ms; "
              f"mask/step {100 * (med(fill) + med(apply)) / med(fwd):.1f}%; schema compile {compile_ms:.2f} ms")
