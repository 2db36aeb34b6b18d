"""`herd train`: post-training from the terminal. `sft` fine-tunes a model (every weight, or a LoRA adapter)
on chat JSONL, with checkpoints that `--resume` continues exactly, and writes OUT/adapter (PEFT) and
OUT/merged (Hugging Face layout, served by `herd serve --model OUT/merged`)."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from herd.errors import HerdError

EPILOG = """examples:
  herd train sft --data tools.jsonl --out runs/tools --lora-rank 16 --max-steps 200 --lr 2e-4
  herd train sft --model ./Llama-3.2-1B-Instruct --data chat.jsonl --out runs/full --epochs 2 --lr 1e-5
  herd train sft --data tools.jsonl --out runs/tools --lora-rank 16 --max-steps 200 --resume   # after a crash
  herd train sft --config run.yaml --max-steps 50   # options from a file (YAML/JSON/TOML); the line wins
  herd serve --model runs/tools/merged          # the result, served
  torchrun --nproc-per-node 2 -m herd.cli train sft --data chat.jsonl --out runs/x --batch-size 4   # FSDP2
data: one JSON object per line, {"messages": [...OpenAI chat messages, tool calls and tool results...],
"tools": [...optional OpenAI tool definitions...]}; only the assistant turns are learnt, rendered in the
model's own chat format (the Llama 3.1 format with tools for Llama models, the checkpoint's template else).
exit status: 0 done, 2 bad input (data errors name file:line)
"""
DPO_EPILOG = """examples:
  herd train dpo --data prefs.jsonl --out runs/dpo --lora-rank 16 --max-steps 100 --beta 0.1
  herd train dpo --model runs/tools/merged --data prefs.jsonl --out runs/dpo --epochs 1 --lr 5e-7
data: one JSON object per line, {"prompt": "..." or [messages], "chosen": "..." or [messages],
"rejected": ..., "tools": [...]?}; only the answers are scored. The reference model is the starting model
(with LoRA: the base with the adapter switched off), its log-probs computed once and kept in OUT.
"""
DISTILL_EPILOG = """examples:
  herd train distill --model smollm2-135m-instruct --teacher ./SmolLM2-1.7B-Instruct --data chat.jsonl \\
      --out runs/kd --lora-rank 16 --max-steps 300 --temperature 2 --alpha 0.5 --top-k 64
loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, on the assistant tokens; the teacher runs
frozen beside the student (same tokenizer and vocabulary size), its top-K log-probs only with --top-k.
"""
PRETRAIN_EPILOG = """examples:
  herd train pretrain --data corpus.jsonl --out runs/cpt --max-seq-len 1024 --max-steps 500 --lr 1e-4
  herd train pretrain --data notes/*.txt --out runs/cpt --lora-rank 32 --epochs 2
data: JSONL records with a `text` field, or plain text files (each one document); documents are packed
end to end into blocks of --max-seq-len tokens, each attending only within itself.
"""
RS_EPILOG = """examples:
  herd train rejection-sample --data prompts.jsonl --out sft.jsonl --pairs-out prefs.jsonl -n 4 --verifier tool_call
  herd train rejection-sample --base-url http://127.0.0.1:8321/v1 --api-model llama --data math.jsonl \\
      --out sft.jsonl --verifier exact -n 8 --temperature 1.0
  herd train rejection-sample --data chat.jsonl --out sft.jsonl --verifier judge --rubric "accurate and brief" \\
      --min-score 0.7
prompts: one JSON object per line, {"messages": [...ending with the user's turn...], "tools": [...]?} plus
what the verifier reads: exact: "answer" (string or list); regex: "pattern"; json_schema: "schema";
tool_call: "expected_tool_calls" ([{"name", "arguments"}]); unit_tests: "tests" (Python run after the reply's
code in herd's sandbox); judge: nothing (a model grades 1-10).
The Llama 3.1 post-training loop as three commands: rejection-sample -> train sft -> train dpo.
"""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("train", help="post-training: SFT, DPO, continual pre-training, rejection sampling",
                       description="Post-training on one machine: supervised fine-tuning, DPO and continual "
                       "pre-training of every weight or a LoRA adapter, checkpointed and resumable; rejection "
                       "sampling to make SFT data.", epilog=EPILOG, formatter_class=fmt)
    actions = p.add_subparsers(dest="train_action", metavar="METHOD")
    sft = actions.add_parser("sft", help="supervised fine-tuning on chat JSONL", epilog=EPILOG, formatter_class=fmt)
    _common(sft, "chat JSONL: {messages, tools?} per line (see below)")
    sft.add_argument("--skip-long", action="store_true", help="skip dialogs longer than --max-seq-len")
    sft.add_argument("--tool-format", choices=["json", "function_tag", "python_list"], default="json",
                     help="how tool definitions and calls are rendered for Llama 3 models (default json)")

    dpo = actions.add_parser("dpo", help="direct preference optimization on preference JSONL",
                             epilog=DPO_EPILOG, formatter_class=fmt)
    _common(dpo, "preference JSONL: {prompt, chosen, rejected, tools?} per line")
    dpo.add_argument("--beta", type=float, default=0.1, help="DPO's beta (default 0.1)")
    dpo.add_argument("--loss-type", choices=["sigmoid", "ipo"], default="sigmoid")
    dpo.add_argument("--label-smoothing", type=float, default=0.0)
    dpo.add_argument("--skip-long", action="store_true", help="skip pairs with a sequence over --max-seq-len")
    dpo.add_argument("--tool-format", choices=["json", "function_tag", "python_list"], default="json")

    dist = actions.add_parser("distill", help="knowledge distillation from a teacher model on chat JSONL",
                              epilog=DISTILL_EPILOG, formatter_class=fmt)
    _common(dist, "chat JSONL: {messages, tools?} per line (the assistant turns are distilled)")
    dist.add_argument("--teacher", metavar="MODEL", help="the teacher (same vocabulary as --model); required")
    dist.add_argument("--temperature", type=float, default=2.0, help="softening temperature T (default 2)")
    dist.add_argument("--alpha", type=float, default=0.5, help="weight of the KD term; 1 - alpha goes to CE")
    dist.add_argument("--top-k", type=int, default=None, metavar="K",
                      help="keep only the teacher's top-K log-probs per token (less memory); default: all")
    dist.add_argument("--skip-long", action="store_true", help="skip dialogs longer than --max-seq-len")
    dist.add_argument("--tool-format", choices=["json", "function_tag", "python_list"], default="json")

    pre = actions.add_parser("pretrain", help="continual pre-training on raw text (packed, documents kept apart)",
                             epilog=PRETRAIN_EPILOG, formatter_class=fmt)
    _common(pre, "text: JSONL records with a `text` field, or plain .txt files (one document each)", many=True)

    rs = actions.add_parser("rejection-sample", help="N answers per prompt, verified; the best kept as SFT data",
                            epilog=RS_EPILOG, formatter_class=fmt)
    add_rejection_options(rs)
    _config_option(rs)
    for method, sp in actions.choices.items():
        sp.set_defaults(method_parser=sp, required=REQUIRED.get(method, ("data", "out")))
    p.set_defaults(handler=cmd_train, train_parser=p)
    return p


def add_rejection_options(rs: argparse.ArgumentParser) -> None:
    """rejection-sample's options (also `herd sdg rejection`)."""
    rs.add_argument("--model", "-m", default=None,
                    help="the model, in-process (default: the embedded smollm2-135m-instruct); or --base-url")
    rs.add_argument("--base-url", default=None, metavar="URL",
                    help="sample from an OpenAI-compatible server instead (e.g. http://127.0.0.1:8321/v1)")
    rs.add_argument("--api-model", default=None, metavar="NAME", help="the model name at --base-url")
    rs.add_argument("--api-key", default=None, help="bearer key for --base-url (default: $OPENAI_API_KEY)")
    rs.add_argument("--data", metavar="FILE", help="prompts JSONL: {messages, tools?, and what the verifier reads}; "
                    "required")
    rs.add_argument("--out", metavar="FILE", help="the kept answers as SFT JSONL; required")
    rs.add_argument("--pairs-out", default=None, metavar="FILE",
                    help="also best-vs-worst preference pairs (for herd train dpo)")
    rs.add_argument("-n", type=int, default=4, help="samples per prompt (default 4)")
    rs.add_argument("--verifier", choices=["exact", "regex", "json_schema", "tool_call", "unit_tests", "judge"],
                    help="how an answer is scored; required")
    rs.add_argument("--timeout", type=float, default=10.0, help="unit_tests: seconds per program (default 10)")
    rs.add_argument("--rubric", default="correct, helpful and concise", help="what the judge looks for")
    rs.add_argument("--judge-model", default=None, metavar="NAME",
                    help="the judge's model name at --base-url (default: the sampled model)")
    rs.add_argument("--min-score", type=float, default=1.0, help="keep the best answer if it scores this (0..1)")
    rs.add_argument("--temperature", "-t", type=float, default=0.8)
    rs.add_argument("--top-p", type=float, default=None)
    rs.add_argument("--max-tokens", type=int, default=512)
    rs.add_argument("--seed", type=int, default=0)
    rs.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    rs.add_argument("--json", action="store_true", help="print a summary object at the end")


def _common(p: argparse.ArgumentParser, data_help: str, many: bool = False) -> None:
    """The options every training method takes."""
    p.add_argument("--model", "-m", default=None,
                   help="HF or Meta checkpoint directory, .gguf file or built-in name (default: the embedded "
                   "smollm2-135m-instruct, dequantized to float32)")
    p.add_argument("--data", metavar="FILE", nargs="+" if many else None, help=f"{data_help}; required")
    p.add_argument("--out", metavar="DIR", help="where checkpoints, metrics and outputs go; required")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="train a LoRA adapter of this rank instead of every weight")
    p.add_argument("--lora-alpha", type=float, default=None, metavar="A", help="LoRA alpha (default 2 x rank)")
    p.add_argument("--lora-dropout", type=float, default=0.0, metavar="P")
    p.add_argument("--lora-targets", default="q,k,v,o,gate,up,down",
                   help="projections to adapt (default q,k,v,o,gate,up,down)")
    p.add_argument("--qlora", choices=["int8", "int4"], default=None,
                   help="QLoRA: the frozen base's block weights quantized (Q8_0 / Q4_1 numbers) under the LoRA "
                   "adapter (needs --lora-rank); merged/ holds base + adapter in float")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop after N steps (over --epochs)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 2e-4 with LoRA, 1e-5 for every weight)")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="packed blocks (DPO: pairs) per step; with --grad-accum: B x G")
    p.add_argument("--grad-accum", type=int, default=1, metavar="G")
    p.add_argument("--max-seq-len", type=int, default=2048, metavar="T",
                   help="tokens per packed block; longer sequences are truncated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=None, metavar="N", help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="training weight dtype")
    p.add_argument("--bf16-autocast", action="store_true",
                   help="run the forwards under bf16 autocast (the weights and optimizer stay fp32)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block in backward instead of keeping its activations (less memory)")
    p.add_argument("--json", action="store_true", help="print a summary object at the end")
    _config_option(p)


REQUIRED = {"distill": ("data", "out", "teacher"), "rejection-sample": ("data", "out", "verifier")}


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="options from a YAML, JSON or TOML file: {option: value} with the long option names "
                   "(lora_rank or lora-rank); the command line wins over the file")


def load_config(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """A --config file as {dest: value}, each checked and converted as the command line would be."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HerdError(f"--config {path}: {e.strerror or e}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        elif path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise HerdError(f"--config {path}: use a .yaml, .yml, .json or .toml file")
    except HerdError:
        raise
    except Exception as e:  # yaml / toml / json syntax errors: one line naming the file
        raise HerdError(f"--config {path}: not valid {path.suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HerdError(f"--config {path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dest = str(key).lstrip("-").replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise HerdError(f"--config {path}: unknown option {key!r} (known: "
                            f"{', '.join(sorted(actions))})")
        out[dest] = _config_value(path, key, value, action)
    return out


def _config_value(path: Path, key: Any, value: Any, action: argparse.Action) -> Any:
    where = f"--config {path}: {key}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise HerdError(f"{where}: expected true or false, got {value!r}")
        return value
    many = action.nargs == "+"
    values = value if many and isinstance(value, list) else [value]
    if many and not values:
        raise HerdError(f"{where}: expected at least one value")
    converted = []
    for v in values:
        if isinstance(v, (dict, list)) or v is None or isinstance(v, bool):
            raise HerdError(f"{where}: expected a single {getattr(action.type, '__name__', 'string')}, got {v!r}")
        try:
            v = action.type(v) if action.type is not None else str(v)
        except (TypeError, ValueError):
            raise HerdError(f"{where}: expected {getattr(action.type, '__name__', 'a string')}, got {v!r}") from None
        if action.choices is not None and v not in action.choices:
            raise HerdError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")
        converted.append(v)
    return converted if many else converted[0]


def _given(argv: list[str], action: argparse.Action) -> bool:
    return any(a == o or a.startswith(o + "=") for a in argv for o in action.option_strings)


def apply_config(args: argparse.Namespace) -> None:
    """--config's values for the options the command line did not give; then the required ones checked."""
    parser = args.method_parser
    if args.config:
        argv = getattr(args, "_argv", [])
        given = {a.dest for a in parser._actions if _given(argv, a)}
        for dest, value in load_config(args.config, parser).items():
            if dest not in given:
                setattr(args, dest, value)
    missing = [f"--{d.replace('_', '-')}" for d in args.required if getattr(args, d, None) in (None, [])]
    if missing:
        raise HerdError(f"herd train {args.train_action}: {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} required (on the command line or in --config)")


def cmd_train(args: argparse.Namespace) -> int:
    if args.train_action is None:
        args.train_parser.print_help(sys.stderr)
        return 2
    apply_config(args)
    if args.train_action == "rejection-sample":
        return run_rejection_sample(args)
    return _train(args)


def run_rejection_sample(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import os

    from herd.train.rejection import VERIFIERS, judge, read_prompts, rejection_sample, write_jsonl

    if args.n < 1 or args.concurrency < 1 or not 0.0 <= args.min_score <= 1.0:
        raise HerdError("-n and --concurrency must be >= 1 and --min-score in 0..1")
    if args.base_url and not args.api_model:
        raise HerdError("--base-url needs --api-model (the model's name there)")
    records = read_prompts(args.data)  # bad prompts: one line naming file:line, before any model loads
    if not records:
        raise HerdError(f"--data {args.data}: no prompts")

    async def run(gen: Any, judge_gen: Any) -> Any:
        if args.verifier == "judge":
            verifier = judge(judge_gen, args.rubric)
        elif args.verifier == "unit_tests":
            from herd.eval.verifiers import unit_tests

            verifier = unit_tests(timeout=args.timeout)
        else:
            verifier = VERIFIERS[args.verifier]
        from tqdm import tqdm

        with tqdm(total=len(records), unit="prompt", desc="rejection sampling", file=sys.stderr) as bar:
            return await rejection_sample(gen, records, verifier, n=args.n, temperature=args.temperature,
                                          top_p=args.top_p, max_tokens=args.max_tokens, min_score=args.min_score,
                                          seed=args.seed, concurrency=args.concurrency, progress=bar.update)

    if args.base_url:
        from herd.generator_http import OpenAIGenerator

        key = args.api_key or os.environ.get("OPENAI_API_KEY")
        gen = OpenAIGenerator(args.base_url, args.api_model, api_key=key)
        judge_gen = OpenAIGenerator(args.base_url, args.judge_model or args.api_model, api_key=key)
        result = asyncio.run(run(gen, judge_gen))
    else:
        from herd import hub
        from herd.serve.config import ModelSpec, default_id
        from herd.serve.generator import ServedGenerator, local_context
        from herd.serve.models import ModelRegistry

        ref = args.model or hub.DEFAULT_MODEL
        spec = ModelSpec(id=default_id(ref), model=ref, seed=args.seed)
        print(f"loading {ref} ...", file=sys.stderr, flush=True)
        models = ModelRegistry.load([spec], progress=False)
        try:
            gen = ServedGenerator(models.llm(spec.id), local_context())
            result = asyncio.run(run(gen, gen))
        finally:
            models.shutdown()
    write_jsonl(args.out, result.sft)
    if args.pairs_out:
        write_jsonl(args.pairs_out, result.pairs)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['kept']} of {summary['prompts']} prompts kept ({summary['samples']} samples, mean best "
              f"score {summary['mean_best_score']}) -> {args.out}"
              + (f"; {summary['pairs']} pairs -> {args.pairs_out}" if args.pairs_out else ""))
    return 0


def _lora_config(args: argparse.Namespace) -> Any:
    if args.lora_rank is None:
        return None
    from herd.model.lora import LoRAConfig

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank,
                      dropout=args.lora_dropout, targets=targets)


def _train(args: argparse.Namespace) -> int:
    """sft / dpo / pretrain: check the options and the data, load the model, train, write the outputs."""
    import json

    import torch

    from herd import hub
    from herd.tokenizer.prompter import Prompter
    from herd.train import distributed
    from herd.train.loop import TrainConfig

    for path in args.data if isinstance(args.data, list) else [args.data]:
        if not Path(path).is_file():
            raise HerdError(f"--data {path}: no such file")
    lora = _lora_config(args)  # bad LoRA options fail before the model loads
    if args.qlora and lora is None:
        raise HerdError("--qlora trains a LoRA adapter over a quantized base: give --lora-rank too")
    lr = args.lr if args.lr is not None else (2e-4 if lora is not None else 1e-5)
    cfg = TrainConfig(lr=lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_steps=args.max_steps,
                      epochs=args.epochs, seq_len=args.max_seq_len, grad_accum=args.batch_size * args.grad_accum,
                      seed=args.seed, save_every=args.save_every, activation_checkpointing=args.activation_checkpointing,
                      autocast="bf16" if args.bf16_autocast else None)
    out = Path(args.out)
    distributed.init_from_env()  # under torchrun: join the other processes (FSDP2 data parallel)
    main = distributed.is_main()
    if cfg.grad_accum % distributed.world_size():
        raise HerdError(f"--batch-size x --grad-accum ({cfg.grad_accum}) must be a multiple of the number of "
                        f"processes ({distributed.world_size()}): each trains an equal share of every step")
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if main else (lambda msg: None)
    if args.resume and not (out / "checkpoints" / "latest").is_file():
        say(f"note: {out} has no checkpoint yet; starting from the beginning")
    ref = hub.resolve(args.model)
    tokenizer = hub.load_tokenizer_for(ref)
    overflow = "skip" if getattr(args, "skip_long", False) else "truncate"
    method = args.train_action
    # the data first: a bad line is one error naming file:line, before the (slow) model load
    if method in ("sft", "distill"):
        from herd.train.sft import load_sft_data, run_sft

        data, stats = load_sft_data(args.data, Prompter(tokenizer), cfg, overflow=overflow,
                                    tool_prompt_format=args.tool_format)
    elif method == "dpo":
        from herd.train.dpo import load_dpo_data, run_dpo

        data, stats = load_dpo_data(args.data, Prompter(tokenizer), cfg, overflow=overflow,
                                    tool_prompt_format=args.tool_format)
    else:
        from herd.train.pretrain import load_text_data, run_pretrain

        data, stats = load_text_data(args.data, tokenizer, cfg.seq_len)
    if not data:
        raise HerdError(f"--data: nothing left to train on ({stats.skipped} skipped)")
    if distributed.world_size() > 1:
        say(f"training on {distributed.world_size()} processes (FSDP2, {torch.distributed.get_backend()})")
    say(f"loading {ref.name} ...")
    device = f"cuda:{torch.cuda.current_device()}" if distributed.world_size() > 1 and torch.cuda.is_available() \
        else "cpu"
    model, _ = hub.load(ref, dtype=getattr(torch, args.dtype), device=device)
    torch.manual_seed(args.seed)  # a LoRA adapter's initial weights: the same in every process
    if args.qlora:
        from herd.model.quantize import quantize_model

        for block in model.layers:  # the blocks' projections; embeddings, norms and the head stay float
            quantize_model(block, args.qlora)
    bar = _Progress(cfg, method)  # train() calls on_step on rank 0 only
    kw = dict(lora=lora, resume=args.resume, on_step=bar.update, base_name=str(ref.path or ref.name))
    if method == "sft":
        result = run_sft(model, data, stats, out, cfg, **kw)
    elif method == "distill":
        from herd.train.distill import run_distill

        say(f"loading the teacher {args.teacher} ...")
        teacher, _ = hub.load(args.teacher, dtype=getattr(torch, args.dtype), device=device)
        result = run_distill(model, teacher, data, stats, out, cfg, temperature=args.temperature, alpha=args.alpha,
                             top_k=args.top_k, **kw)
    elif method == "dpo":
        result = run_dpo(model, data, stats, out, cfg, beta=args.beta, loss_type=args.loss_type,
                         label_smoothing=args.label_smoothing, **kw)
    else:
        result = run_pretrain(model, data, stats, out, cfg, **kw)
    bar.close()
    distributed.shutdown()
    if not main:
        return 0
    copied = copy_tokenizer(ref, out / "merged")
    summary = {"method": method, "out": str(out), "steps": result.steps, "final_loss": result.final_loss,
               "tokens": result.tokens, "seconds": round(result.seconds, 1),
               "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9)), "resumed_from": result.resumed_from,
               "data": stats.__dict__, "tokenizer_files": copied,
               "adapter": str(out / "adapter") if lora is not None else None, "merged": str(out / "merged")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{method}: {result.steps} steps, final loss {result.final_loss:.4f}, {summary['tokens_per_s']} "
              f"tokens/s; {stats.examples} examples ({stats.truncated} truncated, {stats.skipped} skipped); "
              f"outputs in {out}")
    return 0


def copy_tokenizer(ref: Any, merged: Path) -> list[str]:
    """The tokenizer files beside the merged weights: copied from an HF checkpoint, converted by
    `transformers` from a GGUF file (when it is installed); the names copied."""
    src = Path(ref.path) if getattr(ref, "path", None) else None
    if src is not None and src.is_dir():
        names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
        for n in names:
            shutil.copy2(src / n, merged / n)
        return names
    if src is not None and src.suffix == ".gguf":
        try:
            from transformers import AutoTokenizer
        except ImportError:
            print("warning: merged/ has no tokenizer files (converting a GGUF tokenizer needs `transformers`)",
                  file=sys.stderr)
            return []
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        return [Path(f).name for f in tok.save_pretrained(str(merged))]
    return []


class _Progress:
    """A progress bar over steps (made at the first step): loss, learning rate, tokens/s, ETA."""

    def __init__(self, cfg: Any, desc: str = "train") -> None:
        self.total, self.bar, self.t0, self.desc = cfg.max_steps, None, time.perf_counter(), desc

    def update(self, row: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total or row.get("total_steps"), initial=row["step"] - 1, unit="step", desc=self.desc, dynamic_ncols=True,
                            file=sys.stderr)
        self.bar.update(row["step"] - self.bar.n)
        rate = row["tokens"] / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{rate:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
