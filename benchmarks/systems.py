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

    def profile_decode(self, prompt: list[int], steps: int = 24) -> dict[str, float]:
        """Where a batch-1 decode step's time goes (ms per step), from torch.profiler."""
        from torch.profiler import ProfilerActivity, profile

        from herd.model import woq_cpu

        # herd's layers call their kernels as plain functions, which the profiler cannot see:
        # route them through torch.ops (the same kernels, registered as ops) while profiling
        ops = {id(woq_cpu.kernel(n)): getattr(torch.ops.herd_woq, n) for n in ("int8_mm", "int4_mm", "dense_mm")} \
            if woq_cpu.available() else {}
        for mod in self.model.modules():
            if getattr(mod, "kernel", None) is not None:
                mod.kernel = ops.get(id(mod.kernel), mod.kernel)
        eng = self.engine
        eng.add_request(None, prompt, self._params(steps + 4))
        for _ in range(3):
            eng.step()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                eng.step()
        wall = (time.perf_counter() - t0) / steps * 1e3
        while eng.has_unfinished_requests():
            eng.step()
        groups = {"weights (GEMV kernels)": 0.0, "attention (gather, bmm, softmax)": 0.0, "other tensor ops": 0.0}
        for e in prof.key_averages():
            ms = e.self_cpu_time_total / 1e3 / steps
            if e.key.startswith("herd_woq::") or e.key in ("aten::mm", "aten::addmm"):
                groups["weights (GEMV kernels)"] += ms
            elif e.key in ("aten::bmm", "aten::index_select", "aten::_softmax", "aten::index_copy_", "aten::masked_fill_"):
                groups["attention (gather, bmm, softmax)"] += ms
            elif e.key.startswith("aten::"):
                groups["other tensor ops"] += ms
        groups["step wall time (profiled)"] = wall
        groups["Python and dispatch (the rest)"] = max(0.0, wall - sum(v for k, v in groups.items() if k != "step wall time (profiled)"))
        return groups


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
