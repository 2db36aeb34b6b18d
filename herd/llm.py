"""LLM: the offline Python API over the engine (load a model, generate, chat, stream).

    from herd import LLM, SamplingParams
    llm = LLM()  # the embedded SmolLM2-135M-Instruct, or a path / .gguf / random:<preset>
    print(llm.generate("The capital of France is", SamplingParams(temperature=0)).text)
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from herd import hub
from herd.config import EngineConfig
from herd.engine.engine import DTYPES, LLMEngine
from herd.engine.request import CompletionOutput, RequestOutput, SamplingParams
from herd.errors import EngineError, HerdError
from herd.tokenizer.messages import Message
from herd.tokenizer.prompter import Prompter


class LLM:
    """A loaded model with its tokenizer, prompt format and engine: the offline Python API."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        engine_config: EngineConfig | None = None,
        quantize: str | None = "none",
        lora: str | Path | None = None,
    ):
        """quantize: "none" (weights as loaded; fused blocks and, on the CPU, herd's decode
        kernels), "bf16", "int8" or "int4" (weight-only; int8 / int4 are GGUF Q8_0 / Q4_1's
        numbers), or None (the plain reference model, PyTorch layers only).
        lora: a PEFT LoRA adapter directory (`herd train`'s OUT/adapter, or peft's), merged into
        the weights at load — the model `herd serve --lora NAME=ADAPTER` serves."""
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise HerdError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        self.ref = hub.resolve(model)
        self.model, self.tokenizer = hub.load(self.ref, dtype=dtype, device=device, seed=seed, quantize=quantize,
                                              engine_config=engine_config, lora=lora)
        self.prompter = Prompter(self.tokenizer)
        self.engine = LLMEngine(self.model, self.tokenizer, engine_config)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """A raw prompt to ids: text gets BOS when the tokenizer wants it; ids pass through."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, bos=self.tokenizer.add_bos)
        return list(prompt)

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Complete raw prompts (text or token ids), all batched together; outputs in prompt order."""
        single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        plist = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(batch)
        if len(plist) != len(batch):
            raise HerdError(f"{len(plist)} sampling params for {len(batch)} prompts")
        return self._run([self.encode(p) for p in batch], plist, use_tqdm)

    def _run(self, prompt_ids: list[list[int]], plist: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        ids = []
        try:
            for p, sp in zip(prompt_ids, plist):
                ids.append(self.engine.add_request(None, p, sp))
            results: dict[str, RequestOutput] = {}
            with tqdm(total=len(ids), desc="generating", unit="req", disable=not use_tqdm or len(ids) < 2) as bar:
                for out in self.engine.run():
                    if out.error is not None:
                        raise EngineError(f"generation failed: {out.error}")
                    if out.finished:
                        results[out.request_id] = out
                        bar.update(1)
        finally:  # an exception (or Ctrl-C) must not leave requests holding KV blocks
            for i in ids:
                self.engine.abort(i)
        return [results[i] for i in ids]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[CompletionOutput]:
        """Stream one raw prompt: yields the output after each step (see delta_text)."""
        yield from self._stream(self.encode(prompt), params or SamplingParams())

    def _stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[CompletionOutput]:
        rid = self.engine.add_request(None, prompt_ids, params.replace(n=1))
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.request_id == rid:
                        if out.error is not None:
                            raise EngineError(f"generation failed: {out.error}")
                        yield out.outputs[0]
                        if out.finished:
                            return
        finally:
            self.engine.abort(rid)

    def chat(
        self,
        messages: Sequence[dict[str, Any] | Any],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_prompt_format: str = "json",
        tool_choice: str = "auto",
    ) -> ChatResponse:
        """One assistant turn for a conversation (OpenAI-style dicts or herd Messages), tools optional."""
        ids = self.prompter.encode(messages, tools=tools, tool_prompt_format=tool_prompt_format,
                                   tool_choice=tool_choice)
        out = self._run([ids], [_chat_params(params, tools).replace(n=1)], False)[0].outputs[0]
        return ChatResponse(self.prompter.parse(out, tools_offered=bool(tools)), out)

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any] | Any],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_prompt_format: str = "json",
    ) -> Iterator[CompletionOutput]:
        """Stream one assistant turn (see delta_text of each yielded output)."""
        ids = self.prompter.encode(messages, tools=tools, tool_prompt_format=tool_prompt_format)
        yield from self._stream(ids, _chat_params(params, tools))


def _chat_params(params: SamplingParams | None, tools: Sequence[Any] | None) -> SamplingParams:
    """A chat turn's params: with tools the reply keeps its control tokens (<|python_tag|> starts a
    Llama 3 tool call) for the parser."""
    params = params or SamplingParams()
    return params.replace(skip_special_tokens=False) if tools else params


@dataclass
class ChatResponse:
    """An assistant reply: the parsed message (content, tool_calls, stop_reason) and the raw output."""

    message: Message
    output: CompletionOutput
