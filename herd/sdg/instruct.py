"""`herd sdg instruct`: self-instruct (Wang et al. 2022) from a few seed tasks, through a `Generator`.

    seeds = read_seeds("seeds.jsonl")                  # {"instruction": ...} per line (an "output" optional)
    result = await self_instruct(gen, seeds, n=500, seed=0)
    write_jsonl("instruct_sft.jsonl", result.dialogs)  # {"messages": [user, assistant]} per line

Rounds of: show the model `shots` instructions drawn from the pool (seeds and the ones made so far, seeds
more often), ask for one new and different task; keep it when it passes the filters (length, English, not
a near-duplicate of anything in the pool: word 3-gram Jaccard below `near_duplicate`) — until `n` new
instructions or `max_attempts` tries. Then one answer per instruction (greedy). The counts of what each
filter removed come back with the data.
"""
from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatRequest, Generator, complete
from herd.sdg.filters import shingles, english_ratio, jaccard, words
from herd.tokenizer.messages import Message
from herd.train.data import DataError, read_jsonl

PROMPT = """Here are some example tasks a user could give an AI assistant:
{examples}

Write one new task, different from all of these in topic and in kind. Write only the task, on one line."""


def read_seeds(path: str | Path) -> list[str]:
    out = []
    for where, rec in read_jsonl(path):
        text = rec.get("instruction") if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: expected {{\"instruction\": string}}")
        out.append(text.strip())
    if len(out) < 2:
        raise DataError(f"{path}: give at least 2 seed instructions")
    return out


@dataclass
class InstructResult:
    instructions: list[str] = field(default_factory=list)
    dialogs: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def _clean(text: str) -> str:
    line = next((x for x in text.strip().splitlines() if x.strip()), "")
    line = re.sub(r"^\s*(?:\d+[.)]|[-*]|task:|new task:)\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip('"').strip()


async def self_instruct(gen: Generator, seeds: list[str], *, n: int, seed: int = 0, shots: int = 4,
                        temperature: float = 1.0, near_duplicate: float = 0.7, min_words: int = 3,
                        max_words: int = 80, max_attempts: int | None = None, concurrency: int = 16,
                        progress: Callable[[int], None] | None = None) -> InstructResult:
    if n < 1 or shots < 1:
        raise HerdError("n and shots must be >= 1")
    rng = random.Random(seed)
    result = InstructResult()
    pool = list(seeds)
    pool_shingles = [shingles(s) for s in pool]
    attempts, limit = 0, max_attempts or 4 * n
    lock = asyncio.Lock()

    async def propose(i: int) -> None:
        nonlocal attempts
        drawn = rng.sample(seeds, min(len(seeds), max(1, shots - 1)))
        made = pool[len(seeds):]
        if made:
            drawn.append(rng.choice(made))
        examples = "\n".join(f"{k + 1}. {t}" for k, t in enumerate(drawn))
        reply = await complete(gen, ChatRequest([Message("user", PROMPT.format(examples=examples))],
                                                temperature=temperature, seed=seed * 1_000_003 + i, max_tokens=96))
        text = _clean(reply.message.content)
        w = words(text)
        async with lock:
            attempts += 1
            if not min_words <= len(w) <= max_words:
                result.count("length")
            elif english_ratio(text) < 0.08:
                result.count("language")
            else:
                sh = shingles(text)
                if any(jaccard(sh, other) >= near_duplicate for other in pool_shingles):
                    result.count("near_duplicate")
                elif len(result.instructions) < n:
                    pool.append(text)
                    pool_shingles.append(sh)
                    result.instructions.append(text)
                    if progress:
                        progress(1)

    i = 0
    while len(result.instructions) < n and attempts < limit:
        batch = min(concurrency, limit - attempts, 2 * (n - len(result.instructions)))
        await asyncio.gather(*(propose(i + k) for k in range(batch)))
        i += batch
    result.counts["attempts"] = attempts
    gate = asyncio.Semaphore(concurrency)

    async def answer(instruction: str) -> dict[str, Any] | None:
        async with gate:
            reply = await complete(gen, ChatRequest([Message("user", instruction)], temperature=0.0, max_tokens=384))
        text = reply.message.content.strip()
        if not text:
            result.count("empty_answer")
            return None
        return {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": text}]}

    dialogs = await asyncio.gather(*(answer(t) for t in result.instructions))
    result.dialogs = [d for d in dialogs if d is not None]
    return result
