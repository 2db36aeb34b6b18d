"""Filters for synthetic data: exact and near-duplicate removal, length, language, decontamination against
evaluation sets, an LLM judge and Llama Guard 3. The text filters take records (dicts) and a `text` function
that says what to look at; the judge and the guard read a record's chat `messages`. Each returns the records
it keeps; `FilterReport` counts what each step removed (or flagged).

    report = FilterReport()
    rows = exact_dedupe(rows, prompt_text, report)
    rows = near_dedupe(rows, prompt_text, report, threshold=0.8)
    rows = length_filter(rows, prompt_text, report, min_chars=8, max_chars=2000)
    hits = Decontaminator(eval_prompts(["humaneval", "bfcl"])).check(rows, prompt_text)   # flagged, by index
    rows = guard_filter(rows, LlamaGuard.load("./Llama-Guard-3-1B"), report)   # Llama Guard 3's safe dialogs

Near-duplicates are found with MinHash over word 3-gram shingles and locality-sensitive hashing (bands of
rows; candidates then checked by their true Jaccard similarity), so the cost grows with the number of
records, not its square. Decontamination follows the n-gram overlap test of GPT-3 and Llama 3's reports:
a record is contaminated when it shares any word n-gram (default 8 words, after lower-casing and dropping
punctuation) with an evaluation prompt, or contains a whole evaluation prompt shorter than that.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TextFn = Callable[[dict[str, Any]], str]
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class FilterReport:
    """What each filter removed (or flagged), in the order they ran; `detail` breaks a count down (e.g. the
    Llama Guard categories of the unsafe dialogs: {"llama_guard_unsafe": {"S1": 2}}; a dialog may name several)."""

    counts: dict[str, int] = field(default_factory=dict)
    detail: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def add_detail(self, name: str, key: str, n: int = 1) -> None:
        d = self.detail.setdefault(name, {})
        d[key] = d.get(key, 0) + n


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words (punctuation and spacing ignored)."""
    return _WORD.findall(text.lower())


def prompt_text(record: dict[str, Any]) -> str:
    """The user turns of a chat record ({"messages": [...]}) or its `prompt` / `text` / `instruction`."""
    msgs = record.get("messages")
    if isinstance(msgs, list):
        return "\n".join(str(m.get("content") or "") for m in msgs if isinstance(m, dict) and m.get("role") == "user")
    for key in ("prompt", "instruction", "text", "question"):
        if isinstance(record.get(key), str):
            return record[key]
    return ""


def exact_dedupe(rows: Sequence[dict[str, Any]], text: TextFn = prompt_text,
                 report: FilterReport | None = None) -> list[dict[str, Any]]:
    """The first of each group of records whose text is the same after normalising case and spacing."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = " ".join(words(text(r)))
        if key not in seen:
            seen.add(key)
            out.append(r)
    if report is not None:
        report.add("exact_duplicate", len(rows) - len(out))
    return out


def shingles(text: str, k: int = 3) -> set[str]:
    w = words(text)
    if len(w) < k:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i:i + k]) for i in range(len(w) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHash:
    """MinHash signatures of shingle sets: `num_perm` universal hashes (a*x + b) mod p of 32-bit shingle
    fingerprints (a, b < 2^32, p = 2^61 - 1: exact in uint64), seeded, so a text always gets the same
    signature."""

    PRIME = np.uint64((1 << 61) - 1)

    def __init__(self, num_perm: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, shingles: Iterable[str]) -> np.ndarray:
        fp = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little")
                       for s in shingles], dtype=np.uint64)
        if fp.size == 0:
            return np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        return ((self.a[:, None] * fp[None, :] + self.b[:, None]) % self.PRIME).min(axis=1)


def near_dedupe(rows: Sequence[dict[str, Any]], text: TextFn = prompt_text, report: FilterReport | None = None,
                *, threshold: float = 0.8, num_perm: int = 64, bands: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """Drop each record whose word 3-gram Jaccard similarity to an earlier kept record is >= threshold.
    Candidates come from MinHash LSH (`bands` bands of num_perm / bands rows), then are checked exactly."""
    if num_perm % bands:
        raise ValueError("num_perm must be a multiple of bands")
    rows_per_band = num_perm // bands
    mh = MinHash(num_perm, seed)
    buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]
    kept: list[int] = []
    seen: list[set[str]] = []
    for i, r in enumerate(rows):
        sh = shingles(text(r))
        seen.append(sh)
        sig = mh.signature(sh)
        keys = [sig[b * rows_per_band:(b + 1) * rows_per_band].tobytes() for b in range(bands)]
        candidates = {j for b, key in enumerate(keys) for j in buckets[b].get(key, ())}
        if any(jaccard(sh, seen[j]) >= threshold for j in candidates):
            continue
        kept.append(i)
        for b, key in enumerate(keys):
            buckets[b][key].append(i)
    if report is not None:
        report.add("near_duplicate", len(rows) - len(kept))
    return [rows[i] for i in kept]


def length_filter(rows: Sequence[dict[str, Any]], text: TextFn = prompt_text, report: FilterReport | None = None,
                  *, min_chars: int = 1, max_chars: int = 8000) -> list[dict[str, Any]]:
    out = [r for r in rows if min_chars <= len(text(r).strip()) <= max_chars]
    if report is not None:
        report.add("length", len(rows) - len(out))
    return out


# the most frequent English function words: a text in English has plenty of them
_ENGLISH = frozenset("the a an and or of to in on for with is are was be it this that what how can you i my "
                     "me we do does please from at by as not your".split())


def english_ratio(text: str) -> float:
    """The share of a text's words that are common English function words (0 for no words)."""
    w = words(text)
    return sum(x in _ENGLISH for x in w) / len(w) if w else 0.0


def language_filter(rows: Sequence[dict[str, Any]], text: TextFn = prompt_text, report: FilterReport | None = None,
                    *, min_ratio: float = 0.08, min_ascii: float = 0.9) -> list[dict[str, Any]]:
    """English only: mostly ASCII letters and enough common English function words (short requests such
    as "Weather in Paris?" pass on the first test when they have no function word)."""
    out = []
    for r in rows:
        t = text(r)
        letters = [c for c in t if c.isalpha()]
        ascii_share = sum(c.isascii() for c in letters) / len(letters) if letters else 0.0
        if ascii_share >= min_ascii and (english_ratio(t) >= min_ratio or len(words(t)) <= 6):
            out.append(r)
    if report is not None:
        report.add("language", len(rows) - len(out))
    return out


class Decontaminator:
    """Flags texts that overlap evaluation prompts (see the module docstring)."""

    def __init__(self, eval_texts: Iterable[str], n: int = 8) -> None:
        self.n = n
        self.grams: set[str] = set()
        self.short: set[str] = set()  # whole prompts shorter than n words
        for t in eval_texts:
            w = words(t)
            if len(w) < n:
                if len(w) >= 3:
                    self.short.add(" ".join(w))
            else:
                self.grams.update(" ".join(w[i:i + n]) for i in range(len(w) - n + 1))

    def overlap(self, text: str) -> str | None:
        """The first shared n-gram (or whole short prompt) found in text, or None."""
        w = words(text)
        for i in range(len(w) - self.n + 1):
            g = " ".join(w[i:i + self.n])
            if g in self.grams:
                return g
        if self.short:
            joined = f" {' '.join(w)} "
            for s in self.short:
                if f" {s} " in joined:
                    return s
        return None

    def check(self, rows: Sequence[dict[str, Any]], text: TextFn = prompt_text) -> dict[int, str]:
        """{index: the overlapping n-gram} for every contaminated record."""
        return {i: g for i, r in enumerate(rows) if (g := self.overlap(text(r))) is not None}


async def judge_filter(rows: Sequence[dict[str, Any]], judge: Any, min_score: float,
                       report: FilterReport | None = None, concurrency: int = 8) -> list[dict[str, Any]]:
    """Keep the dialogs whose last assistant answer an LLM judge (herd.eval.scorers.LLMJudge) scores at least
    min_score (0..1, the judge's 1-10 scaled); an unreadable verdict counts as a failure. Each kept row gets
    its `judge_score`."""
    import asyncio

    gate = asyncio.Semaphore(concurrency)

    async def grade(row: dict[str, Any]) -> float | None:
        answer = next((m.get("content") or "" for m in reversed(row.get("messages", []))
                       if isinstance(m, dict) and m.get("role") == "assistant"), "")
        async with gate:
            score, _, _ = await judge(prompt_text(row), "", answer)
        return score

    scores = await asyncio.gather(*(grade(r) for r in rows))
    out = [{**r, "judge_score": s} for r, s in zip(rows, scores) if s is not None and s >= min_score]
    if report is not None:
        report.add("judge", len(rows) - len(out))
    return out


def guard_filter(rows: Sequence[dict[str, Any]], guard: Any, report: FilterReport | None = None, *,
                 batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Keep the dialogs a Llama Guard 3 (herd.safety.llama_guard.LlamaGuard) calls safe.

    Each row's `messages` go to `guard.classify` as they are, `batch_size` at a time: the guard judges the last
    message in the context of the others (tool calls and tool results as `guard_turns` reads them). Unsafe
    dialogs are dropped and counted as "llama_guard_unsafe", their violated categories in the report's detail;
    a guard output that is neither `safe` nor `unsafe` and codes is dropped and counted as
    "llama_guard_unreadable" (a batch holding one is judged again one dialog at a time, so it spoils no other)."""
    from herd.safety.llama_guard import GuardOutputError

    def one(conversation: Any) -> Any:
        try:
            return guard.classify([conversation])[0]
        except GuardOutputError:
            return None

    out: list[dict[str, Any]] = []
    unsafe = unreadable = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        conversations = [r["messages"] for r in batch]
        try:
            verdicts = guard.classify(conversations)
        except GuardOutputError:
            verdicts = [one(c) for c in conversations]
        for row, v in zip(batch, verdicts):
            if v is None:
                unreadable += 1
            elif v.safe:
                out.append(row)
            else:
                unsafe += 1
                for code in v.violated if report is not None else ():
                    report.add_detail("llama_guard_unsafe", code)
        if progress is not None:
            progress(len(batch))
    if report is not None:
        report.add("llama_guard_unsafe", unsafe)
        report.add("llama_guard_unreadable", unreadable)
    return out
