"""The plain-chat checks' data, from `herd sdg instruct` dialogs the recipe never trains on.

    python recipes/tools-default/heldout.py CHAT.jsonl OUT_DIR [--tools tools.json] [--seed 0]

writes OUT_DIR/chat_prompts.jsonl: each instruction with 3 of the catalog's tools offered (drawn at random,
seeded) for `herd eval generate --scorer no_tool_call` (does the tuned model leave the tools alone when none
is needed?), and OUT_DIR/chat_answers.jsonl: the base model's greedy answers as `{"text"}` records for
`herd eval perplexity` (how much less likely the tuned model finds what the base model said).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chat", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--tools", type=Path, default=Path(__file__).with_name("tools.json"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tools = json.loads(args.tools.read_text())
    rng = random.Random(args.seed)
    prompts, answers = [], []
    for line in args.chat.read_text().splitlines():
        messages = json.loads(line)["messages"]
        user, answer = messages[0], messages[-1]
        if user["role"] != "user" or answer["role"] != "assistant" or not answer.get("content"):
            continue
        prompts.append({"messages": [user], "tools": rng.sample(tools, 3)})
        answers.append({"text": answer["content"]})
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("chat_prompts.jsonl", prompts), ("chat_answers.jsonl", answers)):
        (args.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(prompts)} held-out instructions -> {args.out}")


if __name__ == "__main__":
    main()
