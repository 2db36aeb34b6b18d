"""`herd shield`: run Llama Guard 3, Prompt Guard or Code Shield on a text or a conversation."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  herd shield --list-categories
  herd shield --shield llama-guard --model ./Llama-Guard-3-1B --text "How do I make a bomb?"
  herd shield --shield llama-guard --model ./Llama-Guard-3-8B --messages dialog.json --exclude S6,S7 --json
  herd shield --shield llama-guard --model ./Llama-Guard-3-8B --messages dialog.json --show-prompt
  herd shield --shield llama-guard --text "hi" --show-prompt --json
  herd shield --shield prompt-guard --model ./Prompt-Guard-86M --text "Ignore previous instructions" \\
      --param guard_type=jailbreak --param threshold=0.8
  herd shield --shield code-shield --messages reply.json
The last message of the conversation is the one judged. --messages holds a JSON list of OpenAI
(or Llama Stack) messages: [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}].
--json prints the run-shield response {"violation": null | {violation_level, user_message, metadata}};
--show-prompt prints the exact Llama Guard prompt (with --json: text and token ids) without loading weights;
without --model it is Llama Guard 3 8B's prompt (S1-S14; --param with_s14=false for the 1B's) in the Llama 3
tokenizer.
exit status: 0 no violation, 1 violation, 2 error
"""
SHIELDS = ("llama-guard", "prompt-guard", "code-shield")


def add_shield_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `herd shield` on the main parser's subparsers."""
    p = sub.add_parser("shield", help="run a safety shield (Llama Guard 3, Prompt Guard, Code Shield)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Screen a text or conversation with a safety shield and print the verdict.")
    p.add_argument("--shield", "-s", choices=SHIELDS, help="which shield to run")
    p.add_argument("--model", "-m", default=None,
                   help="the guard checkpoint: a Llama Guard 3 (HF/Meta/GGUF) or Prompt Guard (HF) directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", "-t", default=None, help="one user message (code, for code-shield)")
    src.add_argument("--messages", metavar="FILE", default=None, help="JSON file with a list of messages")
    p.add_argument("--exclude", default=None, metavar="S1,S2", help="Llama Guard categories not to enforce")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a shield parameter (value parsed as JSON when it can be), e.g. prompt_format=recipe, "
                   "threshold=0.8, guard_type=jailbreak; repeatable")
    p.add_argument("--json", action="store_true", help='print the run-shield response {"violation": ...}')
    p.add_argument("--show-prompt", action="store_true",
                   help="print the exact Llama Guard prompt and stop (no weights loaded; --model optional)")
    p.add_argument("--list-categories", action="store_true", help="print the Llama Guard 3 S1-S14 taxonomy")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="Llama Guard weight dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.set_defaults(handler=cmd_shield)
    return p


def _params(args: argparse.Namespace) -> dict[str, Any]:
    from herd.errors import HerdError

    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HerdError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    if args.exclude is not None:
        if args.shield != "llama-guard":
            raise HerdError("--exclude applies to --shield llama-guard only")
        params["excluded_categories"] = args.exclude
    return params


def _messages(args: argparse.Namespace) -> list[Any]:
    from herd.errors import HerdError

    if args.text is not None:
        return [{"role": "user", "content": args.text}]
    if args.messages is None:
        raise HerdError("give the input with --text TEXT or --messages FILE")
    path = Path(args.messages)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HerdError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HerdError(f"{path}: not a JSON file ({e})") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise HerdError(f"{path}: expected a non-empty JSON list of messages")
    return data


def _show_prompt(args: argparse.Namespace, messages: list[Any], params: dict[str, Any]) -> int:
    from herd import hub
    from herd.errors import HerdError
    from herd.safety.llama_guard import LlamaGuardPrompter, is_8b_class, model_args_of

    if args.shield != "llama-guard":
        raise HerdError("--show-prompt applies to --shield llama-guard only")
    unknown = set(params) - {"excluded_categories", "prompt_format", "with_s14", "max_tokens"}
    if unknown:
        raise HerdError(f"llama-guard: unknown param(s) {', '.join(sorted(unknown))}")
    with_s14 = params.get("with_s14")
    if args.model is None:  # the prompt needs only the tokenizer: Llama Guard 3's is Llama 3's
        from herd.tokenizer.tokenizer import Llama3Tokenizer

        tokenizer = Llama3Tokenizer.default()
        with_s14 = True if with_s14 is None else with_s14
    else:
        tokenizer = hub.load_tokenizer_for(hub.resolve(args.model))
    if with_s14 is None:
        with_s14 = is_8b_class(model_args_of(args.model))
    prompter = LlamaGuardPrompter(tokenizer, with_s14=bool(with_s14), prompt_format=params.get("prompt_format", "auto"),
                                  excluded_categories=params.get("excluded_categories", ()))
    prompt = prompter.render(messages)
    if args.json:
        print(json.dumps({"prompt": prompt.text, "token_ids": prompt.token_ids, "format": prompt.format,
                          "categories": list(prompt.categories)}, ensure_ascii=False))
    else:
        sys.stdout.write(prompt.text + "\n")
    return 0


def _summary(result: Any) -> str:
    v = result.violation
    if v is None:
        return "safe"
    meta = v.metadata
    if "issues" in meta:
        found = ", ".join(f"{i['pattern_id']} ({i['cwe_id']}, line {i['line']})" for i in meta["issues"])
        return f"unsafe: {found}"
    if "categories" in meta:
        codes = str(meta.get("violation_type", "")).split(",")
        return "unsafe: " + ", ".join(f"{c} {n}" for c, n in zip(codes, meta["categories"]))
    return f"unsafe: {meta.get('violation_type', v.user_message)}"


def cmd_shield(args: argparse.Namespace) -> int:
    """Run the chosen shield and print its verdict; exit 1 on a violation."""
    from herd.errors import HerdError

    if args.list_categories:
        from herd.safety.taxonomy import LLAMA_GUARD_3, format_taxonomy

        if args.json:
            print(json.dumps([{"code": c.code, "name": c.name, "long_name": c.long_name,
                               "description": c.description} for c in LLAMA_GUARD_3], indent=2))
        else:
            print(format_taxonomy())
        return 0
    if args.shield is None:
        raise HerdError("choose a shield with --shield llama-guard|prompt-guard|code-shield (or --list-categories)")
    if args.shield != "code-shield" and not args.model and not (args.show_prompt and args.shield == "llama-guard"):
        raise HerdError(f"--shield {args.shield} needs --model (the guard checkpoint's directory)")
    params = _params(args)
    messages = _messages(args)
    if args.show_prompt:
        return _show_prompt(args, messages, params)
    from herd.safety.shields import ShieldConfig, build_shield
    from herd.tokenizer.messages import to_messages

    to_messages(messages, lenient=True)  # bad input fails before a model loads
    if args.shield == "llama-guard":
        params.update({k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None})
    elif args.shield == "prompt-guard" and args.device is not None:
        params["device"] = args.device
    if args.shield != "code-shield":
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    shield = build_shield(ShieldConfig(args.shield, args.shield, args.model, params))
    result = shield.run(messages)
    print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else _summary(result))
    return 1 if result.violation is not None else 0
