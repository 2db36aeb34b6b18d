"""`mc`: multiple choice by log-likelihood (MMLU / ARC / HellaSwag style), on an in-process model.

One record per line: `choices` (a list of strings), `answer` (the right choice's index, its letter "A".., or
its text), and either `question` (asked as "Question: {question}\\nAnswer:") or `context` (used as it is,
HellaSwag's ctx); `id` optional. Each choice is scored as the continuation " {choice}" of that prompt:
`acc` picks the highest total log-probability, `acc_norm` the highest per byte of the choice (lm-eval's
normalisation), so long choices are not penalised for their length.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from herd.errors import HerdError
from herd.eval.task import (DataError, Metric, Output, Sample, Score, TaskOptions, bad_row, mean_metric,
                            user_rows)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class MultipleChoiceTask:
    name = "mc"
    kind = "loglik"

    def __init__(self, options: TaskOptions) -> None:
        if options.data is None:
            raise HerdError("the mc task needs --data FILE (JSONL: question or context, choices, answer)")
        self.options = options

    def load(self) -> list[Sample]:
        out: list[Sample] = []
        self.skipped: list[str] = []
        for where, rec in user_rows(self.options.data, self.options, self.skipped):
            try:
                out.append(Sample(str(rec.get("id", where.rsplit(":", 1)[-1])) if isinstance(rec, dict) else "",
                                  _checked(rec, where)))
            except DataError as e:
                bad_row(e, self.options, self.skipped)
                continue
            if self.options.limit is not None and len(out) >= self.options.limit:
                break
        return out

    @staticmethod
    def prompt(rec: dict[str, Any]) -> str:
        return rec["context"] if "context" in rec else f"Question: {rec['question']}\nAnswer:"

    @staticmethod
    def continuation(choice: str) -> str:
        return choice if choice[:1].isspace() else " " + choice

    def loglik_scores(self, samples: Sequence[Sample], lm: Any, progress: Callable[[int], None] | None = None
                      ) -> list[Score]:
        scores = []
        for s in samples:
            prompt = self.prompt(s.data)
            logps = [lm.continuation(prompt, self.continuation(c))[0] for c in s.data["choices"]]
            norm = [lp / max(1, len(c.encode("utf-8"))) for lp, c in zip(logps, s.data["choices"])]
            gold = s.data["_gold"]
            pick, pick_norm = max(range(len(logps)), key=logps.__getitem__), max(range(len(norm)), key=norm.__getitem__)
            scores.append(Score({"acc": float(pick == gold), "acc_norm": float(pick_norm == gold)},
                                {"logprobs": logps, "gold": gold, "pick": pick, "pick_norm": pick_norm}))
            if progress:
                progress(1)
        return scores

    def chat_request(self, sample: Sample):  # pragma: no cover - a log-likelihood task
        raise HerdError("mc is scored by log-likelihood; it makes no chat requests")

    def read_sample(self, record: dict[str, Any], where: str) -> tuple[str, Output]:
        raise DataError(f"{where}: mc scores log-likelihoods from a model; it takes no --samples")

    async def score(self, pairs: Sequence[tuple[Sample, Output]]) -> list[Score]:  # pragma: no cover
        raise HerdError("mc is scored by log-likelihood")

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[Sequence[Score]]) -> dict[str, Metric]:
        flat = [per[0] for per in scores if per]
        return {k: mean_metric([sc.values[k] for sc in flat]) for k in ("acc", "acc_norm")}


def _checked(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object")
    choices = rec.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: `choices` must be a list of at least two non-empty strings")
    if not isinstance(rec.get("question"), str) and not isinstance(rec.get("context"), str):
        raise DataError(f"{where}: expected `question` or `context` (a string)")
    answer = rec.get("answer")
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, int) and 0 <= answer < len(choices):
        gold = answer
    elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS[:len(choices)]:
        gold = LETTERS.index(answer.upper())
    elif isinstance(answer, str) and answer in choices:
        gold = choices.index(answer)
    else:
        raise DataError(f"{where}: `answer` must be a choice's index, letter or text, got {answer!r}")
    return {**rec, "_gold": gold, "_where": where}
