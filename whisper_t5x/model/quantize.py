"""Weight storage for decoding: bfloat16 or int8 weights, compute in the model's dtype.

A decoding step at a small batch reads every decoder weight once per token, so
its time follows the bytes stored; the encoder's products, on a CPU with int8
matrix units (Intel AMX, VNNI), run faster on int8 operands. :func:`store_weights`
rewrites a parameter tree (host numpy or device arrays, loop or scan layout):

* ``"bfloat16"``: the decoder's dense kernels a step uses (self-attention
  q/k/v/out, the cross-attention query and output projections, fc1, fc2) and
  the token table (``decoder/embed_tokens/embedding``, both the token lookup
  and the vocabulary projection) as bfloat16;
* ``"int8_step"``: the same leaves as int8 with a float32 scale per output
  channel beside each one (``kernel_scale`` of shape ``(out,)``,
  ``embedding_scale`` of shape ``(vocab,)``): symmetric, ``w = q * scale`` with
  ``q = round(w / scale)`` and ``scale = max|w| / 127``;
* ``"int8"``: those, and the weights of the per-row work as int8 in the same
  way: the encoder's dense kernels (attention q/k/v/out, fc1, fc2 of every
  layer) and the decoder's cross-attention key/value projections.

The layers (:mod:`whisper_t5x.model.layers`) use an int8 kernel as W8A8: each
activation row is quantised to int8 with its own scale, the product
accumulates in int32 and both scales multiply it (CTranslate2's scheme).
Convolutions, biases, layer norms and position tables are left as they are.
``"int8"`` took the encoder once its word error rate measured no worse than
float32 (``benchmarks/peers.py``, see the README); ``"int8_step"`` is the
earlier decoder-only storage, kept for comparison.

The stored tree no longer matches ``params_axes`` (int8 leaves gain a scale):
it is for the unpartitioned decoding paths (the engine and the Decoder on one
device), not for :meth:`FlaxWhisperPipeline.shard_params`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional

import numpy as np

from whisper_t5x.checkpoints.params import aligned

__all__ = ["WEIGHT_DTYPES", "WeightsDtypeError", "store_weights", "weights_dtype_of", "restore_weights",
           "stored_bytes", "cast_float_weights"]

WEIGHT_DTYPES = ("float32", "bfloat16", "int8", "int8_step")

# Per decoder layer: the dense kernels a decoding step reads (cross-attention k/v run at insert only).
_STEP_KERNELS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
                 ("self_attn", "out_proj"), ("encoder_attn", "q_proj"), ("encoder_attn", "out_proj"),
                 ("fc1",), ("fc2",))
# Per encoder layer (``"int8"``): every dense kernel; per decoder layer, the cross-attention k/v.
_ENCODER_KERNELS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
                    ("self_attn", "out_proj"), ("fc1",), ("fc2",))
_CROSS_KV_KERNELS = (("encoder_attn", "k_proj"), ("encoder_attn", "v_proj"))
_INT8_MAX = 127.0


class WeightsDtypeError(ValueError):
    """An unknown weight storage dtype, or a tree that is not a Whisper parameter tree."""


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _check(weights_dtype: Any) -> str:
    name = None if weights_dtype is None else str(np.dtype(weights_dtype).name
                                                  if not isinstance(weights_dtype, str) else weights_dtype)
    if name not in WEIGHT_DTYPES:
        raise WeightsDtypeError(f"weights_dtype must be one of {WEIGHT_DTYPES}, got {weights_dtype!r}")
    return name


def _int8(w: np.ndarray, reduce_axis: int):
    """Symmetric int8 with one scale per slice along ``reduce_axis`` (the axis a product sums over)."""
    w = np.asarray(w, np.float32)
    peak = np.max(np.abs(w), axis=reduce_axis, keepdims=True)
    scale = np.where(peak > 0, peak / _INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return aligned(q), aligned(np.squeeze(scale, axis=reduce_axis))


def _store(node: Dict[str, Any], leaf: str, dtype: str, reduce_axis: int) -> None:
    """Rewrite ``node[leaf]`` (``node`` is a fresh dict) as ``dtype`` storage."""
    w = np.asarray(node[leaf])
    if dtype == "bfloat16":
        node[leaf] = aligned(w, _bfloat16())
    elif dtype == "int8":
        node[leaf], node[f"{leaf}_scale"] = _int8(w, reduce_axis)


def _copy_path(tree: Dict[str, Any], path) -> Dict[str, Any]:
    """Shallow copies of the dicts along ``path`` (the input tree is left untouched); the last one."""
    node = tree
    for key in path:
        if not isinstance(node.get(key), Mapping):
            raise WeightsDtypeError(f"not a Whisper parameter tree: no {'/'.join(path)}")
        node[key] = dict(node[key])
        node = node[key]
    return node


def store_weights(params: Mapping, weights_dtype: Any) -> Dict[str, Any]:
    """``params`` with the decoding step's weights stored as ``weights_dtype`` (see the module docstring).

    ``"float32"`` returns the tree unchanged. Leaves come back as host numpy (aligned for XLA's CPU
    client); the input tree is not modified. A tree already stored in another dtype is refused.
    """
    name = _check(weights_dtype)
    if name == "float32":
        return params
    current = weights_dtype_of(params)
    if current != "float32":
        raise WeightsDtypeError(f"the parameters are already stored as {current}: restore_weights first")
    tree = dict(params)
    storage = "int8" if name.startswith("int8") else name
    decoder = _copy_path(tree, ("decoder",))
    decoder_kernels = _STEP_KERNELS + (_CROSS_KV_KERNELS if name == "int8" else ())
    for block in _blocks(decoder):
        for path in decoder_kernels:
            # kernels are (in, out), or (layers, in, out): one scale per output column (and layer)
            _store(_copy_path(block, path), "kernel", storage, -2)
    # the table is (vocab, d): one scale per token, an output channel of the vocabulary projection
    _store(_copy_path(decoder, ("embed_tokens",)), "embedding", storage, -1)
    if name == "int8":
        for block in _blocks(_copy_path(tree, ("encoder",))):
            for path in _ENCODER_KERNELS:
                _store(_copy_path(block, path), "kernel", storage, -2)
    return tree


def _blocks(stack: Dict[str, Any]):
    """Fresh copies of the layer blocks of an encoder or decoder (the one stacked block in scan layout)."""
    layers = _copy_path(stack, ("layers",))
    if "fc1" in layers:  # scan layout: one block, every leaf stacked on a leading layers axis
        return [layers]
    return [_copy_path(layers, (k,)) for k in sorted(layers)]


def weights_dtype_of(params: Mapping) -> str:
    """How the decoding step's weights of ``params`` are stored: one of :data:`WEIGHT_DTYPES`."""
    try:
        table = params["decoder"]["embed_tokens"]
    except (KeyError, TypeError) as e:
        raise WeightsDtypeError("not a Whisper parameter tree: no decoder/embed_tokens") from e
    if "embedding_scale" in table:
        layers = params.get("encoder", {}).get("layers", {})
        block = layers if "fc1" in layers else next(iter(layers.values()), {})
        return "int8" if "kernel_scale" in block.get("fc1", {}) else "int8_step"
    dtype = np.dtype(getattr(table["embedding"], "dtype", np.float32))
    return "bfloat16" if dtype == _bfloat16() else "float32"


def restore_weights(params: Mapping, dtype: Any = np.float32) -> Dict[str, Any]:
    """The float tree back from stored weights (int8 leaves times their scales; tests and export)."""

    def walk(node: Mapping) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key, value in node.items():
            if key.endswith("_scale") and key[:-len("_scale")] in node:
                continue
            if isinstance(value, Mapping):
                out[key] = walk(value)
                continue
            scale: Optional[Any] = node.get(f"{key}_scale")
            w = np.asarray(value)
            if scale is not None:
                s = np.asarray(scale, np.float32)
                w = w.astype(np.float32) * (s[:, None] if key == "embedding" else s[..., None, :])
            out[key] = np.asarray(w, dtype)
        return out

    return walk(params)


def cast_float_weights(params: Mapping, dtype: Any) -> Dict[str, Any]:
    """``params`` for a half-precision compute dtype: every float leaf as ``dtype`` (host numpy), int8
    kernels and their float32 ``*_scale`` leaves as they are (a bfloat16 scale would add its rounding
    to every int8 product). For ``FlaxWhisperPipeline(dtype=bfloat16, weights_dtype="int8")``: store
    first (from float32), then cast."""
    target = np.dtype(_bfloat16() if str(dtype) == "bfloat16" else np.dtype(dtype))

    def walk(node: Mapping) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, Mapping):
                out[key] = walk(value)
                continue
            w = np.asarray(value)
            keep = key.endswith("_scale") or not np.issubdtype(w.dtype, np.floating) and w.dtype != _bfloat16()
            out[key] = w if keep else aligned(w, target)
        return out

    return walk(params)


def stored_bytes(params: Mapping, decoder_step_only: bool = True) -> int:
    """Bytes of the leaves a decoding step reads (``decoder_step_only``), or of the whole tree."""
    total = 0

    def walk(node: Mapping, path: tuple) -> None:
        nonlocal total
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, path + (key,))
            elif not decoder_step_only or (path and path[0] == "decoder" and not (
                    len(path) >= 2 and path[-1] in ("k_proj", "v_proj") and "encoder_attn" in path)):
                total += int(np.asarray(value).nbytes)

    walk(params, ())
    return total
