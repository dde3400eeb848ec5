"""Parameter-tree helpers shared by every checkpoint format.

A parameter tree is a nested ``dict`` of ``str`` -> ``np.ndarray`` in the loop
layout (``encoder/layers/{i}/...``). This module knows the tree every Whisper
architecture must have (:func:`param_shapes`), checks loaded trees against it
(:func:`check_params`), reads sizes back from a tree (:func:`infer_sizes`),
casts dtypes, and computes Whisper's sinusoidal audio position table for
formats that do not store it.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

import numpy as np

from whisper_t5x.checkpoints.errors import ShapeMismatchError


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------------- tree utilities
def flatten(tree: Mapping, prefix: str = "") -> Dict[str, Any]:
    """``{"a/b/c": leaf}`` from a nested mapping (FrozenDicts included)."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def map_leaves(fn: Callable[[Any], Any], tree: Mapping) -> Dict[str, Any]:
    return {k: map_leaves(fn, v) if isinstance(v, Mapping) else fn(v) for k, v in tree.items()}


def to_numpy(tree: Mapping) -> Dict[str, Any]:
    """Plain nested dicts of numpy arrays (jax arrays are fetched to host)."""
    return map_leaves(np.asarray, tree)


# ---------------------------------------------------------------------- expected tree
def _dense(n_in: int, n_out: int, bias: bool = True) -> Dict[str, tuple]:
    return {"kernel": (n_in, n_out), "bias": (n_out,)} if bias else {"kernel": (n_in, n_out)}


def _norm(d: int) -> Dict[str, tuple]:
    return {"scale": (d,), "bias": (d,)}


def _attention(d: int) -> Dict[str, Any]:
    # Whisper's key projection has no bias.
    return {"q_proj": _dense(d, d), "k_proj": _dense(d, d, bias=False), "v_proj": _dense(d, d), "out_proj": _dense(d, d)}


def param_shapes(config) -> Dict[str, Any]:
    """The loop-layout tree of shapes that ``config`` implies."""
    d = config.d_model

    def encoder_layer():
        return {
            "self_attn": _attention(d),
            "self_attn_layer_norm": _norm(d),
            "fc1": _dense(d, config.encoder_ffn_dim),
            "fc2": _dense(config.encoder_ffn_dim, d),
            "final_layer_norm": _norm(d),
        }

    def decoder_layer():
        return {
            "self_attn": _attention(d),
            "self_attn_layer_norm": _norm(d),
            "encoder_attn": _attention(d),
            "encoder_attn_layer_norm": _norm(d),
            "fc1": _dense(d, config.decoder_ffn_dim),
            "fc2": _dense(config.decoder_ffn_dim, d),
            "final_layer_norm": _norm(d),
        }

    return {
        "encoder": {
            "conv1": {"kernel": (3, config.num_mel_bins, d), "bias": (d,)},
            "conv2": {"kernel": (3, d, d), "bias": (d,)},
            "embed_positions": {"embedding": (config.max_source_positions, d)},
            "layers": {str(i): encoder_layer() for i in range(config.encoder_layers)},
            "layer_norm": _norm(d),
        },
        "decoder": {
            "embed_tokens": {"embedding": (config.vocab_size, d)},
            "embed_positions": {"embedding": (config.max_target_positions, d)},
            "layers": {str(i): decoder_layer() for i in range(config.decoder_layers)},
            "layer_norm": _norm(d),
        },
    }


def _count_layers(flat: Mapping[str, Any], part: str) -> int:
    indices = {k.split("/")[2] for k in flat if k.startswith(f"{part}/layers/")}
    return len([i for i in indices if i.isdigit()])


def infer_sizes(params: Mapping) -> Dict[str, int]:
    """WhisperConfig size fields read off a loop-layout tree (those it can tell)."""
    flat = flatten(params)
    sizes: Dict[str, int] = {}

    def shape(path):
        return tuple(np.shape(flat[path])) if path in flat else None

    if shape("decoder/embed_tokens/embedding"):
        sizes["vocab_size"], sizes["d_model"] = shape("decoder/embed_tokens/embedding")
    conv1 = shape("encoder/conv1/kernel")
    if conv1 and len(conv1) == 3:
        sizes["num_mel_bins"] = conv1[1]
        sizes.setdefault("d_model", conv1[2])
    if shape("encoder/embed_positions/embedding"):
        sizes["max_source_positions"] = shape("encoder/embed_positions/embedding")[0]
    if shape("decoder/embed_positions/embedding"):
        sizes["max_target_positions"] = shape("decoder/embed_positions/embedding")[0]
    for part in ("encoder", "decoder"):
        sizes[f"{part}_layers"] = _count_layers(flat, part)
        fc1 = shape(f"{part}/layers/0/fc1/kernel")
        if fc1:
            sizes[f"{part}_ffn_dim"] = fc1[1]
    return sizes


def check_params(params: Mapping, config, source: str) -> None:
    """Raise :class:`ShapeMismatchError` unless ``params`` (loop layout) is exactly the tree ``config`` implies."""
    expected = flatten(param_shapes(config))
    got = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and got[k] != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    problems = []
    # A size summary first: "config says d_model 512, weights have 384" is the useful part.
    inferred = infer_sizes(params)
    disagree = [
        f"{name} {getattr(config, name)} in the config but {value} in the weights"
        for name, value in inferred.items()
        if getattr(config, name, value) != value
    ]
    if disagree:
        problems.append("config and weights disagree: " + ", ".join(disagree))
    if wrong:
        problems.append(
            "shape mismatch: "
            + "; ".join(f"{k} has shape {got[k]} but the config implies {tuple(expected[k])}" for k in wrong[:6])
            + (f" (and {len(wrong) - 6} more)" if len(wrong) > 6 else "")
        )
    if missing:
        problems.append(f"missing {len(missing)} parameters: {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected parameters: {', '.join(unexpected[:6])}" + (" ..." if len(unexpected) > 6 else "")
        )
    raise ShapeMismatchError(f"{source}: weights do not fit the Whisper config: " + "; ".join(problems))


# ---------------------------------------------------------------------- dtypes
_PARALLEL_BYTES = 1 << 20  # leaves at least this big are cast on a thread pool (numpy releases the GIL)


def _map_leaves_parallel(fn: Callable[[Any], Any], tree: Mapping) -> Dict[str, Any]:
    """:func:`map_leaves`, with the big leaves done on a few threads (a checkpoint's cast is memory-bound
    work numpy runs without the GIL)."""
    flat = flatten(tree)
    big = [k for k, v in flat.items() if np.asarray(v).nbytes >= _PARALLEL_BYTES]
    workers = min(4, os.cpu_count() or 1, len(big))
    if workers < 2:
        return map_leaves(fn, tree)
    out = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {k: pool.submit(fn, flat[k]) for k in big}
        for k, v in flat.items():
            if k not in futures:
                out[k] = fn(v)
        for k, f in futures.items():
            out[k] = f.result()
    return unflatten({k: out[k] for k in flat})


# XLA's CPU client takes a host array as a device buffer without copying it only when the data is
# this aligned; numpy's allocations are 16-byte aligned, so every jitted call that was given a numpy
# parameter tree copied the whole tree first (a second copy of the weights alive per call in flight,
# and tens of milliseconds per call for ``base``).
DEVICE_ALIGNMENT = 64


def aligned(x: Any, dtype: Optional[Any] = None) -> np.ndarray:
    """``x`` as a C-contiguous array of ``dtype`` whose data starts on a :data:`DEVICE_ALIGNMENT` boundary
    (the same array when it already is one; else one copy, cast on the way)."""
    src = np.asarray(x)
    target = src.dtype if dtype is None else np.dtype(dtype)
    if src.dtype == target and src.flags.c_contiguous and src.ctypes.data % DEVICE_ALIGNMENT == 0:
        return src
    raw = np.empty(src.size * target.itemsize + DEVICE_ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % DEVICE_ALIGNMENT
    out = raw[start:start + src.size * target.itemsize].view(target).reshape(src.shape)
    out[...] = src
    return out


def is_aligned(x: Any) -> bool:
    """True when ``x`` (a numpy array) can be handed to XLA's CPU client without a copy."""
    return isinstance(x, np.ndarray) and x.flags.c_contiguous and x.ctypes.data % DEVICE_ALIGNMENT == 0


def cast_params(params: Mapping, dtype: Optional[Any] = None) -> Dict[str, Any]:
    """Cast every leaf to ``dtype``; with ``None`` keep float32/float16/bfloat16 as stored
    (float64 and integers become float32, and a tree of mixed float dtypes becomes float32).
    Leaves come back C-contiguous and :func:`aligned` (a transposed view is copied once, cast on the
    way), so that passing the tree to a jitted function on a CPU copies nothing."""
    if dtype is not None:
        target = np.dtype(dtype)
        if not (target.kind == "f" or target == _bfloat16()):
            raise ValueError(f"dtype {dtype!r} is not a floating-point dtype")
        return _map_leaves_parallel(lambda x: aligned(x, target), params)
    kept = {np.dtype(np.float32), np.dtype(np.float16), _bfloat16()}
    dtypes = {np.asarray(x).dtype for x in flatten(params).values()}
    if len(dtypes) == 1 and dtypes <= kept:
        return _map_leaves_parallel(aligned, params)
    return _map_leaves_parallel(lambda x: aligned(x, np.float32), params)


# ---------------------------------------------------------------------- positions
def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's audio position table: ``[sin | cos]`` of geometrically spaced timescales."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {channels}")
    half = channels // 2
    increment = np.log(max_timescale) / (half - 1)
    inv_timescales = np.exp(-increment * np.arange(half, dtype=np.float32)).astype(np.float32)
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)
