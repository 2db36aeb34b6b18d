"""Training speed: herd's SFT loop vs Hugging Face transformers' Trainer, full and LoRA, on the same tokens.

    .venv/bin/python benchmarks/train.py                  # full run: seq_len 1024, 3 warm-up + 20 timed steps
    .venv/bin/python benchmarks/train.py --write          # ... and update the train section of BENCHMARKS.md
    .venv/bin/python benchmarks/train.py --quick          # seq_len 256, 1 warm-up + 3 timed steps (a smoke test)
    .venv/bin/python benchmarks/train.py --render --json t.json --write   # re-render saved numbers

Issue 14: training tokens/s of full and LoRA SFT on the embedded model against HF Trainer on the same
data, batch and sequence length, and peak RSS; the goal is herd >= 1.5x HF. TRL's SFTTrainer runs too when
`trl` is installed (`make bench-train` installs it; this script installs nothing); otherwise its row says so.

- Model: the embedded SmolLM2-135M-Instruct in fp32 on the CPU: herd's from herd.hub.load(None), HF's
  LlamaForCausalLM from those very weights written once in HF layout (herd.model.weights.save_hf).
- Data: --dialogs seeded synthetic chat dialogs (Q&A of 1-3 turns and tool-call dialogs with tool results,
  answers of varied length), rendered once by herd (herd.train.data.chat_examples -> chat_tokens, with the
  model's own chat template via Prompter; truncated to seq_len as `herd train` does) into input_ids and
  labels (-100 outside the assistant tokens). Both systems train on exactly these ids and labels.
- herd: herd.train.loop.train with herd.train.sft.lm_loss on pack_examples(examples, seq_len) (dialogs laid
  end to end in blocks of at most seq_len tokens, attention kept within each dialog, nothing padded), one
  block per optimizer step.
- HF: transformers.Trainer over the same examples in the order herd's loop visits them (herd's seeded block
  order, epoch after epoch; `train_sampling_strategy="sequential"`), per_device_train_batch_size = dialogs
  per herd block on average (so a step holds about as many real tokens as a block), padded to the longest
  in the batch (labels -100 there), no eval, no saving, no workers.
- TRL: trl.SFTTrainer as its docs recommend for speed: the same ids and labels as a pre-tokenized dataset,
  `packing=True` with the "bfd" strategy (best-fit-decreasing packing into sequences of seq_len, padding-free:
  one packed sequence per step, documents kept apart through position_ids), its own data order and collator.
- All: AdamW (torch's; herd's loop, HF's `adamw_torch`), lr 1e-5 full / 2e-4 LoRA, constant schedule,
  no weight decay, gradient clipping at 1.0, one batch per step; LoRA rank 16, alpha 16, no dropout, on
  q, k, v, o, gate, up and down (herd.model.lora.apply_lora; peft for HF). Each system x mode runs in its
  own process with the same torch thread count (--threads); step times are wall time between the ends of
  consecutive optimizer steps (data collation, forward, backward, clipping, optimizer), after the warm-up.
- Reported: real (non-padding) tokens/s, trained (assistant: learnt next-token targets) tokens/s, step time
  p50, peak RSS (ru_maxrss of the worker, read at its last step) and herd / HF. Loss check: herd's first-step
  loss (its first block) against HF's loss on the same dialogs with the same weights (one forward before
  training), which must be close; HF's own first-step loss (its first batch) is shown too.

Time: a step over ~830 tokens is ~0.67 TFLOP (full) or ~0.45 TFLOP (LoRA): an estimated ~7 s and ~3.5 s on
2 cores (from steps over ~190 tokens and the machine's matmul rate), so the default of 20 timed steps (23
per system x mode) takes an estimated 9-10 minutes on a quiet 2-core machine, and 30 timed steps (issue
14's first plan, `--steps 30`) about 13-14. `--modes` / `--systems` narrow a run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import benchkit

BEGIN, END = "<!-- train:begin -->", "<!-- train:end -->"
IGNORE = -100
LORA_RANK, LORA_ALPHA = 16, 16
LR = {"full": 1e-5, "lora": 2e-4}
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("full", "lora")
SYSTEMS = ("herd", "hf", "trl")
NAMES = {"herd": "herd (`herd.train.loop.train`)", "hf": "HF transformers `Trainer`",
         "trl": "TRL `SFTTrainer` (packing bfd)"}


# ---- the machine ---------------------------------------------------------------------------------


def machine() -> dict:
    return benchkit.machine(("torch", "transformers", "peft", "accelerate", "trl", "llama-herd"))


# ---- the data --------------------------------------------------------------------------------------

_WORDS = """the a of to and in is it that for on with as this be are by at from or an can not have was
which will your you we they their there when what how more time data model system file line value
order report list table memory process service request user account price city weather number date
team project meeting plan test build release version change update error warning result answer question
check run start stop open close send read write move keep find show give make take use need want know
think see look call ask tell try help work learn train batch step token layer weight small large fast
slow new old good best first last next early late short long high low simple clear exact quick careful
usually often never always again also only still just even because before after while until since
between under over into through about against during without within across near far right left"""
WORDS = _WORDS.split()
TOPICS = ["the quarterly report", "a database migration", "the train schedule", "our release plan",
          "the memory budget", "a weather station", "the support queue", "an order refund", "the test suite",
          "a travel booking", "the team offsite", "the caching layer", "a model checkpoint", "the invoice run"]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly and precisely.",
                  "You are a support agent for an online shop. Be polite and concrete.",
                  "You help engineers debug their systems. Explain your reasoning step by step."]


def _tool(name: str, description: str, props: dict[str, str], required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": t} for k, t in props.items()},
                       "required": required}}}


TOOLS = [
    _tool("get_weather", "Current weather in a city", {"city": "string", "unit": "string"}, ["city"]),
    _tool("search_docs", "Search the internal documentation", {"query": "string", "limit": "integer"}, ["query"]),
    _tool("lookup_order", "Status of a customer order", {"order_id": "string"}, ["order_id"]),
    _tool("convert_currency", "Convert an amount between currencies",
          {"amount": "number", "from": "string", "to": "string"}, ["amount", "from", "to"]),
    _tool("create_event", "Put an event in the calendar",
          {"title": "string", "date": "string", "minutes": "integer"}, ["title", "date"]),
]
CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Perth", "Quito", "Tunis", "Hanoi", "Denver"]


def _prose(rng: random.Random, n_words: int) -> str:
    """About n_words words of sentences from WORDS (varied sentence lengths)."""
    out: list[str] = []
    while len(out) < n_words:
        k = rng.randint(5, 18)
        s = [rng.choice(WORDS) for _ in range(k)]
        if rng.random() < 0.3:
            s[rng.randrange(k)] = rng.choice(TOPICS)
        s[0] = s[0].capitalize()
        out += s
        out[-1] += rng.choice(".....?!")
    return " ".join(out)


def _answer_words(rng: random.Random) -> int:
    """Answer lengths of a chat dataset: mostly short or medium, some long."""
    r = rng.random()
    return rng.randint(5, 30) if r < 0.55 else rng.randint(30, 80) if r < 0.9 else rng.randint(80, 250)


def _arguments(rng: random.Random, name: str) -> dict:
    if name == "get_weather":
        return {"city": rng.choice(CITIES), **({"unit": "celsius"} if rng.random() < 0.5 else {})}
    if name == "search_docs":
        return {"query": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))), "limit": rng.randint(3, 10)}
    if name == "lookup_order":
        return {"order_id": f"A-{rng.randint(10000, 99999)}"}
    if name == "convert_currency":
        return {"amount": round(rng.uniform(1, 5000), 2), "from": rng.choice(["EUR", "USD", "JPY"]),
                "to": rng.choice(["GBP", "CHF", "NGN"])}
    return {"title": rng.choice(TOPICS), "date": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "minutes": rng.choice([15, 30, 60])}


def _result(rng: random.Random, name: str, args: dict) -> str:
    if name == "get_weather":
        return json.dumps({"city": args["city"], "temp_c": rng.randint(-5, 35),
                           "sky": rng.choice(["sunny", "cloudy", "rain", "snow"])})
    if name == "search_docs":
        return json.dumps([{"title": _prose(rng, 4), "snippet": _prose(rng, rng.randint(8, 20))}
                           for _ in range(rng.randint(1, 2))])
    if name == "lookup_order":
        return json.dumps({"order_id": args["order_id"], "status": rng.choice(["shipped", "delayed", "delivered"]),
                           "items": rng.randint(1, 5)})
    if name == "convert_currency":
        return json.dumps({"amount": round(args["amount"] * rng.uniform(0.5, 2), 2), "currency": args["to"]})
    return json.dumps({"ok": True, "event_id": rng.randint(100, 999)})


def make_dialogs(n: int, seed: int) -> list[dict]:
    """n seeded chat records ({"messages", "tools"?}): ~40% tool-call dialogs (a question, one or two
    calls, their results, the answer, sometimes a follow-up), the rest Q&A of 1-3 turns."""
    rng = random.Random(seed)
    dialogs = []
    for i in range(n):
        msgs: list[dict] = []
        if rng.random() < 0.4:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        rec: dict = {}
        if rng.random() < 0.4:
            tools = rng.sample(TOOLS, rng.randint(1, 2))
            rec["tools"] = tools
            msgs.append({"role": "user", "content": _prose(rng, rng.randint(8, 30))})
            calls = []
            for j in range(1 if rng.random() < 0.75 else 2):
                name = rng.choice(tools)["function"]["name"]
                calls.append({"id": f"call_{i}_{j}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(_arguments(rng, name))}})
            msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
            for c in calls:
                f = c["function"]
                msgs.append({"role": "tool", "tool_call_id": c["id"],
                             "content": _result(rng, f["name"], json.loads(f["arguments"]))})
            msgs.append({"role": "assistant", "content": _prose(rng, _answer_words(rng))})
            if rng.random() < 0.3:
                msgs.append({"role": "user", "content": _prose(rng, rng.randint(5, 25))})
                msgs.append({"role": "assistant", "content": _prose(rng, rng.randint(8, 60))})
        else:
            for _ in range(rng.choice([1, 1, 1, 1, 2, 2, 3])):
                msgs.append({"role": "user", "content": _prose(rng, rng.randint(5, 30))})
                msgs.append({"role": "assistant", "content": _prose(rng, _answer_words(rng))})
        rec["messages"] = msgs
        dialogs.append(rec)
    return dialogs


def prepare(work: Path, n_dialogs: int, seed: int, seq_len: int) -> dict:
    """The HF checkpoint of herd's fp32 weights and the rendered examples, written under work/; the data
    description for the report."""
    import torch

    from herd import hub
    from herd.model.weights import save_hf
    from herd.tokenizer.prompter import Prompter
    from herd.train.data import DataStats, chat_examples
    from herd.train.loop import _order, pack_examples

    model, tokenizer = hub.load(None, dtype=torch.float32, device="cpu")
    save_hf(model, model.args, work / "hf")
    from herd.cli.train import copy_tokenizer

    copy_tokenizer(hub.resolve(None), work / "hf")  # TRL's SFTTrainer wants a tokenizer beside the weights
    del model
    dialogs = make_dialogs(n_dialogs, seed)
    jsonl = work / "dialogs.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in dialogs))
    stats = DataStats()
    examples = list(chat_examples(jsonl, Prompter(tokenizer), max_seq_len=seq_len, stats=stats))
    # herd's packing and its seeded block order: HF gets the same dialogs in the order herd visits them
    blocks = pack_examples(examples, seq_len)
    first_example, start = [], 0
    for b in blocks:
        first_example.append(start)
        start += b.doc_ids[-1] + 1
    assert start == len(examples)
    per_block = [b.doc_ids[-1] + 1 for b in blocks]
    lengths = [len(e.input_ids) for e in examples]
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    data = {"examples": [[e.input_ids, e.labels] for e in examples], "seq_len": seq_len, "seed": seed,
            "pad_id": pad_id, "batch_size": max(1, round(len(examples) / len(blocks))),
            "block_order": [], "first_block_examples": per_block[_order(len(blocks), seed, 0)[0]]}
    for epoch in range(64):  # far more than any run needs; each epoch is a fresh seeded order, as in train()
        data["block_order"] += [[first_example[b] + k for k in range(per_block[b])]
                                for b in _order(len(blocks), seed, epoch)]
    (work / "data.json").write_text(json.dumps(data))
    return {"dialogs": n_dialogs, "tool_dialogs": sum("tools" in d for d in dialogs), "examples": len(examples),
            "truncated": stats.truncated, "skipped": stats.skipped, "tokens": stats.tokens,
            "trained_tokens": stats.trained_tokens, "min_len": min(lengths), "max_len": max(lengths),
            "mean_len": statistics.mean(lengths), "median_len": statistics.median(lengths),
            "blocks": len(blocks), "per_block": len(examples) / len(blocks),
            "block_fill": stats.tokens / (len(blocks) * seq_len), "batch_size": data["batch_size"],
            "first_block_examples": data["first_block_examples"], "tokenizer": "SmolLM2 (Jinja chat template)"}


# ---- workers (one process per system x mode) --------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _summary(step_ends: list[float], real: list[int], trained: list[int], padded: list[int], warmup: int) -> dict:
    """Rates over the steps after the warm-up; step i's time is step_ends[i] - step_ends[i - 1]
    (step_ends[0] is the start of training)."""
    times = [b - a for a, b in itertools.pairwise(step_ends)][warmup:]
    real, trained, padded = real[warmup:len(times) + warmup], trained[warmup:len(times) + warmup], \
        padded[warmup:len(times) + warmup]
    secs = sum(times)
    return {"timed_steps": len(times), "seconds": secs, "step_p50_s": statistics.median(times),
            "step_min_s": min(times), "step_max_s": max(times), "real_tokens": sum(real),
            "trained_tokens": sum(trained), "padded_tokens": sum(padded), "real_tok_s": sum(real) / secs,
            "trained_tok_s": sum(trained) / secs, "step_times": times}


def herd_worker(mode: str, spec: dict, data: dict) -> dict:
    import torch

    from herd import hub
    from herd.train.data import Example
    from herd.train.loop import TrainConfig, pack_examples, train
    from herd.train.sft import lm_loss

    model, _ = hub.load(None, dtype=torch.float32, device="cpu")
    torch.set_num_threads(spec["threads"])
    if mode == "lora":
        from herd.model.lora import LoRAConfig, apply_lora

        apply_lora(model, LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples = [Example(ids, labels) for ids, labels in data["examples"]]
    blocks = pack_examples(examples, data["seq_len"])
    cfg = TrainConfig(lr=LR[mode], max_steps=spec["warmup"] + spec["steps"], seq_len=data["seq_len"], grad_accum=1,
                      warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, max_grad_norm=1.0, seed=data["seed"])
    rss_before = _rss_mb()
    rows: list[dict] = []
    ends: list[float] = []
    state = {"rss": 0.0}

    def on_step(row: dict) -> None:
        ends.append(time.perf_counter())
        rows.append(row)
        state["rss"] = _rss_mb()  # before train() plots the loss curve (matplotlib) at the end

    with tempfile.TemporaryDirectory(prefix="herd-train-bench-") as out:
        ends.append(time.perf_counter())
        train(model, blocks, lm_loss, cfg, out, on_step=on_step)
    real = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows)]
    res = _summary(ends, real, [r["trained_tokens"] for r in rows], [0] * len(rows), spec["warmup"])
    res.update({"batch": "1 packed block", "examples_per_step": len(examples) / len(blocks),
                "first_loss": rows[0]["loss"], "losses": [r["loss"] for r in rows], "trainable": trainable,
                "rss_before_mb": rss_before, "peak_rss_mb": state["rss"], "threads": torch.get_num_threads()})
    return res


def step_clock():
    """A transformers TrainerCallback with the ends of the steps, the logged losses and the peak RSS."""
    from transformers import TrainerCallback

    class _Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []
            self.state = {"rss": 0.0}

        def on_train_begin(self, args, st, control, **kw):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, st, control, **kw):
            self.ends.append(time.perf_counter())
            self.state["rss"] = _rss_mb()

        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return _Clock()


def hf_worker(mode: str, spec: dict, data: dict) -> dict:
    import torch
    from transformers import (
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = LlamaForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    torch.set_num_threads(spec["threads"])
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                 target_modules=HF_TARGETS, bias="none", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    order = [i for block in data["block_order"] for i in block]
    batch_size, pad_id = data["batch_size"], data["pad_id"]
    steps = spec["warmup"] + spec["steps"]
    order = order[:steps * batch_size]
    dataset = [{"input_ids": data["examples"][i][0], "labels": data["examples"][i][1]} for i in order]
    seen: list[tuple[int, int, int]] = []  # per batch: real, trained, padded tokens

    def collate(items: list[dict]) -> dict:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, x in enumerate(items):
            n = len(x["input_ids"])
            ids[r, :n] = torch.tensor(x["input_ids"])
            labels[r, :n] = torch.tensor(x["labels"])
            mask[r, :n] = 1
        real = int(mask.sum())
        seen.append((real, int((labels[:, 1:] != IGNORE).sum()), ids.numel() - real))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # the loss check: HF's loss on the dialogs of herd's first block (herd's first-step batch), same weights
    k = data["first_block_examples"]
    with torch.no_grad():
        model.eval()
        check = collate(dataset[:k])
        same_loss = float(model(**check).loss)
        seen.clear()
    model.train()

    clock = step_clock()
    ends, losses, state = clock.ends, clock.losses, clock.state

    with tempfile.TemporaryDirectory(prefix="hf-train-bench-") as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
            max_steps=steps, learning_rate=LR[mode], lr_scheduler_type="constant", warmup_steps=0,
            optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
            max_grad_norm=1.0, train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
            eval_strategy="no", report_to="none", dataloader_num_workers=0, dataloader_pin_memory=False,
            use_cpu=True, seed=data["seed"], disable_tqdm=True, remove_unused_columns=False,
            label_names=["labels"])
        rss_before = _rss_mb()
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[clock]).train()
    # seen: the batches in the order the dataloader made them (it may run one ahead of the steps)
    res = _summary(ends, *(list(col) for col in zip(*seen)), spec["warmup"])
    res.update({"batch": f"{batch_size} dialog{'s' if batch_size != 1 else ''}, padded", "examples_per_step": batch_size,
                "first_loss": losses[0] if losses else None, "losses": losses, "same_data_loss": same_loss,
                "same_data_examples": k, "trainable": trainable, "rss_before_mb": rss_before,
                "peak_rss_mb": state["rss"], "threads": torch.get_num_threads(),
                "attention": getattr(model.config, "_attn_implementation", "?")})
    return res


def trl_worker(mode: str, spec: dict, data: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    hf_logging.set_verbosity_error()
    model = LlamaForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    torch.set_num_threads(spec["threads"])
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=HF_TARGETS,
                                 bias="none", task_type="CAUSAL_LM")
    steps = spec["warmup"] + spec["steps"]
    dataset = Dataset.from_dict({"input_ids": [ids for ids, _ in data["examples"]],
                                 "labels": [labels for _, labels in data["examples"]]})
    seen: list[tuple[int, int]] = []  # per step: real tokens, trained targets
    clock = step_clock()
    ends, losses, state = clock.ends, clock.losses, clock.state

    with tempfile.TemporaryDirectory(prefix="trl-train-bench-") as out:
        args = SFTConfig(
            output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=steps,
            learning_rate=LR[mode], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
            weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", dataloader_num_workers=0,
            dataloader_pin_memory=False, use_cpu=True, seed=data["seed"], disable_tqdm=True,
            max_length=data["seq_len"], packing=True, packing_strategy="bfd")
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft_config,
                             callbacks=[clock])
        inner = trainer.compute_loss

        def counted(m, inputs, *a, **kw):  # the tokens of each step's packed sequence
            labels = inputs["labels"]
            seen.append((int(inputs["input_ids"].numel()), int((labels[:, 1:] != IGNORE).sum())))
            return inner(m, inputs, *a, **kw)

        trainer.compute_loss = counted
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        rss_before = _rss_mb()
        trainer.train()
    real, trained = (list(col) for col in zip(*seen))
    res = _summary(ends, real, trained, [0] * len(real), spec["warmup"])
    res.update({"batch": "1 packed sequence (bfd)", "examples_per_step": None,
                "first_loss": losses[0] if losses else None, "losses": losses, "trainable": trainable,
                "rss_before_mb": rss_before, "peak_rss_mb": state["rss"], "threads": torch.get_num_threads(),
                "attention": getattr(trainer.model.config, "_attn_implementation", "?")})
    return res


def worker_main(argv: list[str]) -> None:
    system, mode, spec = argv[0], argv[1], json.loads(argv[2])
    if system == "prepare":
        result = prepare(Path(spec["work"]), spec["dialogs"], spec["seed"], spec["seq_len"])
    else:
        data = json.loads(Path(spec["data"]).read_text())
        result = {"herd": herd_worker, "hf": hf_worker, "trl": trl_worker}[system](mode, spec, data)
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(system: str, mode: str, spec: dict) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, mode, json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    label = system if mode == "-" else f"{system} {mode}"
    print(f"  {label}: {time.perf_counter() - t0:.0f} s (rc {proc.returncode})", file=sys.stderr, flush=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {label} failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
    return None


# ---- the report --------------------------------------------------------------------------------------


def render(r: dict) -> str:
    m, d, s = r["machine"], r["data"], r["spec"]
    runs = r["runs"]
    attention = next((x["attention"] for k, x in runs.items() if k.startswith("hf:")), "?")
    lines = [
        "## Training speed (SFT)",
        "",
        (f"Generated by `benchmarks/train.py` on {m['date']}: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, "
         f"{m['ram_gb']} GB RAM; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
         f"peft {m['peft']}, accelerate {m['accelerate']}; {s['threads']} torch threads in every worker; load "
         f"average {m['load_before']:.2f} before, {m['load_after']:.2f} after. Run: `{r['command']}` "
         f"({r['seconds']:.0f} s)."),
        "",
        (f"SmolLM2-135M-Instruct (the embedded model), fp32 on the CPU, the same weights in both systems. "
         f"{d['dialogs']} seeded synthetic chat dialogs ({d['tool_dialogs']} with tool calls and results, the "
         f"rest Q&A of 1-3 turns) rendered once by herd with the model's chat template: {d['examples']} "
         f"examples of {d['min_len']}-{d['max_len']} tokens (mean {d['mean_len']:.0f}, {d['truncated']} "
         f"truncated to {s['seq_len']}), {d['tokens']} tokens of which {d['trained_tokens']} are assistant "
         f"tokens (learnt). herd packs them into {d['blocks']} blocks of at most {s['seq_len']} tokens "
         f"({d['per_block']:.1f} dialogs, {100 * d['block_fill']:.0f}% full on average; attention within each "
         f"dialog, nothing padded) and trains one block per step; HF's `Trainer` gets the same dialogs in the "
         f"order herd visits them, {d['batch_size']} per step (per_device_train_batch_size), padded to the "
         f"longest in the batch. AdamW, constant lr (1e-5 full, 2e-4 LoRA), clipping at 1.0; LoRA rank "
         f"{LORA_RANK}, alpha {LORA_ALPHA} on q, k, v, o, gate, up, down; HF's default attention ({attention}). "
         f"{s['warmup']} warm-up step{'s' if s['warmup'] != 1 else ''}, then {s['steps']} timed "
         f"step{'s' if s['steps'] != 1 else ''}; each system x mode in its own process. Tokens/s over the timed steps: real = "
         f"non-padding tokens, trained = learnt (assistant) next-token targets; herd / HF on real tokens/s."),
        "",
        ("| mode | system | batch per step | real tokens / step | padding | real tok/s | trained tok/s | "
         "step p50 (s) | peak RSS (MiB) | herd / HF |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in s["modes"]:
        h, f = runs.get(f"herd:{mode}"), runs.get(f"hf:{mode}")
        for system in s["systems"]:
            x = runs.get(f"{system}:{mode}")
            if x is None:
                lines.append(f"| {mode} | {NAMES[system]} | failed (see the run's output) | | | | | | | |")
                continue
            ratio = ""
            if system == "herd" and h and f:
                ratio = (f"**{h['real_tok_s'] / f['real_tok_s']:.2f}x** (trained "
                         f"{h['trained_tok_s'] / f['trained_tok_s']:.2f}x)")
            t = runs.get(f"trl:{mode}")
            if system == "herd" and h and t:
                ratio += f"{'; ' if ratio else ''}vs TRL **{h['real_tok_s'] / t['real_tok_s']:.2f}x**"
            pad = x["padded_tokens"] / (x["padded_tokens"] + x["real_tokens"])
            lines.append(f"| {mode} | {NAMES[system]} | {x['batch']} | {x['real_tokens'] / x['timed_steps']:.0f} | "
                         f"{100 * pad:.0f}% | {x['real_tok_s']:.0f} | {x['trained_tok_s']:.0f} | "
                         f"{x['step_p50_s']:.2f} | {x['peak_rss_mb']:.0f} | {ratio} |")
        if "trl" not in s["systems"]:
            lines.append(f"| {mode} | TRL `SFTTrainer` | not installed here: not run | | | | | | | |")
    lines += [
        "",
        ("Loss check (same weights, same dialogs): herd's first-step loss on its first block against HF's "
         "loss on that block's dialogs (a forward before training, padded batch); HF's own first step (its "
         "first batch) for reference."),
        "",
        ("| mode | herd step 1 (first block) | HF, same dialogs | difference | HF step 1 (its first batch) | "
         "trainable parameters herd / HF |"),
        "|---|---:|---:|---:|---:|---|",
    ]
    for mode in s["modes"]:
        h, f = runs.get(f"herd:{mode}"), runs.get(f"hf:{mode}")
        if not (h and f):
            continue
        hf1 = "-" if f["first_loss"] is None else f"{f['first_loss']:.4f}"
        k = d["first_block_examples"]
        lines.append(f"| {mode} | {h['first_loss']:.4f} ({k} dialog{'s' if k != 1 else ''}) | "
                     f"{f['same_data_loss']:.4f} | {abs(h['first_loss'] - f['same_data_loss']):.1e} | {hf1} | "
                     f"{h['trainable']:,} / {f['trainable']:,} |")
    goal = {mode: runs[f"herd:{mode}"]["real_tok_s"] / runs[f"hf:{mode}"]["real_tok_s"]
            for mode in s["modes"] if f"herd:{mode}" in runs and f"hf:{mode}" in runs}
    if goal:
        ok = all(x >= 1.5 for x in goal.values())
        lines += ["", (f"Goal (issue 14): herd >= 1.5x HF in real tokens/s: {'met' if ok else 'not met'} "
                       f"({', '.join(f'{mode} {x:.2f}x' for mode, x in goal.items())}).")]
    return "\n".join(lines) + "\n"


def write_section(md: Path, section: str) -> bool:
    return benchkit.write_section(md, BEGIN, END, section)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seq_len 256, 1 warm-up + 3 timed steps (a smoke test)")
    ap.add_argument("--seq-len", type=int, default=1024, help="herd's block length (tokens per step)")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per system x mode")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    ap.add_argument("--dialogs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modes", default="full,lora", help="comma list of: full, lora")
    ap.add_argument("--systems", default=None, help="comma list of: herd, hf, trl (default: all; trl when it "
                    "is installed)")
    ap.add_argument("--write", action="store_true", help="update the train section of BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--json", type=Path, default=None, help="also save the raw numbers here")
    ap.add_argument("--render", action="store_true", help="only render --json (and --write it); measure nothing")
    a = ap.parse_args()
    if a.render:
        if a.json is None:
            ap.error("--render needs --json FILE")
        section = render(json.loads(a.json.read_text()))
        print(section)
        if a.write and write_section(a.out, section):
            print(f"wrote the train section of {a.out}", file=sys.stderr)
        return
    if a.quick:
        a.seq_len, a.steps, a.warmup = 256, 3, 1
    modes = [x for x in MODES if x in a.modes.split(",")]
    if a.systems is None:
        import importlib.util

        a.systems = "herd,hf" + (",trl" if importlib.util.find_spec("trl") else "")
    systems = [x for x in SYSTEMS if x in a.systems.split(",")]
    if not modes or not systems or a.steps < 1 or a.warmup < 0 or a.seq_len < 16:
        ap.error("need a mode (full, lora), a system (herd, hf), --steps >= 1, --warmup >= 0, --seq-len >= 16")
    t_start = time.perf_counter()
    results: dict = {"machine": machine(), "command": "benchmarks/train.py " + " ".join(sys.argv[1:]),
                     "spec": {"seq_len": a.seq_len, "steps": a.steps, "warmup": a.warmup, "threads": a.threads,
                              "modes": modes, "systems": systems, "seed": a.seed}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="herd-train-bench-") as tmp:
        work = Path(tmp)
        # in a process of its own too: a worker forked from a parent that had loaded the model would
        # inherit that parent's high-water mark (Linux keeps ru_maxrss across exec)
        data = run_worker("prepare", "-", {"work": tmp, "dialogs": a.dialogs, "seed": a.seed, "seq_len": a.seq_len,
                                           "threads": a.threads})
        if data is None:
            raise SystemExit("could not prepare the checkpoint and the data (see above)")
        results["data"] = data
        spec = {"threads": a.threads, "steps": a.steps, "warmup": a.warmup, "data": str(work / "data.json"),
                "hf_dir": str(work / "hf")}
        for mode in modes:
            for system in systems:
                r = run_worker(system, mode, spec)
                if r is not None:
                    results["runs"][f"{system}:{mode}"] = r
    results["machine"]["load_after"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - t_start
    section = render(results)
    print(section)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    if a.write and write_section(a.out, section):
        print(f"wrote the train section of {a.out}", file=sys.stderr)
    for mode in modes:
        h, f = results["runs"].get(f"herd:{mode}"), results["runs"].get(f"hf:{mode}")
        if h and f and abs(h["first_loss"] - f["same_data_loss"]) > 1e-2:
            print(f"note: {mode}: herd's first-step loss {h['first_loss']:.4f} and HF's on the same dialogs "
                  f"{f['same_data_loss']:.4f} differ by more than 0.01", file=sys.stderr)


if __name__ == "__main__":
    main()
