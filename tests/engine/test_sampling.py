"""Sampling: greedy, top-k, top-p (the reference's 'mass before the token exceeds p' rule), seeds."""
import pytest
import torch

from herd.engine.request import SamplingParams
from herd.engine.sampling import sample
from herd.errors import HerdError

PROBS = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
LOGITS = PROBS.log()


def frequencies(params: SamplingParams, n: int = 4000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(n):
        counts[sample(LOGITS, params, gen)] += 1
    return counts / n


def test_greedy_is_argmax():
    assert sample(torch.tensor([0.1, 3.0, -1.0]), SamplingParams(temperature=0)) == 1


def test_top_p_keeps_the_reference_nucleus():
    # mass before each token: 0, .5, .75, .9, .97 -> with p=0.8 tokens 0,1,2 stay (0.75 <= 0.8)
    f = frequencies(SamplingParams(temperature=1.0, top_p=0.8))
    assert f[3] == 0 and f[4] == 0
    expected = PROBS[:3] / PROBS[:3].sum()
    assert torch.allclose(f[:3], expected, atol=0.03)


def test_top_p_always_keeps_the_top_token():
    f = frequencies(SamplingParams(temperature=1.0, top_p=0.01), n=200)
    assert f[0] == 1.0


def test_top_k_and_temperature():
    f = frequencies(SamplingParams(temperature=1.0, top_p=1.0, top_k=2))
    assert f[2:].sum() == 0
    assert torch.allclose(f[:2], torch.tensor([2 / 3, 1 / 3]), atol=0.03)
    cold = frequencies(SamplingParams(temperature=0.25, top_p=1.0), n=1000)
    assert cold[0] > 0.9  # p^4 renormalised: 0.5^4 dominates


def test_same_seed_same_samples():
    p = SamplingParams(temperature=1.0, top_p=1.0)
    a = [sample(LOGITS, p, torch.Generator().manual_seed(7)) for _ in range(1)]
    b = [sample(LOGITS, p, torch.Generator().manual_seed(7)) for _ in range(1)]
    assert a == b
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [sample(LOGITS, p, g1) for _ in range(50)] == [sample(LOGITS, p, g2) for _ in range(50)]


@pytest.mark.parametrize("kw", [dict(max_tokens=0), dict(temperature=-0.1), dict(top_p=1.5), dict(top_k=-1), dict(stop=[""])])
def test_invalid_params_raise_herd_error(kw):
    with pytest.raises(HerdError):
        SamplingParams(**kw)
