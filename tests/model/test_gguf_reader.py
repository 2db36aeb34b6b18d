"""herd.gguf_meta, the one GGUF header reader of the model loader and the tokenizer, against gguf-py;
herd's own dequantizers against gguf-py's (bit for bit); no import loop between tokenizer modules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from herd.errors import HerdError
from herd.gguf_meta import read_header

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from herd import hub

    path = hub.builtin_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("the default model is not downloaded (herd pull smollm2-135m-instruct)")
    return path


def _field_value(field) -> object:
    v = field.contents()
    return tuple(v) if isinstance(v, list) else v


def test_header_matches_gguf_py(smollm2: Path) -> None:
    ours, ref = read_header(smollm2), gguf.GGUFReader(smollm2)
    names = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == names
    for k in names:
        want, got = _field_value(ref.fields[k]), ours.metadata[k]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-7), k
        else:
            assert got == want, k
    assert len(ours.tensors) == len(ref.tensors)
    for t, r in zip(ours.tensors, ref.tensors):
        assert (t.name, t.shape, t.type_id, t.offset, t.nbytes) == (
            r.name, tuple(reversed(r.shape.tolist())), int(r.tensor_type), int(r.data_offset), int(r.n_bytes))


def test_one_parse_shared_by_model_and_tokenizer(smollm2: Path) -> None:
    assert read_header(smollm2) is read_header(str(smollm2))  # cached per (file, size, mtime)


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (arr, qtype) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=None if arr.dtype in (np.float32, np.float16) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_1"])
def test_dequantize_is_bit_identical_to_gguf_py(qtype: str, tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType as Q

    from herd.model.gguf import _dequantize, _open

    q = Q[qtype]
    x = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32) * 3
    x[0, :32] = 0  # an all-zero block
    raw = {Q.F32: x, Q.F16: x.astype(np.float16)}.get(q)
    if raw is None:
        raw = gguf.quants.quantize(x, q)
    path = _write(tmp_path / f"{qtype}.gguf", {"w": (raw, q)})
    ref = gguf.GGUFReader(path).tensors[0]
    want = gguf.quants.dequantize(np.array(ref.data), ref.tensor_type).reshape(48, 96)
    t = read_header(path).tensors[0]
    got = _dequantize(t, _open(path), path)
    assert got.dtype == torch.float32 and tuple(got.shape) == (48, 96)
    assert np.array_equal(got.numpy(), want.astype(np.float32))


def test_corrupt_and_truncated_headers_name_the_file(tmp_path: Path, smollm2: Path) -> None:
    data = smollm2.read_bytes()[:2_000_000]  # the header is ~1.8 MB; cut inside the tensor data
    for name, blob in (("cut.gguf", data), ("short.gguf", data[:5000]), ("tiny.gguf", b"GGUF\x03"),
                       ("magic.gguf", b"NOPE" + data[4:100])):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(HerdError, match=name):
            read_header(p)
    with pytest.raises(HerdError, match="file not found"):
        read_header(tmp_path / "none.gguf")


def test_tokenizer_modules_import_without_a_loop() -> None:
    tok_dir = Path(__file__).resolve().parents[2] / "herd" / "tokenizer"
    vocab = ast.parse((tok_dir / "gguf_vocab.py").read_text())
    imported = {n.module for n in ast.walk(vocab) if isinstance(n, ast.ImportFrom)}
    assert "herd.tokenizer.tokenizer" not in imported
    tokenizer = ast.parse((tok_dir / "tokenizer.py").read_text())
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tokenizer.body)
    # each imports on its own, in either order, and GGUFTokenizer is a plain attribute
    for first in ("herd.tokenizer.gguf_vocab", "herd.tokenizer.tokenizer"):
        code = f"import {first}; from herd.tokenizer.tokenizer import GGUFTokenizer; import sys; " \
               "assert 'herd.model.gguf' not in sys.modules and 'gguf' not in sys.modules"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr


def test_gguf_meta_is_standard_library_only() -> None:
    src = Path(__file__).resolve().parents[2] / "herd" / "gguf_meta.py"
    tree = ast.parse(src.read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    herd_mods = {m for m in mods if m.startswith("herd")}
    assert herd_mods == {"herd.errors"}
    assert not mods & {"numpy", "torch", "gguf"}
