"""The evaluation harness: a task's items through a model (or the user's own outputs), scored, aggregated,
written down.

    task = make_task("humaneval", TaskOptions(limit=20, num_samples=5, ks=(1, 5)))
    run = await evaluate(task, RunConfig(model="smollm2"), generator=gen, out_dir="runs/he")
    run = await evaluate(task, RunConfig(model="mine"), samples_file="samples.jsonl", out_dir="runs/he")
    run = await evaluate(mc_task, RunConfig(model="m"), lm=LogLikelihood(model, tokenizer), out_dir="runs/mc")

Generation goes through a `Generator` (herd/generator.py: the in-process engine, whose continuous batching
serves the concurrent requests as one batch, or any OpenAI-compatible URL): `concurrency` requests in
flight, each retried `retries` times with backoff; one that still fails is recorded with its error and
scored as a failure, and the summary says the run is partial. OUT/ gets `records.jsonl` (per sample and
repeat: the request, the output, the scores and details), `summary.json` ({"task", "n", "metrics": {name:
{value, stderr, n}}, "config", "errors", "partial", "seconds"}) and `summary.md` (a table). `compare(a, b)`
pairs two runs' records by sample and reports each metric's difference with a paired standard error and
p-value.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.eval.task import DataError, Metric, Output, Sample, Score, Task, TaskOptions, read_jsonl
from herd.generator import ChatRequest, Generator, complete
from herd.tokenizer.messages import Message

TASKS = {
    "humaneval": "herd.eval.tasks.humaneval:HumanEvalTask",
    "bfcl": "herd.eval.tasks.bfcl:BFCLTask",
    "mc": "herd.eval.tasks.mc:MultipleChoiceTask",
    "perplexity": "herd.eval.tasks.perplexity:PerplexityTask",
    "generate": "herd.eval.tasks.generate:GenerateTask",
}


def make_task(name: str, options: TaskOptions) -> Task:
    if name not in TASKS:
        raise HerdError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(options)


@dataclass
class RunConfig:
    model: str  # what the summary calls the model (a name, a path or an endpoint's model)
    base_url: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 512
    seed: int = 0
    num_samples: int = 1  # generations per item
    concurrency: int = 8
    retries: int = 2
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth recording (limit, data, ...)


@dataclass
class RunResult:
    task: str
    n: int
    metrics: dict[str, Metric]
    errors: int
    out_dir: Path | None
    seconds: float
    summary: dict[str, Any]


# ---- generation -------------------------------------------------------------------------------------


async def _generate_one(gen: Generator, request: ChatRequest, retries: int) -> Output:
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            result = await complete(gen, request)
            return Output(result.message, result.finish_reason)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:  # an endpoint error: retried, then recorded
            if attempt == retries:
                return Output(Message("assistant", ""), "error", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def generate(task: Task, samples: Sequence[Sample], gen: Generator, cfg: RunConfig,
                   progress: Callable[[int], None] | None = None,
                   requests: Sequence[ChatRequest] | None = None) -> list[list[Output]]:
    """cfg.num_samples outputs per item (repeat r uses seed cfg.seed + r), cfg.concurrency in flight;
    `requests`: the items' task.chat_request(...) when the caller has made them already."""
    gate = asyncio.Semaphore(max(1, cfg.concurrency))
    bases = list(requests) if requests is not None else [task.chat_request(s) for s in samples]

    async def one(i: int, repeat: int) -> Output:
        base = bases[i]
        request = ChatRequest(base.messages, base.tools, base.tool_choice, base.tool_prompt_format,
                              base.response_format, base.max_tokens or cfg.max_tokens, cfg.temperature, cfg.top_p,
                              cfg.seed + repeat, base.stop)
        async with gate:
            out = await _generate_one(gen, request, cfg.retries)
        out.repeat = repeat
        if progress:
            progress(1)
        return out

    flat = await asyncio.gather(*(one(i, r) for i in range(len(samples)) for r in range(cfg.num_samples)))
    k = cfg.num_samples
    return [list(flat[i * k:(i + 1) * k]) for i in range(len(samples))]


def read_samples(task: Task, path: str | Path, samples: Sequence[Sample]) -> tuple[list[Sample], list[list[Output]]]:
    """The user's outputs (--samples FILE, in the task's own format) grouped by item, in the task's order;
    items with no output are left out. An unknown id is a DataError naming file:line."""
    by_id = {s.id: i for i, s in enumerate(samples)}
    grouped: dict[int, list[Output]] = {}
    for where, rec in read_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object")
        sid, out = task.read_sample(rec, where)
        if sid not in by_id:
            raise DataError(f"{where}: unknown {task.name} item {sid!r}")
        group = grouped.setdefault(by_id[sid], [])
        out.repeat = len(group)
        group.append(out)
    if not grouped:
        raise DataError(f"{path}: no samples")
    order = sorted(grouped)
    return [samples[i] for i in order], [grouped[i] for i in order]


# ---- running a task -------------------------------------------------------------------------------------


def _herd_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-herd")
    except Exception:
        return "unknown"


def _record(sample: Sample, out: Output | None, score: Score, request: ChatRequest | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": sample.id}
    if sample.category:
        rec["category"] = sample.category
    if request is not None:
        rec["request"] = {"messages": [m.to_openai() for m in request.messages],
                          **({"tools": [t.tool_name for t in request.tools]} if request.tools else {})}
    if out is not None:
        rec["repeat"] = out.repeat
        calls = [{"name": c.tool_name, "arguments": c.arguments} for c in out.message.tool_calls]
        rec["output"] = {"content": out.message.content, "tool_calls": calls, "finish_reason": out.finish_reason}
        if out.error:
            rec["error"] = out.error
    rec["scores"] = score.values
    if score.details:
        rec["details"] = score.details
    return rec


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"### {summary['task']} — {summary['config']['model']}", "",
             "| metric | value | ± stderr | n |", "|---|---:|---:|---:|"]
    for name, m in summary["metrics"].items():
        se = "" if m["stderr"] is None else f"{m['stderr']:.4f}"
        lines.append(f"| {name} | {m['value']:.4f} | {se} | {m['n']} |")
    if summary.get("partial"):
        lines += ["", f"**Partial run**: {summary['errors']} request(s) failed after retries and were scored as "
                      "failures (see `error` in records.jsonl)."]
    return "\n".join(lines) + "\n"


async def evaluate(task: Task, cfg: RunConfig, *, generator: Generator | None = None, lm: Any = None,
                   samples_file: str | Path | None = None, out_dir: str | Path | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_total: Callable[[int], None] | None = None,
                   samples: Sequence[Sample] | None = None) -> RunResult:
    """Run `task` with exactly one of: a generator (generation tasks), an `lm` (herd.eval.loglik's
    LogLikelihood, for log-likelihood tasks) or the user's `samples_file`; see the module docstring.
    `samples`: the task's items when the caller has loaded them already (else task.load())."""
    t0 = time.perf_counter()
    samples = list(samples) if samples is not None else task.load()
    if not samples:
        raise HerdError(f"{task.name}: no items to evaluate")
    requests: list[ChatRequest | None] = [None] * len(samples)
    outputs: list[list[Output]]
    if task.kind == "loglik":
        if lm is None:
            raise HerdError(f"{task.name} scores log-likelihoods: it needs an in-process model (--model), not "
                            "an endpoint or a samples file")
        if on_total:
            on_total(len(samples))
        scores = [[sc] for sc in task.loglik_scores(samples, lm, progress)]  # type: ignore[attr-defined]
        outputs = [[] for _ in samples]
    else:
        if samples_file is not None:
            samples, outputs = read_samples(task, samples_file, samples)
            requests = [None] * len(samples)
        elif generator is not None:
            if on_total:
                on_total(len(samples) * cfg.num_samples)
            requests = [task.chat_request(s) for s in samples]
            outputs = await generate(task, samples, generator, cfg, progress, requests)
        else:
            raise HerdError(f"{task.name}: give a model, an endpoint or a samples file")
        pairs = [(s, o) for s, outs in zip(samples, outputs) for o in outs]
        flat = await task.score(pairs)
        if len(flat) != len(pairs):
            raise AssertionError(f"{task.name}.score returned {len(flat)} scores for {len(pairs)} outputs")
        scores, i = [], 0
        for outs in outputs:
            scores.append(list(flat[i:i + len(outs)]))
            i += len(outs)
    metrics = task.aggregate(samples, scores)
    errors = sum(1 for outs in outputs for o in outs if o.error)
    seconds = time.perf_counter() - t0
    n_outputs = sum(len(o) for o in outputs) or len(samples)
    skipped = list(getattr(task, "skipped", []))
    summary = {"task": task.name, "n": len(samples), "metrics": {k: m.to_dict() for k, m in metrics.items()},
               "errors": errors, "partial": errors > 0, "skipped_rows": len(skipped),
               "skipped_examples": skipped[:10], "seconds": round(seconds, 2),
               "samples_per_s": round(n_outputs / max(seconds, 1e-9), 3),
               "config": {**asdict(cfg), "samples_file": str(samples_file) if samples_file else None,
                          "herd_version": _herd_version()}}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        lines = []
        for s, req, outs, per in zip(samples, requests, outputs, scores):
            if outs:
                lines += [json.dumps(_record(s, o, sc, req), ensure_ascii=False) for o, sc in zip(outs, per)]
            else:
                lines += [json.dumps(_record(s, None, sc, None), ensure_ascii=False) for sc in per]
        _write_atomic(out / "records.jsonl", "\n".join(lines) + "\n")
        _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        _write_atomic(out / "summary.md", markdown(summary))
    return RunResult(task.name, len(samples), metrics, errors, out, seconds, summary)


# ---- comparing two runs -----------------------------------------------------------------------------------


def _per_item(records_path: Path) -> dict[str, dict[str, float]]:
    """{item id: {score name: mean over the item's repeats}} from a run's records.jsonl."""
    sums: dict[str, dict[str, list[float]]] = {}
    for where, rec in read_jsonl(records_path):
        if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("scores"), dict):
            raise DataError(f"{where}: not a herd eval record")
        per = sums.setdefault(str(rec["id"]), {})
        for k, v in rec["scores"].items():
            per.setdefault(k, []).append(float(v))
    return {i: {k: sum(v) / len(v) for k, v in per.items()} for i, per in sums.items()}


def compare(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Per score: the mean over the items both runs scored, B - A, the paired standard error of the
    difference and a two-sided p-value (normal approximation of the paired t statistic)."""
    dirs = [Path(run_a), Path(run_b)]
    for d in dirs:
        if not (d / "records.jsonl").is_file() or not (d / "summary.json").is_file():
            raise HerdError(f"{d}: not a herd eval run (no records.jsonl / summary.json)")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in dirs)
    if sa["task"] != sb["task"]:
        raise HerdError(f"the runs are of different tasks ({sa['task']} and {sb['task']})")
    a, b = _per_item(dirs[0] / "records.jsonl"), _per_item(dirs[1] / "records.jsonl")
    common = sorted(set(a) & set(b))
    if not common:
        raise HerdError("the runs have no item in common")
    rows = []
    names = sorted({k for i in common for k in a[i]} & {k for i in common for k in b[i]})
    for name in names:
        ids = [i for i in common if name in a[i] and name in b[i]]
        d = [b[i][name] - a[i][name] for i in ids]
        n = len(d)
        mean_a = sum(a[i][name] for i in ids) / n
        mean_b = sum(b[i][name] for i in ids) / n
        diff = sum(d) / n
        se = math.sqrt(sum((x - diff) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
        if se > 0:
            p = math.erfc(abs(diff / se) / math.sqrt(2))
        else:
            p = 1.0 if diff == 0 else 0.0
        rows.append({"score": name, "n": n, "a": mean_a, "b": mean_b, "diff": diff, "stderr": se, "p_value": p,
                     "b_better": sum(x > 0 for x in d), "a_better": sum(x < 0 for x in d)})
    return {"task": sa["task"], "a": str(dirs[0]), "b": str(dirs[1]), "model_a": sa["config"]["model"],
            "model_b": sb["config"]["model"], "items": len(common), "scores": rows}
