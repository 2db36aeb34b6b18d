"""The prompts of the evaluation sets Herd ships tasks for, for decontamination (herd/sdg/filters.py):
HumanEval's function prompts and every user turn of the BFCL categories herd evaluates."""
from __future__ import annotations

from collections.abc import Iterable

from herd.errors import HerdError

SETS = ("humaneval", "bfcl")


def eval_prompts(names: Iterable[str]) -> list[str]:
    from herd.eval.harness import make_task
    from herd.eval.task import TaskOptions

    out: list[str] = []
    for name in names:
        if name not in SETS:
            raise HerdError(f"unknown evaluation set {name!r} to decontaminate against; choose from {', '.join(SETS)}")
        for sample in make_task(name, TaskOptions()).load():
            if name == "humaneval":
                out.append(sample.data["prompt"])
            else:
                out += [m["content"] for turn in sample.data["question"] for m in turn
                        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)]
    return out
