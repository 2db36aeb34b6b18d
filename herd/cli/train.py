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
  herd serve --model runs/tools/merged          # the result, served
data: one JSON object per line, {"messages": [...OpenAI chat messages, tool calls and tool results...],
"tools": [...optional OpenAI tool definitions...]}; only the assistant turns are learnt, rendered in the
model's own chat format (the Llama 3.1 format with tools for Llama models, the checkpoint's template else).
exit status: 0 done, 2 bad input (data errors name file:line)
"""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("train", help="fine-tune a model (SFT, full or LoRA) on chat data",
                       description="Post-training on one machine: supervised fine-tuning of every weight or a "
                       "LoRA adapter, checkpointed and resumable.", epilog=EPILOG, formatter_class=fmt)
    actions = p.add_subparsers(dest="train_action", metavar="METHOD")
    sft = actions.add_parser("sft", help="supervised fine-tuning on chat JSONL", epilog=EPILOG, formatter_class=fmt)
    sft.add_argument("--model", "-m", default=None,
                     help="HF or Meta checkpoint directory, .gguf file or built-in name (default: the embedded "
                     "smollm2-135m-instruct, dequantized to float32)")
    sft.add_argument("--data", required=True, metavar="FILE", help="chat JSONL (see below)")
    sft.add_argument("--out", required=True, metavar="DIR", help="where checkpoints, metrics and outputs go")
    sft.add_argument("--lora-rank", type=int, default=None, metavar="R",
                     help="train a LoRA adapter of this rank instead of every weight")
    sft.add_argument("--lora-alpha", type=float, default=None, metavar="A", help="LoRA alpha (default 2 x rank)")
    sft.add_argument("--lora-dropout", type=float, default=0.0, metavar="P")
    sft.add_argument("--lora-targets", default="q,k,v,o,gate,up,down",
                     help="projections to adapt (default q,k,v,o,gate,up,down)")
    sft.add_argument("--epochs", type=int, default=1)
    sft.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop after N steps (over --epochs)")
    sft.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default 2e-4 with LoRA, 1e-5 for every weight)")
    sft.add_argument("--warmup-steps", type=int, default=0)
    sft.add_argument("--weight-decay", type=float, default=0.0)
    sft.add_argument("--batch-size", type=int, default=1, metavar="B",
                     help="packed blocks of --max-seq-len tokens per step (with --grad-accum: B x G)")
    sft.add_argument("--grad-accum", type=int, default=1, metavar="G")
    sft.add_argument("--max-seq-len", type=int, default=2048, metavar="T",
                     help="tokens per packed block; longer dialogs are truncated (or --skip-long)")
    sft.add_argument("--skip-long", action="store_true", help="skip dialogs longer than --max-seq-len")
    sft.add_argument("--seed", type=int, default=0)
    sft.add_argument("--save-every", type=int, default=None, metavar="N", help="checkpoint every N steps")
    sft.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    sft.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="training weight dtype")
    sft.add_argument("--tool-format", choices=["json", "function_tag", "python_list"], default="json",
                     help="how tool definitions and calls are rendered for Llama 3 models (default json)")
    sft.add_argument("--json", action="store_true", help="print a summary object at the end")
    p.set_defaults(handler=cmd_train, train_parser=p)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    if args.train_action is None:
        args.train_parser.print_help(sys.stderr)
        return 2
    return _sft(args)


def _lora_config(args: argparse.Namespace) -> Any:
    if args.lora_rank is None:
        return None
    from herd.model.lora import LoRAConfig

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank,
                      dropout=args.lora_dropout, targets=targets)


def _sft(args: argparse.Namespace) -> int:
    import json

    import torch

    from herd import hub
    from herd.tokenizer.prompter import Prompter
    from herd.train.loop import TrainConfig
    from herd.train.sft import load_sft_data, run_sft

    data = Path(args.data)
    if not data.is_file():
        raise HerdError(f"--data {args.data}: no such file")
    lora = _lora_config(args)  # bad LoRA options fail before the model loads
    lr = args.lr if args.lr is not None else (2e-4 if lora is not None else 1e-5)
    cfg = TrainConfig(lr=lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_steps=args.max_steps,
                      epochs=args.epochs, seq_len=args.max_seq_len, grad_accum=args.batch_size * args.grad_accum,
                      seed=args.seed, save_every=args.save_every)
    out = Path(args.out)
    if args.resume and not (out / "checkpoints" / "latest").is_file():
        print(f"note: {out} has no checkpoint yet; starting from the beginning", file=sys.stderr)
    ref = hub.resolve(args.model)
    tokenizer = hub.load_tokenizer_for(ref)
    examples, stats = load_sft_data(data, Prompter(tokenizer), cfg, overflow="skip" if args.skip_long else "truncate",
                                    tool_prompt_format=args.tool_format)  # bad data: one line, before the load
    if not examples:
        raise HerdError(f"--data {args.data}: no example left to train on ({stats.skipped} skipped)")
    print(f"loading {ref.name} ...", file=sys.stderr, flush=True)
    model, _ = hub.load(ref, dtype=getattr(torch, args.dtype), device="cpu")
    bar = _Progress(cfg)
    result = run_sft(model, examples, stats, out, cfg, lora=lora, resume=args.resume, on_step=bar.update,
                     base_name=str(ref.path or ref.name))
    bar.close()
    copied = copy_tokenizer(ref, out / "merged")
    summary = {"out": str(out), "steps": result.steps, "final_loss": result.final_loss, "tokens": result.tokens,
               "seconds": round(result.seconds, 1), "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9)),
               "resumed_from": result.resumed_from, "data": stats.__dict__, "tokenizer_files": copied,
               "adapter": str(out / "adapter") if lora is not None else None, "merged": str(out / "merged")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result.steps} steps, final loss {result.final_loss:.4f}, {summary['tokens_per_s']} tokens/s; "
              f"{stats.examples} examples ({stats.truncated} truncated, {stats.skipped} skipped); "
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

    def __init__(self, cfg: Any) -> None:
        self.total, self.bar, self.t0 = cfg.max_steps, None, time.perf_counter()

    def update(self, row: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=row["step"] - 1, unit="step", desc="sft", dynamic_ncols=True,
                            file=sys.stderr)
        self.bar.update(row["step"] - self.bar.n)
        rate = row["tokens"] / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{rate:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
