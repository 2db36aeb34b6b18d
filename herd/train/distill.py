"""Knowledge distillation: a frozen teacher's next-token distributions taught to a student, mixed with the
ordinary cross-entropy, full or LoRA, with the outputs of SFT.

    examples, stats = load_sft_data("chat.jsonl", prompter, cfg)          # chat: the assistant tokens are learnt
    blocks, stats = load_text_data("corpus.jsonl", tokenizer, cfg.seq_len)   # or text: every token
    result = run_distill(student, teacher, examples, stats, "out/", cfg, temperature=2.0, alpha=0.5)
    result = run_distill(student, teacher, blocks, stats, "out/", cfg, top_k=64, lora=LoRAConfig(rank=16))

Per packed block, the teacher (a herd Transformer with the student's vocabulary, frozen: eval mode, no
gradients) runs under torch.no_grad with the block's document masks (loop.hidden_states), and its output
feeds losses.distillation_loss together with the student's final hidden states and output head:

    loss = alpha * T**2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)

summed over the block's learnt tokens (the `targets` of loop.block_tensors: assistant tokens for chat data,
every token for text) and divided by the step's count of them in the loop. The teacher's output is its full
logits (1, T, V), or with `top_k` its k most likely tokens and their log-probs at the learnt positions only,
computed a chunk of tokens at a time, so a large vocabulary never needs (T, V) teacher logits at once.

Teacher outputs are computed on the fly every step: nothing is cached, nothing random is drawn, so a resumed
run ends with exactly the weights of an uninterrupted one (the loop's checkpoints cover the student). The
settings (temperature, alpha, top_k) are written to OUT/distill.json; `--resume` with other settings is an
error rather than a silently different run. OUT/ is otherwise laid out as for SFT (herd/train/sft.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.train.data import IGNORE, DataStats, Example, PackedBlock
from herd.train.loop import (
    LossFn,
    TrainConfig,
    TrainResult,
    block_tensors,
    hidden_states,
    pack_examples,
    train,
)
from herd.train.losses import distillation_loss
from herd.train import distributed
from herd.train.sft import head_weight, save_outputs

__all__ = ["check_teacher", "distill_kl", "make_distill_loss", "run_distill", "teacher_outputs"]

TOPK_ROWS = 256  # teacher tokens projected at a time for top-k outputs

TeacherOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _vocab(model: nn.Module) -> int:
    return int(model.args.vocab_size)


def check_teacher(student: nn.Module, teacher: Any) -> Transformer:
    """The teacher if it can teach this student (a herd Transformer with the same vocabulary, sharing no
    parameter with it), else a HerdError saying why."""
    if not isinstance(teacher, Transformer):
        raise HerdError(f"the teacher must be a herd Transformer, got {type(teacher).__name__}")
    if teacher is student:
        raise HerdError("the teacher and the student are the same model; load the teacher separately")
    sv, tv = _vocab(student), _vocab(teacher)
    if sv != tv or head_weight(student).shape[0] != tv:
        raise HerdError(f"the teacher's vocabulary ({tv} tokens) is not the student's ({sv} tokens); "
                        "distillation needs both models on the same tokenizer")
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if shared:
        raise HerdError("the teacher shares weights with the student; load the teacher separately")
    return teacher


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, batch: dict[str, torch.Tensor], *, top_k: int | None = None,
                    device: torch.device | None = None) -> TeacherOutput:
    """The teacher's output on a packed block (documents kept apart): logits (1, T, V) in fp32, or with
    top_k the pair (topk_ids (1, T, k), topk_logps (1, T, k) fp32) of its k most likely next tokens and
    their log-probs, filled only where batch["targets"] is learnt (ids 0 and log-probs 0 elsewhere, which
    distillation_loss never reads). On `device` (default: the teacher's)."""
    h = hidden_states(teacher, batch)  # (1, T, D)
    if top_k is None:
        logits = teacher.output(h).float()
        return logits if device is None else logits.to(device)
    vocab = _vocab(teacher)
    if not 1 <= top_k <= vocab:
        raise HerdError(f"top_k must be between 1 and the vocabulary size {vocab}, got {top_k}")
    targets = batch["targets"].to(h.device)
    idx = (targets.reshape(-1) != IGNORE).nonzero().squeeze(1)
    rows = h.reshape(-1, h.shape[-1]).index_select(0, idx)
    ids = torch.zeros(targets.numel(), top_k, dtype=torch.long, device=h.device)
    lps = torch.zeros(targets.numel(), top_k, dtype=torch.float32, device=h.device)
    for s in range(0, rows.shape[0], TOPK_ROWS):
        logps = teacher.output(rows[s:s + TOPK_ROWS]).float().log_softmax(-1)  # (c, V): one chunk at a time
        top = logps.topk(top_k, dim=-1)
        ids[idx[s:s + TOPK_ROWS]] = top.indices
        lps[idx[s:s + TOPK_ROWS]] = top.values
    shape = (*targets.shape, top_k)
    ids, lps = ids.view(shape), lps.view(shape)
    return (ids, lps) if device is None else (ids.to(device), lps.to(device))


def make_distill_loss(teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 0.5,
                      top_k: int | None = None,
                      parts: dict[str, float] | None = None) -> LossFn:
    """The loop's loss function for distillation: (alpha * T**2 * KL + (1 - alpha) * CE summed over the
    block's learnt tokens, their count). `parts`, when given, accumulates the summed "kd" and "ce" (floats)
    across calls, for logging."""
    if temperature <= 0:
        raise HerdError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise HerdError(f"alpha must be in [0, 1], got {alpha}")
    if top_k is not None and not 1 <= top_k <= _vocab(teacher):
        raise HerdError(f"top_k must be between 1 and the vocabulary size {_vocab(teacher)}, got {top_k}")

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        h = hidden_states(model, batch)
        target = teacher_outputs(teacher, batch, top_k=top_k, device=h.device)
        out = distillation_loss(h, target, batch["targets"].to(h.device), head_weight=head_weight(model),
                                temperature=temperature, alpha=alpha, reduction="sum")
        if parts is not None:
            parts["kd"] = parts.get("kd", 0.0) + float(out.kd.detach())
            parts["ce"] = parts.get("ce", 0.0) + float(out.ce.detach())
        return out.loss, out.n_tokens

    return loss_fn


def _blocks(examples_or_blocks: Sequence[Example] | Sequence[PackedBlock], seq_len: int) -> list[PackedBlock]:
    items = list(examples_or_blocks)
    if all(isinstance(x, PackedBlock) for x in items):
        longest = max((len(b.input_ids) for b in items), default=0)
        if longest > seq_len:
            raise HerdError(f"a block of {longest} tokens is longer than seq_len {seq_len}")
        return items  # type: ignore[return-value]
    if all(isinstance(x, Example) for x in items):
        return pack_examples(items, seq_len)  # type: ignore[arg-type]
    raise HerdError("distillation data must be a list of Example (chat) or of PackedBlock (text), not a mix")


@torch.no_grad()
def distill_kl(student: nn.Module, teacher: nn.Module, examples_or_blocks: Sequence[Example] | Sequence[PackedBlock],
               *, seq_len: int = 2048, temperature: float = 1.0, top_k: int | None = None) -> float:
    """The mean per learnt token of KL(teacher_T || student_T) over the data (an evaluation: no gradients)."""
    check_teacher(student, teacher)
    was_training = student.training
    student.eval()
    teacher_was_training = teacher.training
    teacher.eval()
    kd_sum, n_sum = 0.0, 0
    try:
        for block in _blocks(examples_or_blocks, seq_len):
            batch = block_tensors(block)
            h = hidden_states(student, batch)
            target = teacher_outputs(teacher, batch, top_k=top_k, device=h.device)
            out = distillation_loss(h, target, batch["targets"].to(h.device), head_weight=head_weight(student),
                                    temperature=temperature, alpha=1.0, reduction="sum")
            kd_sum += float(out.kd)
            n_sum += out.n_tokens
    finally:
        student.train(was_training)
        teacher.train(teacher_was_training)
    return kd_sum / max(n_sum, 1)


def _settings_file(out: Path, settings: dict[str, Any], resume: bool) -> None:
    path = out / "distill.json"
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before is not None and before != settings:
            raise HerdError(f"{out}: the run was started with {before}, not {settings}; resume it with the same "
                            "distillation settings")
    if distributed.is_main():
        path.write_text(json.dumps(settings, indent=2) + "\n")


def run_distill(student: nn.Module, teacher: nn.Module, examples_or_blocks: Sequence[Example] | Sequence[PackedBlock],
                stats: DataStats | None, out_dir: str | Path, cfg: TrainConfig, *, temperature: float = 2.0,
                alpha: float = 0.5, top_k: int | None = None, lora: Any = None, resume: bool = False,
                on_step: Callable[[dict[str, Any]], None] | None = None, base_name: str = "") -> TrainResult:
    """Distil `teacher` into `student` (herd Transformers on one vocabulary; the student's weights float) on
    chat examples (load_sft_data: the assistant tokens are learnt) or text blocks (load_text_data: every token
    is); see the module docstring. `lora`: a herd.model.lora.LoRAConfig to train an adapter of the student
    instead of every weight. The rows given to `on_step` also carry the step's mean "kd" and "ce"."""
    check_teacher(student, teacher)
    loss_parts: dict[str, float] = {}
    loss_fn = make_distill_loss(teacher, temperature=temperature, alpha=alpha, top_k=top_k, parts=loss_parts)
    blocks = _blocks(examples_or_blocks, cfg.seq_len)
    if not blocks:
        raise HerdError("no training data: every example was skipped (see the data summary)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _settings_file(out, {"temperature": temperature, "alpha": alpha, "top_k": top_k}, resume)
    if distributed.is_main():
        (out / "data.json").write_text(json.dumps(asdict(stats or DataStats()), indent=2) + "\n")
    freeze(teacher)
    if lora is not None:
        from herd.model.lora import apply_lora

        apply_lora(student, lora)  # freezes everything else
    else:
        for p in student.parameters():
            p.requires_grad_(True)

    def step_done(row: dict[str, Any]) -> None:
        n = max(int(row.get("trained_tokens") or 0), 1)
        row["kd"] = loss_parts.pop("kd", 0.0) / n
        row["ce"] = loss_parts.pop("ce", 0.0) / n
        if on_step:
            on_step(row)

    result = train(student, blocks, loss_fn, cfg, out, resume=resume, on_step=step_done)
    save_outputs(student, out, lora=lora, base_name=base_name)
    return result
