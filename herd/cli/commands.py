"""Implementations of the `herd` subcommands (argument parsing lives in main.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from herd.cli.repl import COMMANDS, read_message
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
    from herd import hub

    params, config = sampling_params(args), engine_config(args)  # validate before the (slow) load
    ref = hub.resolve(args.model)
    # refuse a model that cannot fit before torch is even imported (random presets, CPU-only torch)
    hub.check_memory(ref, dtype=args.dtype, device=args.device, quantize=args.quantize, engine_config=config)
    from herd import LLM

    print(f"loading {ref.name} ...", file=sys.stderr, flush=True)
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
    if args.tools or args.mcp:
        from herd.cli.agent_chat import cmd_agent_chat

        return cmd_agent_chat(args, engine_config(args))
    llm, params = load_llm(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, Any]] = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with the model; {COMMANDS}", file=sys.stderr)
    while (text := read_message(interactive)) is not None:
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
    from herd import hub
    from herd.config import PRESETS, format_bytes, kv_bytes_per_token, weight_bytes

    print("built-in models:")
    for name, b in hub.BUILTINS.items():
        mark = " (default)" if name == hub.DEFAULT_MODEL else ""
        path = hub.builtin_path(name)
        where = f"at {path}" if path is not None else f"not downloaded: herd pull {name}"
        print(f"  {name}{mark}: {b.description}, {format_bytes(b.size)}; {where}")
    for name, t in hub.TUNED.items():
        mark = " (default)" if name == hub.DEFAULT_MODEL else ""
        shipped = (t.adapter_path / "adapter_config.json").is_file()
        print(f"  {name}{mark}: {t.description}" + ("" if shipped else " (adapter not in this installation)"))
    print("random-weight presets (real Llama 3 tokenizer), use as random:<preset>. Weights as loaded with")
    print("--dtype float32 / bfloat16 and --quantize int8 / int4 (float32 embeddings), KV cache per 1K tokens:")
    cols = ("preset", "params", "float32", "bfloat16", "int8", "int4", "KV/1K (bf16)")
    rows = []
    for name, a in PRESETS.items():
        sizes = [weight_bytes(a, "float32"), weight_bytes(a, "bfloat16"), weight_bytes(a, "float32", "int8"),
                 weight_bytes(a, "float32", "int4"), 1024 * kv_bytes_per_token(a, "bfloat16")]
        rows.append((f"random:{name}", f"{a.num_params() / 1e9:.2f}B", *map(format_bytes, sizes)))
    widths = [max(len(r[i]) for r in (cols, *rows)) for i in range(len(cols))]
    for r in (cols, *rows):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print("or a path: an HF directory (config.json + *.safetensors), a Meta directory "
          "(params.json + consolidated.*.pth), a .gguf file, or a Hugging Face repo ORG/NAME after herd pull")
    print("herd refuses a model that does not fit in free memory before loading it, and says what would fit")
    return 0
