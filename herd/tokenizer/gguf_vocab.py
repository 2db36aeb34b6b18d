"""GGUF: the tokenizer embedded in a llama.cpp model file (byte-level or sentencepiece BPE)."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Literal

from herd.errors import HerdError
from herd.tokenizer.tokenizer import _ALPHABET_TO_BYTE, _BYTE_ALPHABET, LLAMA3_PATTERN, _TokenizersBackend


_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER = 1, 2, 3, 4  # llama.cpp token types
# tokenizer.ggml.pre -> pre-tokenizer family (llama.cpp's llama-vocab.cpp groups them the same way)
_GGUF_PRE = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"], "llama3"),
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"], "digits"),
    **dict.fromkeys(["gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"], "gpt2"),
}


def _gguf_pre_tokenizer(pre: str, path: Path) -> Any:
    from tokenizers import Regex, pre_tokenizers as pt

    family = _GGUF_PRE.get(pre)
    if family == "llama3":
        return pt.Sequence([pt.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                            pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    if family == "digits":  # each digit alone, then GPT-2 splitting
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    if family == "gpt2":
        return pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    known = ", ".join(sorted(_GGUF_PRE))
    raise HerdError(f"{path}: unsupported tokenizer.ggml.pre {pre!r} (supported: {known})")


def _merges_from_scores(tokens: list[str], types: list[int], scores: list[float]) -> list[tuple[str, str]]:
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


class GGUFTokenizer(_TokenizersBackend):
    """The tokenizer a GGUF file carries: byte-level BPE ("gpt2") or sentencepiece BPE ("llama")."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if not p.is_file():
            raise HerdError(f"{p}: GGUF file not found")
        self.path = p
        meta = _read_gguf_tokenizer_fields(p)
        kind, tokens = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.tokens")
        if kind is None or not tokens:
            raise HerdError(f"{p}: this GGUF file has no tokenizer (no tokenizer.ggml.model / tokens)")
        types = meta.get("tokenizer.ggml.token_type") or [_GGUF_NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise HerdError(f"{p}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
        if kind == "gpt2":
            tok = self._byte_level(p, tokens, types, meta)
            style: Literal["byte_level", "sentencepiece"] = "byte_level"
        elif kind == "llama":
            tok = self._sentencepiece(p, tokens, types, meta)
            style = "sentencepiece"
        else:
            raise HerdError(f"{p}: unsupported tokenizer.ggml.model {kind!r} (supported: gpt2, llama)")
        self._add_added_tokens(tok, tokens, types)
        self._setup(tok, style)
        self.special_tokens = {tokens[i]: i for i, ty in enumerate(types) if ty == _GGUF_CONTROL}

        def token_id(key: str) -> int | None:
            v = meta.get(key)
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        self.bos_id = token_id("tokenizer.ggml.bos_token_id")
        eos = token_id("tokenizer.ggml.eos_token_id")
        if eos is None:
            raise HerdError(f"{p}: GGUF tokenizer has no tokenizer.ggml.eos_token_id")
        self.eos_id = eos
        eot, eom = token_id("tokenizer.ggml.eot_token_id"), token_id("tokenizer.ggml.eom_token_id")
        self.stop_ids = self._with_llama3_stops({i for i in (eos, eot, eom) if i is not None})
        self.pad_id = token_id("tokenizer.ggml.padding_token_id")
        self.chat_template = meta.get("tokenizer.chat_template")
        self.add_bos = self.bos_id is not None and bool(meta.get("tokenizer.ggml.add_bos_token", True))

    @staticmethod
    def _byte_level(p: Path, tokens: list[str], types: list[int], meta: dict[str, Any]) -> Any:
        from tokenizers import Tokenizer as HFTok, decoders, models

        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
        if any(len(m) != 2 for m in merges):
            raise HerdError(f"{p}: malformed tokenizer.ggml.merges entry (expected 'left right')")
        # a normal token that is not spelled in the byte alphabet is raw text: respell it
        vocab = {}
        for i, t in enumerate(tokens):
            if types[i] == _GGUF_NORMAL and not all(c in _ALPHABET_TO_BYTE for c in t):
                t = "".join(_BYTE_ALPHABET[b] for b in t.encode("utf-8"))
            vocab.setdefault(t, i)
        pre = meta.get("tokenizer.ggml.pre", "default")
        pre_tok = _gguf_pre_tokenizer(pre, p)
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=_GGUF_PRE.get(pre) == "llama3")
        tok = HFTok(model)
        tok.pre_tokenizer = pre_tok
        tok.decoder = decoders.ByteLevel()
        return tok

    @staticmethod
    def _sentencepiece(p: Path, tokens: list[str], types: list[int], meta: dict[str, Any]) -> Any:
        from tokenizers import Tokenizer as HFTok, decoders, models, normalizers

        scores = meta.get("tokenizer.ggml.scores")
        if not scores or len(scores) != len(tokens):
            raise HerdError(f"{p}: sentencepiece GGUF vocabulary needs tokenizer.ggml.scores for every token")
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        unk = next((tokens[i] for i, ty in enumerate(types) if ty == _GGUF_UNKNOWN), None)
        merges = _merges_from_scores(tokens, types, [float(s) for s in scores])
        tok = HFTok(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        steps = [normalizers.Replace(" ", "\u2581")]
        if meta.get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        return tok

    @staticmethod
    def _add_added_tokens(tok: Any, tokens: list[str], types: list[int]) -> None:
        """Control tokens become special added tokens; user-defined ones are always matched whole."""
        from tokenizers import AddedToken

        tok.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                                for i, ty in enumerate(types) if ty == _GGUF_CONTROL])
        tok.add_tokens([AddedToken(tokens[i], normalized=False, special=False)
                        for i, ty in enumerate(types) if ty == _GGUF_USER])


def _read_gguf_tokenizer_fields(path: Path) -> dict[str, Any]:
    """The tokenizer.* metadata of a GGUF file as Python values.

    Parsed directly from the header (layout per the `gguf` package's GGUFValueType): GGUFReader
    builds numpy views for every array element, which takes seconds on a 128k vocabulary.
    """
    import mmap

    from gguf import GGUFValueType as T

    scalars = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
               T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise ValueError("bad magic")
            version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            pos = 24

            def string() -> str:
                nonlocal pos
                (n,) = struct.unpack_from("<Q", buf, pos)
                pos += 8 + n
                return buf[pos - n:pos].decode("utf-8", "replace")

            def value(vtype: int, keep: bool) -> Any:
                nonlocal pos
                if vtype == T.STRING:
                    return string()
                if vtype == T.ARRAY:
                    inner, count = struct.unpack_from("<IQ", buf, pos)
                    pos += 12
                    if inner in scalars and inner != T.BOOL:
                        fmt = scalars[T(inner)]
                        size = struct.calcsize(fmt)
                        items = list(struct.unpack_from(f"<{count}{fmt[1]}", buf, pos)) if keep else None
                        pos += size * count
                        return items
                    return [value(inner, keep) for _ in range(count)]
                fmt = scalars[T(vtype)]
                (v,) = struct.unpack_from(fmt, buf, pos)
                pos += struct.calcsize(fmt)
                return v

            out: dict[str, Any] = {}
            for _ in range(n_kv):
                key = string()
                (vtype,) = struct.unpack_from("<I", buf, pos)
                pos += 4
                v = value(vtype, key.startswith("tokenizer."))
                if key.startswith("tokenizer."):
                    out[key] = v
            return out
    except (OSError, ValueError, struct.error, KeyError) as e:
        raise HerdError(f"{path}: not a readable GGUF file ({e})") from None
