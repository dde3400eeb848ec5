"""Read the constant tensors of an ONNX file with a small protobuf wire-format reader.

The Silero VAD weights ship as an ONNX model. Its tensors are all we need (the
network itself is written in JAX in :mod:`whisper_t5x.audio.vad`), so rather
than depend on the ``onnx`` package (and its protobuf runtime) this module
walks the protobuf encoding directly: an ONNX file is a ``ModelProto`` whose
``graph`` holds ``initializer`` tensors and ``Constant`` nodes, and control-flow
nodes (``If``, ``Loop``) hold nested graphs with their own. :func:`read_graphs`
returns every graph's named tensors, nested graphs included, as numpy arrays.

Only the pieces of the ONNX schema needed for that are decoded (field numbers
from ``onnx.proto``); tensors stored as external data are refused with
:class:`OnnxFormatError`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Tuple, Union

import numpy as np

__all__ = ["OnnxFormatError", "OnnxGraph", "read_graphs"]

# onnx.proto field numbers
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_NAME, _GRAPH_INITIALIZER = 1, 2, 5
_NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 2, 4, 5
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_GRAPHS = 1, 5, 6, 11
_TENSOR_DIMS, _TENSOR_DTYPE, _TENSOR_FLOAT, _TENSOR_INT32 = 1, 2, 4, 5
_TENSOR_INT64, _TENSOR_NAME, _TENSOR_RAW, _TENSOR_DOUBLE = 7, 8, 9, 10
_TENSOR_DATA_LOCATION = 14
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
           10: np.float16, 11: np.float64}

_Value = Union[int, memoryview]


class OnnxFormatError(ValueError):
    """The file is not an ONNX model this reader understands."""


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """One graph of the model: its name and its named constant tensors (initializers and Constant nodes)."""

    name: str
    tensors: Dict[str, np.ndarray]


# ---------------------------------------------------------------------- wire format
def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise OnnxFormatError("varint too long")


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, _Value]]:
    """(field number, wire type, value) for each field of one message: ints for varints and fixed
    widths, a zero-copy view for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise OnnxFormatError("truncated message")
        yield field, wire, value


def _packed_varints(value: _Value, wire: int) -> List[int]:
    if wire == 0:
        return [int(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# ---------------------------------------------------------------------- ONNX messages
def _tensor(buf: memoryview) -> Tuple[str, np.ndarray]:
    dims: List[int] = []
    dtype_code, name, raw = 0, "", None
    floats: List[np.ndarray] = []
    ints: List[int] = []
    for field, wire, value in _fields(buf):
        if field == _TENSOR_DIMS:
            dims.extend(_signed64(v) for v in _packed_varints(value, wire))
        elif field == _TENSOR_DTYPE:
            dtype_code = int(value)
        elif field == _TENSOR_NAME:
            name = bytes(value).decode("utf-8")
        elif field == _TENSOR_RAW:
            raw = bytes(value)
        elif field == _TENSOR_FLOAT:
            floats.append(np.frombuffer(bytes(value), "<f4") if wire == 2
                          else np.array([value], "<u4").view("<f4"))
        elif field == _TENSOR_DOUBLE:
            floats.append(np.frombuffer(bytes(value), "<f8") if wire == 2
                          else np.array([value], "<u8").view("<f8"))
        elif field in (_TENSOR_INT32, _TENSOR_INT64):
            ints.extend(_signed64(v) for v in _packed_varints(value, wire))
        elif field == _TENSOR_DATA_LOCATION and value == 1:
            raise OnnxFormatError(f"tensor {name or '?'} is stored as external data, which is not supported")
    if dtype_code not in _DTYPES:
        raise OnnxFormatError(f"tensor {name or '?'} has unsupported data type {dtype_code}")
    dtype = np.dtype(_DTYPES[dtype_code]).newbyteorder("<")
    if raw is not None:
        array = np.frombuffer(raw, dtype)
    elif floats:
        array = np.concatenate(floats).astype(dtype)
    else:
        array = np.array(ints, dtype)
    count = int(np.prod(dims)) if dims else 1
    if array.size != count:
        raise OnnxFormatError(f"tensor {name or '?'} holds {array.size} values for shape {tuple(dims)}")
    return name, array.astype(dtype.newbyteorder("=")).reshape(dims)


def _node(buf: memoryview, graphs: List[OnnxGraph], tensors: Dict[str, np.ndarray]) -> None:
    """Record a Constant node's tensor under its output name; descend into attribute graphs."""
    op_type, outputs, value_tensor = "", [], None
    for field, _, value in _fields(buf):
        if field == _NODE_OP_TYPE:
            op_type = bytes(value).decode("utf-8")
        elif field == _NODE_OUTPUT:
            outputs.append(bytes(value).decode("utf-8"))
        elif field == _NODE_ATTRIBUTE:
            attr_name, t = "", None
            for afield, _, avalue in _fields(value):
                if afield == _ATTR_NAME:
                    attr_name = bytes(avalue).decode("utf-8")
                elif afield == _ATTR_T:
                    t = avalue
                elif afield in (_ATTR_G, _ATTR_GRAPHS):
                    _graph(avalue, graphs)
            if attr_name == "value" and t is not None:
                value_tensor = t
    if op_type == "Constant" and value_tensor is not None and outputs:
        tensors[outputs[0]] = _tensor(value_tensor)[1]


def _graph(buf: memoryview, graphs: List[OnnxGraph]) -> None:
    name, tensors = "", {}
    graphs.append(OnnxGraph(name, tensors))
    index = len(graphs) - 1
    for field, _, value in _fields(buf):
        if field == _GRAPH_NAME:
            name = bytes(value).decode("utf-8")
        elif field == _GRAPH_INITIALIZER:
            tensor_name, array = _tensor(value)
            tensors[tensor_name] = array
        elif field == _GRAPH_NODE:
            _node(value, graphs, tensors)
    graphs[index] = OnnxGraph(name, tensors)


def read_graphs(data: bytes) -> List[OnnxGraph]:
    """Every graph of the ONNX model in ``data`` (the main graph first, then nested ones in file order)."""
    graphs: List[OnnxGraph] = []
    for field, wire, value in _fields(memoryview(data)):
        if field == _MODEL_GRAPH and wire == 2:
            _graph(value, graphs)
    if not graphs:
        raise OnnxFormatError("no graph found: not an ONNX model")
    return graphs
