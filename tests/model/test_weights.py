"""Checkpoint loading/saving against transformers' LlamaForCausalLM as the reference."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from modelkit import HF_CONFIGS, build_hf, transformers_from_gguf, write_gguf

from herd.config import ModelArgs, RopeScaling
from herd.errors import HerdError
from herd.model import weights
from herd.model.gguf import open_gguf
from herd.model.llama import Transformer
from herd.model.weights import (
    detect_layout,
    hf_to_meta_qk,
    load_gguf,
    load_hf,
    load_meta,
    load_model,
    meta_to_hf_qk,
    save_hf,
    save_meta,
)

TOL = 1e-4


def tokens(vocab: int, t: int, seed: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, t), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, toks: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(toks, use_cache=False, **kw).logits.float()


def ours(model: Transformer, toks: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(toks, **kw)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- Hugging Face layout vs transformers --------------------------------------------------


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_hf_logits_match_transformers(hf_checkpoint, name):
    ref, path = hf_checkpoint(name)
    model = load_model(path)
    x = tokens(ref.config.vocab_size, 100)  # past original_max_position_embeddings (64 / 32)
    want = hf_logits(ref, x)
    assert want.std() > 0.5  # logits are not trivially small
    assert max_diff(ours(model, x), want) < TOL


def test_hf_args(hf_checkpoint):
    args = load_model(hf_checkpoint("head_dim")[1]).args
    assert (args.dim, args.n_heads, args.kv_heads, args.hd, args.ffn_dim) == (64, 4, 2, 32, 96)
    assert args.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 32) and args.rope_theta == 10000.0
    assert load_model(hf_checkpoint("tied")[1]).args.tie_embeddings
    assert not args.tie_embeddings


def test_qk_permutation_matters(hf_checkpoint):
    """Loading HF q/k rows without undoing the rotate_half order must give wrong logits."""
    ref, path = hf_checkpoint("gqa_scaled")
    model = load_model(path)
    x = tokens(ref.config.vocab_size, 32)
    good = ours(model, x)
    args = model.args
    with torch.no_grad():
        for layer in model.layers:
            a = layer.attention
            a.wq.weight.copy_(meta_to_hf_qk(a.wq.weight, args.n_heads, args.hd))
            a.wk.weight.copy_(meta_to_hf_qk(a.wk.weight, args.kv_heads, args.hd))
    assert max_diff(ours(model, x), hf_logits(ref, x)) > 100 * TOL
    assert max_diff(good, hf_logits(ref, x)) < TOL


def test_permutation_inverse():
    w = torch.randn(6 * 8, 5)
    assert torch.equal(meta_to_hf_qk(hf_to_meta_qk(w, 6, 8), 6, 8), w)
    assert not torch.equal(hf_to_meta_qk(w, 6, 8), w)


def test_positions_beyond_8192(hf_checkpoint):
    """RoPE with llama3 scaling at positions > 8192: full prefill, KV-cache decode, start_pos."""
    ref, path = hf_checkpoint("gqa_scaled")
    model = load_model(path)
    x = tokens(ref.config.vocab_size, 8300, batch=1)
    want = hf_logits(ref, x)
    assert max_diff(ours(model, x), want) < TOL  # all 8300 positions
    # prefill 8290 tokens into the cache, then decode one token at a time up to 8300
    cache = model.new_cache(1, 8300)
    got = [ours(model, x[:, :8290], cache=cache, last_only=True)]
    for pos in range(8290, 8300):
        got.append(ours(model, x[:, pos : pos + 1], start_pos=pos, cache=cache))
    assert max_diff(torch.cat(got, 1), want[:, 8289:]) < TOL
    # no cache: a chunk placed at positions 9000.. (HF via position_ids)
    y = x[:, :40]
    pos = torch.arange(9000, 9040)[None]
    assert max_diff(ours(model, y, start_pos=9000), hf_logits(ref, y, position_ids=pos)) < TOL


# ---- round trips and the Meta layout ----------------------------------------------------------


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, t in a.items():
        assert t.dtype == b[k].dtype and torch.equal(t, b[k]), k


@pytest.mark.parametrize("name", ["gqa_scaled", "tied_gqa"])
def test_meta_two_shards_match_hf(hf_checkpoint, tmp_path, name):
    ref, path = hf_checkpoint(name)
    args, sd = load_hf(path)
    save_meta(sd, args, tmp_path, mp=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    shard0 = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    assert shard0["layers.0.attention.wq.weight"].shape[0] == sd["layers.0.attention.wq.weight"].shape[0] // 2
    assert shard0["layers.0.attention.wo.weight"].shape[1] == sd["layers.0.attention.wo.weight"].shape[1] // 2
    assert shard0["layers.0.feed_forward.w2.weight"].shape[1] == args.ffn_dim // 2
    assert shard0["tok_embeddings.weight"].shape[0] == args.vocab_size // 2
    assert shard0["norm.weight"].shape == (args.dim,)
    assert detect_layout(tmp_path) == "meta"
    args2, sd2 = load_meta(tmp_path)
    assert args2 == args.replace(max_seq_len=args2.max_seq_len)  # a runtime argument for Meta
    assert_same_state(sd2, sd)
    x = tokens(ref.config.vocab_size, 70)
    assert max_diff(ours(load_model(tmp_path), x), hf_logits(ref, x)) < TOL


@pytest.mark.parametrize("mp", [1, 2])
def test_meta_roundtrip_exact_bf16(hf_checkpoint, tmp_path, mp):
    args, sd = load_hf(hf_checkpoint("head_dim")[1])
    save_meta(sd, args, tmp_path, mp=mp, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "params.json").read_text())["head_dim"] == 32
    args2, sd2 = load_meta(tmp_path)
    assert args2 == args.replace(max_seq_len=args2.max_seq_len)  # a runtime argument for Meta
    assert_same_state(sd2, {k: v.to(torch.bfloat16) for k, v in sd.items()})


def test_hf_roundtrip_exact_and_transformers_reads_it(hf_checkpoint, tmp_path):
    ref, path = hf_checkpoint("gqa_scaled")
    args, sd = load_hf(path)
    save_hf(sd, args, tmp_path)
    args2, sd2 = load_hf(tmp_path)
    assert args2 == args
    assert_same_state(sd2, sd)
    from transformers import LlamaForCausalLM

    back = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = tokens(ref.config.vocab_size, 70)
    assert torch.equal(hf_logits(back, x), hf_logits(ref, x))  # identical weights and config


def test_save_hf_sharded_tied_model(hf_checkpoint, tmp_path):
    """save_hf from a model object, over several shards with an index; transformers agrees."""
    ref, path = hf_checkpoint("tied_gqa")
    model = load_model(path)
    save_hf(model, model.args, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and "lm_head.weight" not in index["weight_map"]
    assert_same_state(load_hf(tmp_path)[1], load_hf(path)[1])
    from transformers import LlamaForCausalLM

    back = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = tokens(ref.config.vocab_size, 30)
    assert torch.equal(hf_logits(back, x), hf_logits(ref, x))


def test_transformers_sharded_checkpoint_loads(hf_checkpoint, tmp_path):
    ref, _ = hf_checkpoint("gqa_scaled")
    ref.save_pretrained(tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    x = tokens(ref.config.vocab_size, 40)
    assert max_diff(ours(load_model(tmp_path), x), hf_logits(ref, x)) < TOL


def test_load_model_dtype_device_and_tying(hf_checkpoint):
    _, path = hf_checkpoint("tied")
    model = load_model(path, dtype=torch.bfloat16, max_seq_len=512)
    assert model.args.max_seq_len == 512
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    assert model.output.weight is model.tok_embeddings.weight
    assert model(tokens(256, 5)).dtype == torch.float32


def test_load_model_builds_on_meta_device(hf_checkpoint, monkeypatch):
    """The Transformer is constructed on `meta` (no second full copy, no random init)."""
    seen = []

    class Spy(Transformer):
        def __init__(self, args):
            seen.append(torch.empty(()).device.type)
            super().__init__(args)

    monkeypatch.setattr(weights, "Transformer", Spy)
    model = load_model(hf_checkpoint("tied")[1])
    assert seen and set(seen) == {"meta"}
    assert not any(p.is_meta for p in model.parameters())
    assert not model.rope_freqs(torch.device("cpu")).is_meta


# ---- GGUF -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_pair(smollm2_gguf):
    return load_model(smollm2_gguf), transformers_from_gguf(smollm2_gguf)


def test_smollm2_args(smollm2_pair):
    args = smollm2_pair[0].args
    assert (args.dim, args.n_layers, args.n_heads, args.kv_heads, args.hd) == (576, 30, 9, 3, 64)
    assert args.rope_theta == 1e5 and args.tie_embeddings and args.rope_scaling is None
    assert (args.vocab_size, args.ffn_dim, args.max_seq_len) == (49152, 1536, 8192)


def test_smollm2_logits_match_transformers(smollm2_pair):
    model, ref = smollm2_pair
    x = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30, 2]])
    got, want = ours(model, x), hf_logits(ref, x)
    assert want.abs().max() > 10
    assert max_diff(got, want) < 1e-3


def test_smollm2_tensors_equal_transformers_dequantization(smollm2_pair):
    """Q8_0 embedding, Q4_1 matrices, F32 norms: same numbers as transformers' dequantization."""
    model, ref = smollm2_pair
    a = model.args
    r = ref.model.layers[3]
    assert torch.equal(model.tok_embeddings.weight, ref.model.embed_tokens.weight)
    assert torch.equal(model.layers[3].attention.wq.weight, hf_to_meta_qk(r.self_attn.q_proj.weight, a.n_heads, a.hd))
    assert torch.equal(model.layers[3].attention.wk.weight, hf_to_meta_qk(r.self_attn.k_proj.weight, a.kv_heads, a.hd))
    assert torch.equal(model.layers[3].feed_forward.w2.weight, r.mlp.down_proj.weight)
    assert torch.equal(model.layers[3].ffn_norm.weight, r.post_attention_layernorm.weight)
    assert set(ref.gguf_tensor_types.values()) == {"F32", "Q8_0", "Q4_1"}


def test_gguf_qk_are_meta_order(tmp_path):
    """An F32 GGUF written the llama.cpp way loads to the source model's logits (ours and transformers')."""
    ref = build_hf("tied_gqa")
    path = write_gguf(tmp_path / "m.gguf", ref)
    x = tokens(ref.config.vocab_size, 40)
    want = hf_logits(ref, x)
    assert max_diff(ours(load_model(path), x), want) < TOL
    assert max_diff(hf_logits(transformers_from_gguf(path), x), want) < TOL
    # the same file without llama.cpp's q/k permutation does not reproduce the model
    bad = write_gguf(tmp_path / "bad.gguf", ref, permute=False)
    assert max_diff(ours(load_model(bad), x), want) > 100 * TOL


QTYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"]


@pytest.mark.parametrize("qtype", QTYPES)
def test_gguf_quant_types_match_transformers(qtype, tmp_path):
    from gguf import GGMLQuantizationType as Q

    # K-quants need rows that are multiples of 256: dim 256 model, everything in that type
    ref = build_hf("tied_gqa", seed=3) if not qtype.endswith("_K") else _dim256_model()
    q = Q[qtype]
    path = write_gguf(tmp_path / f"{qtype}.gguf", ref, {"attn": q, "ffn": q, "token_embd": q})
    from gguf import GGUFReader

    assert {t.tensor_type.name for t in GGUFReader(path).tensors} == {"F32", qtype}
    _, sd = load_gguf(path)
    want = transformers_from_gguf(path)
    assert torch.equal(sd["layers.1.feed_forward.w1.weight"], want.model.layers[1].mlp.gate_proj.weight)
    x = tokens(ref.config.vocab_size, 24)
    assert max_diff(ours(load_model(path), x), hf_logits(want, x)) < TOL


def _dim256_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
                      vocab_size=256, num_hidden_layers=2, tie_word_embeddings=True, rope_theta=10000.0)
    return LlamaForCausalLM(cfg).eval()


def test_gguf_rope_freqs_tensor_gives_llama3_scaling(tmp_path):
    """llama.cpp stores Llama 3.1 RoPE scaling as a rope_freqs tensor of per-frequency divisors."""
    ref = build_hf("gqa_scaled")
    hd, theta, rs = 16, 10000.0, ref.config.rope_parameters
    freqs = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    factors = []
    for f in freqs:  # as llama.cpp's convert_hf_to_gguf.py computes them
        wl, old = 2 * np.pi / f, rs["original_max_position_embeddings"]
        if wl < old / rs["high_freq_factor"]:
            factors.append(1.0)
        elif wl > old / rs["low_freq_factor"]:
            factors.append(rs["factor"])
        else:
            s = (old / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
            factors.append(1 / ((1 - s) / rs["factor"] + s))
    path = write_gguf(tmp_path / "scaled.gguf", ref, rope_freqs=np.array(factors))
    model = load_model(path)
    assert model.args.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
    x = tokens(ref.config.vocab_size, 100)
    assert max_diff(ours(model, x), hf_logits(ref, x)) < TOL
    # Llama 3.1's constants (factor 8, bands 1 and 4 over 8192) and 3.2's factor 32, head_dim 128
    from herd.model.gguf import _scaling_from_factors
    from herd.model.llama import rope_frequencies

    for rs31 in (RopeScaling(), RopeScaling(factor=32.0)):
        f = (rope_frequencies(128, 5e5, None) / rope_frequencies(128, 5e5, rs31)).numpy()
        assert _scaling_from_factors(f, 128, 5e5, Path("x")) == rs31


# ---- errors --------------------------------------------------------------------------------


def test_missing_paths(tmp_path):
    with pytest.raises(HerdError, match="nope"):
        load_model(tmp_path / "nope")
    with pytest.raises(HerdError, match=str(tmp_path)):
        detect_layout(tmp_path)  # an empty directory
    (tmp_path / "config.json").write_text(json.dumps(ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=32).to_hf_config()))
    with pytest.raises(HerdError, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(HerdError, match="x.gguf"):
        open_gguf(tmp_path / "x.gguf")


def test_gguf_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", build_hf("tied"), arch="gpt2")
    with pytest.raises(HerdError, match=r"gpt2\.gguf.*architecture 'gpt2'"):
        load_model(path)


def test_gguf_unsupported_quant_type(tmp_path):
    import gguf
    from gguf import GGMLQuantizationType as Q

    ref = _dim256_model()
    path = tmp_path / "q8k.gguf"
    write_gguf(path, ref, {"ffn_down": Q.Q4_K})
    # rewrite the same tensor table with a type gguf-py cannot dequantize (Q8_K: 292-byte blocks)
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for field in gguf.GGUFReader(path).fields.values():
        if field.name.startswith("llama."):
            w.add_key_value(field.name, field.contents(), field.types[0])
    for t in gguf.GGUFReader(path).tensors:
        if t.name.endswith("ffn_down.weight"):
            w.add_tensor(t.name, np.zeros((256, 292), np.uint8), raw_dtype=Q.Q8_K)
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(HerdError, match=r"bad\.gguf.*ffn_down.*Q8_K"):
        load_model(tmp_path / "bad.gguf")


def test_truncated_gguf(tmp_path):
    path = write_gguf(tmp_path / "t.gguf", build_hf("tied"))
    data = path.read_bytes()
    for cut in (len(data) - 1000, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(HerdError, match=r"t\.gguf"):
            load_model(path)


def test_truncated_safetensors(hf_checkpoint, tmp_path):
    _, src = hf_checkpoint("tied")
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(HerdError, match=r"model\.safetensors"):
        load_model(tmp_path)


def test_wrong_shape_and_unknown_tensor(hf_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    _, src = hf_checkpoint("tied")
    shutil.copy(src / "config.json", tmp_path)
    sd = load_file(src / "model.safetensors")
    bad = dict(sd, **{"model.layers.1.mlp.up_proj.weight": torch.zeros(100, 64)})
    save_file(bad, tmp_path / "model.safetensors")
    msg = r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight.*\[100, 64\].*\[128, 64\]"
    with pytest.raises(HerdError, match=msg):
        load_model(tmp_path)
    save_file(dict(sd, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}), tmp_path / "model.safetensors")
    with pytest.raises(HerdError, match=r"model\.safetensors.*q_norm"):
        load_model(tmp_path)
    save_file({k: v for k, v in sd.items() if "layers.1.mlp" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(HerdError, match=r"missing tensors layers\.1\.feed_forward\.w1\.weight"):
        load_model(tmp_path)


def test_meta_shard_missing_tensor(hf_checkpoint, tmp_path):
    args, sd = load_hf(hf_checkpoint("tied")[1])
    save_meta(sd, args, tmp_path, mp=2)
    shard = torch.load(tmp_path / "consolidated.01.pth", weights_only=True)
    del shard["layers.1.attention.wv.weight"]
    torch.save(shard, tmp_path / "consolidated.01.pth")
    with pytest.raises(HerdError, match=r"consolidated\.01\.pth.*layers\.1\.attention\.wv"):
        load_model(tmp_path)
    with pytest.raises(HerdError, match="mp=3"):
        save_meta(sd, args, tmp_path, mp=3)
