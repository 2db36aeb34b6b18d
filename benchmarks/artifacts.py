"""The same weights in every system's format, written once into a cache directory.

- HF checkpoint (safetensors + config.json) of herd's fp32 weights, for transformers;
- GGUF F32 (the SmolLM2 Q4_1/Q8_0 file dequantized, metadata and vocab copied), and from it
  with llama.cpp's own quantizer: BF16 and Q8_0. The shipped Q4_1 file is used as it is.

herd's fp32 weights are that Q4_1 file dequantized, so every format holds the same numbers up
to its own rounding (BF16, Q8_0); herd's int4 re-packs the Q4_1 blocks losslessly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def hf_checkpoint(cache: Path) -> Path:
    """herd's fp32 SmolLM2 weights as a Hugging Face checkpoint directory."""
    out = cache / "smollm2-hf"
    if (out / "config.json").exists():
        return out
    from herd import hub
    from herd.model.weights import save_hf

    model, _ = hub.load("smollm2-135m-instruct", device="cpu", dtype=None)
    save_hf(model, model.args, out)
    return out


def gguf_f32(src: Path, dst: Path) -> Path:
    """Copy a GGUF file with every tensor dequantized to F32 (metadata and vocab unchanged)."""
    if dst.exists():
        return dst
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".tmp")
    writer = GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        data = np.ascontiguousarray(dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32))
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return dst


def gguf_quantized(f32: Path, dst: Path, ftype_name: str) -> Path:
    """llama.cpp's own quantizer: F32 GGUF -> LLAMA_FTYPE_MOSTLY_<ftype_name> (Q8_0, BF16, ...)."""
    if dst.exists():
        return dst
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.nthread = 2
    tmp = dst.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {ftype_name} failed ({rc})")
    tmp.rename(dst)
    return dst


def gguf_files(cache: Path) -> dict[str, Path]:
    """{"Q4_1": shipped file, "F32": ..., "BF16": ..., "Q8_0": ...}."""
    from herd.hub import smollm2_gguf_path

    q41 = smollm2_gguf_path()
    f32 = gguf_f32(q41, cache / "smollm2-f32.gguf")
    return {
        "Q4_1": q41,
        "F32": f32,
        "BF16": gguf_quantized(f32, cache / "smollm2-bf16.gguf", "BF16"),
        "Q8_0": gguf_quantized(f32, cache / "smollm2-q8_0.gguf", "Q8_0"),
    }


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of 2-D tensors (the matrices decode streams each token; SmolLM2's head is tied)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors if len(t.shape) > 1)
