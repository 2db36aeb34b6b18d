"""What an evaluation task is: data -> requests -> scores -> metrics, as plain objects the harness runs.

    task = TASKS["humaneval"](options)                 # options: TaskOptions (data file, limit, k, ...)
    samples = task.load()                             # list[Sample]: the task's items (bad rows: DataError)
    request = task.chat_request(sample)               # generation tasks: what to ask the model
    scores = await task.score([(sample, output), ...])  # one Score per pair, in order
    metrics = task.aggregate(samples, scores)          # {"pass@1": Metric(value, stderr, n), ...}

A task never talks to a model itself: the harness (herd/eval/harness.py) sends its requests through a
`Generator` (herd/generator.py: the in-process engine or any OpenAI-compatible URL), or scores outputs the
user already has (`--samples FILE`, read with `task.read_sample`). Log-likelihood tasks (multiple choice,
perplexity) implement `loglik_requests` instead of `chat_request` and are run on an in-process model.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from herd.generator import ChatRequest
from herd.tokenizer.messages import Message
from herd.train.data import DataError, read_jsonl  # the tasks' data errors name file:line


@dataclass
class Sample:
    """One item of a task: a stable id (e.g. "HumanEval/0", "simple_python_12") and the raw record."""

    id: str
    data: dict[str, Any]
    category: str | None = None  # a sub-task (BFCL's categories); metrics are also reported per category


@dataclass
class Output:
    """What a model answered for a sample: the assistant message (text and tool calls) and the raw text."""

    message: Message
    finish_reason: str = "stop"
    error: str | None = None  # the request failed (after retries): scored as a failure, counted
    repeat: int = 0  # which of the n samples drawn for this item (pass@k)


@dataclass
class Score:
    """A sample's score: named values (1.0 / 0.0 for pass/fail) and details for the records file."""

    values: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metric:
    value: float
    stderr: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stderr": self.stderr, "n": self.n}


@dataclass
class TaskOptions:
    data: Path | None = None  # the user's data file (required by mc / perplexity / generate)
    limit: int | None = None  # the first N items
    categories: Sequence[str] | None = None  # BFCL: which categories (None: the task's default set)
    num_samples: int = 1  # generations per item (pass@k needs k <= num_samples)
    ks: Sequence[int] = (1,)  # pass@k to report
    workers: int = 2  # parallel executions (HumanEval's sandboxes)
    timeout: float = 10.0  # seconds per execution
    memory_mb: int = 1024  # memory limit per execution
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific (scorer, judge, rubric, ...)
    skip_bad_rows: bool = False  # a bad row of the user's data: skipped and counted, instead of fatal


@runtime_checkable
class Task(Protocol):
    name: str
    kind: str  # "generate" (chat requests) or "loglik"

    def load(self) -> list[Sample]:
        """The task's items (after --limit / --categories)."""

    def chat_request(self, sample: Sample) -> ChatRequest:
        """Generation tasks: the request for one item (messages, tools, sampling left to the harness)."""

    def read_sample(self, record: dict[str, Any], where: str) -> tuple[str, Output]:
        """--samples: one user record (the task's own sample format, e.g. {"task_id", "completion"}) as
        (sample id, output); `where` is "file:line" for errors."""

    async def score(self, pairs: Sequence[tuple[Sample, Output]]) -> list[Score]:
        """One Score per (sample, output), in order; executes code / calls judges as the task needs."""

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[Sequence[Score]]) -> dict[str, Metric]:
        """Metrics over the items; scores[i] holds item i's scores (one per repeat)."""


def user_rows(path: Path, options: TaskOptions, skipped: list[str]) -> Iterator[tuple[str, Any]]:
    """(file:line, record) of a JSONL file the user brought: a line that is not JSON is a DataError, or, with
    options.skip_bad_rows, appended to `skipped` (its message) and passed over. Tasks check each record the
    same way (`bad_row`)."""
    return read_jsonl(path, lambda e: bad_row(e, options, skipped))


def bad_row(error: DataError, options: TaskOptions, skipped: list[str]) -> None:
    """Raise a bad row's error, or record it when the run skips bad rows."""
    if not options.skip_bad_rows:
        raise error
    skipped.append(str(error))


def mean_metric(values: Sequence[float]) -> Metric:
    """The mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n == 0:
        return Metric(float("nan"), None, 0)
    mean = sum(values) / n
    if n < 2:
        return Metric(mean, None, n)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Metric(mean, math.sqrt(var / n), n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which
    c pass."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
