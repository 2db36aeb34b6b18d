"""What a caller asks for (SamplingParams) and what it gets back (CompletionOutput)."""
from __future__ import annotations

from dataclasses import dataclass, field

from herd.errors import HerdError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy; top_k 0 and top_p 1 turn those filters off."""

    max_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's end-of-turn ids
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise HerdError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise HerdError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise HerdError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise HerdError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise HerdError("stop strings must be non-empty")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


@dataclass
class CompletionOutput:
    """One finished generation."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # generated ids, stop token included
    text: str = ""  # detokenized output, stop token and stop string excluded
    finish_reason: str | None = None  # "stop" (stop token or string) or "length"
    stop_token_id: int | None = None  # the stop token that ended it, if any
