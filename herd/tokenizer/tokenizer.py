"""Tokenizers behind one interface: Llama 3 tiktoken, HF tokenizer.json, GGUF vocab."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Literal

AllowedSpecial = Literal["all", "none"] | Collection[str]


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
