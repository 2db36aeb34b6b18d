"""What a caller asks for (SamplingParams) and what it gets back (CompletionOutput)."""
from __future__ import annotations

import enum
import time
from collections.abc import Sequence
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


class RequestStatus(enum.IntEnum):
    """Where a request is in the engine; every value after PREEMPTED is a finished state."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    def is_finished(self) -> bool:
        """True for the three FINISHED_* states."""
        return self > RequestStatus.PREEMPTED


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """One generation as the engine tracks it: token ids, progress, status (mutable)."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
    ):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.priority = priority  # lower is more important
        self.output_token_ids: list[int] = []
        # prompt + output kept as one list so the runner can slice it without concatenating each step
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose KV is in the cache (reset to 0 on preemption)
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        self.block_hashes: list[int] = []  # chained hashes of the full blocks of all_token_ids (kv_cache fills it)
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first scheduling
        self.num_preemptions = 0

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def finish_reason(self) -> str | None:
        """"stop", "length" or "abort" once finished, else None."""
        return _FINISH_REASONS.get(self.status)

    def is_finished(self) -> bool:
        """True once the request is in a FINISHED_* state."""
        return self.status.is_finished()

    def append_output_token_ids(self, token_ids: int | Sequence[int]) -> None:
        """Add generated token(s) to both output_token_ids and all_token_ids (use this, not .append)."""
        if isinstance(token_ids, int):
            token_ids = (token_ids,)
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, prompt={self.num_prompt_tokens}, "
            f"output={self.num_output_tokens}, computed={self.num_computed_tokens})"
        )
