"""Data-parallel training over torch.distributed with FSDP2 (`fully_shard`): how a run outgrows one process.

    torchrun --nproc-per-node 2 -m herd.cli train sft --data chat.jsonl --out runs/x --batch-size 4

torchrun starts N copies of the same command and sets RANK / WORLD_SIZE / MASTER_ADDR; `init_from_env()`
joins them (gloo on the CPU, NCCL on CUDA). The training loop (herd/train/loop.py) then wraps the model in
`ShardedLoss` and shards it: each transformer block is its own FSDP unit (its weights all-gathered just
before it runs and freed after), the rest (embeddings, final norm, head) belongs to the root unit. Every
rank reads the same data and follows the same seeded block order; of each optimizer step's global batch
(--batch-size x --grad-accum blocks) rank r trains blocks r, r+N, r+2N, ..., and the gradients are summed
across ranks by FSDP's reduce-scatter, so a step's update is the one-process update of the same global
batch (the loss curve equal up to float summation order). Rank 0 alone writes metrics, checkpoints (full,
unsharded state: a run resumes on any number of processes) and the outputs.

What it does not do (yet): load a checkpoint sharded (every rank loads the whole model, then keeps its
shard), tensor or pipeline parallelism.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from herd.errors import HerdError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and without torch.distributed): the process that writes files and prints."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); False when this is a
    single process. gloo on the CPU, NCCL when CUDA is available."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise HerdError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedLoss(nn.Module):
    """The FSDP root: one forward = one loss computation, so the root unit's weights (embeddings, norm,
    head) are gathered for exactly the span in which the loss function reads them."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.loss_fn(self.model, batch)


def shard(model: nn.Module, loss_fn: Callable[..., Any]) -> ShardedLoss:
    """fully_shard each block of `model` and a ShardedLoss root around it (in place: the model's parameters
    become DTensor shards). Build the optimizer afterwards, over the sharded parameters."""
    from torch.distributed.fsdp import fully_shard

    for block in model.layers:
        fully_shard(block)
    root = ShardedLoss(model, loss_fn)
    fully_shard(root)
    return root


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the ranks (float64); the values themselves without torch.distributed."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def full_float(x: Any) -> float:
    """A (possibly DTensor) scalar as a float on every rank."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


def gather(root: ShardedLoss) -> None:
    """Make every parameter whole again on every rank: each DTensor shard is replaced by a plain parameter
    holding the full tensor (shared parameters, e.g. tied embeddings, stay shared), so the model is saved
    as it would be after a one-process run. A collective: every rank calls it. Train no further with it."""
    from torch.distributed.tensor import DTensor

    whole: dict[int, nn.Parameter] = {}
    for module in root.modules():
        for name, p in list(module._parameters.items()):
            if isinstance(p, DTensor):
                if id(p) not in whole:
                    whole[id(p)] = nn.Parameter(p.full_tensor().detach().clone(), requires_grad=p.requires_grad)
                module._parameters[name] = whole[id(p)]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainable weights and the optimizer state, unsharded, on the CPU, keyed by parameter name (a
    collective; every rank gets them)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {n: t for n, t in get_model_state_dict(model, options=opts).items() if n in trainable}
    return weights, get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                    optim_state: dict) -> None:
    """full_state's output back into the sharded model and optimizer (every rank passes the same)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_state, options=opts)
