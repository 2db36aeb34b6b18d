"""Training data: JSONL files in, token ids and labels out, streamed from disk.

    prompter = Prompter(tokenizer)
    for ex in chat_examples("train.jsonl", prompter, max_seq_len=2048):   # {"messages": [...], "tools": [...]}
        ex.input_ids, ex.labels                                           # labels: -100 where nothing is learnt
    for pair in preference_examples("prefs.jsonl", prompter):            # {"prompt", "chosen", "rejected"}
    for block in pack(text_documents("corpus.jsonl", tokenizer), seq_len=2048):   # continual pre-training

Conventions (shared with herd/train/losses.py's callers): `labels` are aligned with `input_ids` (not
shifted): `labels[i]` is `input_ids[i]` where that token is learnt and IGNORE (-100) elsewhere; the loss
predicts token i from the tokens before it.

Chat dialogs are rendered with the model's own format (Prompter: the Llama 3.1 format with its tool
prompts for Llama 3 vocabularies, the checkpoint's Jinja template otherwise) and only the assistant's tokens
are learnt: each assistant message's content, tool calls and the token that closes it (`<|eot_id|>`, or
`<|eom_id|>` after a built-in tool call), found by rendering the dialog up to the message with the
generation prompt and up to its end, and checking the former is a prefix of the latter. The date in the
Llama 3.1 system prompt is fixed (TRAIN_DATE), so a dialog renders the same on any day.

Bad input never ends in a traceback: a line that is not JSON, a dialog without an assistant message, a
field of the wrong type is a DataError naming `file:line`. Over-long sequences are truncated or skipped
(`overflow`), and counted in the DataStats the iterators fill in.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from herd.errors import HerdError
from herd.tokenizer.messages import to_messages
from herd.tokenizer.prompter import Prompter

IGNORE = -100
TRAIN_DATE = date(2024, 7, 26)  # the date Llama 3.1's reference prompts carry
Overflow = Literal["truncate", "skip"]


class DataError(HerdError):
    """A bad training record; the message starts with `file:line:`."""


@dataclass
class DataStats:
    """What a pass over a file saw (for the run's summary)."""

    records: int = 0
    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    tokens: int = 0
    trained_tokens: int = 0


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str = ""  # file:line


@dataclass
class PreferenceExample:
    """One prompt with a chosen and a rejected answer, each as a full sequence with its labels."""

    chosen: Example
    rejected: Example
    source: str = ""


@dataclass
class PackedBlock:
    """`seq_len` tokens of one or more documents: positions restart and `doc_ids` change at each document
    boundary, so attention can keep documents apart (a token attends only within its document)."""

    input_ids: list[int]
    labels: list[int]
    positions: list[int]
    doc_ids: list[int] = field(default_factory=list)


# ---- reading -------------------------------------------------------------------------------------


def read_jsonl(path: str | Path, on_error: Callable[[DataError], None] | None = None) -> Iterator[tuple[str, Any]]:
    """(`file:line`, record) for every non-blank line, streamed; a line that is not JSON is a DataError naming
    it, raised, or passed to `on_error` (which may raise it) and the line skipped."""
    path = Path(path)
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                error = DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                if on_error is None:
                    raise error from None
                on_error(error)


def _fit(ids: list[int], labels: list[int], max_seq_len: int | None, overflow: Overflow,
         stats: DataStats, where: str) -> Example | None:
    cut = max_seq_len is not None and len(ids) > max_seq_len
    if cut:
        if overflow == "skip":
            stats.skipped += 1
            return None
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    if all(x == IGNORE for x in labels):  # (what truncation left has) nothing to learn
        stats.skipped += 1
        return None
    stats.truncated += cut
    stats.examples += 1
    stats.tokens += len(ids)
    stats.trained_tokens += sum(x != IGNORE for x in labels)
    return Example(ids, labels, where)


# ---- chat ----------------------------------------------------------------------------------------


def chat_tokens(prompter: Prompter, messages: Sequence[Any], tools: Sequence[Any] | None = None, *,
                tool_prompt_format: str = "json", today: date = TRAIN_DATE,
                where: str = "record") -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a dialog, learning only the assistant messages (see the module docstring)."""
    try:
        msgs = to_messages(messages, param=f"{where}: messages")
    except HerdError as e:
        raise DataError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    if not any(m.role == "assistant" for m in msgs):
        raise DataError(f"{where}: the dialog has no assistant message: nothing to learn")
    kw = dict(tools=tools, tool_prompt_format=tool_prompt_format, today=today)
    try:
        full = prompter.encode(msgs, add_generation_prompt=False, **kw)
        labels = [IGNORE] * len(full)
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            before = prompter.encode(msgs[:i], add_generation_prompt=True, **kw) if i else []
            upto = prompter.encode(msgs[:i + 1], add_generation_prompt=False, **kw)
            if full[:len(upto)] != upto or upto[:len(before)] != before:
                raise DataError(f"{where}: the chat format does not render message {i} as a prefix of the "
                                "whole dialog, so its tokens cannot be told apart; herd cannot train on it")
            labels[len(before):len(upto)] = upto[len(before):]
    except HerdError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: {e}") from None
    return full, labels


def chat_examples(path: str | Path, prompter: Prompter, *, max_seq_len: int | None = None,
                  overflow: Overflow = "truncate", tool_prompt_format: str = "json",
                  stats: DataStats | None = None) -> Iterator[Example]:
    """Chat JSONL (`{"messages": [...], "tools": [...]}`, OpenAI shapes: tool calls and tool results
    included) as training examples."""
    stats = stats if stats is not None else DataStats()
    for where, rec in read_jsonl(path):
        stats.records += 1
        if not isinstance(rec, Mapping) or not isinstance(rec.get("messages"), list):
            raise DataError(f"{where}: expected an object with a `messages` list")
        tools = rec.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise DataError(f"{where}: `tools` must be a list")
        ids, labels = chat_tokens(prompter, rec["messages"], tools, tool_prompt_format=tool_prompt_format,
                                  where=where)
        ex = _fit(ids, labels, max_seq_len, overflow, stats, where)
        if ex is not None:
            yield ex


# ---- preferences -------------------------------------------------------------------------------------


def _answer(value: Any, where: str, name: str) -> list[Any]:
    """A chosen/rejected answer: a string, one assistant message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list) and value:
        return list(value)
    raise DataError(f"{where}: `{name}` must be a string, an assistant message or a list of messages")


def preference_examples(path: str | Path, prompter: Prompter, *, max_seq_len: int | None = None,
                        overflow: Overflow = "truncate", tool_prompt_format: str = "json",
                        stats: DataStats | None = None) -> Iterator[PreferenceExample]:
    """Preference JSONL (`{"prompt": messages or a string, "chosen": ..., "rejected": ...}`): both answers
    rendered after the same prompt, only the answers learnt."""
    stats = stats if stats is not None else DataStats()
    for where, rec in read_jsonl(path):
        stats.records += 1
        if not isinstance(rec, Mapping) or not all(k in rec for k in ("prompt", "chosen", "rejected")):
            raise DataError(f"{where}: expected an object with `prompt`, `chosen` and `rejected`")
        prompt = rec["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(prompt, list) or not prompt:
            raise DataError(f"{where}: `prompt` must be a string or a non-empty list of messages")
        tools = rec.get("tools")
        pair = []
        for name in ("chosen", "rejected"):
            ids, labels = chat_tokens(prompter, [*prompt, *_answer(rec[name], where, name)], tools,
                                      tool_prompt_format=tool_prompt_format, where=f"{where} ({name})")
            pair.append(_fit(ids, labels, max_seq_len, overflow, stats, where))
        if pair[0] is None or pair[1] is None:
            continue
        yield PreferenceExample(pair[0], pair[1], where)


# ---- raw text (continual pre-training) -----------------------------------------------------------------


def text_documents(path: str | Path, tokenizer: Any, *, field_name: str = "text", add_bos: bool = True,
                   add_eos: bool = True, stats: DataStats | None = None) -> Iterator[list[int]]:
    """Token ids per document (BOS ... EOS): each JSONL record's `text` field (or a record that is a string),
    or a whole plain-text file as one document."""
    stats = stats if stats is not None else DataStats()
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        texts: Iterable[tuple[str, Any]] = read_jsonl(path)
    else:
        try:
            texts = [(str(path), {field_name: path.read_text(encoding="utf-8")})]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read it as UTF-8 text: {e}") from None
    bos, eos = getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)
    for where, rec in texts:
        stats.records += 1
        text = rec.get(field_name) if isinstance(rec, Mapping) else rec if isinstance(rec, str) else None
        if not isinstance(text, str):
            raise DataError(f"{where}: expected a string or an object with a `{field_name}` string")
        if not text.strip():
            stats.skipped += 1
            continue
        ids = tokenizer.encode(text)
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if add_eos and eos is not None:
            ids = [*ids, eos]
        stats.examples += 1
        stats.tokens += len(ids)
        yield ids


def pack(documents: Iterable[list[int]], seq_len: int) -> Iterator[PackedBlock]:
    """Documents laid end to end in blocks of exactly `seq_len` tokens (the last, partial block dropped);
    a document longer than a block continues in the next one (its positions going on from where it was)."""
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2, got {seq_len}")
    ids: list[int] = []
    positions: list[int] = []
    docs: list[int] = []
    for n, doc in enumerate(documents):
        ids += doc
        positions += range(len(doc))
        docs += [n] * len(doc)
        while len(ids) >= seq_len:
            block_docs = docs[:seq_len]
            yield PackedBlock(ids[:seq_len], list(ids[:seq_len]), positions[:seq_len],
                              [d - block_docs[0] for d in block_docs])
            ids, positions, docs = ids[seq_len:], positions[seq_len:], docs[seq_len:]


def document_mask(doc_ids: Sequence[int]) -> Any:
    """The (T, T) boolean attention mask of a packed block: causal, and only within a document."""
    import torch

    d = torch.as_tensor(list(doc_ids))
    same = d[:, None] == d[None, :]
    return same & torch.ones(len(d), len(d), dtype=torch.bool).tril()
