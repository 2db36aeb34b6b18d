"""Llama Stack's `POST /v1/synthetic-data-generation/generate {dialogs, filtering_function, model}` (the API it
specified as "coming soon" and never served; routes: herd/serve/routes.py), as rejection sampling:

1. `dialogs` is a batch of prompts: each user message is one prompt, after the system messages that come
   before it in the list (assistant and tool messages are a 400).
2. For each prompt the served `model` (default: the first served model) writes `num_candidates` responses
   (temperature `temperature`, seeds `seed`, `seed`+1, ...).
3. A judge (herd.eval.scorers.LLMJudge: the same model unless `judge_model` names another, greedy) grades
   each response from 1 to 10; the reward is (score - 1) / 9, in [0, 1]. A verdict with no readable score
   gets reward 0 and is counted (`statistics.unparseable_judgements`).
4. `filtering_function` keeps, for each prompt on its own, of its n candidates ranked best first by reward
   (ties: the earlier candidate first):
       none         all n
       random       min(top_k, n) drawn uniformly without replacement (rng = random.Random(f"{seed}/{i}") for
                    prompt i: rng.sample(range(n), min(top_k, n)))
       top_k        the min(top_k, n) best
       top_p        the shortest best-first prefix whose share of the prompt's total reward reaches top_p
                    (shares r / sum(r); equal shares 1/n when every reward is 0), at least one
       top_k_top_p  top_p applied to the top_k best (shares over those k)
       sigmoid      each candidate j, in order, kept when rng.random() < sigmoid((r_j - sigmoid_threshold) /
                    sigmoid_temperature), with the same per-prompt rng as random
   num_candidates, top_k, top_p, sigmoid_*, seed, temperature, max_tokens, judge_model and judge_max_tokens
   are herd's extensions (send them with `extra_body`).

The answer: `synthetic_data` holds one entry per prompt, `{dialog, scored_generations: [{message, score,
judge_score, candidate}]}` (Llama Stack's ScoredDialogGenerations; the kept responses, best first; `score` is
the reward, `judge_score` the judge's 1-10 or None), and `statistics` the counts and every candidate's reward.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from herd.errors import HerdError
from herd.eval.scorers import LLMJudge
from herd.generator import ChatRequest, complete
from herd.serve.errors import bad_request
from herd.serve.generation import CallContext, until_disconnected
from herd.serve.generator import ServedGenerator
from herd.serve.scoring import bounded
from herd.tokenizer.messages import Message, to_messages


def prompts_of(dialogs: Sequence[Any]) -> list[list[Message]]:
    """Each user message with the system messages before it (see the module docstring)."""
    system: list[Message] = []
    prompts = []
    for i, m in enumerate(dialogs):
        try:
            msg = to_messages([m], param=f"dialogs[{i}]")[0]
        except HerdError as e:
            raise bad_request(str(e), e.param) from None
        if msg.role == "system":
            system.append(msg)
        elif msg.role == "user":
            prompts.append([*system, msg])
        else:
            raise bad_request(f"dialogs[{i}] is a {msg.role} message; dialogs is a batch of prompts: user messages, "
                              "with system messages before them", f"dialogs[{i}].role")
    if not prompts:
        raise bad_request("dialogs has no user message to answer", "dialogs")
    return prompts


def ranking(rewards: Sequence[float]) -> list[int]:
    """Candidate indices best first (ties: the earlier first)."""
    return sorted(range(len(rewards)), key=lambda j: (-rewards[j], j))


def nucleus(rewards: Sequence[float], order: Sequence[int], p: float) -> list[int]:
    """The shortest prefix of `order` whose share of the rewards (over `order`) reaches p; at least one."""
    total = sum(rewards[j] for j in order)
    kept, mass = [], 0.0
    for j in order:
        kept.append(j)
        mass += rewards[j] / total if total > 0 else 1 / len(order)
        if mass >= p - 1e-9:
            break
    return kept


def select(rewards: Sequence[float], how: str, *, top_k: int, top_p: float, threshold: float, temperature: float,
           rng: random.Random) -> list[int]:
    """The candidates one prompt keeps, best first (the filtering functions of the module docstring)."""
    n = len(rewards)
    best = ranking(rewards)
    k = min(top_k, n)
    if how == "none":
        keep = set(best)
    elif how == "random":
        keep = set(rng.sample(range(n), k))
    elif how == "top_k":
        keep = set(best[:k])
    elif how == "top_p":
        keep = set(nucleus(rewards, best, top_p))
    elif how == "top_k_top_p":
        keep = set(nucleus(rewards, best[:k], top_p))
    elif how == "sigmoid":
        keep = {j for j in range(n) if rng.random() < 1 / (1 + math.exp(-(rewards[j] - threshold) / temperature))}
    else:
        raise ValueError(f"unknown filtering function {how!r}")
    return [j for j in best if j in keep]


def _question(prompt: Sequence[Message]) -> str:
    if len(prompt) == 1:
        return prompt[0].content
    return "\n".join(f"{m.role}: {m.content}" for m in prompt)


async def generate(registry: Any, body: Any, ctx: CallContext) -> dict[str, Any]:
    """POST /v1/synthetic-data-generation/generate."""
    prompts = prompts_of(body.dialogs)
    if body.model is None:
        llms = registry.llms()
        if not llms:
            raise bad_request("this server serves no language model to generate with", "model")
        model = llms[0]
    else:
        model = registry.llm(body.model, "model")
    judge_model = registry.llm(body.judge_model, "judge_model") if body.judge_model else model
    ctx.cap(len(prompts) * body.num_candidates, "max_sequences_per_request", "num_candidates",
            "responses (prompts x num_candidates)")
    gen = ServedGenerator(model, ctx)
    judge = LLMJudge(gen if judge_model is model else ServedGenerator(judge_model, ctx),
                     max_tokens=body.judge_max_tokens)
    n = body.num_candidates

    async def one(i: int, j: int) -> tuple[Message, float | None]:
        reply = await complete(gen, ChatRequest(prompts[i], temperature=body.temperature, max_tokens=body.max_tokens,
                                                seed=body.seed + j))
        score, _, _ = await judge(_question(prompts[i]), "", reply.message.content)
        return reply.message, score

    work = bounded([lambda i=i, j=j: one(i, j) for i in range(len(prompts)) for j in range(n)],
                   ctx.limits.max_sequences_in_flight)
    flat = await until_disconnected(ctx.is_disconnected, work)
    data, rewards_all, kept_total = [], [], 0
    for i, prompt in enumerate(prompts):
        cands = flat[i * n:(i + 1) * n]
        rewards = [0.0 if s is None else s for _, s in cands]
        rng = random.Random(f"{body.seed}/{i}")
        keep = select(rewards, body.filtering_function, top_k=body.top_k, top_p=body.top_p,
                      threshold=body.sigmoid_threshold, temperature=body.sigmoid_temperature, rng=rng)
        kept_total += len(keep)
        rewards_all.append(rewards)
        gens = [{"message": {"role": "assistant", "content": cands[j][0].content,
                             "stop_reason": cands[j][0].stop_reason or "end_of_turn"},
                 "score": rewards[j], "judge_score": None if cands[j][1] is None else round(1 + 9 * cands[j][1], 6),
                 "candidate": j} for j in keep]
        data.append({"dialog": [m.to_openai() for m in prompt], "scored_generations": gens})
    flat_rewards = [r for rs in rewards_all for r in rs]
    stats = {"model": model.id, "judge_model": judge_model.id, "filtering_function": body.filtering_function,
             "num_prompts": len(prompts), "num_candidates": n, "generated": len(flat), "kept": kept_total,
             "unparseable_judgements": sum(1 for _, s in flat if s is None),
             "mean_reward": sum(flat_rewards) / len(flat_rewards), "rewards": rewards_all}
    return {"synthetic_data": data, "statistics": stats}
