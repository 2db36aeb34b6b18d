"""Side-by-side benchmark: herd vs HF transformers generate() vs llama.cpp (llama-cpp-python), same GGUF.

Each system runs in its own subprocess (so peak RSS is its own), one after the other, in one run:
  - batch-1 decode tok/s (greedy, ignore EOS), time to first token for 128- and 2048-token prompts;
  - aggregate output tok/s for 1, 8 and 32 requests of ShareGPT-like mixed lengths (seeded): herd
    batches them in its engine; transformers and llama.cpp run them one after another;
  - the memory-bandwidth bound: bytes of weights read per decoded token / measured copy bandwidth.
Writes a Markdown report (default BENCHMARKS.md) with the machine and versions. `make bench` runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workload(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(prompt_tokens, output_tokens) pairs with ShareGPT-like long tails (lognormal), seeded."""
    rng = random.Random(seed)
    return [(min(1024, max(8, int(rng.lognormvariate(4.5, 0.8)))), min(256, max(16, int(rng.lognormvariate(4.3, 0.6)))))
            for _ in range(n)]


def prompt_ids(tok_encode, n_tokens: int, salt: int = 0) -> list[int]:
    words = ("the quick brown fox jumps over a lazy dog while seven wise owls watch quietly " * 400).split()
    rng = random.Random(salt)
    rng.shuffle(words)
    ids = tok_encode(" ".join(words))
    return ids[:n_tokens]


# ---- one system per subprocess --------------------------------------------------------------


def run_herd(args) -> dict:
    import torch

    from herd.engine.engine import LLM
    from herd.engine.request import SamplingParams

    kw = {}
    if args.quantize != "none":
        kw["quantize"] = args.quantize
    llm = LLM(args.model, device="cpu", dtype=torch.float32, **kw)
    enc = llm.tokenizer.encode

    def gen(prompts, outs):
        params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for o in outs]
        return llm.generate(prompts, params, use_tqdm=False)

    return measure(gen, enc, args)


def run_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from herd import hub
    from herd.tokenizer.tokenizer import load_tokenizer

    path = hub.smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    enc = load_tokenizer(path).encode

    def gen(prompts, outs):
        for p, o in zip(prompts, outs):
            with torch.no_grad():
                model.generate(torch.tensor([p]), max_new_tokens=o, min_new_tokens=o, do_sample=False,
                               pad_token_id=0)

    return measure(gen, enc, args)


def run_llamacpp(args) -> dict:
    from llama_cpp import Llama

    from herd import hub

    llm = Llama(model_path=str(hub.smollm2_gguf_path()), n_ctx=4096, n_threads=os.cpu_count(), n_batch=512,
                verbose=False)

    def enc(text):
        return llm.tokenize(text.encode(), add_bos=False, special=False)

    def gen(prompts, outs):
        for p, o in zip(prompts, outs):
            llm.reset()
            n = 0
            for tok in llm.generate(p, temp=0.0, reset=True):
                n += 1
                if n >= o:
                    break

    return measure(gen, enc, args)


def measure(gen, enc, args) -> dict:
    """The same measurements for every system, through its gen(prompts, outs)."""
    res: dict = {}
    p16 = prompt_ids(enc, 16)
    gen([p16], [4])  # warm-up
    t0 = time.perf_counter()
    gen([p16], [1])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen([p16], [args.decode_tokens])
    total = time.perf_counter() - t0
    res["decode_tok_s"] = (args.decode_tokens - 1) / (total - first)
    for n in (128, 2048):
        p = prompt_ids(enc, n, salt=n)
        t0 = time.perf_counter()
        gen([p], [1])
        res[f"ttft_{n}_ms"] = (time.perf_counter() - t0) * 1e3
    for conc in args.concurrency:
        work = workload(conc, seed=conc)
        prompts = [prompt_ids(enc, pl, salt=i) for i, (pl, _) in enumerate(work)]
        outs = [o for _, o in work]
        t0 = time.perf_counter()
        gen(prompts, outs)
        res[f"throughput_{conc}_tok_s"] = sum(outs) / (time.perf_counter() - t0)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def bandwidth_gbs() -> float:
    """Read+write bandwidth of a large tensor copy with torch's threads (what decode streams at)."""
    import torch

    a = torch.ones(256 * 2**20 // 4)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        b.copy_(a)
    return 2 * a.numel() * 4 * reps / (time.perf_counter() - t0) / 1e9


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = [f"Python {platform.python_version()}"]
    for pkg in ("llama-herd", "torch", "transformers", "llama-cpp-python", "gguf"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def report(results: dict[str, dict], bw: float, weight_bytes: dict[str, float], args) -> str:
    systems = list(results)
    rows = [("batch-1 decode (tok/s)", "decode_tok_s", "{:.1f}"), ("TTFT, 128-token prompt (ms)", "ttft_128_ms", "{:.0f}"),
            ("TTFT, 2048-token prompt (ms)", "ttft_2048_ms", "{:.0f}")]
    rows += [(f"throughput, {c} requests (out tok/s)", f"throughput_{c}_tok_s", "{:.1f}") for c in args.concurrency]
    rows += [("peak RSS (MB)", "peak_rss_mb", "{:.0f}")]
    lines = ["| metric | " + " | ".join(systems) + " | herd / transformers | herd / llama.cpp |",
             "|---|" + "---|" * (len(systems) + 2)]
    for label, key, fmt in rows:
        vals = [results[s].get(key) for s in systems]
        cells = [fmt.format(v) if isinstance(v, (int, float)) else "n/a" for v in vals]
        ratios = []
        for other in ("transformers", "llama.cpp"):
            h, o = results.get("herd", {}).get(key), results.get(other, {}).get(key)
            if isinstance(h, (int, float)) and isinstance(o, (int, float)) and o:
                better_low = key.startswith(("ttft", "peak"))
                ratios.append(f"{(o / h if better_low else h / o):.2f}x")
            else:
                ratios.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    bound_lines = []
    for s in systems:
        wb = weight_bytes.get(s)
        tps = results[s].get("decode_tok_s")
        if wb and tps:
            bound = bw * 1e9 / wb
            bound_lines.append(f"- {s}: {wb / 1e6:.0f} MB of weights read per token → bound {bound:.0f} tok/s; "
                               f"measured {tps:.1f} tok/s = **{100 * tps / bound:.0f}%** of the bound")
    return "\n".join([
        "## Results", "",
        f"Machine: {machine()}  ",
        f"Versions: {versions()}  ",
        f"Model: SmolLM2-135M-Instruct, the same GGUF (Q4_1) for all three; herd and transformers dequantize it "
        f"to fp32 ({'herd weights: ' + args.quantize if args.quantize != 'none' else 'herd fp32'}), llama.cpp "
        f"runs Q4_1 natively. Greedy, EOS ignored; {args.decode_tokens} decode tokens; ratios are higher-is-better "
        f"for herd (for TTFT and RSS: other / herd).", "",
        *lines, "",
        f"Memory bandwidth (torch tensor copy, read + write): **{bw:.1f} GB/s**.", "",
        *bound_lines, "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--systems", default="herd,transformers,llama.cpp")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--quantize", default="none", help="herd weight quantization (none, int8, int4)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="report file ('-' for stdout only)")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: run one system, print JSON
    args = ap.parse_args()
    runners = {"herd": run_herd, "transformers": run_hf, "llama.cpp": run_llamacpp}
    if args.only:
        print(json.dumps(runners[args.only](args)))
        return 0
    results: dict[str, dict] = {}
    for name in args.systems.split(","):
        cmd = [sys.executable, __file__, "--only", name, "--decode-tokens", str(args.decode_tokens),
               "--concurrency", ",".join(map(str, args.concurrency)), "--quantize", args.quantize, "--model", args.model]
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"[bench] {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            results[name] = {}
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[bench] {name}: {results[name]}", file=sys.stderr, flush=True)
    from herd import hub
    from herd.model.weights import load_model

    fp32_bytes = sum(p.numel() * 4 for p in load_model(hub.smollm2_gguf_path()).parameters())
    q41_bytes = hub.smollm2_gguf_path().stat().st_size
    weights = {"herd": fp32_bytes if args.quantize == "none" else None, "transformers": fp32_bytes,
               "llama.cpp": q41_bytes}
    text = report(results, bandwidth_gbs(), weights, args)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
