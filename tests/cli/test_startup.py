"""A newcomer's first minutes: cheap commands stay torch-free, a model that cannot fit is refused
in one line before anything is allocated, a GPU torch cannot use is one line, and the memory
estimate's weight sizes are what loading really takes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from herd import hub
from herd.config import ModelArgs, format_bytes, weight_bytes


def herd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=full, check=False)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# runs main() in a fresh interpreter and reports what it cost: exit code, seconds from before
# `import herd` to the end, peak RSS, and whether torch was imported
PROBE = """
import json, sys, time
t0 = time.perf_counter()
from herd.cli.main import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
seconds = time.perf_counter() - t0
# VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's, kept across exec)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": seconds, "torch": "torch" in sys.modules, "maxrss_mb": hwm / 1024}),
      file=sys.stderr)
"""


def probe(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TQDM_DISABLE": "1"}, check=False)
    return json.loads(r.stderr.strip().splitlines()[-1])


def test_cheap_commands_do_not_import_torch(tmp_path: Path) -> None:
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    for argv in (["--help"], ["generate", "--help"], ["models"], ["prompt", "--messages", str(msgs)],
                 ["prompt", "--model", "random:llama3.1-8b", "--messages", str(msgs)],
                 ["shield", "--shield", "llama-guard", "--text", "hi", "--show-prompt"]):
        out = probe(*argv)
        assert out["rc"] == 0 and not out["torch"], (argv, out)


def test_help_names_every_command() -> None:
    r = herd("--help")
    assert r.returncode == 0
    summary = r.stdout.split("positional arguments")[0].lower()
    for word in ("generate", "chat", "serve", "shield", "pull"):
        assert word in summary, summary
    for cmd in ("generate", "chat", "prompt", "models", "shield", "serve", "pull"):
        assert f"    {cmd} " in r.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="free memory is read from /proc/meminfo")
def test_405b_is_refused_in_one_line_within_a_second() -> None:
    r = herd("generate", "--model", "random:llama3.1-405b", "--prompt", "hi")
    line = assert_one_line_error(r, "random:llama3.1-405b needs", "of weights in float32", "free",
                                 "--quantize int4")
    assert "TiB" in line
    out = probe("generate", "--model", "random:llama3.1-405b", "--prompt", "hi", "--device", "cpu")
    assert out["rc"] == 2 and out["seconds"] < 1.0 and not out["torch"], out  # nothing allocated
    assert out["maxrss_mb"] < 150, out


def test_refusal_says_what_would_fit(monkeypatch) -> None:
    from herd.errors import HerdError

    monkeypatch.setattr(hub, "free_memory", lambda kind, device=None: (20 * 2**30, "free"))
    ref = hub.resolve("random:llama3.1-8b")
    with pytest.raises(HerdError) as e:
        hub.check_memory(ref, device="cpu")
    msg = str(e.value)
    assert "random:llama3.1-8b needs" in msg and "but 20 GiB is free" in msg
    assert "what would fit: --quantize int8" in msg and "--quantize int4" in msg
    assert hub.check_memory(ref, device="cpu", quantize="int4").fits
    from herd.config import EngineConfig

    with pytest.raises(HerdError, match=r"what would fit: --kv-cache-memory \d"):
        hub.check_memory(ref, device="cpu", quantize="int4", engine_config=EngineConfig(kv_cache_memory=30 * 2**30))
    monkeypatch.setenv("HERD_NO_MEMORY_CHECK", "1")
    assert hub.check_memory(ref, device="cpu").fits


@pytest.mark.skipif(torch.cuda.is_available() or torch.version.cuda is not None, reason="needs a CPU-only torch")
def test_device_cuda_on_a_cpu_torch_is_one_line() -> None:
    assert_one_line_error(herd("generate", "--prompt", "hi", "--device", "cuda"), "'cuda'", "CPU-only",
                          "--device cpu")
    assert_one_line_error(herd("generate", "--model", "random:llama3.2-1b", "--prompt", "hi", "--device", "cuda:1"),
                          "CPU-only")


def test_unknown_device_is_one_line() -> None:
    assert_one_line_error(herd("generate", "--prompt", "hi", "--device", "tpu9"), "unknown device 'tpu9'")


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (512, 1536, 3 * 2**30, 1.5 * 2**40)] == ["512 B", "1.5 KiB", "3 GiB", "1.5 TiB"]


TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=200, hidden_dim=96, max_seq_len=256)


def _storage_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("mode", [None, "none", "bf16", "int8", "int4"])
def test_weight_bytes_is_what_loading_takes(mode, tie) -> None:
    args = TINY.replace(tie_embeddings=tie)
    hook = hub.block_hook(mode) if mode is not None else None
    model = hub.random_model(args, dtype=torch.float32, device=torch.device("cpu"), on_block=hook)
    if mode is not None:
        from herd.model.fused import fuse_model
        from herd.model.quantize import quantize_model

        quantize_model(fuse_model(model), mode)
    assert _storage_bytes(model) == weight_bytes(args, "float32", mode)


def test_random_model_fills_part_by_part_as_before() -> None:
    """The per-part fill draws the same numbers as filling the whole model in parameter order."""
    from herd.model.weights import empty_model

    gen = torch.Generator().manual_seed(7)
    ref = empty_model(TINY).to_empty(device="cpu")
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                std = 0.02 if p.dim() > 1 else 1.0
                for row in p.view(p.shape[0], -1).split(4096):
                    row.copy_(torch.randn(row.shape, generator=gen) * std)
    got = hub.random_model(TINY, dtype=torch.float32, device=torch.device("cpu"), seed=7)
    want = ref.state_dict()
    for k, v in got.state_dict().items():
        assert torch.equal(v, want[k]), k


@pytest.mark.parametrize("mode", ["none", "int4"])
def test_quantizing_block_by_block_while_loading_equals_after(tmp_path: Path, mode: str) -> None:
    from herd.model.fused import fuse_model
    from herd.model.quantize import quantize_model
    from herd.model.weights import load_model, save_hf

    src = hub.random_model(TINY.replace(vocab_size=256), dtype=torch.float32, device=torch.device("cpu"), seed=3)
    save_hf(src, src.args, tmp_path)
    streamed = load_model(tmp_path, on_block=hub.block_hook(mode))
    quantize_model(fuse_model(streamed), mode)
    after = quantize_model(fuse_model(load_model(tmp_path)), mode)
    a, b = streamed.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
