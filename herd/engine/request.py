"""What a caller asks for (SamplingParams), what it gets back (RequestOutput), and the engine's Request."""
from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError

# temperatures below this sample greedily: logits / 1e-300 is inf and softmax of it NaN (vLLM's
# _SAMPLING_EPS is the same value)
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy (so is anything below GREEDY_BELOW, where
    dividing the logits by it would overflow); top_k 0, top_p 1 and min_p 0 turn those off."""

    max_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output (CTRL style)
    frequency_penalty: float = 0.0  # OpenAI: minus penalty x count in the output
    presence_penalty: float = 0.0  # OpenAI: minus penalty once a token appeared in the output
    seed: int | None = None  # per-request: the same samples whatever else is in the batch
    stop: tuple[str, ...] = ()  # stop strings, matched on the text, never part of the output
    stop_token_ids: tuple[int, ...] | None = None  # extra stop ids besides the tokenizer's
    ignore_eos: bool = False
    n: int = 1  # completions per prompt
    logprobs: int | None = None  # return the chosen token's logprob and this many alternatives
    response_format: Any = None  # herd.engine.structured.ResponseFormat: JSON schema, regex, choice
    # control tokens the model emits add no text (token_ids keep them); tool-call parsers that read
    # e.g. <|python_tag|> from the text turn this off
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs must be in [0, 20], got {self.logprobs}"),
            (self.seed is None or -(2**63) <= self.seed < 2**64, f"seed must fit in 64 bits, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise HerdError(message)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise HerdError("stop strings must be non-empty strings")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def replace(self, **kw: Any) -> SamplingParams:
        return dataclasses.replace(self, **kw)


@dataclass
class CompletionOutput:
    """One generated sequence (cumulative), with what this step added (delta_*)."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # generated ids, stop token included
    text: str = ""  # detokenized output, stop token and stop string excluded
    finish_reason: str | None = None  # "stop" (stop token or string), "length" or "abort"
    stop_token_id: int | None = None  # the stop token that ended it, if any
    stop_reason: int | str | None = None  # the stop token id or stop string, vLLM-style
    index: int = 0  # which of the n completions
    logprobs: list[dict[int, float]] | None = None  # per token: {chosen and top alternatives: logprob}
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def snapshot(self) -> CompletionOutput:
        """A copy that later steps do not change (the engine updates its outputs in place)."""
        return dataclasses.replace(self, token_ids=list(self.token_ids), delta_token_ids=list(self.delta_token_ids),
                                   logprobs=None if self.logprobs is None else list(self.logprobs))


@dataclass
class RequestOutput:
    """All completions of one request; `text`/`token_ids` are the first one's for convenience."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # set when the engine failed this request (a bug, not bad input): it ended with what it had, and
    # the requests batched with it went on
    error: str | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text

    def snapshot(self) -> RequestOutput:
        """A copy that later engine steps do not change, for a consumer on another thread."""
        return dataclasses.replace(self, outputs=[o.snapshot() for o in self.outputs])

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


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
