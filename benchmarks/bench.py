"""herd vs HF transformers generate() vs llama.cpp, side by side in one run; writes BENCHMARKS.md.

    make bench                                   # installs llama-cpp-python if missing, then this
    .venv/bin/python benchmarks/bench.py         # full run (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick # fewer tokens and trials, for a smoke test

Same weights everywhere: SmolLM2-135M-Instruct from the GGUF that herd ships (Q4_1 blocks,
Q8_0 embedding), dequantized by herd to fp32; the HF checkpoint is that fp32 model saved by
herd; the llama.cpp files are the shipped Q4_1 GGUF and an F32 copy requantized by llama.cpp
itself to BF16 and Q8_0 (benchmarks/artifacts.py). Each system x precision runs in its own
process (clean peak RSS, no thread-pool interference), all with the same thread count.
Measured: batch-1 decode (median per-token time), time to first token for 128- and
2048-token prompts, aggregate throughput over a seeded ShareGPT-like mix at 1/8/32
concurrent requests (herd; HF and llama.cpp run requests one after another), peak RSS, and
the memory bandwidth of this machine in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

# (system, precision); precision labels follow each system's own names
CONFIGS = [
    ("membw", "-"),
    ("herd", "fp32"), ("herd", "bf16"), ("herd", "int8"), ("herd", "int4"), ("herd", "fp32-torch"),
    ("herd", "bf16-all"),
    ("hf", "fp32"), ("hf", "bf16"),
    ("llama.cpp", "F32"), ("llama.cpp", "BF16"), ("llama.cpp", "Q8_0"), ("llama.cpp", "Q4_1"),
]
# comparable precisions: (label, herd, HF or None, llama.cpp)
# the systems whose batch-1 decode is measured again side by side, one precision at a time
DECODE_GROUPS = [
    ["herd:fp32", "herd:fp32-torch", "hf:fp32", "llama.cpp:F32"],
    ["herd:bf16", "herd:bf16-all", "hf:bf16", "llama.cpp:BF16"],
    ["herd:int8", "llama.cpp:Q8_0"], ["herd:int4", "llama.cpp:Q4_1"],
]
CACHE = Path(os.environ.get("HERD_BENCH_CACHE", Path.home() / ".cache" / "herd-bench"))


# ---- workers (one process per configuration) ---------------------------------------------


def median_seconds(f, n: int = 7) -> float:
    """Median wall time of n calls of f."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def membw(threads: int) -> dict:
    """Read bandwidth: a 1 GiB fp32 sum (PyTorch) and herd's fp32 GEMV over 512 MiB; GB/s."""
    import torch

    from herd.model import cpu_kernels

    torch.set_num_threads(threads)

    a = torch.ones(1 << 28)  # 1 GiB
    out = {"torch_sum_1GiB": a.numel() * 4 / median_seconds(a.sum) / 1e9}
    w = a[: 1 << 27].view(-1, 1024)
    x = torch.randn(1, 1024)
    out["torch_gemv_512MiB"] = w.numel() * 4 / median_seconds(lambda: x @ w.t()) / 1e9
    if cpu_kernels.available():
        out["herd_gemv_512MiB"] = w.numel() * 4 / median_seconds(lambda: cpu_kernels.kernel("dense_mm")(x, w)) / 1e9
    out["bandwidth"] = max(out.values())
    return out


def make_system(system: str, precision: str, threads: int):
    from systems import HF, Herd, LlamaCpp

    if system == "herd":
        return Herd(precision, threads)
    if system == "hf":
        from artifacts import hf_checkpoint

        return HF(precision, threads, hf_checkpoint(CACHE))
    from artifacts import gguf_files

    return LlamaCpp(precision, threads, gguf_files(CACHE)[precision])


def measure(system: str, precision: str, spec: dict) -> dict:
    from systems import median_rate
    from workload import make_workload, random_prompt

    threads = spec["threads"]
    if system == "membw":
        return membw(threads)
    t0 = time.perf_counter()
    sysm = make_system(system, precision, threads)
    res: dict = {"load_s": time.perf_counter() - t0, "weight_bytes": sysm.weight_bytes}
    n = spec["decode_tokens"]
    times: list[float] = []
    for trial in range(spec["decode_trials"]):
        times += sysm.decode(random_prompt(128, seed=100 + trial), n)
    res["decode_tok_s"] = median_rate(times)
    res["decode_ms"] = 1e3 * statistics.median(times)
    for plen, trials in ((128, spec["ttft_trials"]), (2048, spec["ttft_trials_long"])):
        ts = [sysm.ttft(random_prompt(plen, seed=1000 * plen + t)) for t in range(trials)]
        res[f"ttft_{plen}_s"] = statistics.median(ts)
    reqs = make_workload(spec["workload_n"], seed=spec["seed"], scale=spec["workload_scale"])
    conc = spec["concurrency"].get(f"{system}:{precision}", [])
    for c in conc:
        if c == 1 and system != "herd":
            sub = reqs[: spec["sequential_n"]]  # one at a time: a rate, measured on a prefix
        else:
            sub = reqs
        tokens, secs = sysm.run(sub, c)
        res[f"tput_{c}"] = {"tokens": tokens, "seconds": secs, "tok_s": tokens / secs, "requests": len(sub)}
    if system == "herd" and spec["profile"]:
        res["profile_ms"] = sysm.profile_decode(random_prompt(128, seed=7))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def worker_main(argv: list[str]) -> None:
    system, precision, spec = argv[0], argv[1], json.loads(argv[2])
    print("RESULT " + json.dumps(measure(system, precision, spec)), flush=True)


def decode_server_main(argv: list[str]) -> None:
    """A loaded system that decodes on demand: one line with a prompt seed in, one line of
    per-token seconds out (the interleaved batch-1 measurement)."""
    from workload import random_prompt

    system, precision, spec = argv[0], argv[1], json.loads(argv[2])
    if system == "membw":  # read bandwidth between the decode rounds: one GB/s figure per request
        import torch

        torch.set_num_threads(spec["threads"])
        a = torch.ones(1 << 28)  # 1 GiB
        print("READY", flush=True)
        for _ in sys.stdin:
            print("TIMES " + json.dumps([a.numel() * 4 / median_seconds(a.sum, 5) / 1e9]), flush=True)
        return
    sysm = make_system(system, precision, spec["threads"])
    print("READY", flush=True)
    for line in sys.stdin:
        times = sysm.decode(random_prompt(128, seed=int(line)), spec["decode_tokens"])
        print("TIMES " + json.dumps(times), flush=True)


def interleaved_decode(keys: list[str], spec: dict, log) -> dict[str, list[float]]:
    """Batch-1 decode of several systems kept loaded side by side and measured in turn, round
    after round (each round in a rotated order): drift of a shared machine's speed over the
    minutes of a run then hits every system alike, and the ratios stay fair."""
    procs = {}
    for key in keys:
        system, precision = key.split(":", 1)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--decode-server", system, precision, json.dumps(spec)]
        procs[key] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)

    def reply(proc, prefix: str) -> str | None:
        for line in proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
        return None

    ready = [k for k, p in procs.items() if reply(p, "READY") is not None]
    times: dict[str, list[float]] = {k: [] for k in ready}
    try:
        for r in range(spec["decode_rounds"]):
            for key in ready[r % len(ready):] + ready[: r % len(ready)]:
                time.sleep(0.5)  # let the previous system's threads go idle
                procs[key].stdin.write(f"{100 + r}\n")
                procs[key].stdin.flush()
                out = reply(procs[key], "TIMES ")
                if out is not None:
                    times[key] += json.loads(out)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    return {k: t for k, t in times.items() if t}


# ---- the run -----------------------------------------------------------------------------


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "?").strip()
        info["cpus"] = fields.get("CPU(s)", "?").strip()
        info["l3"] = fields.get("L3 cache", "?").strip()
        flags = fields.get("Flags", "")
        info["simd"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags.split())
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        info["ram_gb"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "transformers", "llama_cpp_python", "gguf", "llama-herd"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def run_config(system: str, precision: str, spec: dict, log) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, precision, json.dumps(spec)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    log.write(f"== {system} {precision} ({time.time() - t0:.0f}s, rc={proc.returncode})\n{proc.stderr[-4000:]}\n")
    log.flush()
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {system} {precision}: failed (rc={proc.returncode}); see the log", file=sys.stderr)
    return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--decode-server":
        decode_server_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tokens and trials (a smoke test)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="", help="comma list of system:precision to run (e.g. herd:int4,llama.cpp:Q4_1)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--json", default=str(HERE / "results.json"))
    ap.add_argument("--log", default=str(CACHE / "bench.log"))
    a = ap.parse_args()
    spec = {
        "threads": a.threads, "seed": 0,
        "decode_tokens": 32 if a.quick else 128, "decode_trials": 1 if a.quick else 3,
        "decode_rounds": 2 if a.quick else 5,
        "ttft_trials": 1 if a.quick else 3, "ttft_trials_long": 1 if a.quick else 2,
        "workload_n": 8 if a.quick else 32, "workload_scale": 0.25 if a.quick else 0.5,
        "sequential_n": 4 if a.quick else 8, "profile": True,
        "concurrency": {"herd:fp32": [1, 8, 32], "herd:bf16": [1, 8, 32], "herd:int8": [32], "herd:int4": [1, 8, 32],
                        "hf:fp32": [1], "hf:bf16": [1], "llama.cpp:F32": [1], "llama.cpp:BF16": [1],
                        "llama.cpp:Q4_1": [1]},
    }
    only = {tuple(x.split(":", 1)) for x in a.only.split(",") if x}
    CACHE.mkdir(parents=True, exist_ok=True)
    from artifacts import gguf_files, hf_checkpoint

    hf_checkpoint(CACHE)
    try:
        gguf_files(CACHE)
    except ImportError:
        print("llama-cpp-python is not installed: `make bench` installs it", file=sys.stderr)
        raise
    results: dict = {"machine": machine(), "spec": spec, "load_before": os.getloadavg(),
                     "date": time.strftime("%Y-%m-%d %H:%M"), "runs": {}}
    with open(a.log, "w") as log:
        for system, precision in CONFIGS:
            if only and (system, precision) not in only and system != "membw":
                continue
            print(f"{system} {precision} ...", flush=True)
            r = run_config(system, precision, spec, log)
            if r is not None:
                results["runs"][f"{system}:{precision}"] = r
        # batch-1 decode again, interleaved: the systems of one precision loaded side by side
        from systems import median_rate

        bw_samples: list[float] = []
        for group in DECODE_GROUPS:
            keys = [k for k in group if k in results["runs"]]
            if len(keys) < 2:
                continue
            print(f"interleaved batch-1 decode: {', '.join(keys)} ...", flush=True)
            for key, times in interleaved_decode(keys + ["membw:-"], spec, log).items():
                if key == "membw:-":
                    bw_samples += times
                    continue
                r = results["runs"][key]
                r["decode_solo_tok_s"] = r["decode_tok_s"]
                r["decode_tok_s"], r["decode_ms"] = median_rate(times), 1e3 * statistics.median(times)
                r["decode_interleaved_tokens"] = len(times)
        if bw_samples and "membw:-" in results["runs"]:
            # the bound: the sum bandwidth read in the same rotation as the decodes it judges
            mb = results["runs"]["membw:-"]
            mb["interleaved_sum_GBps"] = bw_samples
            mb["bandwidth_at_start"] = mb["bandwidth"]
            mb["bandwidth"] = statistics.median(bw_samples)
    results["load_after"] = os.getloadavg()
    Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    from report import render

    out = Path(a.out)
    text = render(results, (HERE / "analysis.md").read_text())
    out.write_text(keep_startup(text, out.read_text() if out.is_file() else ""))
    print(f"wrote {a.out} and {a.json}")


def keep_startup(text: str, previous: str) -> str:
    """BENCHMARKS.md as rendered, with the Start-up section (benchmarks/startup.py writes it) carried over
    from the previous file, before the hand-written analysis."""
    begin, end = "<!-- startup:begin -->", "<!-- startup:end -->"
    if begin not in previous or end not in previous:
        return text
    block = previous[previous.index(begin):previous.index(end) + len(end)]
    anchor = "## Analysis"
    return text.replace(anchor, block + "\n\n" + anchor, 1) if anchor in text else text + "\n" + block + "\n"


if __name__ == "__main__":
    main()
