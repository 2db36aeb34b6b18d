"""Scorers for free-form answers: exact_match, contains, regex, f1, json_schema_valid, and llm_judge.

Each non-judge scorer is a pure function (record, reply text) -> 0..1 reading its reference from the record
(`answer` / `answers`: a string or a list of accepted strings; `pattern` for regex; `schema` for
json_schema_valid). `LLMJudge` asks a judge model (any Generator) to grade the reply against a rubric and
reads the score robustly ("Score: 7", "7/10", "**Score**: 7.5", a lone number on the last line); a verdict
with no readable score is `None` (counted as unparseable, left out of the mean), never a crash.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatRequest, Generator, complete
from herd.tokenizer.messages import Message


def references(record: dict[str, Any], where: str = "") -> list[str]:
    refs = record.get("answers", record.get("answer", record.get("reference")))
    refs = [refs] if isinstance(refs, (str, int, float)) else refs
    if not isinstance(refs, list) or not refs or not all(isinstance(r, (str, int, float)) for r in refs):
        raise HerdError(f"{where}: expected `answer` (a string or a list of strings)".lstrip(": "))
    return [str(r) for r in refs]


def normalize(text: str) -> str:
    """Case, surrounding spaces, inner runs of spaces and final punctuation ignored."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!?")


def exact_match(record: dict[str, Any], text: str) -> float:
    return float(normalize(text) in {normalize(r) for r in references(record)})


def contains(record: dict[str, Any], text: str) -> float:
    low = text.lower()
    return float(any(r.lower() in low for r in references(record)))


def regex(record: dict[str, Any], text: str) -> float:
    pattern = record.get("pattern")
    if not isinstance(pattern, str):
        raise HerdError("the regex scorer needs a `pattern` in every record")
    try:
        return float(re.search(pattern, text) is not None)
    except re.error as e:
        raise HerdError(f"bad `pattern` {pattern!r}: {e}") from None


def _f1_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def f1(record: dict[str, Any], text: str) -> float:
    """The best token-overlap F1 against any reference (SQuAD's definition)."""
    got = _f1_tokens(text)
    best = 0.0
    for ref in references(record):
        want = _f1_tokens(ref)
        if not got or not want:
            best = max(best, float(got == want))
            continue
        common = sum((Counter(got) & Counter(want)).values())
        if common:
            p, r = common / len(got), common / len(want)
            best = max(best, 2 * p * r / (p + r))
    return best


_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)


def json_schema_valid(record: dict[str, Any], text: str) -> float:
    """1 when the reply (or the first fenced block in it) is JSON valid against the record's `schema`."""
    import jsonschema

    schema = record.get("schema")
    if not isinstance(schema, dict):
        raise HerdError("the json_schema_valid scorer needs a `schema` object in every record")
    m = _FENCE.search(text)
    try:
        value = json.loads(m.group(1) if m else text)
    except json.JSONDecodeError:
        return 0.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


SCORERS: dict[str, Callable[[dict[str, Any], str], float]] = {
    "exact_match": exact_match, "contains": contains, "regex": regex, "f1": f1,
    "json_schema_valid": json_schema_valid,
}


# ---- the LLM judge ------------------------------------------------------------------------------------

RUBRIC_TEMPLATE = """You are grading an answer.

Question:
{question}

Reference answer (may be empty):
{reference}

Answer to grade:
{answer}

Rubric: {rubric}

Explain briefly, then end with a line "Score: N" where N is from 1 (worst) to 10 (best)."""

_SCORE_PATTERNS = (
    re.compile(r"score\W{0,3}\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE),
    re.compile(r"\b(\d+(?:\.\d+)?)\s*/\s*10\b"),
    re.compile(r"^\s*\**(\d+(?:\.\d+)?)\**\s*$", re.MULTILINE),
)


def parse_score(verdict: str, lo: float = 1.0, hi: float = 10.0) -> float | None:
    """The judge's score on a lo..hi scale from its verdict (the last match of the most specific pattern
    that matches), or None when no score in range can be read."""
    for pattern in _SCORE_PATTERNS:
        found = [float(x) for x in pattern.findall(verdict)]
        found = [x for x in found if lo <= x <= hi]
        if found:
            return found[-1]
    return None


class LLMJudge:
    """Grades replies with a judge model: `await judge(question, reference, answer)` -> (score 0..1 or None,
    the prompt, the raw verdict). The rubric template's fields: {question}, {reference}, {answer}, {rubric}."""

    def __init__(self, generator: Generator, rubric: str = "correct, complete and concise",
                 template: str = RUBRIC_TEMPLATE, max_tokens: int = 256) -> None:
        for name in ("{answer}",):
            if name not in template:
                raise HerdError(f"the judge template must contain {name}")
        self.generator, self.rubric, self.template, self.max_tokens = generator, rubric, template, max_tokens

    async def __call__(self, question: str, reference: str, answer: str) -> tuple[float | None, str, str]:
        prompt = self.template.format(question=question, reference=reference, answer=answer, rubric=self.rubric)
        result = await complete(self.generator, ChatRequest([Message("user", prompt)], temperature=0.0,
                                                            max_tokens=self.max_tokens))
        verdict = result.message.content
        raw = parse_score(verdict)
        return (None if raw is None else (raw - 1.0) / 9.0), prompt, verdict
