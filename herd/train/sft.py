"""Supervised fine-tuning: chat JSONL -> packed blocks -> the training loop, full or LoRA, and the outputs.

    cfg = TrainConfig(lr=2e-4, max_steps=200)
    examples, stats = load_sft_data("train.jsonl", prompter, cfg)      # bad data fails here, before any output
    result = run_sft(model, examples, stats, "out/", cfg, lora=LoRAConfig(rank=16))

OUT/ holds `metrics.jsonl`, `checkpoints/step-N/` (see herd/train/loop.py), `train_config.json`, the
data summary `data.json`, and when the run finishes: `adapter/` (PEFT format, LoRA runs) and `merged/`
(Hugging Face layout: config.json + model.safetensors, loadable by `transformers` and `herd serve`; the
caller adds the tokenizer files, it knows where the model came from). Each is written under a temporary
name and renamed, so OUT never holds half an output.

The loss is the next-token cross-entropy on the assistant tokens only (herd/train/data.py), computed in
chunks over the vocabulary (herd/train/losses.py) from the final hidden states of each packed block.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herd.errors import HerdError
from herd.tokenizer.prompter import Prompter
from herd.train import distributed
from herd.train.data import DataStats, Example, Overflow, chat_examples
from herd.train.loop import TrainConfig, TrainResult, hidden_states, pack_examples, train
from herd.train.losses import masked_cross_entropy


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed CE over the block's learnt tokens, their count): chunked over the vocabulary."""
    h = hidden_states(model, batch)
    return masked_cross_entropy(h, head_weight(model), batch["targets"].to(h.device))


def head_weight(model: nn.Module) -> torch.Tensor:
    """The output head's float weight (V, dim)."""
    w = getattr(model.output, "weight", None)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise HerdError("training needs a float output head; load the model without --quantize (QLoRA keeps "
                        "the head in float)")
    return w


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def load_sft_data(data: str | Path, prompter: Prompter, cfg: TrainConfig, *, overflow: Overflow = "truncate",
                  tool_prompt_format: str = "json") -> tuple[list[Example], DataStats]:
    """Every example of a chat JSONL file (a bad record raises DataError naming file:line), with the stats."""
    stats = DataStats()
    examples = list(chat_examples(data, prompter, max_seq_len=cfg.seq_len, overflow=overflow,
                                  tool_prompt_format=tool_prompt_format, stats=stats))
    return examples, stats


def run_sft(model: nn.Module, examples: list[Example], stats: DataStats, out_dir: str | Path, cfg: TrainConfig, *,
            lora: Any = None, resume: bool = False, on_step: Callable[[dict[str, Any]], None] | None = None,
            base_name: str = "") -> TrainResult:
    """Fine-tune `model` (a herd Transformer, float weights) on examples from load_sft_data; see the module
    docstring. `lora`: a herd.model.lora.LoRAConfig to train an adapter instead of every weight."""
    out = Path(out_dir)
    blocks = pack_examples(examples, cfg.seq_len)
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (out / "data.json").write_text(json.dumps(asdict(stats), indent=2) + "\n")
    if lora is not None:
        from herd.model.lora import apply_lora

        apply_lora(model, lora)  # freezes everything else
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    result = train(model, blocks, lm_loss, cfg, out, resume=resume, on_step=on_step)
    save_outputs(model, out, lora=lora, base_name=base_name)
    return result


def save_outputs(model: nn.Module, out: Path, *, lora: Any = None, base_name: str = "") -> None:
    """adapter/ (LoRA runs) and merged/ (HF layout: base + adapter, quantized bases dequantized), each
    written whole under a temporary name first; the model itself is left as it is. Under torch.distributed
    only rank 0 writes (the model is whole on every rank after train())."""
    from herd.model.weights import save_hf

    if not distributed.is_main():
        return

    model.eval()
    state: Any = model
    if lora is not None:
        from herd.model.lora import merged_state_dict, save_peft_adapter

        tmp = out / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_peft_adapter(model, lora, tmp, base_name)
        _replace_dir(tmp, out / "adapter")
        state = merged_state_dict(model)
    tmp = out / ".merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(state, model.args, tmp)
    _replace_dir(tmp, out / "merged")
