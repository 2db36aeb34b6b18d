"""A simple, correct generation loop: prefill once, then decode one token at a time with a KV cache.

The batching engine replaces this for throughput; this loop stays the reference it is tested against.
"""
from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from herd.engine.request import CompletionOutput, SamplingParams
from herd.engine.sampling import sample
from herd.errors import HerdError
from herd.model.llama import Transformer
from herd.tokenizer.tokenizer import Tokenizer


class Detokenizer:
    """Incremental ids → text that never splits a multi-byte UTF-8 character and holds back
    text that could still become a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        # control tokens the model emits (e.g. "<|im_start|>") add no text, as vLLM's default does
        self.skip: frozenset[int] = frozenset(tokenizer.special_tokens.values()) if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # all text decoded so far (stop string cut off once found)
        self._emitted = 0
        self.stopped = False
        self.stop_hit: str | None = None  # the stop string that ended the text

    def add(self, token_id: int) -> str:
        """Feed one token; returns the text that is now safe to show (nothing once stopped)."""
        if self.stopped or token_id in self.skip:
            return ""
        self.text += self._utf8.decode(self.tokenizer.token_bytes(token_id))
        if self.stop:
            hits = [(i, s) for s in self.stop if (i := self.text.find(s, max(0, self._emitted - len(s)))) >= 0]
            if hits:
                at, self.stop_hit = min(hits)
                self.text, self.stopped = self.text[:at], True
                return self._flush(len(self.text))
            hold = max(len(s) for s in self.stop) - 1
            return self._flush(max(self._emitted, len(self.text) - hold))
        return self._flush(len(self.text))

    def finish(self) -> str:
        """Flush what is held back at the end of generation."""
        if not self.stopped:
            self.text += self._utf8.decode(b"", final=True)
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        delta, self._emitted = self.text[self._emitted : upto], upto
        return delta


@dataclass
class StepEvent:
    """One decoding step of a streamed generation."""

    token_id: int
    text_delta: str
    finished: bool
    finish_reason: str | None = None


def stop_ids_for(tokenizer: Tokenizer, params: SamplingParams) -> frozenset[int]:
    if params.ignore_eos:
        return frozenset(params.stop_token_ids or ())
    if params.stop_token_ids is not None:
        return frozenset(params.stop_token_ids) | tokenizer.stop_ids
    return tokenizer.stop_ids


@torch.inference_mode()
def stream_generate(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    out: CompletionOutput | None = None,
) -> Iterator[StepEvent]:
    """Generate from one prompt, yielding each token with its text delta; fills `out` as it goes."""
    out = out if out is not None else CompletionOutput(list(prompt_ids))
    max_len = model.args.max_seq_len
    if not prompt_ids:
        raise HerdError("the prompt is empty")
    if len(prompt_ids) >= max_len:
        raise HerdError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {max_len}")
    budget = min(params.max_tokens, max_len - len(prompt_ids))
    stops = stop_ids_for(tokenizer, params)
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    detok = Detokenizer(tokenizer, params.stop, params.skip_special_tokens)
    device = model.tok_embeddings.weight.device
    cache = model.new_cache(1, len(prompt_ids) + budget)
    tokens = torch.tensor([list(prompt_ids)], device=device)
    logits = model(tokens, 0, cache, last_only=True)
    pos = len(prompt_ids)
    for i in range(budget):
        tok = sample(logits[0, -1].cpu(), params, gen)
        out.token_ids.append(tok)
        if tok in stops:
            out.finish_reason, out.stop_token_id = "stop", tok
            delta = detok.finish()
            out.text = detok.text
            yield StepEvent(tok, delta, True, "stop")
            return
        delta = detok.add(tok)
        if detok.stopped:
            out.finish_reason, out.text = "stop", detok.text
            yield StepEvent(tok, delta, True, "stop")
            return
        if i == budget - 1:
            delta += detok.finish()
            out.finish_reason, out.text = "length", detok.text
            yield StepEvent(tok, delta, True, "length")
            return
        out.text = detok.text
        yield StepEvent(tok, delta, False)
        logits = model(torch.tensor([[tok]], device=device), pos, cache)
        pos += 1


def generate(
    model: Transformer, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams
) -> CompletionOutput:
    """Generate from one prompt to completion."""
    out = CompletionOutput(list(prompt_ids))
    for _ in stream_generate(model, tokenizer, prompt_ids, params, out):
        pass
    return out
