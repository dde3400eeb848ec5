"""A small safetensors reader and writer on numpy, with bfloat16.

``safetensors.numpy`` cannot represent bfloat16 and reads whole files into
memory; this reader memory-maps the file (copy-on-write, so the arrays are
writable without touching the file) and returns zero-copy views, and the
writer streams one tensor at a time.

Format: ``u64`` little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
padded with spaces, then the raw little-endian tensor bytes (offsets relative
to the end of the header).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from whisper_t5x.checkpoints.errors import CorruptCheckpointError, UnsupportedFormatError


def _dtypes() -> Dict[str, np.dtype]:
    import ml_dtypes

    return {
        "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
        "BF16": np.dtype(ml_dtypes.bfloat16),
        "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
        "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
    }


def read_header(path: str) -> Tuple[dict, int]:
    """(header dict, byte offset of the data) of a safetensors file."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            (length,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (None,)
            raw = f.read(length) if length is not None and length <= os.path.getsize(path) - 8 else None
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e})") from e
    if length is None:
        raise CorruptCheckpointError(f"{path}: truncated safetensors file (no header)")
    if raw is None:
        raise CorruptCheckpointError(f"{path}: truncated or corrupt safetensors file (header of {length} bytes)")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header")
    return header, 8 + length


def iter_tensors(path: str) -> Iterator[Tuple[str, np.ndarray]]:
    """``(name, array)`` for every tensor, as writable copy-on-write views of the mapped file."""
    header, start = read_header(path)
    dtypes = _dtypes()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else b""
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = info["dtype"]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has a corrupt entry {info!r}") from e
        if dtype_name not in dtypes:
            raise UnsupportedFormatError(f"{path}: tensor {name!r} has the unsupported dtype {dtype_name!r}")
        dtype = dtypes[dtype_name]
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} {info['dtype']}")
        if start + end > size:
            raise CorruptCheckpointError(f"{path}: truncated safetensors file (tensor {name!r} ends past the file)")
        yield name, np.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin).reshape(shape)


def _dtype_name(dtype: np.dtype) -> str:
    for name, candidate in _dtypes().items():
        if candidate == dtype:
            return name
    raise UnsupportedFormatError(f"dtype {dtype} cannot be written to safetensors")


def write(path: str, tensors: Mapping[str, Any], dtype: Optional[Any] = None,
          metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``tensors`` (arrays or array views, cast to ``dtype`` when given) one at a time."""
    target = None if dtype is None else np.dtype(dtype)
    entries = []
    offset = 0
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, value in tensors.items():
        value_dtype = target if target is not None else np.asarray(value).dtype
        shape = tuple(int(n) for n in np.shape(value))
        nbytes = int(np.prod(shape, dtype=np.int64)) * value_dtype.itemsize
        header[name] = {"dtype": _dtype_name(value_dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        entries.append((name, value, value_dtype))
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, value, value_dtype in entries:
            array = np.ascontiguousarray(np.asarray(value), dtype=value_dtype)
            f.write(array.reshape(-1).view(np.uint8).data)
    os.replace(tmp, path)
