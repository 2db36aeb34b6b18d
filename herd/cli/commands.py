"""Implementations of the `herd` subcommands (argument parsing lives in main.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from herd.errors import HerdError


def sampling_params(args: argparse.Namespace):
    from herd.engine.request import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )


def engine_config(args: argparse.Namespace):
    from herd.config import EngineConfig

    return EngineConfig(
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        kv_cache_dtype=args.kv_cache_dtype,
    )


def load_llm(args: argparse.Namespace):
    from herd.engine.engine import LLM

    params, config = sampling_params(args), engine_config(args)  # validate before the (slow) load
    print(f"loading {args.model or 'smollm2-135m-instruct'} ...", file=sys.stderr, flush=True)
    llm = LLM(args.model, dtype=args.dtype, device=args.device, engine_config=config, quantize=args.quantize)
    return llm, params


def cmd_generate(args: argparse.Namespace) -> int:
    llm, params = load_llm(args)
    if args.raw:
        if args.system:
            raise HerdError("--system needs the chat template; drop --raw")
        events = llm.stream(args.prompt, params)
    else:
        messages = [{"role": "user", "content": args.prompt}]
        if args.system:
            messages.insert(0, {"role": "system", "content": args.system})
        events = llm.stream_chat(messages, params)
    for ev in events:
        sys.stdout.write(ev.delta_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    llm, params = load_llm(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, Any]] = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model; /reset clears the conversation, /exit quits", file=sys.stderr)
    while True:
        if interactive:
            sys.stdout.write(">>> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        reply = []
        for ev in llm.stream_chat(history, params):
            reply.append(ev.delta_text)
            sys.stdout.write(ev.delta_text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0


def _read_json_list(path: str, what: str) -> list[Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise HerdError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and what in data:  # also accept {"messages": [...]} / {"tools": [...]}
        data = data[what]
    if not isinstance(data, list):
        raise HerdError(f"{path}: expected a JSON list of {what}")
    return data


def cmd_prompt(args: argparse.Namespace) -> int:
    from herd import hub
    from herd.tokenizer.prompter import Prompter

    messages = _read_json_list(args.messages, "messages")
    tools = _read_json_list(args.tools, "tools") if args.tools else None
    tokenizer = hub.load_tokenizer_for(hub.resolve(args.model))
    prompter = Prompter(tokenizer)
    text, ids = prompter.render(
        messages, tools=tools, tool_prompt_format=args.tool_format,
        add_generation_prompt=not args.no_generation_prompt,
    )
    if args.json:
        print(json.dumps({"prompt": text, "token_ids": ids}, ensure_ascii=False))
    else:
        print(text)
        print(f"--- {len(ids)} tokens ---")
        print(" ".join(map(str, ids)))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from herd.config import PRESETS
    from herd.hub import BUILTIN_MODELS, DEFAULT_MODEL

    print("built-in models:")
    for name, desc in BUILTIN_MODELS.items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"  {name}{mark}: {desc}")
    print("random-weight presets (real Llama 3 tokenizer), use as random:<preset>:")
    for name, a in PRESETS.items():
        print(f"  random:{name}: {a.num_params() / 1e9:.2f}B params, dim {a.dim}, {a.n_layers} layers, "
              f"{a.n_heads} heads / {a.kv_heads} KV heads")
    print("or a path: an HF directory (config.json + *.safetensors), a Meta directory "
          "(params.json + consolidated.*.pth), or a .gguf file")
    return 0
