"""A minimal GGUF header reader: the metadata needed before llama.cpp loads a file.

Reading the key/value section costs a few milliseconds and no native code, so the scheduler can
estimate a model's RAM (weights, KV cache, compute buffers) and refuse or make room *before*
llama.cpp allocates anything, and the extra-buffer verdicts can key on the file's quant type.
Arrays are skipped; only their length is kept (the vocabulary size is the length of
``tokenizer.ggml.tokens``). Format: github.com/ggml-org/ggml docs/gguf.md.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from edgeinfer.errors import ModelUnavailable

_MAGIC = b"GGUF"
# value type -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 1 << 16
_MAX_STRING = 64 << 20  # a corrupt length must not make us allocate it

Value = int | float | bool | str


def read_metadata(path: Path) -> dict[str, Value]:
    """The scalar and string metadata of the GGUF file at ``path``; an array's value is its
    length. Raises ``ModelUnavailable`` for a file that is not GGUF (the pool reports it)."""
    try:
        with path.open("rb") as fh:
            return _read(fh, path)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise ModelUnavailable(f"cannot read the GGUF header of {path}: {exc}") from exc


def _read(fh: BinaryIO, path: Path) -> dict[str, Value]:
    if fh.read(4) != _MAGIC:
        raise ModelUnavailable(f"{path} is not a GGUF file")
    (version,) = struct.unpack("<I", fh.read(4))
    if version < 2:
        raise ModelUnavailable(f"{path}: GGUF version {version} is too old")
    _n_tensors, n_kv = struct.unpack("<QQ", fh.read(16))
    if n_kv > _MAX_KEYS:
        raise ModelUnavailable(f"{path}: implausible GGUF header ({n_kv} keys)")
    meta: dict[str, Value] = {}
    for _ in range(n_kv):
        key = _string(fh)
        (kind,) = struct.unpack("<I", fh.read(4))
        meta[key] = _value(fh, kind)
    return meta


def _string(fh: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > _MAX_STRING:
        raise struct.error(f"implausible string length {n}")
    return fh.read(n).decode("utf-8")


def _value(fh: BinaryIO, kind: int) -> Value:
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        inner, count = struct.unpack("<IQ", fh.read(12))
        _skip_array(fh, inner, count)
        return int(count)
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise struct.error(f"unknown GGUF value type {kind}")
    value: Value = struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    return value


def _skip_array(fh: BinaryIO, inner: int, count: int) -> None:
    if inner in _SCALARS:
        fh.seek(struct.calcsize(_SCALARS[inner]) * count, 1)
        return
    for _ in range(count):  # strings (and, rarely, nested arrays) have their own lengths
        if inner == _STRING:
            (n,) = struct.unpack("<Q", fh.read(8))
            fh.seek(n, 1)
        else:
            _value(fh, inner)
