"""Weight-only int8 / int4 quantization as module swaps, applied from outside the model.

    model = quantize_model(model, "int8")   # every nn.Linear -> Int8Linear (in place)

Decode reads every weight once per token, so it is bound by memory bandwidth: int8 weights
read 4x fewer bytes than fp32, int4 (Q4_1 style) about 6x. Activations keep the model's dtype.
For a few activation rows (decode) the layers call herd's CPU kernels (`cpu_kernels`; with
AVX512-VNNI they take the activations as 16-bit fixed point per group of 32 and use integer
dot products, as accurate as fp32 activations on SmolLM2's logits). PyTorch's own weight-only
CPU kernels (`aten._weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, what gpt-fast uses)
were 2-4x slower than the fp32 GEMV on the benchmark machine. For many rows (prefill, big
batches), and on other devices, a layer dequantizes its weights for the dense GEMM.

Under "int4" the output head is int8 (as GGUF files keep the embedding / head at 8 bits):
its logits are the most sensitive to rounding. Tied embeddings stay in the model's dtype for
the lookup, which reads one row per token.

Every format here rounds each weight row on its own, so stacking projections by rows
(`concat_rows`, what fuse_model does to q|k|v and gate|up) gives the same numbers whether it
happens before or after quantizing. Quantizing what is already quantized keeps those layers
(so a model can be quantized part by part), but only in the same mode: another is an error.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from herd.errors import HerdError
from herd.model import cpu_kernels
from herd.model.cpu_kernels import Projection

Mode = Literal["none", "bf16", "int8", "int4"]
MODES: tuple[str, ...] = ("none", "bf16", "int8", "int4")
# above this many activation rows (prefill, big batches) an fp32 / bf16 layer uses the library
# GEMM, which wins there (measured on SmolLM2's layers: herd's kernel is faster up to ~48 rows)
DENSE_ROWS = 48
# the same for int8 / int4 layers with the VNNI kernels, whose alternative is dequantizing the
# whole matrix for the GEMM: the kernel wins up to ~128 rows for int8 and ~300 for int4
# (SmolLM2's layers); without VNNI (fp32 activations, weights widened) DENSE_ROWS
PACKED_ROWS = 128


def _kernel(layer: nn.Module, x: torch.Tensor):
    """herd's kernel for this call, or None for the PyTorch path: few rows on the CPU, and no
    autograd (the kernels have no backward; the engine runs under inference_mode)."""
    if layer.kernel is None or torch.is_grad_enabled() or not x.is_cpu:
        return None
    return layer.kernel if x.numel() <= layer.max_rows * layer.in_features else None


def _kernels_for(weight: torch.Tensor):
    """herd's kernels for layers holding `weight` (cpu_kernels.ops_for decides), or None."""
    return cpu_kernels.ops_for(weight.device)


def _run(kernel, x: torch.Tensor, n: int, *weights: torch.Tensor) -> torch.Tensor:
    """kernel(x, *weights) over the last dim of x, for any leading shape (also no rows at all:
    a prefill chunk that samples nothing asks the head for zero rows)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x.dtype is not torch.float32:  # the kernels take fp32 activations
        return kernel(x2.float().contiguous(), *weights).to(x.dtype).view(*x.shape[:-1], n)
    return kernel(x2.contiguous(), *weights).view(*x.shape[:-1], n)


class DenseLinear(nn.Module):
    """An fp32 / bf16 Linear (no bias) whose few-row products use herd's CPU GEMV kernel: the
    library GEMV streamed weights at a third of the memory bandwidth on the benchmark machine.
    With bf16 weights on a CPU with AVX512-BF16 the kernel rounds the activations to bf16 for
    the product (vdpbf16ps, sums in fp32), as a bf16 GEMM does; elsewhere it widens the weights.
    Shares the original weight tensor (no copy)."""

    quantized_as: str | None = None  # the quantize_model mode that made it

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        ops = _kernels_for(weight)
        ok = weight.dtype in (torch.float32, torch.bfloat16) and weight.is_contiguous() and ops is not None
        self.kernel = ops.dense_mm if ok else None
        self.max_rows = DENSE_ROWS

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> DenseLinear:
        return cls(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = _kernel(self, x)
        if kernel is not None:
            return _run(kernel, x, self.out_features, self.weight)
        # many rows: the library GEMM in the weights' dtype (bf16 weights: a bf16 GEMM)
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}"


class _PackedLinear(nn.Module):
    """A weight-only quantized Linear: herd's kernel on its packed tensors for few rows on the
    CPU, else the dense GEMM on the dequantized weights."""

    FORMAT: int  # as cpu_kernels.Projection numbers them: 1 int8, 2 int4
    quantized_as: str | None = None  # the quantize_model mode that made it

    @property
    def max_rows(self) -> int:  # a property: cpu_kernels.int8_activations() can switch per process
        return PACKED_ROWS if self.kernels and self.vnni() and cpu_kernels.int8_activations() else DENSE_ROWS

    def vnni(self) -> bool:
        """Whether this layer's kernel has a VNNI path (int8: groups of 32)."""
        return True

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = _kernel(self, x)
        if kernel is not None:
            return _run(kernel, x, self.out_features, *self.packed())
        return F.linear(x, self.dequantize(x.dtype))


class Int8Linear(_PackedLinear):
    """Symmetric int8 weights with an fp16 scale per group of 32 along the input dim (GGUF
    Q8_0's numbers: w = q * d, q in -127..127); one group per row when 32 does not divide it."""

    GROUP = 32
    FORMAT = 1

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = self.in_features // scales.shape[1]
        self.register_buffer("weight", weight)  # (N, K) int8
        self.register_buffer("scales", scales)  # (N, K / group_size) fp16
        ops = _kernels_for(weight)  # decided once, not per call
        self.kernels = ops is not None
        self._dequant = ops.int8_dequant if ops is not None else None
        self.kernel = ops.int8_mm if ops is not None and self.group_size % 16 == 0 else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        n, k = w.shape
        gs = cls.GROUP if k % cls.GROUP == 0 else k
        wg = w.view(n, k // gs, gs)
        d = (wg.abs().amax(dim=-1) / 127.0).half()  # rounded first: q is computed against it
        q = torch.round(wg / d.float().clamp(min=1e-12)[..., None]).clamp(-127, 127).to(torch.int8)
        return cls(q.view(n, k).contiguous(), d.contiguous())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self._dequant is not None and self.weight.device.type == "cpu":
            return self._dequant(self.weight, self.scales).to(dtype)
        n, k = self.out_features, self.in_features
        w = self.weight.view(n, -1, self.group_size).float() * self.scales.float()[..., None]
        return w.view(n, k).to(dtype)

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight, self.scales

    def vnni(self) -> bool:
        return self.group_size == 32

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class Int4Linear(_PackedLinear):
    """Asymmetric int4 weights in groups of 32 along the input dim, GGUF Q4_1's numbers and
    layout: per group 16 bytes (element j in the low nibble of byte j, element j+16 in the high
    nibble) and an fp16 (scale d, minimum m); w = q * d + m with q in 0..15."""

    GROUP = 32
    FORMAT = 2

    def __init__(self, weight: torch.Tensor, scale_min: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape[0], weight.shape[1] * 2
        self.register_buffer("weight", weight)  # (N, K/2) uint8
        self.register_buffer("scale_min", scale_min)  # (N, K/32, 2) fp16
        ops = _kernels_for(weight)
        self.kernels = ops is not None
        self._dequant = ops.int4_dequant if ops is not None else None
        self.kernel = ops.int4_mm if ops is not None else None

    @classmethod
    def supports(cls, linear: nn.Linear) -> bool:
        return linear.in_features % cls.GROUP == 0

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int4Linear:
        w = linear.weight.detach().float()
        n, k = w.shape
        wg = w.view(n, k // cls.GROUP, cls.GROUP)
        lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)  # (N, G)
        d = ((hi - lo) / 15.0).half()
        m = lo.half()  # rounded first, so q is computed against the scale and minimum kept
        df = d.float().clamp(min=1e-12)
        q = torch.round((wg - m.float()[..., None]) / df[..., None]).clamp(0, 15).to(torch.uint8)
        packed = q[..., :16] | (q[..., 16:] << 4)  # (N, G, 16)
        return cls(packed.reshape(n, k // 2).contiguous(), torch.stack([d, m], dim=-1).contiguous())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self._dequant is not None and self.weight.device.type == "cpu":
            return self._dequant(self.weight, self.scale_min).to(dtype)
        n, k = self.out_features, self.in_features
        b = self.weight.view(n, k // self.GROUP, 16)
        q = torch.cat([b & 15, b >> 4], dim=-1).float()  # (N, G, 32)
        dm = self.scale_min.float()
        return (q * dm[..., :1] + dm[..., 1:]).view(n, k).to(dtype)

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight, self.scale_min

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.GROUP}"


def kernel_args(layer: nn.Module) -> Projection | None:
    """The projection as herd's kernels take it (format 0 dense, 1 int8, 2 int4: see
    cpu_kernels.Projection), or None when its decode does not run a kernel."""
    if getattr(layer, "kernel", None) is None:
        return None
    if isinstance(layer, DenseLinear):
        return Projection(0, layer.weight, layer.weight)
    if isinstance(layer, _PackedLinear):
        return Projection(layer.FORMAT, *layer.packed())
    return None


def concat_rows(*layers: nn.Module) -> nn.Module:
    """One projection whose output is the given ones' side by side (their weights stacked by
    rows), in the format they share: exact for every format here (each rounds a row on its own)."""
    kind = type(layers[0])
    if any(type(m) is not kind for m in layers):
        raise HerdError(f"cannot fuse projections of different kinds: {', '.join(type(m).__name__ for m in layers)}")
    out: nn.Module | None = None
    if kind is Int8Linear:
        if len({m.group_size for m in layers}) != 1:
            raise HerdError("cannot fuse int8 projections with different group sizes")
        out = Int8Linear(torch.cat([m.weight for m in layers]), torch.cat([m.scales for m in layers]))
    elif kind is Int4Linear:
        out = Int4Linear(torch.cat([m.weight for m in layers]), torch.cat([m.scale_min for m in layers]))
    elif kind is DenseLinear:
        out = DenseLinear(torch.cat([m.weight.detach() for m in layers]))
    if out is not None:
        out.quantized_as = layers[0].quantized_as
        return out
    if kind is nn.Linear and all(m.bias is None for m in layers):
        w = torch.cat([m.weight.detach() for m in layers])
        out = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        out.weight = nn.Parameter(w, requires_grad=False)
        return out
    raise HerdError(f"cannot fuse {kind.__name__} projections (bias-free nn.Linear or herd's quantized layers)")


def _swap(model: nn.Module, make) -> int:
    """Replace every nn.Linear child that `make(name, linear)` maps to a module; returns the count."""
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                full = f"{parent_name}.{name}" if parent_name else name
                new = make(full, child)
                if new is not None:
                    setattr(parent, name, new)
                    count += 1
    return count


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Swap the model's nn.Linear layers, in place; returns the model.

    "bf16": bf16 weights with the model's activations between layers (fp32 on the CPU): decode
    streams half the bytes; the products round activations to bf16 where the CPU has
    AVX512-BF16, else widen the weights. "int8": Q8_0-style int8 weights. "int4": Q4_1-style
    int4 (groups of 32; a layer whose input width is not a multiple of 32 stays int8) with the
    output head int8. "none": weights as
    they are, but on a CPU with herd's kernels built the few-row products use its GEMV
    (DenseLinear). Embeddings, norms and everything else are left as they are.

    Before or after fuse_model, the same model. Layers already quantized in this mode are kept
    (a model can be quantized part by part, as hub.load does block by block); in another mode,
    a HerdError.
    """
    if mode not in MODES:
        raise HerdError(f"unknown quantization {mode!r}; choose from {', '.join(MODES)}")
    for name, m in model.named_modules():
        if isinstance(m, (DenseLinear, _PackedLinear)) and m.quantized_as not in (None, mode):
            raise HerdError(f"{name} is already quantized as {m.quantized_as!r}, not {mode!r}: "
                            "quantize the floating-point model")

    def make(name: str, linear: nn.Linear) -> nn.Module | None:
        if linear.bias is not None:
            raise HerdError(f"{name}: weight-only quantization here is for bias-free Linear layers")
        if not linear.weight.is_floating_point():
            raise HerdError(f"{name}: expected floating-point weights, got {linear.weight.dtype}")
        if mode == "bf16":  # weight-only: bf16 weights (half the bytes), activations as they are
            return DenseLinear(linear.weight.detach().to(torch.bfloat16))
        if mode == "none":
            ok = linear.weight.dtype in (torch.float32, torch.bfloat16) and _kernels_for(linear.weight) is not None
            return DenseLinear.from_linear(linear) if ok else None
        if mode == "int4" and name != "output" and Int4Linear.supports(linear):
            return Int4Linear.from_linear(linear)
        return Int8Linear.from_linear(linear)

    def tagged(name: str, linear: nn.Linear) -> nn.Module | None:
        new = make(name, linear)
        if new is not None:
            new.quantized_as = mode
        return new

    _swap(model, tagged)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of projection weights one decode step reads (every Linear-like layer once)."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, DenseLinear)):
            total += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, _PackedLinear):
            total += sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
    return total
