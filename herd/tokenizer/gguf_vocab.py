"""GGUF: the tokenizer embedded in a llama.cpp model file (byte-level or sentencepiece BPE).

`read_vocab` turns a .gguf file's tokenizer.* metadata (read by herd.gguf_meta, the header reader
the model loader shares) into a `tokenizers.Tokenizer` and its special ids; GGUFTokenizer in
tokenizer.py wraps the result. This module imports nothing from tokenizer.py: the byte alphabet
and the Llama 3 split pattern come in as arguments.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from herd.errors import HerdError
from herd.gguf_meta import GGUFHeader, read_header

_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER = 1, 2, 3, 4  # llama.cpp token types
# tokenizer.ggml.pre -> pre-tokenizer family (llama.cpp's llama-vocab.cpp groups them the same way)
_GGUF_PRE = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"], "llama3"),
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"], "digits"),
    **dict.fromkeys(["gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"], "gpt2"),
}


@dataclass(frozen=True)
class GGUFVocab:
    """A GGUF file's tokenizer, built: the `tokenizers.Tokenizer` and the ids the chat format needs."""

    path: Path
    tokenizer: Any  # tokenizers.Tokenizer
    style: Literal["byte_level", "sentencepiece"]
    special_tokens: dict[str, int]
    bos_id: int | None
    eos_id: int
    stop_ids: frozenset[int]  # eos, eot, eom as the file names them
    pad_id: int | None
    chat_template: str | None
    add_bos: bool


def read_vocab(path: str | os.PathLike[str], byte_alphabet: Mapping[int, str], llama3_pattern: str) -> GGUFVocab:
    """The tokenizer of a .gguf file; HerdError naming the file for anything missing or unsupported."""
    p = Path(path)
    if not p.is_file():
        raise HerdError(f"{p}: GGUF file not found")
    header = read_header(p)
    meta = header.metadata
    kind, tokens = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise HerdError(f"{p}: this GGUF file has no tokenizer (no tokenizer.ggml.model / tokens)")
    types = meta.get("tokenizer.ggml.token_type") or (_GGUF_NORMAL,) * len(tokens)
    if len(types) != len(tokens):
        raise HerdError(f"{p}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    style: Literal["byte_level", "sentencepiece"]
    if kind == "gpt2":
        tok, style = _byte_level(header, tokens, types, byte_alphabet, llama3_pattern), "byte_level"
    elif kind == "llama":
        tok, style = _sentencepiece(header, tokens, types), "sentencepiece"
    else:
        raise HerdError(f"{p}: unsupported tokenizer.ggml.model {kind!r} (supported: gpt2, llama)")
    _add_added_tokens(tok, tokens, types)

    def token_id(key: str) -> int | None:
        v = meta.get(key)
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    eos = token_id("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise HerdError(f"{p}: GGUF tokenizer has no tokenizer.ggml.eos_token_id")
    bos = token_id("tokenizer.ggml.bos_token_id")
    eot, eom = token_id("tokenizer.ggml.eot_token_id"), token_id("tokenizer.ggml.eom_token_id")
    return GGUFVocab(
        path=p,
        tokenizer=tok,
        style=style,
        special_tokens={tokens[i]: i for i, ty in enumerate(types) if ty == _GGUF_CONTROL},
        bos_id=bos,
        eos_id=eos,
        stop_ids=frozenset(i for i in (eos, eot, eom) if i is not None),
        pad_id=token_id("tokenizer.ggml.padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos=bos is not None and bool(meta.get("tokenizer.ggml.add_bos_token", True)),
    )


def _gguf_pre_tokenizer(pre: str, path: Path, llama3_pattern: str) -> Any:
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    family = _GGUF_PRE.get(pre)
    if family == "llama3":
        return pt.Sequence([pt.Split(Regex(llama3_pattern), behavior="isolated"),
                            pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    if family == "digits":  # each digit alone, then GPT-2 splitting
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    if family == "gpt2":
        return pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    known = ", ".join(sorted(_GGUF_PRE))
    raise HerdError(f"{path}: unsupported tokenizer.ggml.pre {pre!r} (supported: {known})")


def _merges_from_scores(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Sentencepiece BPE keeps no merges: pair every normal token's splits, best score first."""
    normal = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == _GGUF_NORMAL}
    found = []
    for tok, i in normal.items():
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in normal and right in normal:
                found.append((-scores[i], normal[left], normal[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _byte_level(header: GGUFHeader, tokens: Sequence[str], types: Sequence[int],
                byte_alphabet: Mapping[int, str], llama3_pattern: str) -> Any:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models

    p = header.path
    merges = [m.split(" ", 1) for m in header.get("tokenizer.ggml.merges") or ()]
    if any(len(m) != 2 for m in merges):
        raise HerdError(f"{p}: malformed tokenizer.ggml.merges entry (expected 'left right')")
    # a normal token that is not spelled in the byte alphabet is raw text: respell it
    outside = re.compile("[^" + re.escape("".join(byte_alphabet.values())) + "]")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if types[i] == _GGUF_NORMAL and outside.search(t):
            t = "".join(byte_alphabet[b] for b in t.encode("utf-8"))
        vocab.setdefault(t, i)
    pre = header.get("tokenizer.ggml.pre", "default")
    pre_tok = _gguf_pre_tokenizer(pre, p, llama3_pattern)
    model = models.BPE(vocab=vocab, merges=[(a, b) for a, b in merges], ignore_merges=_GGUF_PRE.get(pre) == "llama3")
    tok = HFTok(model)
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(header: GGUFHeader, tokens: Sequence[str], types: Sequence[int]) -> Any:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, normalizers

    p = header.path
    scores = header.get("tokenizer.ggml.scores")
    if not scores or len(scores) != len(tokens):
        raise HerdError(f"{p}: sentencepiece GGUF vocabulary needs tokenizer.ggml.scores for every token")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    unk = next((tokens[i] for i, ty in enumerate(types) if ty == _GGUF_UNKNOWN), None)
    merges = _merges_from_scores(tokens, types, [float(s) for s in scores])
    tok = HFTok(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if header.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def _add_added_tokens(tok: Any, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Control tokens become special added tokens; user-defined ones are always matched whole."""
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                            for i, ty in enumerate(types) if ty == _GGUF_CONTROL])
    tok.add_tokens([AddedToken(tokens[i], normalized=False, special=False)
                    for i, ty in enumerate(types) if ty == _GGUF_USER])
