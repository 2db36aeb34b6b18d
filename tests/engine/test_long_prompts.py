"""Prompts longer than one prefill chunk, at every precision, and one failing request among healthy ones.

With the default budget (2048 tokens a step) a longer prompt is prefilled in chunks, and the steps
before its last chunk sample nothing: the output head then gets zero rows. The CPU kernels used to
crash on that, and the crash took every request of the step down with it.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch

from herd import hub
from herd.config import EngineConfig
from herd.engine.async_engine import AsyncLLMEngine
from herd.engine.engine import LLMEngine
from herd.engine.request import SamplingParams
from herd.errors import EngineError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import build_tiny_llama3, prompt_of

PRECISIONS = ("none", "bf16", "int8", "int4")
LENGTHS = (2047, 2048, 2049, 5000, 8000)
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama3(tmp_path_factory.mktemp("tiny_long"))


def run_all(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    ids = [engine.add_request(None, p, params) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.error is None, out.error
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return [done[i] for i in ids]


@pytest.mark.parametrize("quantize", PRECISIONS)
def test_prompts_longer_than_a_chunk_match_one_chunk_prefill(tiny_dir: Path, quantize: str) -> None:
    model, tok = hub.load(tiny_dir, device="cpu", quantize=quantize)
    prompts = [prompt_of(n) for n in LENGTHS]
    # the default step budget (2048): the longer prompts take 2-4 chunks, the first ones sampling nothing
    chunked = LLMEngine(model, tok, EngineConfig(num_blocks=1200, enable_prefix_caching=False))
    assert chunked.config.max_num_batched_tokens == 2048
    alone = [run_all(chunked, [p], GREEDY)[0] for p in prompts]  # steps that sample nothing
    together = run_all(chunked, prompts, GREEDY)
    assert chunked.kv.num_free_blocks == chunked.kv.num_usable_blocks  # every block came back
    # reference: each prompt prefilled in one step
    whole = LLMEngine(model, tok, EngineConfig(num_blocks=600, max_num_batched_tokens=8192))
    want = [run_all(whole, [p], GREEDY)[0] for p in prompts]
    for n, a, t, w in zip(LENGTHS, alone, together, want):
        assert len(a) == GREEDY.max_tokens, n
        assert a == w, f"{quantize}: {n}-token prompt: chunked {a} != one-step {w}"
        assert t == w, f"{quantize}: {n}-token prompt batched with the others: {t} != {w}"


@pytest.mark.parametrize("quantize", PRECISIONS)
def test_a_step_with_no_logits_rows(tiny_dir: Path, quantize: str) -> None:
    """The model's head asked for zero rows (a prefill chunk that samples nothing) gives (0, vocab)."""
    model, _ = hub.load(tiny_dir, device="cpu", quantize=quantize)
    with torch.inference_mode():
        for rows in (0, 1, 3):
            h = torch.randn(rows, model.args.dim)
            out = model.output(model.norm(h))
            assert out.shape == (rows, model.args.vocab_size)


class _FailOn:
    """Fault injection for the collateral test: a forward that raises whenever a batch holds `token`
    (a stand-in for a kernel bug that one request's shape triggers)."""

    def __init__(self, forward, token: int):
        self.forward, self.token = forward, token

    def __call__(self, tokens, positions, cache, logits_idx):
        if bool((tokens == self.token).any()):
            raise RuntimeError("injected kernel failure")
        return self.forward(tokens, positions, cache, logits_idx)


POISON = 127999  # a token id no healthy prompt here contains


def test_a_failing_request_fails_alone(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, tok = hub.load(tiny_dir, device="cpu", quantize="none")
    healthy = [prompt_of(n, salt=1) for n in (30, 3000, 40)]
    engine = LLMEngine(model, tok, EngineConfig(num_blocks=800))
    want = run_all(engine, healthy, GREEDY)

    engine.model.forward_flat = _FailOn(engine.model.forward_flat, POISON)
    engine.runner.model = engine.model
    try:
        bad = [*prompt_of(20, salt=2), POISON, 5]
        ids = [engine.add_request(f"ok{i}", p, GREEDY) for i, p in enumerate(healthy)]
        engine.add_request("bad", bad, GREEDY)
        done, errors = {}, {}
        with caplog.at_level("ERROR", logger="herd.engine"):
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.error is not None:
                        errors[out.request_id] = out.error
                    elif out.finished:
                        done[out.request_id] = out.outputs[0].token_ids
        assert list(errors) == ["bad"] and "injected kernel failure" in errors["bad"]
        assert [done[i] for i in ids] == want  # the healthy requests are untouched
        assert engine.kv.num_free_blocks == engine.kv.num_usable_blocks
        assert any("request bad failed" in r.getMessage() for r in caplog.records)
    finally:
        del engine.model.forward_flat


def test_a_failing_request_fails_alone_through_the_async_engine(tiny_dir: Path) -> None:
    model, tok = hub.load(tiny_dir, device="cpu", quantize="none")
    engine = LLMEngine(model, tok, EngineConfig(num_blocks=800))
    healthy = [prompt_of(n, salt=3) for n in (25, 2500)]
    want = run_all(engine, healthy, GREEDY)
    model.forward_flat = _FailOn(model.forward_flat, POISON)
    aengine = AsyncLLMEngine(engine)

    async def one(p: list[int]) -> list[int] | BaseException:
        try:
            last = None
            async for out in aengine.generate(p, GREEDY):
                last = out
            return last.outputs[0].token_ids
        except BaseException as e:  # noqa: BLE001
            return e

    async def main() -> list:
        return await asyncio.gather(one(healthy[0]), one([*prompt_of(10, salt=4), POISON]), one(healthy[1]))

    try:
        first, bad, second = asyncio.run(main())
        assert isinstance(bad, EngineError) and "injected kernel failure" in str(bad)
        assert [first, second] == want
        # the engine keeps serving after the failure
        assert asyncio.run(one(healthy[0])) == want[0]
    finally:
        aengine.shutdown()
        del model.forward_flat
