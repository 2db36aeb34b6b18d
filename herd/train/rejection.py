"""Rejection sampling, the first step of Llama 3.1's post-training loop (RS -> SFT -> DPO): for each prompt,
N answers from a model, each scored by a verifier; the best one (if it scores high enough) becomes an SFT
example, and the best and the worst a preference pair.

    records = read_prompts("prompts.jsonl")            # {"messages": [...], "tools": [...], <verifier fields>}
    result = await rejection_sample(generator, records, tool_call_match, n=4, temperature=0.8)
    write_jsonl("sft.jsonl", result.sft)               # herd train sft --data sft.jsonl
    write_jsonl("prefs.jsonl", result.pairs)           # herd train dpo --data prefs.jsonl

The model is reached through a `Generator` (herd/generator.py): the in-process engine or any
OpenAI-compatible URL (herd/generator_http.py). Verifiers are functions (record, assistant Message) ->
score in 0..1, reading what they need from the record:
  exact_match     `answer` (a string or a list of accepted strings), compared after normalising case,
                  spaces and final punctuation
  regex_match     `pattern`: the reply's text must match it (re.search)
  json_schema     `schema`: the reply's text is JSON valid against it
  tool_call_match `expected_tool_calls`: [{"name", "arguments"}] — the same calls, in any order
  judge(gen, rubric)  an LLM judge's 1-10 score (parsed from "Score: N"), scaled to 0..1
"""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatRequest, Generator, complete
from herd.tokenizer.messages import Message, to_messages, to_tools
from herd.train.data import DataError, read_jsonl

Verifier = Callable[[dict[str, Any], Message], "float | Awaitable[float]"]


# ---- verifiers ----------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!?")


def exact_match(record: dict[str, Any], reply: Message) -> float:
    answers = record.get("answer")
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers:
        raise HerdError("exact_match needs an `answer` (a string or a list of strings) in every record")
    return float(_norm(reply.content) in {_norm(str(a)) for a in answers})


def regex_match(record: dict[str, Any], reply: Message) -> float:
    pattern = record.get("pattern")
    if not isinstance(pattern, str):
        raise HerdError("regex_match needs a `pattern` in every record")
    return float(re.search(pattern, reply.content) is not None)


def json_schema(record: dict[str, Any], reply: Message) -> float:
    import jsonschema

    schema = record.get("schema")
    if not isinstance(schema, dict):
        raise HerdError("json_schema needs a `schema` object in every record")
    try:
        value = json.loads(reply.content)
    except json.JSONDecodeError:
        return 0.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def tool_call_match(record: dict[str, Any], reply: Message) -> float:
    expected = record.get("expected_tool_calls")
    if not isinstance(expected, list):
        raise HerdError("tool_call_match needs `expected_tool_calls` ([{name, arguments}]) in every record")
    want = sorted(json.dumps([c.get("name"), c.get("arguments") or {}], sort_keys=True) for c in expected)
    got = sorted(json.dumps([c.tool_name, c.arguments], sort_keys=True) for c in reply.tool_calls)
    return float(want == got)


JUDGE_PROMPT = """You grade an assistant's answer. Rubric: {rubric}

Conversation:
{conversation}

Answer to grade:
{answer}

Give a score from 1 (worst) to 10 (best). End your reply with a line "Score: N"."""


def judge(generator: Generator, rubric: str = "correct, helpful and concise", max_tokens: int = 256) -> Verifier:
    """An LLM-judge verifier: the judge model's 1-10 score, scaled to 0..1 (0 when no score can be read)."""

    async def score(record: dict[str, Any], reply: Message) -> float:
        conversation = "\n".join(f"{m.role}: {m.content}" for m in to_messages(record["messages"]))
        answer = reply.content or json.dumps([{"name": c.tool_name, "arguments": c.arguments}
                                              for c in reply.tool_calls])
        prompt = JUDGE_PROMPT.format(rubric=rubric, conversation=conversation, answer=answer)
        result = await complete(generator, ChatRequest([Message("user", prompt)], temperature=0.0,
                                                       max_tokens=max_tokens))
        found = re.findall(r"score\s*[:=]\s*(10|[1-9])\b", result.message.content, re.IGNORECASE)
        return (int(found[-1]) - 1) / 9 if found else 0.0

    return score


VERIFIERS: dict[str, Verifier] = {"exact": exact_match, "regex": regex_match, "json_schema": json_schema,
                                  "tool_call": tool_call_match}


# ---- sampling ---------------------------------------------------------------------------------------------


@dataclass
class RejectionResult:
    sft: list[dict[str, Any]] = field(default_factory=list)  # {"messages", "tools"?, "score"}
    pairs: list[dict[str, Any]] = field(default_factory=list)  # {"prompt", "chosen", "rejected", "tools"?}
    prompts: int = 0
    samples: int = 0
    kept: int = 0
    scores: list[float] = field(default_factory=list)  # the best score per prompt

    def summary(self) -> dict[str, Any]:
        mean = sum(self.scores) / len(self.scores) if self.scores else 0.0
        return {"prompts": self.prompts, "samples": self.samples, "kept": self.kept, "pairs": len(self.pairs),
                "mean_best_score": round(mean, 4)}


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompt records (`messages` ending with a user turn, optional `tools`), checked; file:line on errors."""
    out = []
    for where, rec in read_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list) or not rec["messages"]:
            raise DataError(f"{where}: expected an object with a non-empty `messages` list")
        try:
            msgs = to_messages(rec["messages"])
            to_tools(rec.get("tools"))
        except HerdError as e:
            raise DataError(f"{where}: {e}") from None
        if msgs[-1].role == "assistant":
            raise DataError(f"{where}: the last message is the assistant's; a prompt ends where the answer starts")
        out.append({**rec, "_where": where})
    return out


async def _score(verifier: Verifier, record: dict[str, Any], reply: Message) -> float:
    value = verifier(record, reply)
    if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
        value = await value
    return float(value)


async def rejection_sample(generator: Generator, records: Sequence[dict[str, Any]], verifier: Verifier, *, n: int = 4,
                           temperature: float = 0.8, top_p: float | None = None, max_tokens: int = 512,
                           min_score: float = 1.0, seed: int = 0, concurrency: int = 4,
                           progress: Callable[[int], None] | None = None) -> RejectionResult:
    """N samples per prompt (seeds seed, seed+1, ...), each verified; see the module docstring."""
    if n < 1:
        raise HerdError(f"n must be >= 1, got {n}")
    result = RejectionResult(prompts=len(records))
    gate = asyncio.Semaphore(concurrency)

    async def one(rec: dict[str, Any]) -> list[tuple[float, Message]]:
        msgs, tools = to_messages(rec["messages"]), to_tools(rec.get("tools"))
        scored = []
        for i in range(n):
            async with gate:
                reply = (await complete(generator, ChatRequest(
                    msgs, tools or [], "auto" if tools else "none", temperature=temperature, top_p=top_p,
                    max_tokens=max_tokens, seed=seed + i))).message
            scored.append((await _score(verifier, rec, reply), reply))
        if progress:
            progress(1)
        return scored

    everything = await asyncio.gather(*(one(r) for r in records))
    for rec, scored in zip(records, everything):
        result.samples += len(scored)
        ranked = sorted(range(len(scored)), key=lambda i: -scored[i][0])  # stable: the earliest best wins
        best_score, best = scored[ranked[0]]
        result.scores.append(best_score)
        base = {k: v for k, v in rec.items() if k in ("messages", "tools")}
        if best_score >= min_score:
            result.kept += 1
            result.sft.append({**base, "messages": [*rec["messages"], best.to_openai()], "score": best_score})
        worst_score, worst = scored[ranked[-1]]
        if best_score >= min_score and worst_score < best_score:
            pair = {"prompt": rec["messages"], "chosen": [best.to_openai()], "rejected": [worst.to_openai()]}
            result.pairs.append({**pair, **({"tools": rec["tools"]} if rec.get("tools") else {})})
    return result


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Rows as JSONL, written to a temporary name then renamed; how many."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
