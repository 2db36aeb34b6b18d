"""The three systems behind one small interface, each measured in its own process.

Every system gets the same token ids (no tokenizer in the timed path), greedy decoding, and
runs every request to its max_tokens (EOS ignored), so all do the same work.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from workload import Request


class Herd:
    """herd's engine (continuous batching, paged KV cache) on the SmolLM2 weights."""

    def __init__(self, precision: str, threads: int, kv_bytes: int = 384 << 20):
        from herd import hub
        from herd.model.quantize import weight_bytes

        torch.set_num_threads(threads)
        # "bf16": bf16 weights, fp32 activations (herd's CPU choice); "bf16-all": everything in
        # bf16 as HF's bf16; "fp32-torch": plain PyTorch layers, to show what herd's kernels add
        dtype = torch.bfloat16 if precision == "bf16-all" else torch.float32
        quantize = {"fp32": "none", "bf16": "bf16", "bf16-all": "none", "int8": "int8", "int4": "int4",
                    "fp32-torch": None}[precision]
        self.model, self.tok = hub.load("smollm2-135m-instruct", device="cpu", dtype=dtype, quantize=quantize)
        self.weight_bytes = weight_bytes(self.model)
        self.kv_bytes = kv_bytes
        self.engine = self._engine(64)

    def _engine(self, max_num_seqs: int):
        from herd.config import EngineConfig
        from herd.engine.engine import LLMEngine

        cfg = EngineConfig(kv_cache_memory=self.kv_bytes, max_num_seqs=max_num_seqs, max_num_batched_tokens=2048)
        return LLMEngine(self.model, self.tok, cfg)

    @staticmethod
    def _params(n: int):
        from herd.engine.request import SamplingParams

        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)

    def decode(self, prompt: list[int], n: int) -> list[float]:
        """Seconds per decode step (batch 1) after the prefill step."""
        eng = self.engine
        eng.add_request(None, prompt, self._params(n + 1))
        eng.step()  # prefill + first token
        times = []
        while eng.has_unfinished_requests():
            t0 = time.perf_counter()
            eng.step()
            times.append(time.perf_counter() - t0)
        return times

    def ttft(self, prompt: list[int]) -> float:
        eng = self.engine
        rid = eng.add_request(None, prompt, self._params(1))
        t0 = time.perf_counter()
        while eng.has_unfinished_requests():
            eng.step()
        del rid
        return time.perf_counter() - t0

    def run(self, requests: list[Request], concurrency: int) -> tuple[int, float]:
        """All requests through an engine that runs at most `concurrency` at once."""
        eng = self._engine(concurrency)
        for r in requests:
            eng.add_request(None, r.prompt_ids, self._params(r.max_tokens))
        t0 = time.perf_counter()
        n = 0
        while eng.has_unfinished_requests():
            for out in eng.step():
                if out.finished:
                    n += len(out.outputs[0].token_ids)
        return n, time.perf_counter() - t0

    def profile_decode(self, prompt: list[int], steps: int = 48) -> dict[str, float]:
        """Where a batch-1 decode step's time goes (ms per step): the step's wall time against
        the weight products alone (every projection once on one activation row, back to back,
        through the same kernels). A step also runs attention, norms, RoPE, sampling and
        scheduling; the profiler cannot see inside herd's one-call blocks, so this times."""
        import torch.nn.functional as F
        from torch import nn

        from herd.model import cpu_kernels
        from herd.model.quantize import kernel_args

        calls = []
        for mod in self.model.modules():
            args = kernel_args(mod)
            if args is not None:
                fmt, a, b = args
                fn = cpu_kernels.kernel(("dense_mm", "int8_mm", "int4_mm")[fmt])
                x = torch.randn(1, mod.in_features)
                calls.append((lambda fn=fn, x=x, a=a, b=b, fmt=fmt: fn(x, a) if fmt == 0 else fn(x, a, b)))
            elif isinstance(mod, nn.Linear):
                x = torch.randn(1, mod.in_features, dtype=mod.weight.dtype)
                calls.append(lambda x=x, w=mod.weight: F.linear(x, w))
        with torch.inference_mode():
            passes = []
            for _ in range(15):
                t0 = time.perf_counter()
                for c in calls:
                    c()
                passes.append(time.perf_counter() - t0)
        eng = self.engine
        eng.add_request(None, prompt, self._params(steps + 1))
        eng.step()
        times = []
        while eng.has_unfinished_requests():
            t0 = time.perf_counter()
            eng.step()
            times.append(time.perf_counter() - t0)
        step, weights = statistics.median(times) * 1e3, statistics.median(passes) * 1e3
        return {"decode step (median wall time)": step, "weight products alone": weights,
                "the rest: attention, norms, RoPE, sampling, scheduling, Python": max(0.0, step - weights)}


class HF:
    """transformers' LlamaForCausalLM.generate() on herd's weights saved as an HF checkpoint."""

    def __init__(self, precision: str, threads: int, path: Path):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        # parameters() lists the tied embedding / head once: the matrices a step reads
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.dim() > 1)

    def _generate(self, prompt: list[int], n: int, stamps: list[float] | None = None) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Stamp(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                if stamps is not None:
                    stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        with torch.inference_mode():
            self.model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=0, eos_token_id=None, stopping_criteria=StoppingCriteriaList([Stamp()]))

    def decode(self, prompt: list[int], n: int) -> list[float]:
        stamps: list[float] = []
        self._generate(prompt, n + 1, stamps)
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def ttft(self, prompt: list[int]) -> float:
        t0 = time.perf_counter()
        self._generate(prompt, 1)
        return time.perf_counter() - t0

    def run(self, requests: list[Request], concurrency: int) -> tuple[int, float]:
        assert concurrency == 1, "HF generate() runs one request at a time here"
        t0 = time.perf_counter()
        for r in requests:
            self._generate(r.prompt_ids, r.max_tokens)
        return sum(r.max_tokens for r in requests), time.perf_counter() - t0


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level eval loop (greedy = argmax of the logits)."""

    def __init__(self, precision: str, threads: int, path: Path):
        import llama_cpp

        from artifacts import gguf_weight_bytes

        self.llm = llama_cpp.Llama(str(path), n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.weight_bytes = gguf_weight_bytes(path)

    def _next(self) -> int:
        """Greedy: argmax of the last evaluated token's logits (the library keeps no copy of them
        unless logits_all, which would compute the head for every prompt token)."""
        import numpy as np

        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),))
        return int(logits.argmax())

    def decode(self, prompt: list[int], n: int) -> list[float]:
        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        tok = self._next()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            llm.eval([tok])
            tok = self._next()
            times.append(time.perf_counter() - t0)
        return times

    def ttft(self, prompt: list[int]) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        self._next()
        return time.perf_counter() - t0

    def run(self, requests: list[Request], concurrency: int) -> tuple[int, float]:
        assert concurrency == 1, "llama-cpp-python's Llama runs one sequence at a time"
        t0 = time.perf_counter()
        for r in requests:
            self.llm.reset()
            self.llm.eval(r.prompt_ids)
            tok = self._next()
            for _ in range(r.max_tokens - 1):
                self.llm.eval([tok])
                tok = self._next()
        return sum(r.max_tokens for r in requests), time.perf_counter() - t0


def median_rate(times: list[float]) -> float:
    """Tokens per second from per-token seconds (median: robust to a noisy shared machine)."""
    return 1.0 / statistics.median(times)
