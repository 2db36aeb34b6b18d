"""Continual pre-training: raw text -> packed blocks -> the training loop, full or LoRA, and the outputs.

    cfg = TrainConfig(lr=1e-4, max_steps=1000, seq_len=2048)
    blocks, stats = load_text_data(["corpus.jsonl", "notes.txt"], tokenizer, cfg.seq_len)   # bad data fails here
    result = run_pretrain(model, blocks, stats, "out/", cfg)                 # or lora=LoRAConfig(rank=16)

The data: JSONL files (one document per record: its `text` field, or a record that is a string) and plain
text files (a whole file is one document), each document BOS ... EOS (herd/train/data.py's
`text_documents`), laid end to end in blocks of exactly `seq_len` tokens (`pack`; the last partial block is
dropped). A block keeps its documents apart: positions restart and the attention mask stops at each document
boundary (herd/train/loop.py's `DocumentAttention`), and a token never learns to predict the first token of
the next document; so a block trains as its documents would one by one, without any padding.

The loss is the next-token cross-entropy on every token (`PackedBlock.labels` are the input ids; the loop's
`block_tensors` shifts them within each document), chunked over the vocabulary (sft.lm_loss). OUT/ is laid
out as for SFT (herd/train/sft.py): metrics.jsonl, checkpoints/, train_config.json, data.json, adapter/
(LoRA runs) and merged/.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from herd.errors import HerdError
from herd.train.data import IGNORE, DataStats, PackedBlock, pack, text_documents
from herd.train.loop import TrainConfig, TrainResult, train
from herd.train import distributed
from herd.train.sft import lm_loss, save_outputs

__all__ = ["learnt_tokens", "load_text_data", "run_pretrain"]


def learnt_tokens(block: PackedBlock) -> int:
    """How many next-token targets a block has: every token whose successor is in the same document."""
    d = block.doc_ids
    return sum(1 for i in range(len(d) - 1) if d[i + 1] == d[i] and block.labels[i + 1] != IGNORE)


def load_text_data(paths: str | Path | Sequence[str | Path], tokenizer: Any, seq_len: int, *,
                   field_name: str = "text", add_bos: bool = True,
                   add_eos: bool = True) -> tuple[list[PackedBlock], DataStats]:
    """Every document of the files (JSONL `text` records or plain text files, in the order given) packed in
    blocks of `seq_len` tokens with document masks, and what was read (DataStats: records, documents as
    `examples`, empty documents as `skipped`, `tokens` read, `trained_tokens` the blocks' targets). A bad
    record raises DataError naming file:line; a corpus shorter than one block is a HerdError."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise HerdError("no text data: give at least one .jsonl or text file")
    stats = DataStats()

    def documents() -> Iterator[list[int]]:
        for path in paths:
            yield from text_documents(path, tokenizer, field_name=field_name, add_bos=add_bos, add_eos=add_eos,
                                      stats=stats)

    blocks = list(pack(documents(), seq_len))
    if not blocks:
        raise HerdError(f"{', '.join(map(str, paths))}: {stats.tokens} tokens in {stats.examples} documents do not "
                        f"fill one block of {seq_len} tokens; give more text or a shorter --max-seq-len")
    stats.trained_tokens = sum(learnt_tokens(b) for b in blocks)
    return blocks, stats


def run_pretrain(model: nn.Module, blocks: Sequence[PackedBlock], stats: DataStats | None, out_dir: str | Path,
                 cfg: TrainConfig, *, lora: Any = None, resume: bool = False,
                 on_step: Callable[[dict[str, Any]], None] | None = None, base_name: str = "") -> TrainResult:
    """Continue pre-training `model` (a herd Transformer, float weights) on blocks from load_text_data; see
    the module docstring. `lora`: a herd.model.lora.LoRAConfig to train an adapter instead of every weight."""
    blocks = list(blocks)
    if not blocks:
        raise HerdError("no training data: the corpus gave no block of text")
    longest = max(len(b.input_ids) for b in blocks)
    if longest > cfg.seq_len:
        raise HerdError(f"a block of {longest} tokens is longer than seq_len {cfg.seq_len}; pack the text with "
                        "load_text_data(..., seq_len=cfg.seq_len)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (out / "data.json").write_text(json.dumps(asdict(stats or DataStats()), indent=2) + "\n")
    if lora is not None:
        from herd.model.lora import apply_lora

        apply_lora(model, lora)  # freezes everything else
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    result = train(model, blocks, lm_loss, cfg, out, resume=resume, on_step=on_step)
    save_outputs(model, out, lora=lora, base_name=base_name)
    return result
