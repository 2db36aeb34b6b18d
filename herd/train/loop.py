"""The training loop the recipes share: packed blocks in, AdamW steps out, checkpoints that resume exactly.

    cfg = TrainConfig(lr=2e-4, max_steps=100, seq_len=1024, grad_accum=4, save_every=25)
    result = train(model, blocks, loss_fn, cfg, out_dir)      # blocks: a list of PackedBlock
    result = train(model, blocks, loss_fn, cfg, out_dir, resume=True)   # after a crash, even kill -9

What it does, and nothing more: per optimizer step, `grad_accum` blocks (one forward each: a block is
`seq_len` tokens of packed examples, so nothing is padded), loss summed over the learnt tokens and divided
by their count in the step; gradient clipping; AdamW; linear warmup then cosine decay to `min_lr_ratio`;
a seeded order of blocks per epoch; metrics per step in `metrics.jsonl`. Every `save_every` steps and at
the end, `checkpoints/step-N/` holds the trainable weights, the optimizer and scheduler, the RNG states and
the data position, written to a temporary name and renamed, then `checkpoints/latest` is replaced the same
way — so a run killed at any moment resumes from the last whole checkpoint and, on the same machine (CPU,
deterministic kernels), ends with exactly the weights of an uninterrupted run.

Packed blocks keep their documents apart: attention runs through `DocumentAttention`, a `Cache` for
herd/model/llama.py's attention that applies the block's document mask (causal within a document), and
positions restart at each document, so a block trains as its documents would one by one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import HerdError
from herd.train import distributed
from herd.train.data import IGNORE, Example, PackedBlock, document_mask

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    max_steps: int | None = None  # None: epochs * steps per epoch
    epochs: int = 1
    seq_len: int = 2048  # tokens per block (one forward)
    grad_accum: int = 1  # blocks per optimizer step
    max_grad_norm: float | None = 1.0
    seed: int = 0
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    autocast: str | None = None  # "bf16": forwards under torch.autocast(bfloat16) (weights stay in their dtype)
    save_every: int | None = None  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.grad_accum < 1 or self.seq_len < 2 or self.epochs < 1:
            raise HerdError("lr must be > 0, grad_accum and epochs >= 1, seq_len >= 2")
        if self.max_steps is not None and self.max_steps < 1:
            raise HerdError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.autocast not in (None, "bf16"):
            raise HerdError(f"autocast must be None or 'bf16', got {self.autocast!r}")
        if self.save_every is not None and self.save_every < 1:
            raise HerdError(f"save_every must be >= 1, got {self.save_every}")


# ---- packing examples --------------------------------------------------------------------------------


def pack_examples(examples: Sequence[Example], seq_len: int) -> list[PackedBlock]:
    """Examples laid end to end in blocks of at most `seq_len` tokens, never split (an example longer than
    a block must be truncated before: data.chat_examples(max_seq_len=seq_len)); a block's unused tail is
    padding with no loss and its own document id."""
    blocks: list[PackedBlock] = []
    cur = PackedBlock([], [], [], [])
    for ex in examples:
        if len(ex.input_ids) > seq_len:
            raise HerdError(f"{ex.source}: {len(ex.input_ids)} tokens do not fit a block of {seq_len}")
        if len(cur.input_ids) + len(ex.input_ids) > seq_len:
            blocks.append(cur)
            cur = PackedBlock([], [], [], [])
        doc = cur.doc_ids[-1] + 1 if cur.doc_ids else 0
        cur.input_ids += ex.input_ids
        cur.labels += ex.labels
        cur.positions += range(len(ex.input_ids))
        cur.doc_ids += [doc] * len(ex.input_ids)
    if cur.input_ids:
        blocks.append(cur)
    return blocks


def block_tensors(block: PackedBlock, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """A block as the loss functions take it: tokens (1, T), positions (T,), next-token targets (1, T)
    (-100 where nothing is learnt), the document mask (1, 1, T, T)."""
    ids, labels = list(block.input_ids), list(block.labels)
    # token i predicts token i+1 of the same document
    targets = [labels[i + 1] if i + 1 < len(ids) and block.doc_ids[i + 1] == block.doc_ids[i] else IGNORE
               for i in range(len(ids))]
    return {"tokens": torch.tensor([ids]), "positions": torch.tensor(block.positions),
            "targets": torch.tensor([targets]), "mask": document_mask(block.doc_ids)[None, None]}


class DocumentAttention:
    """A `Cache` (herd/model/llama.py) that stores nothing and attends within documents: q, k, v of one
    packed block under its (1, 1, T, T) mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask.to(q.device))


# set by train() for the loss functions' forwards: recompute each block in backward instead of keeping
# its activations (activation checkpointing)
_CHECKPOINT_BLOCKS: ContextVar[bool] = ContextVar("herd_train_checkpoint_blocks", default=False)


def hidden_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final-norm hidden states (1, T, dim) of a packed block (documents kept apart); with activation
    checkpointing on (TrainConfig.activation_checkpointing), each block's activations are recomputed in
    backward rather than kept."""
    device = next(model.parameters()).device
    tokens, positions = batch["tokens"].to(device), batch["positions"].to(device)
    cache = DocumentAttention(batch["mask"])
    if not (_CHECKPOINT_BLOCKS.get() and torch.is_grad_enabled()):
        return model.norm(model.hidden(tokens, positions, 0, cache))
    from torch.utils.checkpoint import checkpoint

    from herd.model.llama import rope_cos_sin

    cos, sin = rope_cos_sin(model.rope_freqs(device), positions)
    h = model.tok_embeddings(tokens)
    for block in model.layers:
        h = checkpoint(block, h, cos, sin, 0, cache, use_reentrant=False)
    return model.norm(h)


@contextlib.contextmanager
def _forward_options(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Activation checkpointing and autocast for one loss computation (backward follows the same)."""
    token = _CHECKPOINT_BLOCKS.set(cfg.activation_checkpointing)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.autocast == "bf16" else contextlib.nullcontext()
    try:
        with amp:
            yield
    finally:
        _CHECKPOINT_BLOCKS.reset(token)


# ---- the schedule --------------------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 down to `min_ratio` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- checkpoints ------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, position: dict[str, Any], keep: int = 2) -> Path | None:
    """checkpoints/step-N/ (written as .step-N.tmp, then renamed) and checkpoints/latest naming it. The
    weights and optimizer state are whole and keyed by parameter name (gathered from the shards under
    torch.distributed, which makes this a collective; rank 0 writes, the others return None), so a run
    resumes on any number of processes."""
    weights, optim_state = distributed.full_state(model, optimizer)
    if not distributed.is_main():
        return None
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({"step": step, "format": "full", "model": weights, "optimizer": optim_state,
                "scheduler": scheduler.state_dict(), "rng": _rng_state(), "position": position}, tmp / "state.pt")
    with open(tmp / "state.pt", "rb") as fh:
        os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _replace_file(root / "latest", final.name.encode())
    olds = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in olds[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


# ---- the loop -----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    tokens: int
    seconds: float
    resumed_from: int | None = None


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _schedule(blocks: int, cfg: TrainConfig) -> Iterator[tuple[int, int, int]]:
    """(epoch, index in the epoch's order, block) in training order, forever."""
    epoch = 0
    while True:
        for i, b in enumerate(_order(blocks, cfg.seed, epoch)):
            yield epoch, i, b
        epoch += 1


def train(model: nn.Module, blocks: Sequence[PackedBlock], loss_fn: LossFn, cfg: TrainConfig, out_dir: str | Path,
          *, resume: bool = False, on_step: Callable[[dict[str, Any]], None] | None = None,
          count: Callable[[dict[str, torch.Tensor]], int] | None = None) -> TrainResult:
    """Train the model's parameters that require grad on the blocks; see the module docstring. A step's loss
    is the sum of its blocks' `loss_fn` sums divided by the sum of `count(batch)` over them (default: the
    learnt targets, so a token-level mean; DPO counts one per pair). Under torch.distributed (torchrun),
    the model is sharded with FSDP2 and each rank trains its share of every step (herd/train/distributed.py);
    the model is whole again on return."""
    if not blocks:
        raise HerdError("no training data: every example was skipped (see the data summary)")
    out = Path(out_dir)
    main, ws, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = max(1, len(blocks) // cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    if not any(p.requires_grad for p in model.parameters()):
        raise HerdError("the model has no trainable parameters")
    root = None
    if ws > 1:
        if cfg.grad_accum % ws:
            raise HerdError(f"the global batch (--batch-size x --grad-accum = {cfg.grad_accum} blocks) must be a "
                            f"multiple of the number of processes ({ws})")
        root = distributed.shard(model, loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas,
                                  eps=cfg.eps, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.min_lr_ratio))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    start, consumed, resumed = 0, 0, None
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            state = torch.load(ckpt / "state.pt", weights_only=False)
            if state.get("format") != "full":
                raise HerdError(f"{ckpt} was written by an older herd; start the run again without --resume")
            distributed.load_full_state(model, optimizer, state["model"], state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            start, consumed, resumed = state["step"], state["position"]["blocks"], state["step"]
    metrics_path = out / "metrics.jsonl"
    kept = []
    if resumed and metrics_path.exists():  # the rows up to the checkpoint; a killed run may have written more
        kept = [line for line in metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start]
    metrics = open(metrics_path if main else os.devnull, "w", encoding="utf-8")
    metrics.writelines(line + "\n" for line in kept)
    order = _schedule(len(blocks), cfg)
    for _ in range(consumed):  # the data position: the blocks already trained on
        next(order)
    model.train()
    t0, tokens, loss_value = time.perf_counter(), 0, float("nan")
    try:
        for step in range(start, total):
            optimizer.zero_grad(set_to_none=True)
            chosen = [next(order) for _ in range(cfg.grad_accum)]
            consumed += len(chosen)
            batches = [block_tensors(blocks[b]) for _, _, b in chosen]
            learnt = sum(int((batch["targets"] != IGNORE).sum()) for batch in batches)
            n_total = sum(count(batch) for batch in batches) if count is not None else learnt
            mine = batches[rank::ws]  # this rank's share of the global batch (all of it in one process)
            loss_sum_all, step_tokens = 0.0, 0
            for i, batch in enumerate(mine):  # the step's loss is the mean over its units (learnt tokens by default)
                if root is not None:  # reduce-scatter the gradients once per step, after the last block
                    root.set_requires_gradient_sync(i == len(mine) - 1)
                with _forward_options(cfg, params[0].device):
                    loss_sum, n = root(batch) if root is not None else loss_fn(model, batch)
                # FSDP averages over the ranks; the scale makes that the sum, as one process would have it.
                # Every rank runs every backward (a collective), even for a block with nothing to learn
                if n or (root is not None and loss_sum.requires_grad):
                    (loss_sum * ws / max(n_total, 1)).backward()
                    loss_sum_all += float(loss_sum.detach())
                step_tokens += int(batch["tokens"].numel())
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
            optimizer.step()
            scheduler.step()
            loss_sum_all, step_tokens = distributed.all_sum([loss_sum_all, float(step_tokens)])
            tokens += int(step_tokens)
            loss_value = loss_sum_all / max(n_total, 1)
            row = {"step": step + 1, "total_steps": total, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                   "tokens": tokens,
                   "trained_tokens": learnt, "epoch": chosen[-1][0],
                   "grad_norm": None if grad_norm is None else distributed.full_float(grad_norm),
                   "seconds": round(time.perf_counter() - t0, 3)}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            if on_step and main:
                on_step(row)
            last = step + 1 == total
            if cfg.save_every and ((step + 1) % cfg.save_every == 0 or last):
                save_checkpoint(out, step + 1, model, optimizer, scheduler, {"blocks": consumed},
                                cfg.keep_checkpoints)
    finally:
        metrics.close()
    if root is not None:
        distributed.gather(root)  # whole weights on every rank, for the outputs
    if main:
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        plot_loss(out / "metrics.jsonl", out / "loss.png")
    return TrainResult(total - start, loss_value, tokens, time.perf_counter() - t0, resumed)


def plot_loss(metrics: Path, png: Path) -> bool:
    """The loss curve of a metrics.jsonl as a PNG (written then renamed); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if rows and min(r["loss"] for r in rows) > 0 else "linear")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png)
    return True
