"""`generate`: any JSONL of prompts and references, scored by a chosen scorer (herd/eval/scorers.py).

One record per line: `prompt` (a string) or `messages` (OpenAI chat messages ending with the user's turn),
`tools` optional, an `id` optional (default: the line number), and what the scorer reads: `answer` (a string
or a list of accepted strings) for exact_match / contains / f1 / llm_judge (optional there), `pattern` for
regex, `schema` for json_schema_valid; `no_tool_call` reads nothing (1 when the reply makes no tool call:
with `tools` offered, whether a model leaves them alone when none is needed). --samples records are
{"id", "output"} (or "completion").

    herd eval generate --data qa.jsonl --scorer f1 --model M
    herd eval generate --data qa.jsonl --scorer llm_judge --judge-model NAME --base-url URL --api-model M
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from herd.errors import HerdError
from herd.eval.scorers import SCORERS, LLMJudge, references
from herd.eval.task import (DataError, Metric, Output, Sample, Score, TaskOptions, bad_row, mean_metric,
                            user_rows)
from herd.generator import ChatRequest
from herd.tokenizer.messages import Message, to_messages, to_tools

CHOICES = (*SCORERS, "no_tool_call", "llm_judge")


class GenerateTask:
    name = "generate"
    kind = "generate"

    def __init__(self, options: TaskOptions) -> None:
        if options.data is None:
            raise HerdError("the generate task needs --data FILE (JSONL: prompt or messages, answer, ...)")
        self.options = options
        self.scorer = options.extra.get("scorer") or "exact_match"
        if self.scorer not in CHOICES:
            raise HerdError(f"unknown scorer {self.scorer!r}; choose from {', '.join(CHOICES)}")
        self.judge: LLMJudge | None = options.extra.get("judge")  # llm_judge: set before score()

    def load(self) -> list[Sample]:
        out: list[Sample] = []
        seen: set[str] = set()
        self.skipped: list[str] = []
        for where, rec in user_rows(self.options.data, self.options, self.skipped):
            try:
                out.append(self._sample(where, rec, seen))
            except DataError as e:
                bad_row(e, self.options, self.skipped)
                continue
            if self.options.limit is not None and len(out) >= self.options.limit:
                break
        return out

    def _sample(self, where: str, rec: Any, seen: set[str]) -> Sample:
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object")
        try:
            messages = self._messages(rec)
            to_tools(rec.get("tools"))
        except HerdError as e:
            raise DataError(f"{where}: {e}") from None
        if not messages or messages[-1].role == "assistant":
            raise DataError(f"{where}: the prompt must end with the user's turn")
        if self.scorer in ("exact_match", "contains", "f1"):
            try:
                references(rec)
            except HerdError as e:
                raise DataError(f"{where}: {e}") from None
        if self.scorer == "regex" and not isinstance(rec.get("pattern"), str):
            raise DataError(f"{where}: the regex scorer needs a `pattern`")
        if self.scorer == "json_schema_valid" and not isinstance(rec.get("schema"), dict):
            raise DataError(f"{where}: the json_schema_valid scorer needs a `schema` object")
        sid = str(rec.get("id", where.rsplit(":", 1)[-1]))
        if sid in seen:
            raise DataError(f"{where}: duplicate id {sid!r}")
        seen.add(sid)
        return Sample(sid, {**rec, "_where": where})

    @staticmethod
    def _messages(rec: dict[str, Any]) -> list[Message]:
        if isinstance(rec.get("prompt"), str):
            return [Message("user", rec["prompt"])]
        if isinstance(rec.get("messages"), list):
            return to_messages(rec["messages"])
        raise HerdError("expected `prompt` (a string) or `messages` (a list)")

    def chat_request(self, sample: Sample) -> ChatRequest:
        tools = to_tools(sample.data.get("tools"))
        return ChatRequest(self._messages(sample.data), tools or [], "auto" if tools else "none")

    def read_sample(self, record: dict[str, Any], where: str) -> tuple[str, Output]:
        text = record.get("output", record.get("completion"))
        if "id" not in record or not isinstance(text, str):
            raise DataError(f"{where}: expected {{\"id\", \"output\": string}}")
        return str(record["id"]), Output(Message("assistant", text))

    async def score(self, pairs: Sequence[tuple[Sample, Output]]) -> list[Score]:
        if self.scorer == "no_tool_call":  # the reply, not its text: a call is not content that looks like one
            return [Score({"no_tool_call": 0.0 if out.error else float(not out.message.tool_calls)}) for _, out in pairs]
        if self.scorer != "llm_judge":
            fn = SCORERS[self.scorer]
            return [Score({self.scorer: 0.0 if out.error else fn(s.data, _text(out))}) for s, out in pairs]
        judge = self.judge
        if judge is None:
            raise HerdError("the llm_judge scorer needs a judge model (--judge-model, with --base-url or --model)")
        gate = asyncio.Semaphore(int(self.options.extra.get("judge_concurrency", 4)))

        async def one(sample: Sample, out: Output) -> Score:
            question = "\n".join(f"{m.role}: {m.content}" for m in self._messages(sample.data))
            refs = sample.data.get("answer", sample.data.get("answers", ""))
            reference = refs if isinstance(refs, str) else json.dumps(refs)
            if out.error:
                return Score({}, {"judge_error": "no answer to grade"})
            async with gate:
                try:
                    value, prompt, verdict = await judge(question, reference, _text(out))
                except Exception as e:  # the judge endpoint failed: this sample is unscored, counted
                    return Score({}, {"judge_error": f"{type(e).__name__}: {e}"})
            details = {"judge_prompt": prompt, "judge_verdict": verdict}
            if value is None:
                return Score({}, {**details, "judge_unparseable": True})
            return Score({"llm_judge": value}, details)

        return list(await asyncio.gather(*(one(s, o) for s, o in pairs)))

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[Sequence[Score]]) -> dict[str, Metric]:
        values = [sc.values[self.scorer] for per in scores for sc in per if self.scorer in sc.values]
        metrics = {self.scorer: mean_metric(values)}
        if self.scorer == "llm_judge":
            bad = sum(1 for per in scores for sc in per if sc.details.get("judge_unparseable"))
            failed = sum(1 for per in scores for sc in per if "judge_error" in sc.details)
            metrics["judge_unparseable"] = Metric(float(bad), None, sum(len(p) for p in scores))
            metrics["judge_failed"] = Metric(float(failed), None, sum(len(p) for p in scores))
        return metrics


def _text(out: Output) -> str:
    if out.message.content or not out.message.tool_calls:
        return out.message.content
    return json.dumps([{"name": c.tool_name, "arguments": c.arguments} for c in out.message.tool_calls])
