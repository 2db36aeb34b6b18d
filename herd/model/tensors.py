"""Our tensor names and shapes: the one name table (Meta / HF / GGUF), the expected shapes of a config,
the completeness check every checkpoint reader passes its tensors through, and building a model on
`meta` without its random init. Shared by weights.py (HF, Meta, the dispatch) and gguf.py without an
import loop.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from herd.config import ModelArgs
from herd.errors import HerdError
from herd.model.llama import Transformer

TensorIter = Iterator[tuple[str, torch.Tensor]]

# The one name table: our (Meta) name, HF name, GGUF name, and the dim Meta's model-parallel
# shards split on (None: replicated). "{i}" is the layer index.
NAME_TABLE: tuple[tuple[str, str, str, int | None], ...] = (
    ("tok_embeddings.weight", "model.embed_tokens.weight", "token_embd.weight", 0),
    ("norm.weight", "model.norm.weight", "output_norm.weight", None),
    ("output.weight", "lm_head.weight", "output.weight", 0),
    ("layers.{i}.attention.wq.weight", "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", 0),
    ("layers.{i}.attention.wk.weight", "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", 0),
    ("layers.{i}.attention.wv.weight", "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", 0),
    ("layers.{i}.attention.wo.weight", "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", 1),
    ("layers.{i}.feed_forward.w1.weight", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", 0),
    ("layers.{i}.feed_forward.w2.weight", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", 1),
    ("layers.{i}.feed_forward.w3.weight", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", 0),
    ("layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", None),
    ("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", None),
)
_COLUMN = {"meta": 0, "hf": 1, "gguf": 2}


def name_map(n_layers: int, fmt: Literal["hf", "gguf"]) -> dict[str, str]:
    """{name in `fmt` -> our name} for a model with n_layers."""
    col = _COLUMN[fmt]
    out: dict[str, str] = {}
    for row in NAME_TABLE:
        for i in range(n_layers) if "{i}" in row[0] else [None]:
            out[row[col].format(i=i)] = row[0].format(i=i)
    return out


def split_dim(name: str) -> int | None:
    """The dim Meta's model-parallel shards split `name` on (None: replicated)."""
    generic = ".".join("{i}" if p.isdigit() else p for p in name.split("."))
    for row in NAME_TABLE:
        if row[0] == generic:
            return row[3]
    raise KeyError(name)


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Our tensor names and shapes for `args`, read off a Transformer built on `meta`."""
    return dict(_shapes(args))


@functools.lru_cache(maxsize=8)
def _shapes(args: ModelArgs) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with no_init(), torch.device("meta"):
        model = Transformer(args)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


_INITS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
          "xavier_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """nn.Linear / nn.Embedding skip their random init: on `meta` it would only cost time, and
    the first meta normal_ imports torch._dynamo (a second of start-up)."""
    saved = {name: getattr(nn.init, name) for name in _INITS}
    try:
        for name in _INITS:
            setattr(nn.init, name, _keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


PARALLEL_ELEMENTS = 1 << 24  # loading work on fewer elements runs on one thread


@contextlib.contextmanager
def threads_for(numel: int) -> Iterator[None]:
    """One thread for loading work on fewer than PARALLEL_ELEMENTS elements: every op of a parallel
    region waits for all its threads, and on a busy machine a descheduled one costs milliseconds per
    op (measured on 2 shared cores: the embedded model's load 5-10x slower with 2 threads)."""
    threads = torch.get_num_threads()
    if threads == 1 or numel >= PARALLEL_ELEMENTS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_shape(
    file: Path | str, src: str, ours: str, found: tuple[int, ...], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """HerdError naming the file, the tensor and both shapes if `found` is not expected."""
    if ours not in shapes:
        raise HerdError(f"{file}: unexpected tensor {src!r} for this model config")
    if tuple(found) != shapes[ours]:
        raise HerdError(
            f"{file}: tensor {src!r} ({ours}) has shape {list(found)}, expected {list(shapes[ours])}"
        )


def complete(path: Path, args: ModelArgs, items: TensorIter) -> TensorIter:
    """Pass `items` through, rejecting duplicates and, at the end, missing tensors."""
    need = set(expected_shapes(args))
    if args.tie_embeddings:
        need.discard("output.weight")  # the embedding doubles as the output projection
    seen: set[str] = set()
    for name, t in items:
        if name in seen:
            raise HerdError(f"{path}: tensor {name!r} appears twice")
        seen.add(name)
        yield name, t
    missing = sorted(need - seen)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise HerdError(f"{path}: missing tensors {', '.join(missing[:5])}{more}")
