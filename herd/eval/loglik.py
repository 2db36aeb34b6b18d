"""Log-likelihoods from an in-process model: of a continuation given a context (multiple choice), and of a
whole text under a sliding window (perplexity). Plain fp32 forwards of herd/model/llama.py's Transformer,
one sequence at a time, under torch.inference_mode.

    lm = LogLikelihood(model, tokenizer)
    logp, greedy, n = lm.continuation("Question: 2+2?\\nAnswer:", " 4")
    nll, n = lm.rolling(tokenizer.encode(text, bos=False), max_len=2048, stride=1024)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LogLikelihood:
    def __init__(self, model: nn.Module, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.max_len = int(getattr(getattr(model, "args", None), "max_seq_len", 4096) or 4096)

    def _prefix(self) -> list[int]:
        bos = getattr(self.tokenizer, "bos_id", None)
        return [bos] if bos is not None and getattr(self.tokenizer, "add_bos", True) else []

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=False)

    @torch.inference_mode()
    def _logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        """log p(ids[i+1] | ids[:i+1]) for i in 0..len-2, fp32, shape (len-1,), plus each greedy flag."""
        x = torch.tensor([list(ids)], device=self.device)
        logits = self.model(x[:, :-1]).float()[0]  # (T-1, V)
        logp = F.log_softmax(logits, dim=-1)
        target = x[0, 1:]
        return logp.gather(-1, target[:, None])[:, 0], logp.argmax(-1) == target

    def continuation(self, context: str, continuation: str) -> tuple[float, bool, int]:
        """(sum of log p over the continuation's tokens, whether greedy decoding would produce them all, how
        many tokens). The context is encoded on its own (with BOS when the tokenizer adds one), then the
        continuation; an empty context conditions on BOS alone."""
        ctx = self._prefix() + self.encode(context)
        cont = self.encode(continuation)
        if not cont:
            return 0.0, True, 0
        if not ctx:
            raise ValueError("an empty context needs a tokenizer with a BOS token")
        ids = (ctx + cont)[-(self.max_len + 1):]
        logp, greedy = self._logprobs(ids)
        n = len(cont)
        return float(logp[-n:].sum()), bool(greedy[-n:].all()), n

    def rolling(self, ids: Sequence[int], max_len: int | None = None, stride: int | None = None) -> tuple[float, int]:
        """(total negative log-likelihood in nats, tokens scored) of a whole token sequence under a sliding
        window of max_len tokens moved by stride: every token is predicted once, each with up to
        max_len - stride tokens of earlier context (the first from BOS, when the tokenizer has one)."""
        max_len = min(max_len or self.max_len, self.max_len)
        stride = stride or max_len
        if not 0 < stride <= max_len:
            raise ValueError("need 0 < stride <= max_len")
        seq = self._prefix() + list(ids)
        done = 1  # tokens before this index are scored, or unpredictable (BOS; without BOS the first token)
        total, count = 0.0, 0
        begin, end = 0, min(max_len + 1, len(seq))  # a window feeds end-begin-1 <= max_len tokens
        while done < len(seq):
            logp, _ = self._logprobs(seq[begin:end])  # predictions of seq[begin+1:end]
            part = logp[done - begin - 1:]
            total -= float(part.sum())
            count += part.numel()
            done = end
            end = min(end + stride, len(seq))
            begin = max(end - max_len - 1, 0)
        return total, count
