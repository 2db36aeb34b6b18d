"""Direct Preference Optimization: preference JSONL -> one packed block per pair -> the training loop, full or
LoRA, and the outputs.

    cfg = TrainConfig(lr=5e-6, max_steps=200, grad_accum=8)          # grad_accum: pairs per optimizer step
    pairs, stats = load_dpo_data("prefs.jsonl", prompter, cfg)       # bad data fails here, before any output
    result = run_dpo(model, pairs, stats, "out/", cfg, beta=0.1, lora=LoRAConfig(rank=16))

How it rides on herd/train/loop.py unchanged:
- Each pair is ONE block holding the chosen and the rejected sequence as two documents (the document
  mask keeps them apart and positions restart), so one forward gives both answers' log-probs: the sum of
  the token log-probs (`losses.token_logps`) over each document's learnt tokens.
- The loop normalises a step's loss by `count(batch)` summed over its blocks; DPO counts one per pair, so the
  loss function returns (the pair's DPO loss, 1) and the step loss is the mean over the step's pairs.
- The reference log-probs are computed ONCE, before the first step, under no_grad in eval mode: with LoRA
  from the base model (`disable_lora`: the adapters switched off, no second copy of the weights),
  otherwise from the initial weights — which is what a frozen copy would give, without its memory. They
  are saved in OUT/reference_logps.pt (with a fingerprint of the data) and a resumed run loads them rather
  than computing them again from whatever model it was handed.

Loss: `losses.dpo_loss` with beta, loss_type ("sigmoid", the paper's; "ipo", on length-averaged log-probs
as the IPO paper has it) and label_smoothing (conservative DPO). Per step, `dpo_metrics.jsonl` records the
mean reward margin (beta times the policy-minus-reference log-ratio of the chosen answer minus that of the
rejected), the reward accuracy (the share of pairs whose margin is positive), the mean rewards and the
policy's log-probs; `on_step` gets the loop's row with these keys added.

OUT/ holds what run_sft writes (metrics.jsonl, checkpoints/, train_config.json, data.json, adapter/ for
LoRA runs, merged/) plus reference_logps.pt, dpo.json (beta, loss type, smoothing) and dpo_metrics.jsonl.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from herd.errors import HerdError
from herd.tokenizer.prompter import Prompter
from herd.train.data import (
    IGNORE,
    DataStats,
    Overflow,
    PackedBlock,
    PreferenceExample,
    preference_examples,
)
from herd.train.loop import (
    TrainConfig,
    TrainResult,
    block_tensors,
    hidden_states,
    latest_checkpoint,
    train,
)
from herd.train.losses import dpo_loss, shift_labels, token_logps
from herd.train import distributed
from herd.train.sft import head_weight, save_outputs

REFERENCE_FILE = "reference_logps.pt"
METRICS_FILE = "dpo_metrics.jsonl"

__all__ = ["DPOObjective", "load_dpo_data", "pair_blocks", "reference_logps", "run_dpo"]


# ---- blocks ------------------------------------------------------------------------------------------


def _learnt_targets(ids: list[int], labels: list[int]) -> int:
    """How many of a sequence's tokens are predicted (learnt, and not its first token)."""
    return sum(x != IGNORE for x in labels[1:]) if len(ids) == len(labels) else 0


def pair_blocks(pairs: Sequence[PreferenceExample]) -> list[PackedBlock]:
    """One block per pair: the chosen sequence (document 0) then the rejected one (document 1), the
    answers' labels as they are (unshifted, -100 outside the answers): what the loop trains on."""
    blocks = []
    for n, pair in enumerate(pairs):
        where = pair.source or f"pair {n}"
        for name, ex in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            if len(ex.input_ids) != len(ex.labels):
                raise HerdError(f"{where}: the {name} sequence has {len(ex.input_ids)} tokens but "
                                f"{len(ex.labels)} labels")
            if not _learnt_targets(ex.input_ids, ex.labels):
                raise HerdError(f"{where}: the {name} answer has no token to learn (after the first)")
        c, r = pair.chosen, pair.rejected
        blocks.append(PackedBlock(list(c.input_ids) + list(r.input_ids), list(c.labels) + list(r.labels),
                                  list(range(len(c.input_ids))) + list(range(len(r.input_ids))),
                                  [0] * len(c.input_ids) + [1] * len(r.input_ids)))
    return blocks


def _fingerprint(blocks: Sequence[PackedBlock]) -> str:
    h = hashlib.sha256()
    for b in blocks:
        for xs in (b.input_ids, b.labels, b.doc_ids):
            h.update(np.asarray(xs, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _block_logps(model: nn.Module, block: PackedBlock, batch: dict[str, torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-document sums of the learnt tokens' log-probs (2,), learnt-token counts (2,)) of a pair block:
    one forward of the model (with grad when grad is on)."""
    batch = batch if batch is not None else block_tensors(block)
    h = hidden_states(model, batch)
    ids = torch.tensor(block.input_ids)
    docs = torch.tensor(block.doc_ids)
    targets = shift_labels(ids, torch.tensor(block.labels) != IGNORE, doc_ids=docs).to(h.device)
    lp = token_logps(h, head_weight(model), targets[None])[0]
    docs = docs.to(h.device)
    sums = torch.stack([lp[docs == d].sum() for d in (0, 1)])
    counts = torch.stack([((targets != IGNORE) & (docs == d)).sum() for d in (0, 1)])
    return sums, counts


@torch.no_grad()
def reference_logps(model: nn.Module, blocks: Sequence[PackedBlock]) -> torch.Tensor:
    """(n_pairs, 2) fp32 CPU: the reference model's summed log-probs of each pair's chosen and rejected
    answer. The reference is `model` as it is now, in eval mode, with any (unmerged) LoRA adapters switched
    off: the base model of a LoRA run, the initial weights of a full one."""
    from herd.model.lora import disable_lora, lora_layers

    was_training = model.training
    model.eval()
    try:
        with disable_lora(model) if lora_layers(model) else contextlib.nullcontext():
            out = torch.stack([_block_logps(model, b)[0].float().cpu() for b in blocks]) if blocks \
                else torch.zeros(0, 2)
    finally:
        model.train(was_training)
    return out


# ---- the loss function -------------------------------------------------------------------------------


class DPOObjective:
    """The loop's loss function for pair blocks (see the module docstring): `objective(model, batch)` ->
    (the pair's DPO loss, 1) for a batch of one of `objective.train_blocks`.

    blocks: from pair_blocks; reference: (n_pairs, 2) summed log-probs from reference_logps. Each call
    appends the pair's statistics to `pending` (what run_dpo turns into dpo_metrics.jsonl rows)."""

    def __init__(self, blocks: Sequence[PackedBlock], reference: torch.Tensor, *, beta: float = 0.1,
                 loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> None:
        if tuple(reference.shape) != (len(blocks), 2):
            raise HerdError(f"reference log-probs must be ({len(blocks)}, 2), got {tuple(reference.shape)}")
        z = torch.zeros(1)
        try:  # the arguments checked now, not at the first step
            dpo_loss(z, z, z, z, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
        except ValueError as e:
            raise HerdError(f"DPO: {e}") from None
        self.blocks = list(blocks)
        self.reference = reference.detach().float().cpu()
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.average = loss_type == "ipo"  # IPO compares length-averaged log-probs
        self.pending: list[dict[str, float]] = []
        self.train_blocks = self.blocks  # what the loop trains on: the pair blocks themselves
        self._by_tokens = {tuple(b.input_ids): i for i, b in enumerate(self.blocks)}

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """What a step's loss is averaged over: pairs, one per block."""
        return 1

    def index(self, batch: dict[str, torch.Tensor]) -> int:
        """The pair a batch holds (pairs with the same tokens are the same pair)."""
        i = self._by_tokens.get(tuple(batch["tokens"][0].tolist()))
        if i is None:
            raise HerdError("DPOObjective got a batch that is not one of its pair blocks")
        return i

    def pair_logps(self, model: nn.Module, i: int, batch: dict[str, torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's (chosen, rejected) log-probs of pair i (averaged per token for IPO, else sums) and the
        reference's, the same way: ((2,), (2,))."""
        sums, counts = _block_logps(model, self.blocks[i], batch)
        ref = self.reference[i].to(sums.device)
        if self.average:
            counts = counts.clamp(min=1).to(sums.dtype)
            return sums / counts, ref / counts
        return sums, ref

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        i = self.index(batch)
        policy, ref = self.pair_logps(model, i, batch)
        loss, chosen_r, rejected_r = dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta=self.beta,
                                              loss_type=self.loss_type, label_smoothing=self.label_smoothing)
        c, r = float(chosen_r[0]), float(rejected_r[0])
        self.pending.append({"loss": float(loss.detach()), "chosen_reward": c, "rejected_reward": r,
                             "chosen_logps": float(policy[0].detach()), "rejected_logps": float(policy[1].detach())})
        return loss, 1

    def take_metrics(self) -> dict[str, float]:
        """The means over the pairs since the last call (one optimizer step's), and forget them."""
        rows, self.pending = self.pending, []
        if not rows:
            return {}

        def mean(key: str) -> float:
            return sum(x[key] for x in rows) / len(rows)

        margins = [x["chosen_reward"] - x["rejected_reward"] for x in rows]
        return {"pairs": len(rows), "dpo_loss": mean("loss"), "reward_margin": sum(margins) / len(rows),
                "reward_accuracy": sum(m > 0 for m in margins) / len(rows), "chosen_reward": mean("chosen_reward"),
                "rejected_reward": mean("rejected_reward"), "chosen_logps": mean("chosen_logps"),
                "rejected_logps": mean("rejected_logps")}


# ---- the recipe ------------------------------------------------------------------------------------------


def load_dpo_data(data: str | Path, prompter: Prompter, cfg: TrainConfig, *, overflow: Overflow = "truncate",
                  tool_prompt_format: str = "json") -> tuple[list[PreferenceExample], DataStats]:
    """Every pair of a preference JSONL file (`{"prompt", "chosen", "rejected"}`; a bad record raises
    DataError naming file:line), each sequence fitted to cfg.seq_len (so a pair's block, both sequences,
    is at most 2 * seq_len tokens), with the stats (which count sequences: two per pair)."""
    stats = DataStats()
    pairs = list(preference_examples(data, prompter, max_seq_len=cfg.seq_len, overflow=overflow,
                                     tool_prompt_format=tool_prompt_format, stats=stats))
    return pairs, stats


def _save_reference(path: Path, reference: torch.Tensor, fingerprint: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"version": 1, "fingerprint": fingerprint, "logps": reference}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _reference(model: nn.Module, blocks: list[PackedBlock], out: Path, resume: bool) -> torch.Tensor:
    """The saved reference log-probs on a resume (for this very data), else computed now and saved."""
    path = out / REFERENCE_FILE
    fingerprint = _fingerprint(blocks)
    if resume and path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("fingerprint") != fingerprint or tuple(saved["logps"].shape) != (len(blocks), 2):
            raise HerdError(f"{path} was computed for other preference data: resume with the data the run "
                            "started with, or start a new run")
        return saved["logps"]
    reference = reference_logps(model, blocks)
    if distributed.is_main():
        _save_reference(path, reference, fingerprint)
    return reference


def run_dpo(model: nn.Module, pairs: list[PreferenceExample], stats: DataStats, out_dir: str | Path,
            cfg: TrainConfig, *, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
            lora: Any = None, resume: bool = False, on_step: Callable[[dict[str, Any]], None] | None = None,
            base_name: str = "") -> TrainResult:
    """DPO-train `model` (a herd Transformer, float weights; it is also the reference: hand a resumed run
    the same starting model) on pairs from load_dpo_data; see the module docstring. cfg.grad_accum pairs
    make an optimizer step. `lora`: a herd.model.lora.LoRAConfig to train an adapter (the reference is then
    the base with the adapter switched off)."""
    if not pairs:
        raise HerdError("no preference pairs: every pair was skipped (see the data summary)")
    out = Path(out_dir)
    blocks = pair_blocks(pairs)
    probe = DPOObjective(blocks[:1], torch.zeros(1, 2), beta=beta, loss_type=loss_type,
                         label_smoothing=label_smoothing)  # bad arguments fail before anything is written
    del probe
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (out / "data.json").write_text(json.dumps(asdict(stats), indent=2) + "\n")
        (out / "dpo.json").write_text(json.dumps({"beta": beta, "loss_type": loss_type,
                                                  "label_smoothing": label_smoothing, "pairs": len(pairs)},
                                                 indent=2) + "\n")
    if lora is not None:
        from herd.model.lora import apply_lora

        apply_lora(model, lora)  # freezes everything else
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    objective = DPOObjective(blocks, _reference(model, blocks, out, resume), beta=beta, loss_type=loss_type,
                             label_smoothing=label_smoothing)

    metrics_path = out / METRICS_FILE
    kept: list[str] = []
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None and metrics_path.exists():  # the rows up to the checkpoint, as the loop keeps its own
        start = int(ckpt.name.split("-")[1])
        kept = [line for line in metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start]
    with open(metrics_path, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in kept)
        fh.flush()

        def step_done(row: dict[str, Any]) -> None:
            extra = objective.take_metrics()
            fh.write(json.dumps({"step": row["step"], **extra}) + "\n")
            fh.flush()
            if on_step:
                on_step({**row, **extra})

        result = train(model, objective.train_blocks, objective, cfg, out, resume=resume, on_step=step_done,
                       count=objective.count)
    save_outputs(model, out, lora=lora, base_name=base_name)
    return result
