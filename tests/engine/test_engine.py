"""The batching engine against the one-request-at-a-time reference loop, on the real default model."""
import asyncio

import pytest
import torch

from herd import hub
from herd.config import EngineConfig
from herd.engine.async_engine import AsyncLLMEngine
from herd.engine.engine import LLMEngine
from herd.engine.generate import generate
from herd.engine.request import SamplingParams
from herd.errors import HerdError

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
SYSTEM = "You are a careful assistant who answers briefly and precisely. Always think about units. " * 3
PROMPTS = [
    "Hi", "The capital of France is", "1, 2, 3, 4,", "Write a haiku about autumn leaves falling slowly.",
    "def fibonacci(n):", "Translate to French: the cat sleeps on the mat.", "Q: What is 12 * 12?\nA:",
    "Once upon a time, in a land far, far away, there lived a dragon who loved to bake bread and",
    "Water boils at", "The three primary colours are", "import numpy as np\nx = np.", "Dear Sir or Madam,",
    "List of planets: Mercury, Venus,", "Photosynthesis is the process by which plants",
    "The quick brown fox", "In 1492, Columbus",
]


@pytest.fixture(scope="module")
def model_tok():
    return hub.load("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="module")
def reference(model_tok):
    model, tok = model_tok
    return {p: generate(model, tok, tok.encode(p), GREEDY).token_ids for p in PROMPTS}


def run_all(engine: LLMEngine, prompts: list[list[int]], params) -> list[list[int]]:
    ids = [engine.add_request(None, p, params) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return [done[i] for i in ids]


def assert_same_or_near_tie(model, prompt: list[int], got: list[int], want: list[int], gap: float = 1e-3) -> None:
    """Equal, or the first difference is at a near-tie of the reference logits (top-2 gap < `gap`)."""
    if got == want:
        return
    i = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + want[:i]]))[0, -1]
    top2 = torch.topk(logits, 2).values
    assert (top2[0] - top2[1]).item() < gap, f"diverged at step {i} without a near-tie"


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(num_blocks=512),
        EngineConfig(num_blocks=512, max_num_batched_tokens=16),  # chunked prefill of every prompt
        EngineConfig(num_blocks=512, long_prefill_token_threshold=5),
        EngineConfig(num_blocks=24, block_size=16, max_num_seqs=16),  # tiny pool: preemption
    ],
    ids=["batched", "chunked-16", "chunk-threshold-5", "preemption"],
)
def test_batched_greedy_equals_each_prompt_alone(model_tok, reference, config):
    model, tok = model_tok
    engine = LLMEngine(model, tok, config)
    free = engine.kv.num_free_blocks
    got = run_all(engine, [tok.encode(p) for p in PROMPTS], GREEDY)
    for p, g in zip(PROMPTS, got):
        assert_same_or_near_tie(model, tok.encode(p), g, reference[p])
    assert engine.kv.num_free_blocks == free
    if config.num_blocks == 24:
        assert sum(r.num_preemptions for r in engine.scheduler.requests.values()) == 0  # all finished
        assert engine.scheduler.num_preemptions_total > 0


def test_bf16_kv_cache_holds_twice_the_tokens_and_stays_batch_invariant(reference):
    # the fused model: decode runs herd's one-call block and paged kernel on the bf16 cache
    model, tok = hub.load("smollm2-135m-instruct", device="cpu", quantize="none")
    budget = 64 << 20
    fp32 = LLMEngine(model, tok, EngineConfig(kv_cache_memory=budget))
    bf16 = LLMEngine(model, tok, EngineConfig(kv_cache_memory=budget, kv_cache_dtype="bfloat16"))
    assert bf16.runner.cache.k[0].dtype == torch.bfloat16
    assert bf16.kv.num_blocks >= 2 * fp32.kv.num_blocks - 1
    prompts = [tok.encode(p) for p in PROMPTS]
    batched = run_all(bf16, prompts, GREEDY)
    for p, g in zip(prompts, batched):
        alone = run_all(LLMEngine(model, tok, EngineConfig(num_blocks=64, kv_cache_dtype="bfloat16")), [p], GREEDY)[0]
        # decode is batch-invariant, but the prefill GEMM's last bits depend on the batch's
        # shape, and rounding K / V to bf16 (8-bit mantissa) can turn those into a bf16 step:
        # logits then move by ~1e-2, so a divergence is accepted below a 0.05 gap here
        assert_same_or_near_tie(model, p, g, alone, gap=0.05)
    # rounding K / V to bf16 moves the logits a little: greedy text stays the same for most
    # prompts (15 of 16 over 20 tokens when measured)
    assert sum(g == reference[p] for p, g in zip(PROMPTS, batched)) >= 13
    with pytest.raises(HerdError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype="int8")


def test_prefix_cache_hits_do_not_change_output(model_tok):
    model, tok = model_tok
    prompts = [tok.encode(SYSTEM + q) for q in ("What is 2+2?", "Name a fruit.", "Say hello.")]
    want = [generate(model, tok, p, GREEDY).token_ids for p in prompts]
    engine = LLMEngine(model, tok, EngineConfig(num_blocks=256))
    first = run_all(engine, prompts[:1], GREEDY)
    rid = engine.add_request(None, prompts[1], GREEDY)
    cached = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == rid and out.finished:
                cached, second = out.num_cached_tokens, out.token_ids
    assert cached >= 16 * (len(tok.encode(SYSTEM)) // 16) - 16 and cached > 0
    third = run_all(engine, prompts[2:], GREEDY)
    for p, g, w in zip(prompts, [first[0], second, third[0]], want):
        assert_same_or_near_tie(model, p, g, w)


def test_seeded_request_is_independent_of_the_batch(model_tok):
    model, tok = model_tok
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    alone = run_all(LLMEngine(model, tok, EngineConfig(num_blocks=256)), [tok.encode("Tell me a story")], seeded)
    others = [SamplingParams(temperature=0.9, seed=s, max_tokens=12, ignore_eos=True) for s in range(5)]
    engine = LLMEngine(model, tok, EngineConfig(num_blocks=256))
    ids = [engine.add_request(None, tok.encode(f"Other prompt number {i}"), p) for i, p in enumerate(others)]
    target = engine.add_request(None, tok.encode("Tell me a story"), seeded)
    engine.add_request(None, tok.encode("Unseeded"), SamplingParams(temperature=1.0, max_tokens=8))
    result = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == target and out.finished:
                result = out.token_ids
    assert ids and result == alone[0]


def test_n_completions_with_seed_are_distinct_and_reproducible(model_tok):
    model, tok = model_tok
    p = SamplingParams(temperature=1.0, top_p=1.0, seed=7, max_tokens=12, ignore_eos=True, n=3)
    e = LLMEngine(model, tok, EngineConfig(num_blocks=256))
    rid = e.add_request("x", tok.encode("Give me a name:"), p)
    outs = [o for o in e.run() if o.finished]
    assert outs[0].request_id == rid and len(outs[0].outputs) == 3
    seqs = [o.token_ids for o in outs[0].outputs]
    assert len({tuple(s) for s in seqs}) == 3
    again = [o for o in LLMEngine(model, tok, EngineConfig(num_blocks=256)).run_one(tok.encode("Give me a name:"), p)]
    assert [o.token_ids for o in again] == seqs


def test_n_completions_prefill_the_prompt_once(model_tok):
    model, tok = model_tok
    prompt = tok.encode(SYSTEM + "My favourite animal is the")  # 100+ tokens: several full 16-token blocks
    p = SamplingParams(temperature=1.5, seed=11, max_tokens=6, ignore_eos=True, n=4)

    def run(prefix_caching: bool) -> tuple[list[list[int]], int]:
        e = LLMEngine(model, tok, EngineConfig(num_blocks=128, enable_prefix_caching=prefix_caching))
        computed = 0
        execute = e.runner.execute

        def counting(sched):
            nonlocal computed
            computed += sum(max(0, min(s.start + s.num_new_tokens, len(prompt)) - s.start) for s in sched.scheduled)
            return execute(sched)

        e.runner.execute = counting
        outs = e.run_one(prompt, p)
        assert e.kv.num_free_blocks == e.kv.num_blocks - 1  # every block back (null block aside)
        return [o.token_ids for o in outs], computed

    forked, computed = run(True)
    plain, computed_plain = run(False)
    tail = len(prompt) % 16 or 16  # siblings recompute only the prompt's last, partial block
    assert computed_plain == 4 * len(prompt)
    assert computed == len(prompt) + 3 * tail
    assert forked == plain and len({tuple(t) for t in forked}) > 1  # per-sequence seeds, same samples


def test_logprobs_match_the_model(model_tok):
    model, tok = model_tok
    prompt = tok.encode("The capital of France is")
    e = LLMEngine(model, tok, EngineConfig(num_blocks=64))
    out = e.run_one(prompt, SamplingParams(temperature=0, max_tokens=4, logprobs=3, ignore_eos=True))[0]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([prompt + out.token_ids]))[0], dim=-1)
    for step, (tokid, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        row = ref[len(prompt) - 1 + step]
        assert abs(entry[tokid] - row[tokid].item()) < 1e-3
        top = torch.topk(row, 3).indices.tolist()
        assert set(top) <= set(entry) and len(entry) == 3  # chosen (greedy) is the top one


def test_abort_returns_every_block(model_tok):
    model, tok = model_tok
    e = LLMEngine(model, tok, EngineConfig(num_blocks=128))
    free = e.kv.num_free_blocks
    ids = [e.add_request(None, tok.encode(p), GREEDY) for p in PROMPTS[:6]]
    for _ in range(3):
        e.step()
    assert e.kv.num_free_blocks < free
    for i in ids:
        e.abort(i)
    assert e.kv.num_free_blocks == free and not e.has_unfinished_requests()


def test_cancelled_async_consumer_frees_blocks(model_tok):
    model, tok = model_tok
    engine = LLMEngine(model, tok, EngineConfig(num_blocks=128))
    free = engine.kv.num_free_blocks
    aengine = AsyncLLMEngine(engine)

    async def consume(prompt: str, limit: int | None) -> str:
        text = ""
        async for out in aengine.generate(tok.encode(prompt), SamplingParams(temperature=0, max_tokens=24,
                                                                              ignore_eos=True)):
            text = out.text
            if limit is not None and len(out.token_ids) >= limit:
                break  # closes the generator: the request is aborted
        return text

    async def main():
        tasks = [asyncio.create_task(consume(p, 3 if i % 2 else None)) for i, p in enumerate(PROMPTS[:6])]
        slow = asyncio.create_task(consume("A very long story:", None))
        await asyncio.sleep(0.5)
        slow.cancel()
        results = await asyncio.gather(*tasks)
        with pytest.raises(asyncio.CancelledError):
            await slow
        return results

    try:
        results = asyncio.run(main())
        assert all(results)
        for _ in range(100):  # the abort is applied by the loop thread
            if engine.kv.num_free_blocks == free and not engine.has_unfinished_requests():
                break
            asyncio.run(asyncio.sleep(0.05))
        assert engine.kv.num_free_blocks == free
        assert not engine.has_unfinished_requests()
    finally:
        aengine.shutdown()


def test_slow_async_consumer_loses_no_delta(model_tok):
    # the engine updates its outputs in place each step; a consumer that reads behind the loop
    # thread must still see every step's delta exactly once (a streamed tool call was parsed from
    # a buffer with holes when this was not so)
    model, tok = model_tok
    aengine = AsyncLLMEngine(LLMEngine(model, tok, EngineConfig(num_blocks=64)))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    async def main():
        deltas, lengths, last = [], [], None
        async for out in aengine.generate(tok.encode("Once upon a time"), params):
            await asyncio.sleep(0.05)  # several engine steps run meanwhile
            deltas.append(out.outputs[0].delta_text)
            lengths.append(len(out.outputs[0].token_ids))
            last = out
        return deltas, lengths, last

    try:
        deltas, lengths, last = asyncio.run(main())
    finally:
        aengine.shutdown()
    assert lengths == list(range(1, 25))  # one item per step, each as it was at that step
    assert "".join(deltas) == last.outputs[0].text and len(last.outputs[0].text) > 20
