"""`herd sdg`: synthetic data generation — tool-use dialogs for SFT, filtered and decontaminated."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from herd.errors import HerdError

EPILOG = """examples:
  herd sdg tools --tools tools.json --stubs stubs.py -n 300 --out tools_sft.jsonl
  herd sdg tools --tools tools.json --stubs stubs.py -n 1000 --base-url http://127.0.0.1:8321/v1 --api-model llama \\
      --out tools_sft.jsonl --fail-on-contamination
  herd sdg tools --tools tools.json --stubs stubs.py -n 300 --requests template --out t.jsonl   # small models
  herd sdg instruct --seeds seeds.jsonl -n 500 --out instruct.jsonl          # self-instruct
  herd sdg instruct --seeds seeds.jsonl -n 500 --out safe.jsonl --llama-guard ./Llama-Guard-3-1B   # + a safety filter
  herd sdg rejection --data prompts.jsonl --out best.jsonl -n 4 --verifier exact   # best of N, verified
  herd train sft --data tools_sft.jsonl --out runs/tools --lora-rank 16      # then train on them
tools.json: OpenAI tool definitions (a list, or {"tools": [...]}); stubs.py: one Python function per tool,
called with the generated arguments (its return value, JSON-encoded, is the tool result; an exception drops
the dialog). Each request is checked against the evaluation sets (--decontaminate, default humaneval,bfcl):
overlapping dialogs are dropped and listed in the summary; --fail-on-contamination exits 1 instead.
--llama-guard MODEL (tools, instruct) runs Llama Guard 3 in-process on the dialogs that passed the other
filters and drops those it calls unsafe (counted per category) or whose verdict it cannot read.
exit status: 0 done, 1 contamination found with --fail-on-contamination, 2 bad input
"""


def add_sdg_parser(sub: Any) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("sdg", help="synthetic data: tool-use dialogs, self-instruct, rejection sampling",
                       epilog=EPILOG,
                       description="Synthetic data generation with a model, filtered and decontaminated.",
                       formatter_class=fmt)
    actions = p.add_subparsers(dest="sdg_action", metavar="KIND")
    t = actions.add_parser("tools", help="tool-use dialogs from tool schemas and stub implementations",
                           epilog=EPILOG, formatter_class=fmt)
    t.add_argument("--tools", required=True, metavar="FILE", help="OpenAI tool definitions (JSON)")
    t.add_argument("--stubs", required=True, metavar="FILE", help="Python file: a function per tool name")
    t.add_argument("--out", required=True, metavar="FILE", help="the dialogs, as herd train sft JSONL")
    t.add_argument("-n", type=int, default=100, help="dialogs to attempt (default 100)")
    t.add_argument("--no-tool-share", type=float, default=0.15, help="share of requests that need no tool")
    t.add_argument("--requests", choices=["model", "template"], default="model",
                   help="who writes the tool requests: the model (from the values it invented; then it must "
                   "make the call again from the request alone) or templates around the invented values (for "
                   "small models; the invented call is the call)")
    t.add_argument("--request-templates", default=None, metavar="FILE",
                   help='with --requests template: JSON {tool name: ["What is the weather in {city}?", ...]}, the '
                        "tools' own request phrasings ({param} placeholders; every required one used)")
    t.add_argument("--tools-per-dialog", type=int, default=None, metavar="K",
                   help="offer K tools per dialog (the one it calls and K-1 others at random) instead of all")
    t.add_argument("--keep-calls-without-answer", action="store_true",
                   help="keep a dialog whose final answer fails its checks, ending with the call")
    t.add_argument("--unavailable-share", type=float, default=0.0, metavar="P",
                   help="with --tools-per-dialog: this share of the tool requests is offered other tools only, "
                        "and the reply says no offered tool does it (teaches when not to call)")
    t.add_argument("--prompts-out", default=None, metavar="FILE",
                   help="also write each dialog's request as a prompt for `herd train rejection-sample "
                        "--verifier tool_call` ({messages, tools, expected_tool_calls})")
    t.add_argument("--model", "-m", default=None, help="in-process model (default: the embedded one)")
    t.add_argument("--base-url", default=None, metavar="URL", help="or an OpenAI-compatible endpoint")
    t.add_argument("--api-model", default=None, metavar="NAME")
    t.add_argument("--api-key", default=None)
    t.add_argument("--temperature", "-t", type=float, default=1.0, help="for the requests (calls are greedy)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--concurrency", type=int, default=16)
    t.add_argument("--near-duplicate", type=float, default=0.8, metavar="J",
                   help="drop requests with word 3-gram Jaccard >= J to an earlier one (1 disables)")
    t.add_argument("--min-chars", type=int, default=8)
    t.add_argument("--max-chars", type=int, default=1000)
    t.add_argument("--decontaminate", default="humaneval,bfcl",
                   help="evaluation sets to check against (comma list; 'none' to skip)")
    t.add_argument("--fail-on-contamination", action="store_true", help="exit 1 when any request overlaps")
    t.add_argument("--judge-min-score", type=float, default=None, metavar="S",
                   help="keep only dialogs whose answer the model, as a judge, scores >= S (0..1; off by default)")
    _add_guard_options(t)
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    i = actions.add_parser("instruct", help="self-instruct: new instructions from seed tasks, then answers",
                           description="Self-instruct from seed tasks: the model proposes new tasks from a few "
                           "examples at a time; duplicates, off-length and non-English ones are dropped; then the "
                           "model answers each. Output: herd train sft JSONL.", formatter_class=fmt)
    i.add_argument("--seeds", required=True, metavar="FILE", help='JSONL: {"instruction": ...} per line (>= 2)')
    i.add_argument("--out", required=True, metavar="FILE")
    i.add_argument("-n", type=int, default=100, help="new instructions to make (default 100)")
    i.add_argument("--shots", type=int, default=4, help="examples shown per proposal (default 4)")
    i.add_argument("--near-duplicate", type=float, default=0.7, metavar="J")
    i.add_argument("--model", "-m", default=None)
    i.add_argument("--base-url", default=None, metavar="URL")
    i.add_argument("--api-model", default=None, metavar="NAME")
    i.add_argument("--api-key", default=None)
    i.add_argument("--temperature", "-t", type=float, default=1.0)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--concurrency", type=int, default=16)
    i.add_argument("--decontaminate", default="humaneval,bfcl")
    i.add_argument("--judge-min-score", type=float, default=None, metavar="S",
                   help="keep only answers the model, as a judge, scores >= S (0..1; off by default)")
    _add_guard_options(i)
    i.add_argument("--json", action="store_true")
    from herd.cli.train import RS_EPILOG, add_rejection_options

    rs = actions.add_parser("rejection", help="N answers per prompt, verified; the best kept (as herd train "
                            "rejection-sample)", epilog=RS_EPILOG, formatter_class=fmt)
    add_rejection_options(rs)
    p.set_defaults(handler=cmd_sdg, sdg_parser=p)
    return p


def _add_guard_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llama-guard", default=None, metavar="MODEL",
                   help="drop the dialogs that Llama Guard 3 (a checkpoint path or pulled repo name, run in-process) "
                   "calls unsafe, judging each dialog's last message in context; counted per violated category "
                   "(off by default)")
    p.add_argument("--llama-guard-excluded", default=None, metavar="S1,S2",
                   help="Llama Guard categories to ignore (comma list of codes, e.g. S6,S8)")


def cmd_sdg(args: argparse.Namespace) -> int:
    if args.sdg_action is None:
        args.sdg_parser.print_help(sys.stderr)
        return 2
    if args.sdg_action == "rejection":
        from herd.cli.train import run_rejection_sample

        missing = [f"--{d}" for d in ("data", "out", "verifier") if getattr(args, d) is None]
        if missing:
            raise HerdError(f"herd sdg rejection: {', '.join(missing)} required")
        return run_rejection_sample(args)
    if args.sdg_action == "instruct":
        return _instruct(args)
    return _tools(args)


def _generator(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the Generator, the in-process registry to shut down or None)."""
    if args.base_url:
        from herd.generator_http import OpenAIGenerator

        if not args.api_model:
            raise HerdError("--base-url needs --api-model (the model's name there)")
        key = args.api_key or os.environ.get("OPENAI_API_KEY")
        return OpenAIGenerator(args.base_url, args.api_model, api_key=key), None
    from herd import hub
    from herd.cli.eval import load_registry, local_generator

    ref = args.model or hub.DEFAULT_MODEL
    models = load_registry([ref], args.seed)
    return local_generator(models, ref), models


def _check_filter_options(args: argparse.Namespace) -> None:
    """--judge-min-score and --llama-guard checked before anything is generated (the guard is loaded later)."""
    if args.judge_min_score is not None and not 0.0 <= args.judge_min_score <= 1.0:
        raise HerdError("--judge-min-score must be in 0..1")
    if args.llama_guard_excluded is not None and args.llama_guard is None:
        raise HerdError("--llama-guard-excluded needs --llama-guard")
    if args.llama_guard is not None:
        from herd import hub
        from herd.safety.taxonomy import parse_codes

        parse_codes(args.llama_guard_excluded, what="--llama-guard-excluded category")
        hub.resolve(args.llama_guard)  # a missing checkpoint is one line now, not after the generation


def _judged(args: argparse.Namespace, gen: Any, rows: list[dict[str, Any]], report: Any) -> list[dict[str, Any]]:
    """--judge-min-score: the rows the model, as a judge, scores high enough (all rows without it)."""
    if args.judge_min_score is None:
        return rows
    from herd.eval.scorers import LLMJudge
    from herd.sdg import filters

    return asyncio.run(filters.judge_filter(rows, LLMJudge(gen), args.judge_min_score, report))


def _guarded(args: argparse.Namespace, rows: list[dict[str, Any]], report: Any) -> list[dict[str, Any]]:
    """--llama-guard: the rows the guard calls safe (all rows without it); loaded once the generator is gone."""
    if args.llama_guard is None:
        return rows
    from tqdm import tqdm

    from herd.safety.llama_guard import LlamaGuard
    from herd.sdg import filters

    if not rows:  # nothing to judge: the counts (0) without loading the guard
        return filters.guard_filter(rows, None, report)
    guard = LlamaGuard.load(args.llama_guard, excluded_categories=args.llama_guard_excluded or ())
    with tqdm(total=len(rows), unit="dialog", desc="llama guard", file=sys.stderr, dynamic_ncols=True) as bar:
        kept = filters.guard_filter(rows, guard, report, progress=bar.update)
    if report.counts.get("llama_guard_unreadable") == len(rows):
        print(f"herd: warning: no Llama Guard verdict could be read ('safe' or 'unsafe' and codes): is "
              f"{args.llama_guard} a Llama Guard 3 checkpoint?", file=sys.stderr)
    return kept


def _instruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from herd.sdg import filters
    from herd.sdg.evalsets import eval_prompts
    from herd.sdg.instruct import read_seeds, self_instruct
    from herd.train.rejection import write_jsonl

    if args.n < 1 or args.concurrency < 1 or args.shots < 1:
        raise HerdError("-n, --shots and --concurrency must be >= 1")
    _check_filter_options(args)
    seeds = read_seeds(args.seeds)
    sets = [] if args.decontaminate.strip().lower() == "none" else \
        [x.strip() for x in args.decontaminate.split(",") if x.strip()]
    decon = filters.Decontaminator(eval_prompts(sets)) if sets else None
    report = filters.FilterReport()
    gen, models = _generator(args)
    try:
        with tqdm(total=args.n, unit="instruction", desc="self-instruct", file=sys.stderr, dynamic_ncols=True) as bar:
            result = asyncio.run(self_instruct(gen, seeds, n=args.n, seed=args.seed, shots=args.shots,
                                               temperature=args.temperature, near_duplicate=args.near_duplicate,
                                               concurrency=args.concurrency, progress=bar.update))
        result.dialogs = _judged(args, gen, result.dialogs, report)
    finally:
        if models is not None:
            models.shutdown()
    rows = result.dialogs
    flagged = decon.check(rows) if decon else {}
    rows = [r for k, r in enumerate(rows) if k not in flagged]
    report.add("contaminated", len(flagged))
    rows = _guarded(args, rows, report)
    write_jsonl(args.out, rows)
    summary = {"out": str(args.out), "dialogs": len(rows), "instructions": len(result.instructions),
               "filtered": {**result.counts, **report.counts},
               "filtered_detail": report.detail, "decontaminated_against": sets}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{len(rows)} dialogs -> {args.out}; {summary['filtered']}"
              + (f"; by category {report.detail}" if report.detail else ""))
    return 0


def _tools(args: argparse.Namespace) -> int:
    from herd.sdg import filters
    from herd.sdg.evalsets import eval_prompts
    from herd.sdg.tools import (
        as_prompt,
        calls_valid,
        generate_tool_dialogs,
        load_stubs,
        read_request_templates,
        read_tools,
        tool_names,
    )
    from herd.train.rejection import write_jsonl

    if args.n < 1 or args.concurrency < 1:
        raise HerdError("-n and --concurrency must be >= 1")
    _check_filter_options(args)
    if args.base_url and not args.api_model:
        raise HerdError("--base-url needs --api-model (the model's name there)")
    tools = read_tools(args.tools)
    stubs = load_stubs(args.stubs)
    if args.tools_per_dialog is not None and args.tools_per_dialog < 1:
        raise HerdError("--tools-per-dialog must be >= 1")
    if not 0.0 <= args.unavailable_share < 1.0:
        raise HerdError("--unavailable-share must be in [0, 1)")
    if args.unavailable_share and (args.tools_per_dialog is None or args.tools_per_dialog >= len(tools)):
        raise HerdError("--unavailable-share needs --tools-per-dialog smaller than the number of tools "
                        f"({len(tools)}): a request's tool can only be missing when some tools are left out")
    if args.request_templates and args.requests != "template":
        raise HerdError("--request-templates needs --requests template")
    templates = read_request_templates(args.request_templates, tools) if args.request_templates else None
    from herd.tokenizer.messages import to_tools

    missing = [d.tool_name for d in to_tools(tools) if d.tool_name not in stubs]
    if missing:
        raise HerdError(f"no stub implementation for {', '.join(missing)} (define a function of that name in "
                        f"{args.stubs})")
    sets = [] if args.decontaminate.strip().lower() == "none" else \
        [x.strip() for x in args.decontaminate.split(",") if x.strip()]
    decon = filters.Decontaminator(eval_prompts(sets)) if sets else None  # bad set names fail before the model
    from tqdm import tqdm

    async def run(gen: Any) -> Any:
        with tqdm(total=args.n, unit="dialog", desc="sdg tools", file=sys.stderr, dynamic_ncols=True) as bar:
            return await generate_tool_dialogs(gen, tools, stubs, n=args.n, seed=args.seed,
                                               temperature=args.temperature, no_tool_share=args.no_tool_share,
                                               concurrency=args.concurrency, requests=args.requests,
                                               tools_per_dialog=args.tools_per_dialog,
                                               request_templates=templates,
                                               keep_calls_without_answer=args.keep_calls_without_answer,
                                               unavailable_share=args.unavailable_share,
                                               progress=bar.update)

    report = filters.FilterReport()
    gen, models = _generator(args)
    try:
        result = asyncio.run(run(gen))
        result.dialogs = _judged(args, gen, result.dialogs, report)
    finally:
        if models is not None:
            models.shutdown()
    rows = result.dialogs
    invalid = [d for d in rows if not calls_valid(d)]
    rows = [d for d in rows if calls_valid(d)]
    report.add("invalid_call", len(invalid))
    rows = filters.exact_dedupe(rows, filters.prompt_text, report)
    if args.near_duplicate < 1.0:
        rows = filters.near_dedupe(rows, filters.prompt_text, report, threshold=args.near_duplicate)
    rows = filters.length_filter(rows, filters.prompt_text, report, min_chars=args.min_chars, max_chars=args.max_chars)
    rows = filters.language_filter(rows, filters.prompt_text, report)
    flagged: dict[int, str] = decon.check(rows, filters.prompt_text) if decon else {}
    contaminated = [{"request": filters.prompt_text(rows[i]), "overlap": g} for i, g in sorted(flagged.items())]
    rows = [r for i, r in enumerate(rows) if i not in flagged]
    report.add("contaminated", len(contaminated))
    rows = _guarded(args, rows, report)
    write_jsonl(args.out, rows)
    if args.prompts_out:
        write_jsonl(args.prompts_out, [as_prompt(r) for r in rows])
    summary = {"out": str(args.out), "dialogs": len(rows), "generation": result.counts,
               "generation_errors": result.first_errors, "filtered": report.counts, "filtered_detail": report.detail,
               "decontaminated_against": sets, "contaminated": contaminated[:20], "tools": tool_names(rows)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{len(rows)} dialogs -> {args.out}; generation {result.counts}; filtered {report.counts}"
              + (f" (by category {report.detail})" if report.detail else "") + f"; per tool {summary['tools']}")
        for c in contaminated[:5]:
            print(f"contaminated: {c['request'][:80]!r} shares {c['overlap']!r}", file=sys.stderr)
    if contaminated and args.fail_on_contamination:
        print(f"herd: error: {len(contaminated)} request(s) overlap {', '.join(sets)}", file=sys.stderr)
        return 1
    return 0
