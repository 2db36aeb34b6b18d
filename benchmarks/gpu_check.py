"""CUDA check for the engine: greedy tokens on the GPU equal the CPU's, and decode speed vs the HBM bound.

Run through benchmarks/gpu_check.sh on a machine with a CUDA GPU (one call, well under 8 minutes):
  1. random:llama3.2-1b, fp32 weights, same seed on both devices: 32 greedy tokens for 4 prompts
     on CUDA (TF32 off) equal the CPU's (a difference is accepted only at a near-tie: top-2 gap < 1e-3);
  2. the default model (SmolLM2-135M GGUF) the same way, when its package is installed there;
  3. random:llama3.1-8b in bf16 on CUDA: batch-1 decode tok/s against the HBM bound
     (weight bytes per token / measured device-to-device bandwidth), and 32-request throughput;
  4. the same decode with EngineConfig(compile_decode=True) (torch.compile of the decode-only
     steps), when time is left: its tok/s and compile time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from herd import hub
from herd.config import EngineConfig
from herd.engine.engine import LLMEngine
from herd.engine.request import SamplingParams

START = time.perf_counter()
PROMPTS = ["The capital of France is", "def quicksort(xs):", "Once upon a time", "1, 1, 2, 3, 5, 8,"]


def greedy_tokens(model, tok, n: int) -> list[list[int]]:
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=2 << 30, max_model_len=512))
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    ids = [engine.add_request(None, tok.encode(p, bos=tok.add_bos), params) for p in PROMPTS]
    done = {o.request_id: o.token_ids for o in engine.run() if o.finished}
    return [done[i] for i in ids]


def compare(name: str, load, n: int = 32) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu_model, tok = load("cpu")
    want = greedy_tokens(cpu_model, tok, n)
    del cpu_model
    gpu_model, _ = load("cuda")
    got = greedy_tokens(gpu_model, tok, n)
    result = {"check": name, "prompts": len(PROMPTS), "tokens": n, "equal": 0, "near_tie": 0, "mismatch": 0}
    for p, g, w in zip(PROMPTS, got, want):
        if g == w:
            result["equal"] += 1
            continue
        i = next(k for k, (a, b) in enumerate(zip(g, w)) if a != b)
        with torch.no_grad():
            ids = torch.tensor([tok.encode(p, bos=tok.add_bos) + w[:i]], device="cuda")
            top2 = torch.topk(gpu_model(ids)[0, -1], 2).values
        result["near_tie" if (top2[0] - top2[1]).item() < 1e-3 else "mismatch"] += 1
    del gpu_model
    torch.cuda.empty_cache()
    return result


def bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * a.numel() * 20 / (start.elapsed_time(end) / 1e3)


def speed(tokens: int) -> dict:
    model, tok = hub.load("random:llama3.1-8b", dtype=torch.bfloat16, device="cuda")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=8 << 30, max_model_len=4096))
    prompt = tok.encode("Hello " * 120, bos=True)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    engine.run_one(prompt, params.replace(max_tokens=8))  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.run_one(prompt, params.replace(max_tokens=1))
    torch.cuda.synchronize()
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.run_one(prompt, params)
    torch.cuda.synchronize()
    decode_s = (time.perf_counter() - t0 - ttft) / (tokens - 1)
    for _ in range(32):
        engine.add_request(None, prompt, params)
    t0 = time.perf_counter()
    n_out = sum(len(o.token_ids) for o in engine.run() if o.finished)
    agg = n_out / (time.perf_counter() - t0)
    bw = bandwidth()
    bound = bw / weight_bytes
    out = {"check": "speed random:llama3.1-8b bf16", "weight_GB": weight_bytes / 1e9, "hbm_GBps": bw / 1e9,
           "bound_tok_s": bound, "decode_tok_s": 1 / decode_s, "fraction_of_bound": (1 / decode_s) / bound,
           "ttft_128_tokens_ms": ttft * 1e3, "throughput_32_tok_s": agg}
    print(json.dumps(out), flush=True)
    if time.perf_counter() - START > 240:
        out["compiled"] = "skipped: not enough time left"
        return out
    try:  # torch.compile of the decode-only steps (prefill steps stay eager)
        del engine
        torch.cuda.empty_cache()
        engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=8 << 30, max_model_len=4096, compile_decode=True))
        t0 = time.perf_counter()
        engine.run_one(prompt, params.replace(max_tokens=16))  # compiles
        compile_s = time.perf_counter() - t0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.run_one(prompt, params)
        torch.cuda.synchronize()
        compiled = (tokens - 1) / (time.perf_counter() - t0 - ttft)
        out["compiled"] = {"decode_tok_s": compiled, "fraction_of_bound": compiled / bound, "first_call_s": compile_s}
    except Exception as e:  # report, do not fail the correctness checks above
        out["compiled"] = f"failed: {type(e).__name__}: {e}"[:500]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128, help="decode tokens timed for the speed check")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = [compare("random:llama3.2-1b fp32",
                       lambda d: hub.load("random:llama3.2-1b", dtype=torch.float32, device=d, seed=0))]
    print(json.dumps(results[-1]), flush=True)
    try:
        hub.smollm2_gguf_path()
        results.append(compare("smollm2-135m-instruct fp32",
                               lambda d: hub.load("smollm2-135m-instruct", dtype=torch.float32, device=d)))
    except Exception as e:  # the 98 MB GGUF cannot always travel to the GPU machine
        results.append({"check": "smollm2-135m-instruct", "skipped": str(e)})
    print(json.dumps(results[-1]), flush=True)
    if not args.skip_speed:
        results.append(speed(args.tokens))
        print(json.dumps(results[-1]), flush=True)
    ok = all(r.get("mismatch", 0) == 0 for r in results)
    print("gpu_check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
