"""The model on its own: cached decode equals the full forward pass; presets are the published shapes."""
import pytest
import torch

from herd.config import PRESETS, ModelArgs, RopeScaling, preset
from herd.errors import HerdError
from herd.model.llama import Transformer, rope_frequencies


def tiny_args(**kw) -> ModelArgs:
    base = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 97, "multiple_of": 16,
            "rope_theta": 10000.0, "rope_scaling": RopeScaling(factor=8.0, original_max_position_embeddings=32)}
    base.update(kw)
    return ModelArgs(**base)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2), (torch.float16, 1e-2)])
def test_cached_decode_equals_full_forward_for_64_steps(dtype, atol):
    torch.manual_seed(0)
    model = Transformer(tiny_args()).to(dtype).eval()
    tokens = torch.randint(0, 97, (2, 80))
    with torch.no_grad():
        full = model(tokens)  # (2, 80, V)
        cache = model.new_cache(batch=2, max_seq_len=96)
        prefill = model(tokens[:, :16], 0, cache)
        steps = [model(tokens[:, p : p + 1], p, cache) for p in range(16, 80)]
    stepped = torch.cat([prefill] + steps, dim=1)
    assert len(steps) == 64
    assert (full - stepped).abs().max().item() < atol


def test_chunked_prefill_through_cache_equals_full_forward():
    torch.manual_seed(1)
    model = Transformer(tiny_args(tie_embeddings=True)).eval()
    tokens = torch.randint(0, 97, (1, 50))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(1, 64)
        chunks = [model(tokens[:, s : s + 16], s, cache) for s in range(0, 50, 16)]
    assert (full - torch.cat(chunks, 1)).abs().max().item() < 1e-4


def test_presets_match_published_shapes():
    assert PRESETS["llama3.1-8b"].ffn_dim == 14336
    assert PRESETS["llama3.1-70b"].ffn_dim == 28672
    assert PRESETS["llama3.1-405b"].ffn_dim == 53248
    assert PRESETS["llama3.2-1b"].ffn_dim == 8192 and PRESETS["llama3.2-1b"].hd == 64
    assert PRESETS["llama3.2-3b"].ffn_dim == 8192
    assert round(PRESETS["llama3.1-8b"].num_params() / 1e9, 2) == 8.03
    assert PRESETS["llama3.2-1b"].rope_scaling.factor == 32.0
    assert PRESETS["llama3.1-8b"].rope_scaling.factor == 8.0
    with pytest.raises(HerdError, match="unknown preset 'llama9'"):
        preset("llama9")


def test_rope_scaling_bands_for_head_dim_128():
    plain = rope_frequencies(128, 500000.0, None)
    scaled = rope_frequencies(128, 500000.0, RopeScaling(factor=8.0))
    same = torch.isclose(plain, scaled).sum().item()
    divided = torch.isclose(plain / 8, scaled).sum().item()
    assert (same, divided, 64 - same - divided) == (29, 29, 6)


def test_bfloat16_cast_keeps_rope_frequencies_exact():
    model = Transformer(tiny_args()).to(torch.bfloat16)
    assert model.rope_freqs(torch.device("cpu")).dtype == torch.float32


def test_public_api_exports_resolve():
    import herd

    for name in herd.__all__:
        assert getattr(herd, name) is not None
