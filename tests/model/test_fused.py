"""Fused decode modules and herd's fused CPU kernels against the PyTorch reference ops.

Kernel vs PyTorch: the same arithmetic in another order, so fp32 tolerances of ~1e-5
relative. The one-call block (`decode_layer`) runs the very kernels of the per-op path in the
same order, so there the test asks for bit-identical results.
"""
import pytest
import torch
import torch.nn.functional as F

from herd import hub
from herd.config import EngineConfig, ModelArgs
from herd.engine.engine import LLMEngine
from herd.engine.request import SamplingParams
from herd.model import cpu_kernels
from herd.model.fused import FastRMSNorm, FusedBlock, fuse_model
from herd.model.llama import RMSNorm, apply_rope, rope_cos_sin, rope_frequencies

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
    stack = model.decode_stack
    model.decode_stack = lambda *a: stacks.append(1) or stack(*a)
    whole_model = run()
    assert len(stacks) >= 10 and stack._flat  # decode steps ran every block in one call
    model.decode_stack = None
    calls = []
    kernel = model.layers[0]._layer
    model.layers[0]._layer = lambda *a: calls.append(1) or kernel(*a)
    with_kernel = run()
    assert len(calls) >= 10  # the decode steps took the one-call block
    assert with_kernel == whole_model
    for block in model.layers:
        block._layer = None
    assert run() == with_kernel
