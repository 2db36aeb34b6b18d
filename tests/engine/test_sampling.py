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


# ---- the sampler's distribution against transformers' logits processors (the oracle) ----------

from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from herd.engine.sampling import SamplingBatch, apply_penalties, sample_batch, sampling_distribution  # noqa: E402


def hf_probs(logits: torch.Tensor, *warpers) -> torch.Tensor:
    scores = logits.clone()
    for w in warpers:
        scores = w(None, scores)
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize(
    "kw,warpers",
    [
        (dict(temperature=0.7, top_p=1.0), [TemperatureLogitsWarper(0.7)]),
        (dict(temperature=1.0, top_p=1.0, top_k=20), [TopKLogitsWarper(20)]),
        (dict(temperature=1.0, top_p=0.8), [TopPLogitsWarper(0.8)]),
        (dict(temperature=1.0, top_p=1.0, min_p=0.05), [MinPLogitsWarper(0.05)]),
        (dict(temperature=0.5, top_p=0.9, top_k=50), [TemperatureLogitsWarper(0.5), TopKLogitsWarper(50),
                                                      TopPLogitsWarper(0.9)]),
    ],
)
def test_distribution_matches_transformers_warpers(kw, warpers):
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 3
    batch = SamplingBatch([SamplingParams(**kw)] * 4, [None] * 4)
    ours = sampling_distribution(logits, batch)
    assert torch.allclose(ours, hf_probs(logits, *warpers), atol=1e-6)


def test_repetition_penalty_matches_transformers():
    torch.manual_seed(1)
    logits = torch.randn(2, 50) * 4
    prompt, out = [[1, 2, 3], [4, 5]], [[3, 7, 7], [9]]
    batch = SamplingBatch([SamplingParams(repetition_penalty=1.3)] * 2, [None] * 2, prompt_ids=prompt, output_ids=out)
    ours = apply_penalties(logits, batch)
    hf = torch.stack([RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([p + o]), logits[i : i + 1].clone())[0]
                      for i, (p, o) in enumerate(zip(prompt, out))])
    assert torch.allclose(ours, hf)


def test_frequency_and_presence_penalties_follow_openai():
    logits = torch.zeros(1, 10)
    batch = SamplingBatch([SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)], [None], output_ids=[[3, 3, 4]])
    got = apply_penalties(logits, batch)[0]
    want = torch.zeros(10)
    want[3], want[4] = -(2 * 0.5 + 0.25), -(0.5 + 0.25)
    assert torch.allclose(got, want)


def test_mixed_batch_rows_follow_their_own_params():
    torch.manual_seed(2)
    logits = torch.randn(3, 200)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_p=1.0, top_k=1),
              SamplingParams(temperature=1.0, top_p=1.0, seed=3)]
    tokens, _, _ = sample_batch(logits, SamplingBatch(params, [None, None, torch.Generator().manual_seed(3)]))
    assert tokens[0] == logits[0].argmax() and tokens[1] == logits[1].argmax()
    again, _, _ = sample_batch(logits[2:], SamplingBatch(params[2:], [torch.Generator().manual_seed(3)]))
    assert again[0] == tokens[2]  # the seeded row does not depend on its neighbours


def test_seeded_row_draws_the_same_token_on_the_sorted_and_unsorted_paths():
    # a top_k neighbour forces the sorted path for the whole batch; the seeded row must not care
    torch.manual_seed(4)
    logits = torch.randn(2, 500)
    seeded = SamplingParams(temperature=1.0, top_p=1.0, seed=9)
    for trial in range(20):
        alone = sample_batch(logits[:1], SamplingBatch([seeded], [torch.Generator().manual_seed(trial)]))[0]
        mixed = sample_batch(logits, SamplingBatch([seeded, SamplingParams(temperature=1.0, top_k=5)],
                                                   [torch.Generator().manual_seed(trial), None]))[0]
        assert alone[0] == mixed[0]
