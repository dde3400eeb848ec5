"""Loop and scan layouts of the layer parameters.

Loop layout: ``encoder/layers/{i}/...`` holds one block tree per layer, the
index a string key. Scan layout: ``encoder/layers`` holds ONE block tree whose
leaves are stacked on a new leading axis of size ``num_layers`` (what
``nn.scan`` over the blocks expects).

Both conversions detect the layout they are given and are idempotent. They
also unwrap the extra module level some scanned Flax trees put between
``layers`` and the block (e.g. whisper-jax's
``layers/FlaxWhisperEncoderLayers/...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict

import numpy as np

from whisper_t5x.checkpoints.errors import ShapeMismatchError

_PARTS = ("encoder", "decoder")
# Child names of an encoder or decoder block.
_BLOCK_KEYS = {
    "self_attn", "self_attn_layer_norm", "encoder_attn", "encoder_attn_layer_norm",
    "fc1", "fc2", "final_layer_norm",
}


def _is_loop(layers: Mapping) -> bool:
    return bool(layers) and all(str(k).isdigit() for k in layers)


def _unwrap(layers: Mapping) -> Mapping:
    """``{"FlaxWhisperEncoderLayers": block}`` -> ``block`` (one non-block, non-index key)."""
    if len(layers) == 1:
        (key, value), = layers.items()
        if not str(key).isdigit() and key not in _BLOCK_KEYS and isinstance(value, Mapping):
            return value
    return layers


def _leaves(tree: Mapping):
    for value in tree.values():
        if isinstance(value, Mapping):
            yield from _leaves(value)
        else:
            yield value


def _map(fn, *trees):
    first = trees[0]
    if isinstance(first, Mapping):
        for other in trees[1:]:
            if set(other) != set(first):
                raise ShapeMismatchError(f"layers have different parameters: {sorted(first)} vs {sorted(other)}")
        return {k: _map(fn, *(t[k] for t in trees)) for k in first}
    return fn(*trees)


def is_scan_layout(params: Mapping) -> bool:
    """True when the layer parameters are stacked (scan layout)."""
    return not _is_loop(_unwrap(params["encoder"]["layers"]))


def num_layers(layers: Mapping) -> int:
    layers = _unwrap(layers)
    if _is_loop(layers):
        return len(layers)
    sizes = {np.shape(leaf)[0] for leaf in _leaves(layers)}
    if len(sizes) != 1:
        raise ShapeMismatchError(f"stacked layer parameters disagree on the number of layers: {sorted(sizes)}")
    return sizes.pop()


def _per_part(params: Mapping, convert: Callable[[str, Mapping], Mapping]) -> Dict[str, Any]:
    """``params`` with ``convert(part, layers)`` as the (unwrapped) layers of the encoder and decoder."""
    out = dict(params)
    for part in _PARTS:
        if part in params:
            out[part] = dict(params[part], layers=convert(part, _unwrap(params[part]["layers"])))
    return out


def _stack(part: str, layers: Mapping) -> Mapping:
    if not _is_loop(layers):
        return layers
    count = len(layers)
    if set(layers) != {str(i) for i in range(count)}:
        raise ShapeMismatchError(f"{part} layer indices are not 0..{count - 1}: {sorted(layers, key=int)}")
    blocks = [layers[str(i)] for i in range(count)]
    return _map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)


def _split(part: str, layers: Mapping) -> Dict[str, Any]:
    del part  # the signature of _stack
    if _is_loop(layers):
        return dict(layers)
    return {str(i): _map(lambda x, i=i: x[i], layers) for i in range(num_layers(layers))}


def to_scan_layout(params: Mapping) -> Dict[str, Any]:
    """Stack ``layers/{i}`` blocks on a leading axis (host numpy); scan-layout input is returned as is."""
    return _per_part(params, _stack)


def to_loop_layout(params: Mapping) -> Dict[str, Any]:
    """Split stacked layers into ``layers/{i}`` blocks (views, no copies); loop-layout input is returned as is."""
    return _per_part(params, _split)
