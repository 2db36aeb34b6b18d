"""A seeded, ShareGPT-like request mix: prompt and output lengths drawn from log-normal laws.

ShareGPT conversations (the set vLLM's serving benchmark replays) have long-tailed prompt and
reply lengths; medians of a few hundred tokens with a tail to thousands. This generator keeps
the shape (log-normal, clipped) at a scale a 2-core CPU finishes in minutes, and makes prompts
of ordinary text tokens so no system stops early (every request runs to its max_tokens).

    python benchmarks/workload.py --n 32 --seed 0     # prints the lengths
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    max_tokens: int


@dataclass(frozen=True)
class Mix:
    """Log-normal length laws (median, sigma of the log), clipped to [lo, hi]."""

    prompt_median: float = 160.0
    prompt_sigma: float = 0.8
    prompt_range: tuple[int, int] = (16, 1024)
    output_median: float = 96.0
    output_sigma: float = 0.5
    output_range: tuple[int, int] = (16, 256)


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    import math

    return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))))


def make_workload(n: int, seed: int = 0, *, vocab: tuple[int, int] = (300, 40000), mix: Mix = Mix(),
                  scale: float = 1.0) -> list[Request]:
    """n requests; token ids drawn uniformly from `vocab` (ordinary tokens of the tokenizer, no
    specials); `scale` multiplies both medians (e.g. 0.25 for a quick run)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = _lognormal(rng, mix.prompt_median * scale, mix.prompt_sigma, *mix.prompt_range)
        o = _lognormal(rng, mix.output_median * scale, mix.output_sigma, *mix.output_range)
        out.append(Request([rng.randrange(*vocab) for _ in range(p)], o))
    return out


def random_prompt(length: int, seed: int, vocab: tuple[int, int] = (300, 40000)) -> list[int]:
    """A prompt of `length` ordinary tokens (distinct seeds: no prefix-cache hits between trials)."""
    rng = random.Random(seed)
    return [rng.randrange(*vocab) for _ in range(length)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    reqs = make_workload(a.n, a.seed, scale=a.scale)
    print(json.dumps([{"prompt_tokens": len(r.prompt_ids), "max_tokens": r.max_tokens} for r in reqs]))
    print(f"# total prompt tokens {sum(len(r.prompt_ids) for r in reqs)}, output tokens {sum(r.max_tokens for r in reqs)}")


if __name__ == "__main__":
    main()
