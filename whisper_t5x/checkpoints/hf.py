"""Hugging Face Whisper checkpoints: PyTorch tensor names <-> our parameter tree.

Our tree mirrors transformers' module names without the ``model.`` prefix, so
the mapping is mechanical: a ``weight`` becomes ``kernel`` (Dense: transposed
to ``(in, out)``; Conv1d: ``(out, in, width)`` -> ``(width, in, out)``),
``scale`` (layer norms) or ``embedding`` (embedding tables). ``proj_out`` is
tied to ``decoder.embed_tokens`` and not stored in the tree.

Readers here cover a transformers directory: ``model.safetensors``,
``pytorch_model.bin`` (each possibly sharded with an ``*.index.json``) and the
former Flax format ``flax_model.msgpack`` (already in Flax naming).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, List, Tuple

import numpy as np

from whisper_t5x.checkpoints import safetensors_io
from whisper_t5x.checkpoints.errors import (
    CorruptCheckpointError,
    ShapeMismatchError,
    UnsupportedFormatError,
)

TIED_OUTPUT = "proj_out.weight"
# The tokenizer files of a transformers directory; tokenizer.json (the fast tokenizer) first.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "normalizer.json", "vocab.json", "merges.txt")
WEIGHT_FILES = (
    # (single file, shard index), in order of preference
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ("flax_model.msgpack", "flax_model.msgpack.index.json"),
)


# ---------------------------------------------------------------------- names
def _leaf_for_weight(module: str, ndim: int) -> Tuple[str, Any]:
    if module.startswith("embed_"):
        return "embedding", None
    if module.endswith("layer_norm"):
        return "scale", None
    if ndim == 3:
        return "kernel", (2, 1, 0)
    if ndim == 2:
        return "kernel", (1, 0)
    raise ValueError(f"a {ndim}-d weight for module {module!r}")


def from_state_dict(items: Iterable[Tuple[str, np.ndarray]], source: str) -> Dict[str, Any]:
    """Nested loop-layout params from ``(hf_name, array)`` pairs.

    Accepts names with or without the ``model.`` prefix; ``proj_out.weight``
    must equal the token embedding (Whisper ties them) and is dropped.
    """
    params: Dict[str, Any] = {}
    output = None
    for name, array in items:
        if name == TIED_OUTPUT:
            output = array
            continue
        parts = name.split(".")
        if parts[0] == "model":
            parts = parts[1:]
        if len(parts) < 3 or parts[0] not in ("encoder", "decoder") or parts[-1] not in ("weight", "bias"):
            raise UnsupportedFormatError(f"{source}: unexpected tensor {name!r} for a Whisper model")
        if parts[-1] == "weight":
            try:
                leaf, axes = _leaf_for_weight(parts[-2], np.ndim(array))
            except ValueError as e:
                raise ShapeMismatchError(f"{source}: tensor {name!r}: {e}") from None
            if axes is not None:
                array = np.transpose(array, axes)
        else:
            leaf = "bias"
        node = params
        for key in parts[:-1]:
            node = node.setdefault(key, {})
        node[leaf] = np.ascontiguousarray(array)
    if output is not None:
        embedding = params.get("decoder", {}).get("embed_tokens", {}).get("embedding")
        if embedding is not None and (np.shape(output) != np.shape(embedding) or not np.array_equal(output, embedding)):
            warnings.warn(
                f"{source}: proj_out.weight differs from decoder.embed_tokens.weight; Whisper ties them and "
                f"the tied embedding is used",
                stacklevel=3,
            )
    return params


def _hf_leaf(key: str, value: np.ndarray) -> Tuple[str, Any]:
    if key == "kernel":
        return "weight", np.transpose(value, (2, 1, 0)) if np.ndim(value) == 3 else np.transpose(value)
    if key in ("scale", "embedding"):
        return "weight", value
    return key, value


def to_state_dict(params: Mapping, prefix: str = "model.") -> Dict[str, np.ndarray]:
    """HF PyTorch names and layouts for a loop-layout tree (transposed views; no copies)."""
    out: Dict[str, np.ndarray] = {}

    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, path + [str(key)])
            else:
                name, array = _hf_leaf(key, np.asarray(value))
                out[prefix + ".".join(path + [name])] = array

    walk(params, [])
    return out


# ---------------------------------------------------------------------- files
def weight_files(directory: str) -> List[str]:
    """The weight files of a transformers directory (one format; shards resolved), or []."""
    names = set(os.listdir(directory))
    for single, index in WEIGHT_FILES:
        if single in names:
            return [os.path.join(directory, single)]
        if index in names:
            return [os.path.join(directory, shard) for shard in _shards(os.path.join(directory, index))]
    return []


def _shards(index_path: str) -> List[str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpointError(f"{index_path}: unreadable shard index ({type(e).__name__}: {e})") from e


def read_weights(directory: str) -> Dict[str, Any]:
    """Loop- or scan-layout params from a transformers directory (as stored: no dtype change)."""
    files = weight_files(directory)
    if not files:
        raise CorruptCheckpointError(
            f"{directory}: no weights found (looked for "
            + ", ".join(f"{a} or {b}" for a, b in WEIGHT_FILES)
            + ")"
        )
    for path in files:
        if not os.path.exists(path):
            raise CorruptCheckpointError(f"{path}: shard listed in the index is missing")
    if files[0].endswith(".msgpack"):
        trees = [_read_msgpack(path) for path in files]
        return _merge(trees, directory)
    return from_state_dict(_iter_tensors(files), directory)


def _iter_tensors(files: List[str]) -> Iterator[Tuple[str, np.ndarray]]:
    for path in files:
        if path.endswith(".safetensors"):
            yield from safetensors_io.iter_tensors(path)
        else:
            yield from _read_torch(path).items()


def torch_to_numpy(tensor) -> np.ndarray:
    """A numpy view of a CPU tensor; bfloat16 becomes ml_dtypes.bfloat16."""
    import torch

    tensor = tensor.detach()
    if tensor.is_sparse:
        tensor = tensor.to_dense()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def torch_load(path: str, what: str) -> Any:
    """``torch.load`` of tensors only, memory-mapped where the file allows.

    ``torch.save``'s zip format can be memory-mapped (tensors stay in the page
    cache until touched); the legacy pickle format cannot, so the format is
    told by the file itself, before loading. ``what`` names the content in the
    :class:`CorruptCheckpointError` of an unreadable file.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # corrupt or foreign files raise many types
        raise CorruptCheckpointError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from e


def _read_torch(path: str) -> Dict[str, np.ndarray]:
    state = torch_load(path, "PyTorch weights")
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UnsupportedFormatError(f"{path}: not a state dict (found {type(state).__name__})")
    return {name: torch_to_numpy(t) for name, t in state.items()}


def _read_msgpack(path: str) -> Dict[str, Any]:
    """The encoder/decoder tree of a Hugging Face Flax ``flax_model.msgpack``."""
    from flax.serialization import msgpack_restore

    try:
        with open(path, "rb") as f:
            tree = msgpack_restore(f.read())
    except Exception as e:
        raise CorruptCheckpointError(f"{path}: cannot read Flax msgpack ({type(e).__name__}: {e})") from e
    if not isinstance(tree, Mapping):
        raise UnsupportedFormatError(f"{path}: not a Flax parameter tree")
    for wrapper in ("params", "model"):
        if wrapper in tree and isinstance(tree[wrapper], Mapping) and not ({"encoder", "decoder"} & set(tree)):
            extra = sorted(set(tree) - {wrapper})
            if extra and extra != ["proj_out"] and extra != ["lm_head"]:
                raise UnsupportedFormatError(f"{path}: unexpected top-level entries {extra} next to {wrapper!r}")
            tree = tree[wrapper]
    if not {"encoder", "decoder"} <= set(tree):
        raise UnsupportedFormatError(f"{path}: no encoder/decoder parameters (top-level keys: {sorted(tree)[:8]})")
    unexpected = sorted(set(tree) - {"encoder", "decoder", "proj_out", "lm_head"})
    if unexpected:
        raise UnsupportedFormatError(f"{path}: unexpected top-level entries {unexpected}")
    return {part: tree[part] for part in ("encoder", "decoder")}


def _merge(trees: List[Mapping], source: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}

    def merge(dst, src, path):
        for key, value in src.items():
            if isinstance(value, Mapping):
                merge(dst.setdefault(key, {}), value, path + [key])
            elif key in dst:
                raise CorruptCheckpointError(f"{source}: parameter {'/'.join(path + [key])} appears in two shards")
            else:
                dst[key] = np.asarray(value)

    for tree in trees:
        merge(out, tree, [])
    return out
