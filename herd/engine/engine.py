"""The offline Python API: `LLM(model).generate(prompts, params)` and `LLM(model).chat(messages)`."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from herd import hub
from herd.engine.generate import StepEvent, generate, stream_generate
from herd.engine.request import CompletionOutput, SamplingParams
from herd.tokenizer.prompter import Prompter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ChatResponse:
    """An assistant reply: the parsed message (content, tool_calls, stop_reason) and the raw output."""

    message: Any  # herd.tokenizer.chat_format.Message
    output: CompletionOutput


class LLM:
    """A loaded model with its tokenizer and prompt format."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
    ):
        if isinstance(dtype, str):
            dtype = DTYPES[dtype]
        self.ref = hub.resolve(model)
        self.model, self.tokenizer = hub.load(self.ref, dtype=dtype, device=device, seed=seed)
        self.prompter = Prompter(self.tokenizer)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """A raw prompt to ids: text gets BOS when the tokenizer wants it; ids pass through."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, bos=self.tokenizer.add_bos)
        return list(prompt)

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        params: SamplingParams | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[CompletionOutput]:
        """Complete raw prompts (text or token ids); one output per prompt, in order."""
        params = params or SamplingParams()
        single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        bar = tqdm(batch, desc="generating", unit="prompt", disable=not use_tqdm or len(batch) < 2)
        return [generate(self.model, self.tokenizer, self.encode(p), params) for p in bar]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[StepEvent]:
        """Stream one raw prompt token by token."""
        yield from stream_generate(self.model, self.tokenizer, self.encode(prompt), params or SamplingParams())

    def chat(
        self,
        messages: Sequence[dict[str, Any] | Any],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_prompt_format: str = "json",
    ) -> ChatResponse:
        """One assistant turn for a conversation (OpenAI-style dicts or herd Messages), tools optional."""
        ids = self.prompter.encode(messages, tools=tools, tool_prompt_format=tool_prompt_format)
        out = generate(self.model, self.tokenizer, ids, params or SamplingParams())
        return ChatResponse(self.prompter.parse(out, tools_offered=bool(tools)), out)

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any] | Any],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_prompt_format: str = "json",
    ) -> Iterator[StepEvent]:
        """Stream one assistant turn's text as it is generated."""
        ids = self.prompter.encode(messages, tools=tools, tool_prompt_format=tool_prompt_format)
        yield from stream_generate(self.model, self.tokenizer, ids, params or SamplingParams())
