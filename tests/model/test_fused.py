"""Fused decode modules and herd's fused CPU kernels against the PyTorch reference ops.

Kernel vs PyTorch: the same arithmetic in another order, so fp32 tolerances of ~1e-5
relative. The one-call block (`decode_layer`) runs the very kernels of the per-op path in the
same order, so there the tests ask for bit-identical results; so do they of models fused and
quantized in either order.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from herd import hub
from herd.config import EngineConfig, ModelArgs
from herd.engine.engine import LLMEngine
from herd.engine.request import SamplingParams
from herd.engine.runner import PagedKVCache
from herd.errors import HerdError
from herd.model import cpu_kernels
from herd.model.cpu_kernels import LayerPlan, Projection
from herd.model.fused import (
    DecodeCache,
    FastRMSNorm,
    FusedBlock,
    FusedStack,
    fuse_model,
)
from herd.model.llama import (
    Blocks,
    Cache,
    RMSNorm,
    Transformer,
    apply_rope,
    rope_cos_sin,
    rope_frequencies,
)
from herd.model.quantize import DenseLinear, concat_rows, quantize_model
from herd.tokenizer.tokenizer import Llama3Tokenizer

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="herd's CPU kernels did not build")


def test_rms_norm_rope_and_silu_mul_match_pytorch():
    torch.manual_seed(0)
    x = torch.randn(7, 96) * 3
    norm = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96) + 0.5)
        want = norm(x)
    got = cpu_kernels.kernel("rms_norm")(x, norm.weight.detach(), 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # rope over the Q heads of a fused projection: strided rows, heads contiguous
    qkv = torch.randn(5, 4 + 2 * 2, 32)
    cos, sin = rope_cos_sin(rope_frequencies(32, 10000.0, None), torch.tensor([3, 9, 10, 11, 40]))
    got = cpu_kernels.kernel("rope")(qkv[:, :4], cos, sin)  # (5, 4, 32)
    want = apply_rope(qkv[:, :4].transpose(0, 1)[None], cos, sin)[0].transpose(0, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    gu = torch.randn(3, 2 * 40) * 4
    want = F.silu(gu[:, :40]) * gu[:, 40:]
    torch.testing.assert_close(cpu_kernels.kernel("silu_mul")(gu), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_matches_gathered_softmax_attention(dtype):
    torch.manual_seed(1)
    hkv, h, d, slots_total = 2, 6, 16, 400
    kc = torch.randn(hkv, slots_total, d).to(dtype)
    vc = torch.randn(hkv, slots_total, d).to(dtype)
    lens = [1, 37, 120, 64, 65, 300]  # one span of 64 positions, parts of spans, several spans
    slots = torch.zeros(len(lens), max(lens), dtype=torch.long)
    for b, n in enumerate(lens):  # scattered slot lists, as block tables give
        slots[b, :n] = torch.randperm(slots_total - 1)[:n] + 1
    q = torch.randn(len(lens), h, d)
    got = cpu_kernels.kernel("paged_decode")(q, kc, vc, slots, torch.tensor(lens))
    for b, n in enumerate(lens):
        k = kc[:, slots[b, :n]].float()  # (Hkv, n, d)
        v = vc[:, slots[b, :n]].float()
        qg = q[b].view(hkv, h // hkv, d)
        p = torch.softmax(qg @ k.transpose(1, 2) / d**0.5, dim=-1)
        torch.testing.assert_close(got[b], (p @ v).reshape(h, d), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="length out of range"):
        cpu_kernels.kernel("paged_decode")(q, kc, vc, slots, torch.tensor([0, 1, 1, 1, 1, 1]))


@pytest.fixture(scope="module")
def models():
    ref, tok = hub.load("smollm2-135m-instruct", device="cpu")
    fused, _ = hub.load("smollm2-135m-instruct", device="cpu", quantize="none")
    return ref, fused, tok


def test_fused_model_computes_the_reference_logits(models):
    ref, fused, tok = models
    assert all(isinstance(b, FusedBlock) for b in fused.layers) and isinstance(fused.norm, FastRMSNorm)
    ids = torch.tensor([tok.encode("The three primary colours are red, yellow and blue.")])
    with torch.no_grad():
        want, got = ref(ids), fused(ids)
        # token by token through a contiguous cache: the few-row kernels on every op
        cache = fused.new_cache(1, 64)
        steps = torch.cat([fused(ids[:, i : i + 1], i, cache) for i in range(ids.shape[1])], 1)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * scale)
    torch.testing.assert_close(steps, want, rtol=0, atol=1e-4 * scale)


def test_fusion_falls_back_to_pytorch_under_autograd():
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=96)
    model = hub.random_model(args, dtype=torch.float32, device=torch.device("cpu"))
    ids = torch.randint(0, 128, (2, 9))
    want = model(ids)
    fused = fuse_model(model)
    got = fused(ids)  # grad enabled: PyTorch ops, differentiable
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert fused.layers[0].attention.wqkv.weight.grad is None  # weights are frozen copies
    assert fused.layers[0].attention_norm.weight.grad is not None


@pytest.mark.parametrize(("mode", "kv"), [("none", "auto"), ("int4", "auto"), ("none", "bfloat16")])
def test_one_call_stack_and_block_are_bit_identical_to_the_per_op_path(mode, kv):
    model, tok = hub.load("smollm2-135m-instruct", device="cpu", quantize=mode)
    prompts = [tok.encode(p) for p in ("Water boils at", "The quick brown fox jumps over", "def f(x):")]
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=2, ignore_eos=True)

    def run():
        engine = LLMEngine(model, tok, EngineConfig(num_blocks=64, kv_cache_dtype=kv))
        ids = [engine.add_request(None, p, params) for p in prompts]
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0]
        return [(done[i].token_ids, done[i].logprobs) for i in ids]

    stacks = []
    stack = model.layers._kernel
    model.layers._kernel = lambda *a: stacks.append(1) or stack(*a)
    whole_model = run()
    assert len(stacks) >= 10  # decode steps ran every block in one call
    model.layers = Blocks(model.layers)  # the same fused blocks, one at a time
    calls = []
    kernel = model.layers[0]._kernel
    model.layers[0]._kernel = lambda *a: calls.append(1) or kernel(*a)
    with_kernel = run()
    assert len(calls) >= 10  # the decode steps took the one-call block
    assert with_kernel == whole_model
    for block in model.layers:
        block._kernel = None
    assert run() == with_kernel


# ---- the plan, the cache contract, the order of the swaps (a tiny model) ----------------------

TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, hidden_dim=128)
MODES = ["none", "bf16", "int8", "int4"]


def tiny() -> Transformer:
    """Random weights, the Llama 3 vocabulary (so the engine runs it with the real tokenizer)."""
    return hub.random_model(TINY, dtype=torch.float32, device=torch.device("cpu"), seed=5)


def decode(model: Transformer, kv: str = "auto") -> list:
    """Greedy tokens and logprobs of three prompts batched through the engine."""
    engine = LLMEngine(model, Llama3Tokenizer.default(), EngineConfig(num_blocks=32, kv_cache_dtype=kv))
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=2, ignore_eos=True)
    ids = [engine.add_request(None, [128000, *range(1000 + 7 * n, 1000 + 8 * n)], params) for n in (3, 9, 20)]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0]
    return [(done[i].token_ids, done[i].logprobs) for i in ids]


def same_model(a: nn.Module, b: nn.Module) -> bool:
    """The same modules by name and type, and the same state, bit for bit."""
    if [(n, type(m)) for n, m in a.named_modules()] != [(n, type(m)) for n, m in b.named_modules()]:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("mode", MODES)
def test_layer_plan_round_trips_through_the_cpp_struct(mode):
    block = quantize_model(fuse_model(tiny()), mode).layers[1]
    plan = block.plan()
    assert [p.format for p in (plan.wqkv, plan.wo, plan.w13, plan.w2)] == [{"int8": 1, "int4": 2}.get(mode, 0)] * 4
    assert plan.native() is plan.native()  # converted once
    back = LayerPlan.from_native(plan.native())
    assert (back.eps, back.n_heads, back.n_kv_heads) == (plan.eps, 4, 2)
    for name in ("attention_norm", "ffn_norm", "wqkv", "wo", "w13", "w2"):
        want, got = getattr(plan, name), getattr(back, name)
        if isinstance(want, Projection):
            assert isinstance(got, Projection) and got.format == want.format
            want, got = want[1:], got[1:]
        for w, g in zip(want if isinstance(want, tuple) else [want], got if isinstance(got, tuple) else [got]):
            assert g.data_ptr() == w.data_ptr() and torch.equal(g, w)  # the same tensors, not copies
    with pytest.raises(ValueError, match="unknown format 7"):
        dataclasses.replace(plan, wo=Projection(7, *plan.wo[1:]))
    with pytest.raises(ValueError, match="w2: format 1 takes contiguous int8"):
        dataclasses.replace(plan, w2=Projection(1, plan.w2.weight.float(), plan.w2.scales)).native()


@pytest.mark.parametrize("kv", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_decode_layer_is_its_kernels_in_order(mode, kv):
    """The one-call block against its ops called one by one: the same bits, K / V included."""
    ops = cpu_kernels.ops_for("cpu")
    plan = quantize_model(fuse_model(tiny()), mode).layers[0].plan()
    torch.manual_seed(2)
    x, lens = torch.randn(3, 64), torch.tensor([5, 17, 40])
    slots = torch.stack([torch.randperm(63)[:40] + 1 for _ in lens])  # (3, 40) in a cache of 64 slots
    slot_mapping = slots[torch.arange(3), lens - 1].contiguous()
    cos, sin = rope_cos_sin(rope_frequencies(16, 500000.0, None), lens - 1)
    kc, vc = torch.randn(2, 64, 16).to(kv), torch.randn(2, 64, 16).to(kv)

    def proj(p: Projection, a: torch.Tensor) -> torch.Tensor:
        return ops.dense_mm(a, p.weight) if p.format == 0 else (ops.int8_mm, ops.int4_mm)[p.format - 1](a, p.weight, p.scales)

    want_k, want_v = kc.clone(), vc.clone()
    qkv = proj(plan.wqkv, ops.rms_norm(x, plan.attention_norm, plan.eps)).view(3, 8, 16)
    q, k = ops.rope(qkv[:, :4], cos, sin), ops.rope(qkv[:, 4:6], cos, sin)
    want_k[:, slot_mapping], want_v[:, slot_mapping] = k.transpose(0, 1).to(kv), qkv[:, 6:].transpose(0, 1).to(kv)
    h = proj(plan.wo, ops.paged_decode(q, want_k, want_v, slots, lens).view(3, 64)) + x
    want = h + proj(plan.w2, ops.silu_mul(proj(plan.w13, ops.rms_norm(h, plan.ffn_norm, plan.eps))))
    got_k, got_v = kc.clone(), vc.clone()
    got = ops.decode_layer(x, plan.native(), cos, sin, got_k, got_v, slot_mapping, slots, lens)
    assert torch.equal(got, want) and torch.equal(got_k, want_k) and torch.equal(got_v, want_v)


def test_the_paged_cache_is_the_declared_decode_cache():
    model = fuse_model(tiny())
    cache = PagedKVCache(model, num_blocks=4, block_size=16)
    assert isinstance(cache, DecodeCache) and isinstance(cache, Cache)
    assert cache.decode_step() is None  # no step prepared yet
    contiguous = model.new_cache(1, 16)  # the reference cache: attend only
    assert isinstance(contiguous, Cache) and not isinstance(contiguous, DecodeCache)
    assert isinstance(model.layers, FusedStack) and not hasattr(Transformer, "decode_stack")


@pytest.mark.parametrize("mode", MODES)
def test_fusing_and_quantizing_commute(mode):
    fused_first = quantize_model(fuse_model(tiny()), mode)
    quantized_first = fuse_model(quantize_model(tiny(), mode))
    by_block = tiny()  # as hub.load does: each block fused and quantized once loaded, then the rest
    for i, block in enumerate(by_block.layers):
        by_block.layers[i] = quantize_model(FusedBlock(block), mode)
    quantize_model(fuse_model(by_block), mode)
    assert same_model(fused_first, quantized_first) and same_model(fused_first, by_block)
    assert decode(fused_first) == decode(quantized_first) == decode(by_block)


def test_plans_follow_projections_swapped_after_first_use():
    model = fuse_model(tiny())
    decode(model)  # nn.Linear projections: no kernels, no plans, block by block
    quantize_model(model, "int8")  # nothing to reset
    calls = []
    kernel = model.layers._kernel
    model.layers._kernel = lambda *a: calls.append(1) or kernel(*a)
    assert decode(model) == decode(quantize_model(fuse_model(tiny()), "int8"))
    assert len(calls) >= 5  # the decode steps ran the stack on the int8 plans
    # a projection swapped by hand is picked up as well
    new = DenseLinear(torch.zeros(64, 128))
    model.layers[1].feed_forward.w2 = new
    assert LayerPlan.from_native(model.layers.native_plans()[1]).w2.weight.data_ptr() == new.weight.data_ptr()


def test_swaps_that_cannot_compose_fail_clearly():
    model = quantize_model(fuse_model(tiny()), "int8")
    with pytest.raises(HerdError, match="already quantized as 'int8', not 'int4'"):
        quantize_model(model, "int4")
    quantize_model(model, "int8")  # the same mode again: nothing left to swap
    with pytest.raises(HerdError, match="different kinds"):
        concat_rows(nn.Linear(4, 4, bias=False), DenseLinear(torch.zeros(4, 4)))
