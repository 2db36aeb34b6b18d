"""`perplexity`: per-token negative log-likelihood, perplexity and bits per byte of text files, on an
in-process model, under a sliding window (--max-len tokens moved by --stride; every token predicted once).

--data is a plain text file (one document), or JSONL records with a `text` field (one document each).
Reported over the whole corpus: `token_perplexity` = exp(total NLL / tokens), `nll_per_token` (nats, with
its standard error over documents), and `bits_per_byte` = total NLL / ln 2 / UTF-8 bytes — comparable across
tokenizers.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from herd.errors import HerdError
from herd.eval.task import (DataError, Metric, Output, Sample, Score, TaskOptions, bad_row, mean_metric,
                            user_rows)


class PerplexityTask:
    name = "perplexity"
    kind = "loglik"

    def __init__(self, options: TaskOptions) -> None:
        if options.data is None:
            raise HerdError("the perplexity task needs --data FILE (.txt, or JSONL with `text`)")
        self.options = options

    def load(self) -> list[Sample]:
        path = self.options.data
        self.skipped: list[str] = []
        if path.suffix in (".jsonl", ".json"):
            out = []
            for where, rec in user_rows(path, self.options, self.skipped):
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not rec["text"]:
                    bad_row(DataError(f"{where}: expected an object with a non-empty `text`"), self.options,
                            self.skipped)
                    continue
                out.append(Sample(str(rec.get("id", where.rsplit(":", 1)[-1])), {"text": rec["text"]}))
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{path}: cannot read as UTF-8 text: {e}") from None
            out = [Sample(path.name, {"text": text})] if text.strip() else []
        if not out:
            raise DataError(f"{path}: no text")
        return out[: self.options.limit] if self.options.limit is not None else out

    def loglik_scores(self, samples: Sequence[Sample], lm: Any, progress: Callable[[int], None] | None = None
                      ) -> list[Score]:
        max_len = self.options.extra.get("max_len")
        stride = self.options.extra.get("stride")
        scores = []
        for s in samples:
            nll, n = lm.rolling(lm.encode(s.data["text"]), max_len, stride)
            nbytes = len(s.data["text"].encode("utf-8"))
            scores.append(Score({"nll_per_token": nll / max(n, 1)}, {"nll": nll, "tokens": n, "bytes": nbytes}))
            if progress:
                progress(1)
        return scores

    def chat_request(self, sample: Sample):  # pragma: no cover - a log-likelihood task
        raise HerdError("perplexity is scored by log-likelihood; it makes no chat requests")

    def read_sample(self, record: dict[str, Any], where: str) -> tuple[str, Output]:
        raise DataError(f"{where}: perplexity scores log-likelihoods from a model; it takes no --samples")

    async def score(self, pairs: Sequence[tuple[Sample, Output]]) -> list[Score]:  # pragma: no cover
        raise HerdError("perplexity is scored by log-likelihood")

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[Sequence[Score]]) -> dict[str, Metric]:
        flat = [per[0] for per in scores if per]
        nll = sum(sc.details["nll"] for sc in flat)
        tokens = sum(sc.details["tokens"] for sc in flat)
        nbytes = sum(sc.details["bytes"] for sc in flat)
        per_doc = mean_metric([sc.values["nll_per_token"] for sc in flat])
        return {"token_perplexity": Metric(math.exp(nll / max(tokens, 1)), None, tokens),
                "nll_per_token": Metric(nll / max(tokens, 1), per_doc.stderr, tokens),
                "bits_per_byte": Metric(nll / math.log(2) / max(nbytes, 1), None, nbytes)}
