"""Tokenizers behind one interface: Llama 3 tiktoken, HF tokenizer.json, GGUF vocab."""
from __future__ import annotations

import base64
import binascii
import functools
import importlib.util
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import tiktoken

from herd.errors import HerdError
from herd.gguf_meta import is_gguf
from herd.tokenizer.gguf_vocab import read_vocab

AllowedSpecial = Literal["all", "none"] | Collection[str]
LITERAL_OPEN, LITERAL_CLOSE = "\ue000", "\ue001"  # private-use characters: see Tokenizer.mark_literal
_MARKED_RE = re.compile(f"{LITERAL_OPEN}(.+?){LITERAL_CLOSE}", re.DOTALL)


@functools.lru_cache(maxsize=8)
def _with_markers(specials: re.Pattern[str]) -> re.Pattern[str]:
    """The special-token pattern that also matches a marker character (to mark it literal in turn)."""
    return re.compile(f"{specials.pattern}|[{LITERAL_OPEN}{LITERAL_CLOSE}]")


class Tokenizer(ABC):
    """What every tokenizer offers the rest of Herd.

    `encode` never adds BOS/EOS unless asked; special-token text in the input is plain text
    unless `allowed_special` names it ("all" matches every special token).
    """

    bos_id: int | None
    eos_id: int
    pad_id: int | None
    stop_ids: frozenset[int]  # ids that end a generation (e.g. 128001, 128008, 128009)
    special_tokens: dict[str, int]  # text -> id of every special/control token
    chat_template: str | None  # Jinja chat template carried by the checkpoint, if any
    add_bos: bool = True  # whether a raw text prompt starts with bos_id (Llama 3: yes; SmolLM2: no)

    @property
    @abstractmethod
    def n_words(self) -> int:
        """Vocabulary size including special tokens."""

    @abstractmethod
    def encode(
        self, s: str, *, bos: bool = False, eos: bool = False, allowed_special: AllowedSpecial = "none"
    ) -> list[int]:
        """Text to ids."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text; special tokens are rendered as their text; invalid UTF-8 is replaced."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (for incremental UTF-8-safe detokenization)."""

    def is_llama3(self) -> bool:
        """True when the vocabulary carries the Llama 3 header tokens (Llama 3 chat format applies)."""
        return self.special_tokens.get("<|start_header_id|>") == 128006 and "<|eot_id|>" in self.special_tokens

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The longest token's byte length: a text of more characters than n x this holds more than n
        tokens (a server refuses an over-long prompt without tokenizing megabytes of it)."""
        return max(len(self.token_bytes(i)) for i in range(self.n_words)) or 1

    # ---- text that must stay text: message contents inside a rendered chat template ----------
    # A chat template renders its own control tokens and the messages' text into one string. Before
    # rendering, special-token text inside message text is wrapped in private-use marker characters
    # (mark_literal); encode_marked turns the template's special tokens into ids and encodes the
    # marked text as plain text, so "<|im_end|><|im_start|>system" typed by a user forges nothing.

    @functools.cached_property
    def _specials_re(self) -> re.Pattern[str]:
        # literals only (longest first): `re` finds their common prefix ("<") at memchr speed
        names = sorted(self.special_tokens, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, names)) or r"(?!x)x")

    def mark_literal(self, s: str) -> str:
        """`s` with every special-token text (and marker character) marked as plain text for encode_marked."""
        markers = LITERAL_OPEN in s or LITERAL_CLOSE in s
        if not markers and not self._specials_re.search(s):
            return s
        pattern = _with_markers(self._specials_re) if markers else self._specials_re
        out, last = [], 0
        for m in pattern.finditer(s):  # a Python loop: a long hostile text never holds the GIL for long
            out += (s[last : m.start()], LITERAL_OPEN, m.group(0), LITERAL_CLOSE)
            last = m.end()
        out.append(s[last:])
        return "".join(out)

    def encode_marked(self, text: str) -> list[int]:
        """Ids of a rendered template: its special-token text becomes control tokens, text that
        mark_literal marked is encoded as plain text (as if it held no special token)."""
        if LITERAL_OPEN not in text:
            return self.encode(text, allowed_special="all")
        ids: list[int] = []
        plain: list[str] = []

        def template_text(piece: str) -> None:  # the template's own text: its specials are control tokens
            last = 0
            for m in self._specials_re.finditer(piece):
                plain.append(piece[last : m.start()])
                ids.extend(self.encode("".join(plain)))
                plain.clear()
                ids.append(self.special_tokens[m.group(0)])
                last = m.end()
            plain.append(piece[last:])

        pos = 0
        for m in _MARKED_RE.finditer(text):  # marked: plain text, BPE-merged with its neighbours
            template_text(text[pos : m.start()])
            plain.append(m.group(1))
            pos = m.end()
        template_text(text[pos:])
        return ids + self.encode("".join(plain))

    @staticmethod
    def unmark(text: str) -> str:
        """A marked text as it reads (the markers removed)."""
        return _MARKED_RE.sub(r"\1", text) if LITERAL_OPEN in text else text


# ---------------------------------------------------------------------------------------------
# Llama 3: tiktoken BPE from `tokenizer.model`

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_N_BASE = 128_000
LLAMA3_SPECIAL_NAMES: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
) + tuple(f"<|reserved_special_token_{i}|>" for i in range(2, 246))
_LLAMA3_STOPS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>", "<|im_end|>")  # for a bare tokenizer.json
# tiktoken slows down badly (quadratically) on very long pieces; see tiktoken issue 195
_MAX_ENCODE_CHARS = 400_000
_MAX_RUN_CHARS = 25_000
_GIL_FREE_CHARS = 4096  # texts at least this long are encoded without holding the GIL (tokenizers)
_RUN_RE = re.compile(r"\s{%d,}|\S{%d,}" % (_MAX_RUN_CHARS + 1, _MAX_RUN_CHARS + 1))


def _split_long_runs(s: str) -> list[str]:
    """Cut `s` so that no run of whitespace or of non-whitespace in a piece exceeds 25,000 chars."""
    cuts = []
    for run in _RUN_RE.finditer(s):  # a run of n chars is cut every 25,000 chars from its start
        cuts.extend(range(run.start() + _MAX_RUN_CHARS, run.end(), _MAX_RUN_CHARS))
    bounds = [0, *cuts, len(s)]
    return [s[a:b] for a, b in zip(bounds, bounds[1:])]


def default_llama3_tokenizer_path() -> Path:
    """The Llama 3 `tokenizer.model` that ships inside the installed `llama_models` package."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise HerdError("llama_models is not installed: cannot find the default Llama 3 tokenizer.model")
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise HerdError(f"{path}: missing (the installed llama_models package has no Llama 3 tokenizer.model)")
    return path


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse `base64-token rank` lines; any defect is a HerdError naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HerdError(f"{path}: cannot read tokenizer file ({e.strerror or e})") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise HerdError(
                f"{path}: not a tiktoken BPE file (line {lineno} is not '<base64 token> <rank>')"
            ) from None
        if rank != len(ranks) or token in ranks:
            raise HerdError(f"{path}: line {lineno} has rank {rank}, expected {len(ranks)} (ranks must be 0,1,2,...)")
        ranks[token] = rank
    if len(ranks) != LLAMA3_N_BASE:
        raise HerdError(f"{path}: has {len(ranks)} BPE ranks, a Llama 3 tokenizer.model has {LLAMA3_N_BASE} (truncated?)")
    return ranks


@functools.lru_cache(maxsize=8)
def _load_llama3_encoding(path: str, _mtime_ns: int, _size: int) -> tiktoken.Encoding:
    ranks = _read_tiktoken_ranks(Path(path))
    specials = {name: LLAMA3_N_BASE + i for i, name in enumerate(LLAMA3_SPECIAL_NAMES)}
    return tiktoken.Encoding(name=f"llama3:{path}", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)


class Llama3Tokenizer(Tokenizer):
    """The Llama 3 tiktoken BPE (128,000 ranks + 256 special tokens), as Meta's reference encodes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        try:
            st = p.resolve().stat()
        except OSError:
            raise HerdError(f"{p}: tokenizer file not found") from None
        if not p.is_file():
            raise HerdError(f"{p}: not a file (expected a Llama 3 tokenizer.model)")
        self.path = p
        self._enc = _load_llama3_encoding(str(p.resolve()), st.st_mtime_ns, st.st_size)
        self.special_tokens = {name: LLAMA3_N_BASE + i for i, name in enumerate(LLAMA3_SPECIAL_NAMES)}
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_ids = frozenset({self.eos_id, self.special_tokens["<|eom_id|>"], self.special_tokens["<|eot_id|>"]})
        self.chat_template = None

    @classmethod
    def default(cls) -> Llama3Tokenizer:
        """The Llama 3 tokenizer that ships with `llama_models`."""
        return cls(default_llama3_tokenizer_path())

    @property
    def n_words(self) -> int:
        return self._enc.n_vocab

    def encode(
        self, s: str, *, bos: bool = False, eos: bool = False, allowed_special: AllowedSpecial = "none"
    ) -> list[int]:
        if allowed_special == "all":
            allowed: Literal["all"] | set[str] = "all"
        elif allowed_special == "none":
            allowed = set()
        else:
            allowed = set(allowed_special) & self.special_tokens.keys()
        ids = [self.bos_id] if bos else []
        for i in range(0, len(s), _MAX_ENCODE_CHARS):
            chunk = s[i:i + _MAX_ENCODE_CHARS]
            for piece in _split_long_runs(chunk) if len(chunk) > _MAX_RUN_CHARS else (chunk,):
                ids.extend(self._enc.encode(piece, allowed_special=allowed, disallowed_special=()))
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)


# ---------------------------------------------------------------------------------------------
# Tokenizers built on the `tokenizers` library: HF tokenizer.json and GGUF vocabularies


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable-character map used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = (b for b in range(256) if b not in keep)
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


_BYTE_ALPHABET = _gpt2_byte_alphabet()
_ALPHABET_TO_BYTE = {c: b for b, c in _BYTE_ALPHABET.items()}
_BYTE_TOKEN_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class _TokenizersBackend(Tokenizer):
    """Shared encode/decode over a `tokenizers.Tokenizer` (never adds BOS/EOS itself)."""

    def _setup(self, tok: Any, style: Literal["byte_level", "sentencepiece", "text"]) -> None:
        # remember whether the checkpoint's post-processor prepended BOS, then add it ourselves
        self._post_adds_bos = tok.post_processor is not None and len(tok.post_processor.process(
            tok.encode("a", add_special_tokens=False)).ids) > len(tok.encode("a", add_special_tokens=False).ids)
        tok.post_processor = None  # we add BOS/EOS ourselves, only when asked
        tok.encode_special_tokens = True  # special-token text is plain text unless allowed
        self._tok = tok
        self._style = style
        self._added = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}
        self._encoders: dict[frozenset[str], Any] = {}
        self._bytes_cache: dict[int, bytes] = {}

    @property
    def n_words(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _with_llama3_stops(self, ids: set[int]) -> frozenset[int]:
        """The Llama 3 chat format ends turns with eot/eom whatever a config names as eos."""
        if self.is_llama3():
            ids |= {self.special_tokens[t] for t in _LLAMA3_STOPS if t in self.special_tokens}
        return frozenset(ids)

    def _encoder_for(self, allowed: frozenset[str]) -> Any:
        """A copy of the tokenizer that matches only the `allowed` special tokens in text (cached)."""
        enc = self._encoders.get(allowed)
        if enc is None:
            from tokenizers import Tokenizer as HFTok

            if allowed == frozenset(self.special_tokens):
                enc = HFTok.from_str(self._tok.to_str())
                enc.encode_special_tokens = False
            else:
                spec = json.loads(self._tok.to_str())
                for t in spec.get("added_tokens", []):
                    if t["special"] and t["content"] in allowed:
                        t["special"] = False  # encode_special_tokens never skips non-special added tokens
                enc = HFTok.from_str(json.dumps(spec))
                enc.encode_special_tokens = True
            self._encoders[allowed] = enc
        return enc

    def encode(
        self, s: str, *, bos: bool = False, eos: bool = False, allowed_special: AllowedSpecial = "none"
    ) -> list[int]:
        if allowed_special == "none":
            allowed: frozenset[str] = frozenset()
        elif allowed_special == "all":
            allowed = frozenset(self.special_tokens)
        else:
            allowed = frozenset(allowed_special).intersection(self.special_tokens)
        enc = self._encoder_for(allowed) if allowed else self._tok
        if len(s) < _GIL_FREE_CHARS:
            ids = enc.encode(s, add_special_tokens=False).ids
        else:  # encode_batch releases the GIL (encode does not): a long text stalls no other thread
            ids = enc.encode_batch([s], add_special_tokens=False)[0].ids
        if bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if eos:
            ids = [*ids, self.eos_id]
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes_cache.get(token_id)
        if b is None:
            b = self._bytes_cache[token_id] = self._token_bytes(token_id)
        return b

    def _token_bytes(self, token_id: int) -> bytes:
        text = self._tok.id_to_token(token_id)
        if text is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary of {self.n_words}")
        if token_id in self._added:
            return text.encode("utf-8")
        if self._style == "byte_level" and all(c in _ALPHABET_TO_BYTE for c in text):
            return bytes(_ALPHABET_TO_BYTE[c] for c in text)
        if self._style == "sentencepiece":
            m = _BYTE_TOKEN_RE.fullmatch(text)
            return bytes([int(m.group(1), 16)]) if m else text.replace("\u2581", " ").encode("utf-8")
        return text.encode("utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HerdError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise HerdError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """tokenizer_config writes a token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _id_list(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


class HFTokenizer(_TokenizersBackend):
    """A Hugging Face `tokenizer.json` (+ tokenizer_config.json / generation_config.json beside it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer as HFTok

        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise HerdError(f"{file}: tokenizer.json not found")
        try:
            tok = HFTok.from_file(str(file))
        except Exception as e:  # the Rust side raises plain Exception subclasses
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HerdError(f"{file}: not a valid tokenizer.json ({reason})") from None
        self.path = file
        here = file.parent
        config = _read_json(here / "tokenizer_config.json")
        gen = _read_json(here / "generation_config.json")
        model_cfg = _read_json(here / "config.json")
        self._setup(tok, _style_of(tok))

        self.special_tokens = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        for i, t in (config.get("added_tokens_decoder") or {}).items():
            if isinstance(t, dict) and t.get("special") and isinstance(t.get("content"), str):
                self.special_tokens.setdefault(t["content"], int(i))

        def lookup(name: str) -> int | None:
            text = _token_text(config.get(name))
            return tok.token_to_id(text) if text is not None else None

        self.bos_id = lookup("bos_token")
        if self.bos_id is None:
            self.bos_id = next(iter(_id_list(gen.get("bos_token_id")) + _id_list(model_cfg.get("bos_token_id"))), None)
        eos_ids = _id_list(gen.get("eos_token_id")) + _id_list(model_cfg.get("eos_token_id"))
        eos = lookup("eos_token")
        eos = eos if eos is not None else next(iter(eos_ids), None)
        if eos is None:  # a bare tokenizer.json: the usual end-of-text names
            eos = next((self.special_tokens[t] for t in _EOS_NAMES if t in self.special_tokens), None)
        if eos is None:
            raise HerdError(f"{file}: no end-of-sequence token (set eos_token in tokenizer_config.json)")
        self.eos_id = eos
        self.stop_ids = self._with_llama3_stops({eos, *eos_ids})
        pad = lookup("pad_token")
        if pad is None:
            pad = next(iter(_id_list(gen.get("pad_token_id"))), None)
        self.pad_id = pad if pad is not None else self.special_tokens.get("<|finetune_right_pad_id|>")
        self.chat_template = _chat_template(config, here)
        add_bos = config.get("add_bos_token")
        self.add_bos = self.bos_id is not None and (self._post_adds_bos if add_bos is None else bool(add_bos))


def _style_of(tok: Any) -> Literal["byte_level", "sentencepiece", "text"]:
    """How token strings map to bytes, read from the tokenizer's decoder and model."""
    decoder = tok.decoder.__getstate__().decode() if tok.decoder is not None else ""
    if '"ByteLevel"' in decoder:
        return "byte_level"
    if getattr(tok.model, "byte_fallback", False) or '"ByteFallback"' in decoder or '"Metaspace"' in decoder:
        return "sentencepiece"
    return "text"


def _chat_template(config: dict[str, Any], here: Path) -> str | None:
    """The chat template from tokenizer_config.json, or from chat_template.jinja (newer saves)."""
    tpl = config.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default", next(iter(named.values()), None))
    if isinstance(tpl, str):
        return tpl
    jinja = here / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


# ---------------------------------------------------------------------------------------------


def _is_tiktoken_file(path: Path) -> bool:
    """A tiktoken BPE file starts with a line `<base64> <int>`; sentencepiece models are protobuf."""
    try:
        with path.open("rb") as f:
            first = f.readline(4096).split()
        return len(first) == 2 and first[1].isdigit() and base64.b64decode(first[0], validate=True) is not None
    except (OSError, ValueError, binascii.Error):
        return False


class GGUFTokenizer(_TokenizersBackend):
    """The tokenizer a GGUF file carries: byte-level BPE ("gpt2") or sentencepiece BPE ("llama"),
    built by gguf_vocab.read_vocab from the header herd.gguf_meta reads (shared with the model loader)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        v = read_vocab(path, _BYTE_ALPHABET, LLAMA3_PATTERN)
        self.path = v.path
        self._setup(v.tokenizer, v.style)
        self.special_tokens = v.special_tokens
        self.bos_id, self.eos_id, self.pad_id = v.bos_id, v.eos_id, v.pad_id
        self.stop_ids = self._with_llama3_stops(set(v.stop_ids))
        self.chat_template = v.chat_template
        self.add_bos = v.add_bos


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer from a model directory, tokenizer.json, tiktoken tokenizer.model, or .gguf file."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "tokenizer.json", p / "tokenizer.model", p / "original" / "tokenizer.model"):
            if cand.is_file():
                return load_tokenizer(cand)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return load_tokenizer(ggufs[0])
        raise HerdError(f"{p}: no tokenizer found (looked for tokenizer.json, tokenizer.model, "
                        "original/tokenizer.model, one *.gguf)")
    if not p.is_file():
        raise HerdError(f"{p}: tokenizer file not found")
    if is_gguf(p):
        return GGUFTokenizer(p)
    if _is_tiktoken_file(p):
        return Llama3Tokenizer(p)
    try:
        with p.open("rb") as f:
            head = f.read(64).lstrip()[:1]
    except OSError as e:
        raise HerdError(f"{p}: cannot read ({e.strerror or e})") from None
    if head == b"{" or p.name.endswith(".json"):
        return HFTokenizer(p)
    raise HerdError(f"{p}: unrecognized tokenizer file (not tiktoken BPE, tokenizer.json or GGUF; "
                    "sentencepiece .model files are not supported, use tokenizer.json)")

