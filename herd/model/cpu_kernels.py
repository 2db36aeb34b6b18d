"""herd's CPU kernels for the decode step: C++ in `herd/model/csrc`, compiled on first use
(torch.utils.cpp_extension, ~30-60 s, cached under ~/.cache/torch_extensions).

Decode multiplies one activation row per sequence by every weight matrix, so it is bound by
how fast the weights stream from memory, and, for a small model, by how many operations a step
runs. Two families:

- Matrix products for few activation rows: fp32 / bf16 weights (`dense_mm`: the library GEMV
  streamed at a third of the bandwidth on the benchmark machine) and weights as GGUF stores
  them: int8 in groups with an fp16 scale (Q8_0: w = q * d), or int4 in groups of 32 (Q4_1:
  16 bytes of nibbles, element j in the low nibble of byte j and element j+16 in the high one,
  with an fp16 scale and minimum: w = q * d + m). PyTorch's own weight-only CPU kernels
  (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) ran 2-4x *slower* than the fp32 GEMV
  there (see BENCHMARKS.md). On CPUs with AVX512-VNNI the int8 / int4 products write the
  activations as 16-bit fixed point in two int8 digits per group of 32 and multiply with
  integer dot products (`int8_activations()` says whether, and switches it for A/B runs).
- Fused decode ops, each replacing several PyTorch ops: `rms_norm`, `rope`, `silu_mul`,
  `paged_decode` (attention of one query per sequence over its K/V read in place through the
  paged cache's slot lists), and `decode_layer(s)`: whole blocks from their `LayerPlan`.

AVX-512 code on CPUs that have it, plain loops elsewhere. `ops_for(device)` is the one place
the backend is chosen: these kernels, or None (PyTorch ops) off the CPU, without a C++
compiler, or under HERD_NO_CPU_KERNELS=1.

The build is named after a hash of the sources, the flags and the torch it compiles against, so
a changed kernel (or another torch) gets a fresh build and never a stale cached one.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# -fopenmp: at::parallel_for is a header template that is serial without it; the link resolves
# to the libgomp that torch ships (torch/lib), so one thread pool
_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]


def _build_name(sources: list[Path]) -> str:
    """The extension's name, the cache key of its build: a hash of the sources, where they are
    (two installs do not rebuild each other's), the flags and the torch it compiles against."""
    h = hashlib.sha256()
    for path in sources:
        h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr((_CFLAGS, _LDFLAGS, torch.__version__, os.path.dirname(torch.__file__))).encode())
    return f"herd_cpu_kernels_{h.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def _load() -> Any | None:
    """The compiled extension module, or None (no compiler, HERD_NO_CPU_KERNELS=1, ...)."""
    if os.environ.get("HERD_NO_CPU_KERNELS"):
        return None
    try:
        from torch.utils.cpp_extension import load

        # the `ninja` wheel puts its binary beside this interpreter, which need not be on PATH
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        files = sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h"))
        log.info("herd: loading its CPU kernels (compiled once, about a minute, then cached)")
        return load(name=_build_name(files), sources=[str(p) for p in files if p.suffix == ".cpp"],
                    extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS, verbose=False)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, ...: the layers fall back to PyTorch ops
        log.warning("herd: weight-only CPU kernels unavailable (%s); using slower PyTorch ops", e)
        return None


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on first call, then cached)."""
    return _load() is not None


def ops_for(device: torch.device | str) -> Any | None:
    """herd's kernels for tensors on `device` (`ops.int8_mm(...)`, ...), or None where PyTorch ops
    run instead: the one place the backend is chosen."""
    return _load() if torch.device(device).type == "cpu" else None


def kernel(name: str):
    """The kernel `name` as a plain function (fastest to call from eager code)."""
    ops = _load()
    if ops is None:
        raise RuntimeError("herd's CPU kernels are not available (see the warning logged when they were loaded)")
    return getattr(ops, name)


def int8_activations(enable: bool | None = None) -> bool:
    """Whether the int8 / int4 kernels round activations to int8 (per group of 32) and use
    AVX512-VNNI integer dot products (the default where the CPU has VNNI), or widen the weights
    to fp32 and keep fp32 activations. `enable` switches the VNNI path on or off for this
    process (for A/B measurements and tests); returns the state in effect."""
    ops = _load()
    if ops is None:
        return False
    return bool(ops.int8_activations(-1 if enable is None else int(enable)))


# ---- the plan of one block, as decode_layer takes it -------------------------------------------

FORMATS = {0: "dense", 1: "int8", 2: "int4"}


class Projection(NamedTuple):
    """A projection as the kernels take it: format 0 dense (fp32 / bf16 weight; `scales` is the
    weight again, unused), 1 int8 (Q8_0 weight, fp16 scales), 2 int4 (Q4_1 nibbles, fp16
    (scale, min) pairs)."""

    format: int
    weight: torch.Tensor
    scales: torch.Tensor


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """One transformer block as `decode_layer` runs it: built once per block (by
    `FusedBlock.plan()`), handed to C++ once as the struct `LayerPlan` (`native()`)."""

    attention_norm: torch.Tensor  # fp32 (dim,)
    ffn_norm: torch.Tensor
    eps: float  # of both norms
    n_heads: int
    n_kv_heads: int
    wqkv: Projection  # rows: q heads, k heads, v heads
    wo: Projection
    w13: Projection  # rows: gate, then up
    w2: Projection

    def __post_init__(self) -> None:
        for name in ("wqkv", "wo", "w13", "w2"):
            if getattr(self, name).format not in FORMATS:
                raise ValueError(f"LayerPlan.{name}: unknown format {getattr(self, name).format} (0 dense, 1 int8, 2 int4)")

    @functools.cached_property
    def _native(self) -> Any:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return kernel("LayerPlan")(**fields)

    def native(self) -> Any:
        """The C++ struct (built once; it holds the same tensors, not copies)."""
        return self._native

    @classmethod
    def from_native(cls, plan: Any) -> LayerPlan:
        """The Python view of a C++ `LayerPlan`."""
        fields = {name: getattr(plan, name) for name in cls.__dataclass_fields__}
        return cls(**{k: Projection(*v) if isinstance(v, tuple) else v for k, v in fields.items()})


def native_plans(plans: list[LayerPlan]) -> Any:
    """The C++ list `decode_layers` takes (built once per model, passed without a copy per call)."""
    return kernel("LayerPlans")([p.native() for p in plans])
