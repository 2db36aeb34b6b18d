"""GGUF headers: metadata and the tensor table, read straight from the file (one parse per file).

Both the model loader (herd/model/gguf.py) and the tokenizer (herd/tokenizer/gguf_vocab.py)
read a .gguf file's header through `read_header`; it sits below both layers and imports
nothing but the standard library. The layout is GGUF v2/v3 as llama.cpp's gguf.md describes
it: magic, version, counts, key/value pairs, tensor infos, then aligned tensor data. The
`gguf` package's GGUFReader builds a numpy view per array element (seconds for a 49k-token
vocabulary); this reads the same header in tens of milliseconds.
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdError

MAGIC = b"GGUF"
# GGUF metadata value types (gguf.md: gguf_metadata_value_type)
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# ggml tensor types: name, elements per block, bytes per block (ggml.h / gguf-py GGML_QUANT_SIZES)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table; `shape` is in torch order (GGUF lists dims fastest-first)."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # absolute byte offset of the tensor's data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's metadata (arrays as tuples) and tensor table. Shared between callers: read only."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    file_size: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The header of a .gguf file; parsed once per (file, size, mtime), then shared."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise HerdError(f"{p}: file not found") from None
    if not p.is_file():
        raise HerdError(f"{p}: not a file")
    return _read_header(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_header(path: str, size: int, _mtime_ns: int) -> GGUFHeader:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            if size < 24:
                raise ValueError(f"{size} bytes is too short for a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(p, buf, size)
    except HerdError:
        raise
    except (OSError, ValueError, struct.error, IndexError, KeyError, UnicodeDecodeError, OverflowError) as e:
        raise HerdError(f"{p}: not a readable GGUF file, truncated or corrupt ({type(e).__name__}: {e})") from None


class _Cursor:
    """Sequential little-endian reads over the mapped file."""

    def __init__(self, buf: mmap.mmap, size: int):
        self.buf, self.pos, self.size = buf, 0, size

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        out = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return out

    def string(self) -> str:
        (n,) = struct.unpack_from("<Q", self.buf, self.pos)
        start = self.pos + 8
        if start + n > self.size:
            raise ValueError(f"a string runs past the end of the file at byte {self.pos}")
        self.pos = start + n
        return self.buf[start:self.pos].decode("utf-8", "replace")

    def strings(self, count: int) -> tuple[str, ...]:
        # the hot loop of a vocabulary: locals only
        buf, pos, size, unpack = self.buf, self.pos, self.size, struct.Struct("<Q").unpack_from
        if pos + 8 * count > size:  # each string has at least its length: a corrupt count ends here
            raise ValueError(f"a string array of {count} runs past the end of the file")
        out = []
        append = out.append
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8
            append(buf[pos:pos + n])
            pos += n
        if pos > size:
            raise ValueError("a string array runs past the end of the file")
        self.pos = pos
        return tuple(b.decode("utf-8", "replace") for b in out)

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            inner, count = self.unpack("IQ")
            if inner == _STRING:
                return self.strings(count)
            if inner in _SCALARS:
                fmt = _SCALARS[inner]
                nbytes = struct.calcsize(fmt) * count
                if self.pos + nbytes > self.size:
                    raise ValueError("an array runs past the end of the file")
                items = struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos)
                self.pos += nbytes
                return items
            if inner == _ARRAY:
                if self.pos + 12 * count > self.size:
                    raise ValueError(f"an array of {count} arrays runs past the end of the file")
                return tuple(self.value(_ARRAY) for _ in range(count))
            raise ValueError(f"unknown GGUF array element type {inner}")
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(fmt)[0]


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFHeader:
    if buf[:4] != MAGIC:
        raise HerdError(f"{path}: not a GGUF file (no GGUF magic)")
    c = _Cursor(buf, size)
    c.pos = 4
    (version,) = c.unpack("I")
    if version < 2:
        raise HerdError(f"{path}: GGUF version {version} is too old (herd reads versions 2 and 3)")
    n_tensors, n_kv = c.unpack("QQ")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        (vtype,) = c.unpack("I")
        metadata[key] = c.value(vtype)
    raw = []
    for _ in range(n_tensors):
        name = c.string()
        (n_dims,) = c.unpack("I")
        dims = c.unpack(f"{n_dims}Q")
        type_id, offset = c.unpack("IQ")
        raw.append((name, tuple(reversed(dims)), type_id, offset))
    align = int(metadata.get("general.alignment", 32)) or 32
    data_start = (c.pos + align - 1) // align * align
    tensors = []
    for name, shape, type_id, offset in raw:
        if type_id not in GGML_TYPES:
            raise HerdError(f"{path}: tensor {name!r} has unknown GGML type {type_id}")
        tname, block, type_size = GGML_TYPES[type_id]
        numel = 1
        for d in shape:
            numel *= d
        if numel % block:
            raise HerdError(f"{path}: tensor {name!r} has {numel} elements, not whole {tname} blocks of {block}")
        nbytes = numel // block * type_size
        start = data_start + offset
        if start + nbytes > size:
            raise HerdError(f"{path}: truncated: tensor {name!r} ends at byte {start + nbytes}, "
                            f"the file has {size}")
        tensors.append(TensorInfo(name, shape, type_id, start, nbytes))
    return GGUFHeader(path, version, metadata, tuple(tensors), size)
