"""LoRA / QLoRA (herd/model/lora.py) against peft on the Hugging Face LlamaForCausalLM of the same
tiny random checkpoint, fp32.

Tolerance: logits within 1e-5. On tied_gqa (logits up to ~80) herd's base model and transformers'
already differ by ~3e-5 without any adapter (herd keeps RoPE tables and RMSNorm in fp32: the gap
stays even in fp64), so there the bound is twice that measured base gap: the adapter adds no
error of its own. The effective weights (base + delta, q/k rows permuted) are compared to peft's
merge to 1e-6 as well, and every comparison checks the adapter moves the logits far more than
the tolerance.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import build_hf
from torch import nn

from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.model.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    disable_lora,
    load_peft_adapter,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    merged_state_dict,
    normalize_targets,
    read_peft_config,
    save_peft_adapter,
    strip_lora,
    unmerge_lora,
)
from herd.model.quantize import Int4Linear, Int8Linear, quantize_model
from herd.model.weights import load_model, save_hf

CONFIGS = ["gqa_scaled", "tied_gqa"]  # GQA (k heads != q heads); tied + head_dim != dim / heads


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """name -> directory of a tiny random HF checkpoint (its own, not the shared fixture's: peft
    injects its layers into the model it is given)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"lora_{name}")
            build_hf(name, seed=3).save_pretrained(out)
            cache[name] = out
        return cache[name]

    return get


def hf_model(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def tokens(vocab: int, t: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(seed))


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, Transformer):
            return model(x)
        return model(input_ids=x, use_cache=False).logits.float()


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    diff = (got - want).abs().max().item()
    assert diff <= tol, f"max diff {diff:.3g} > {tol:.3g}"


def peft_tolerance(herd_base: torch.Tensor, hf_base: torch.Tensor) -> float:
    """1e-5, or twice the base models' own difference where that is larger (see the docstring)."""
    return max(1e-5, 2 * (herd_base - hf_base).abs().max().item())


def randomize_lora(model: nn.Module, seed: int = 7, scale: float = 0.1) -> None:
    """A and B random and large enough that the adapter moves the logits by O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) / math.sqrt(layer.in_features))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale / math.sqrt(layer.rank))


# ---- the layer and the swap ---------------------------------------------------------------------


def test_fresh_adapter_changes_nothing(checkpoint):
    path = checkpoint("gqa_scaled")
    model = load_model(path)
    x = tokens(model.args.vocab_size)
    want = logits(model, x)
    config = LoRAConfig()
    assert (config.rank, config.alpha, config.dropout) == (8, 16, 0.0)
    assert config.targets == ("q", "k", "v", "o", "gate", "up", "down")
    assert apply_lora(model, config) is model
    layers = lora_layers(model)
    assert len(layers) == 7 * model.args.n_layers
    for layer in layers.values():
        assert torch.count_nonzero(layer.lora_B) == 0
        bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)) on (rank, in)
        assert 0.5 * bound < layer.lora_A.abs().max().item() <= bound
        assert layer.scaling == 2.0
    assert torch.equal(logits(model, x), want)


def test_only_lora_parameters_train(checkpoint):
    model = load_model(checkpoint("gqa_scaled"))
    apply_lora(model, LoRAConfig(rank=4, targets=("q_proj", "v_proj", "down")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and len(trainable) == 2 * 3 * model.args.n_layers
    assert {id(p) for p in lora_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}
    model.train()
    x = tokens(model.args.vocab_size)
    out = model(x)
    F.cross_entropy(out[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None
            if name.endswith("lora_B"):  # A's gradient is B^T(...): zero while B is
                assert p.grad.abs().sum() > 0
        else:
            assert p.grad is None, name


def test_targets_by_any_name_and_unknown_ones_refused():
    assert LoRAConfig(targets=["q_proj", "wk", "gate", "q"]).targets == ("q", "k", "gate")
    assert normalize_targets("down_proj, up ,o") == ("o", "up", "down")
    assert normalize_targets("all-linear") == LoRAConfig().targets
    with pytest.raises(HerdError) as e:
        LoRAConfig(targets=("q", "lm_head"))
    msg = str(e.value)
    assert "'lm_head'" in msg
    assert all(n in msg for n in ("q, k, v, o, gate, up, down", "q_proj", "gate_proj", "down_proj"))
    with pytest.raises(HerdError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(HerdError, match="dropout"):
        LoRAConfig(dropout=1.0)


def test_refuses_fused_and_twice_applied_models():
    from herd.config import ModelArgs
    from herd.model.fused import fuse_model

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64)
    with pytest.raises(HerdError, match="fused"):
        apply_lora(fuse_model(Transformer(args)), LoRAConfig())
    model = apply_lora(Transformer(args), LoRAConfig())
    with pytest.raises(HerdError, match="already"):
        apply_lora(model, LoRAConfig())


# ---- PEFT format against peft ------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_herd_adapter_gives_peft_logits(checkpoint, tmp_path, name):
    from peft import PeftModel
    from safetensors.torch import load_file

    path = checkpoint(name)
    model = load_model(path)
    x = tokens(model.args.vocab_size)
    base = logits(model, x)
    config = LoRAConfig(rank=4, alpha=12, dropout=0.1)
    apply_lora(model, config)
    randomize_lora(model)
    got = logits(model.eval(), x)
    assert (got - base).abs().max().item() > 0.1  # the adapter matters (q/k rows included)

    out = save_peft_adapter(model, config, tmp_path / "adapter", str(path))
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["bias"]) == \
        ("LORA", "CAUSAL_LM", 4, 12, 0.1, "none")
    assert cfg["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert cfg["base_model_name_or_path"] == str(path)
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]  # no temporaries left

    hf = hf_model(path)
    tol = peft_tolerance(base, logits(hf, x))
    peft_model = PeftModel.from_pretrained(hf, out).eval()
    assert_close(got, logits(peft_model, x), tol)
    with disable_lora(model):  # the base model again, without a second copy
        assert torch.equal(logits(model, x), base)

    # herd's merged export (HF layout) is peft's merge_and_unload, weight for weight
    save_hf(merged_state_dict(model), model.args, tmp_path / "merged")
    ours = load_file(tmp_path / "merged" / "model.safetensors")
    theirs = peft_model.merge_and_unload().state_dict()
    assert ours.keys() <= theirs.keys() and "model.layers.1.self_attn.k_proj.weight" in ours
    for key, t in ours.items():
        assert (t - theirs[key]).abs().max().item() <= 1e-6, key


@pytest.mark.parametrize("name", CONFIGS)
def test_peft_adapter_gives_peft_logits_in_herd(checkpoint, tmp_path, name):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    path = checkpoint(name)
    peft_model = get_peft_model(hf_model(path), LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05,
                                                           target_modules=["k_proj", "q_proj", "o_proj", "up_proj"]))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "lora_B" in n else 1) / math.sqrt(p.shape[1]))
    peft_model.eval()
    peft_model.save_pretrained(tmp_path / "peft")
    with peft_model.disable_adapter():
        hf_base = logits(peft_model, x := tokens(peft_model.config.vocab_size))

    config = read_peft_config(tmp_path / "peft")
    assert (config.rank, config.alpha, config.dropout, config.targets) == (4, 16, 0.05, ("q", "k", "o", "up"))
    model = load_model(path)
    base = logits(model, x)
    assert load_peft_adapter(model, tmp_path / "peft") is model
    got = logits(model, x)
    assert (got - base).abs().max().item() > 0.1
    assert_close(got, logits(peft_model, x), peft_tolerance(base, hf_base))

    # saving it again gives peft's file back, tensor for tensor (the q/k row permutation inverts)
    save_peft_adapter(model, config, tmp_path / "again", str(path))
    theirs, ours = load_file(tmp_path / "peft" / ADAPTER_WEIGHTS), load_file(tmp_path / "again" / ADAPTER_WEIGHTS)
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_bad_adapters_are_refused(checkpoint, tmp_path):
    path = checkpoint("gqa_scaled")
    model = load_model(path)
    config = LoRAConfig(rank=2, targets=("q",))
    apply_lora(model, config)
    adapter = save_peft_adapter(model, config, tmp_path / "a", None)
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(HerdError, match="use_dora"):
        load_peft_adapter(load_model(path), adapter)
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    other = load_model(path)
    apply_lora(other, LoRAConfig(rank=4, targets=("q",)))
    with pytest.raises(HerdError, match="do not match"):
        load_peft_adapter(other, adapter)
    with pytest.raises(HerdError, match="config says"):
        save_peft_adapter(model, LoRAConfig(rank=2), tmp_path / "b", None)
    with pytest.raises(HerdError, match="file not found"):
        load_peft_adapter(load_model(path), tmp_path / "missing")


# ---- merging ------------------------------------------------------------------------------------


def test_merge_unmerge_and_strip(checkpoint, tmp_path):
    path = checkpoint("gqa_scaled")
    model = load_model(path)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    x = tokens(model.args.vocab_size)
    apply_lora(model, LoRAConfig(rank=4, alpha=8))
    randomize_lora(model)
    unmerged = logits(model, x)
    wq = model.layers[0].attention.wq
    expected = wq.merged_weight()

    assert merge_lora(model) is model
    assert all(layer.merged for layer in lora_layers(model).values())
    assert torch.equal(wq.base.weight, expected) or (wq.base.weight - expected).abs().max() < 1e-6
    assert (wq.base.weight - original["layers.0.attention.wq.weight"]).abs().max() > 1e-2
    assert torch.equal(wq.merged_weight(), wq.base.weight)  # not added twice
    assert_close(logits(model, x), unmerged)
    merge_lora(model)  # merging twice is a no-op
    assert_close(logits(model, x), unmerged)

    unmerge_lora(model)
    for name, layer in lora_layers(model).items():
        assert (layer.base.weight - original[f"{name}.weight"]).abs().max().item() <= 1e-6
    assert_close(logits(model, x), unmerged)

    strip_lora(model)  # merges, then unwraps: the plain model with its own parameter names
    assert not lora_layers(model) and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(original)
    assert_close(logits(model, x), unmerged)
    save_hf(model, model.args, tmp_path / "merged")
    assert_close(logits(load_model(tmp_path / "merged"), x), unmerged)


# ---- QLoRA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "kind"), [("int8", Int8Linear), ("int4", Int4Linear)])
def test_qlora_over_quantized_bases(checkpoint, mode, kind):
    model = quantize_model(load_model(checkpoint("gqa_scaled")), mode)
    apply_lora(model, LoRAConfig(rank=4, alpha=8))
    randomize_lora(model)
    layers = lora_layers(model)
    assert layers and all(isinstance(layer.base, kind) and layer.quantized for layer in layers.values())

    layer = model.layers[1].feed_forward.w2
    xs = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(2))
    w = layer.base.dequantize(torch.float32)
    delta = layer.scaling * (layer.lora_B @ layer.lora_A)
    want = F.linear(xs, w) + F.linear(xs, delta)
    assert_close(layer(xs), want)  # with autograd: the dense path
    with torch.no_grad():  # herd's kernels may run the base: the same base output plus the delta
        assert_close(layer(xs), layer.base(xs) + F.linear(xs, delta))
    assert (layer.merged_weight() - (w + delta)).abs().max().item() <= 1e-6

    # gradients reach A and B only: the base is buffers, everything else frozen
    assert not list(layer.base.parameters())
    model.train()
    x = tokens(model.args.vocab_size)
    out = model(x)
    F.cross_entropy(out[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(not b.requires_grad and b.grad is None for b in model.buffers())

    # a quantized base cannot take the delta; the export is the dequantized base plus it
    with pytest.raises(HerdError, match="quantized"):
        layer.merge()
    with pytest.raises(HerdError, match="merged_state_dict"):
        strip_lora(model)
    model.eval()
    with torch.enable_grad():  # the dense path on both sides
        want_logits = model(x).detach()
    plain = Transformer(model.args)
    plain.load_state_dict(merged_state_dict(model))
    assert_close(logits(plain, x), want_logits)


def test_merged_state_dict_of_a_quantized_tied_model(checkpoint):
    model = load_model(checkpoint("tied_gqa"))
    embeddings = model.tok_embeddings.weight.detach().clone()
    quantize_model(model, "int8")  # the tied head becomes an int8 copy; the lookup stays fp32
    apply_lora(model, LoRAConfig(rank=2, targets=("v", "down")))
    sd = merged_state_dict(model)
    assert torch.equal(sd["tok_embeddings.weight"], embeddings)
    assert sd["output.weight"] is sd["tok_embeddings.weight"]
    assert sd["layers.0.attention.wq.weight"].dtype == torch.float32
    assert torch.equal(sd["layers.0.feed_forward.w2.weight"], model.layers[0].feed_forward.w2.base.dequantize())
    assert not any(k.endswith(("lora_A", "lora_B", "scales", ".base.weight")) for k in sd)
