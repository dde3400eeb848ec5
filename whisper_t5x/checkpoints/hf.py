"""Hugging Face (PyTorch) tensor names <-> our parameter tree.

Our tree mirrors Hugging Face's module names without the ``model.`` prefix, so
the mapping is mechanical: ``weight`` becomes ``kernel`` (transposed; conv
kernels to ``(width, in, out)``), ``scale`` (layer norms) or ``embedding``
(embedding tables).
"""

import json
import os
from typing import Any, Dict, Iterable, Tuple

import numpy as np

from whisper_t5x.checkpoints.errors import CheckpointError

TIED_OUTPUT = "proj_out.weight"


def _leaf_name(module: str, array: np.ndarray) -> Tuple[str, Any]:
    if module.startswith("embed_"):
        return "embedding", lambda x: x
    if "layer_norm" in module:
        return "scale", lambda x: x
    if array.ndim == 3:
        return "kernel", lambda x: np.transpose(x, (2, 1, 0))
    return "kernel", lambda x: np.transpose(x)


def from_state_dict(items: Iterable[Tuple[str, np.ndarray]], source: str) -> Dict[str, Any]:
    """Nested params from ``(hf_name, array)`` pairs (``proj_out`` is tied and dropped)."""
    params: Dict[str, Any] = {}
    for name, array in items:
        if name == TIED_OUTPUT:
            continue
        parts = name.split(".")
        if parts[0] == "model":
            parts = parts[1:]
        if len(parts) < 3 or parts[0] not in ("encoder", "decoder") or parts[-1] not in ("weight", "bias"):
            raise CheckpointError(f"{source}: unexpected tensor {name!r} for a Whisper model")
        if parts[-1] == "weight":
            leaf, convert = _leaf_name(parts[-2], array)
            array = convert(array)
        else:
            leaf = "bias"
        node = params
        for key in parts[:-1]:
            node = node.setdefault(key, {})
        node[leaf] = np.ascontiguousarray(array)
    return params


def to_state_dict(params: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """HF PyTorch names and layouts for a loop-layout tree."""
    out = {}

    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, path + [key])
                continue
            value = np.asarray(value)
            if key == "kernel":
                value = np.transpose(value, (2, 1, 0)) if value.ndim == 3 else value.T
                key = "weight"
            elif key in ("scale", "embedding"):
                key = "weight"
            out[".".join(["model"] + path + [key])] = np.ascontiguousarray(value)

    walk(params, [])
    return out


def read_weights(directory: str) -> Dict[str, Any]:
    """Parameters from a transformers directory: safetensors, pytorch_model.bin or flax msgpack, sharded or not."""
    files = sorted(os.listdir(directory))
    for weights, index in (("model.safetensors", "model.safetensors.index.json"),
                           ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        shards = [weights] if weights in files else _shards(directory, index) if index in files else []
        if shards:
            return from_state_dict(_iter_tensors(directory, shards), directory)
    if "flax_model.msgpack" in files:
        return _read_msgpack(os.path.join(directory, "flax_model.msgpack"))
    raise CheckpointError(
        f"{directory}: no weights found (looked for model.safetensors, pytorch_model.bin, their sharded "
        f"*.index.json, and flax_model.msgpack)"
    )


def _shards(directory, index_name):
    path = os.path.join(directory, index_name)
    try:
        with open(path, encoding="utf-8") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable shard index ({e})") from e


def _iter_tensors(directory, shards):
    for shard in shards:
        path = os.path.join(directory, shard)
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        try:
            if shard.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(path, framework="np") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)
            else:
                import torch

                state = torch.load(path, map_location="cpu", weights_only=True)
                for name, tensor in state.items():
                    yield name, tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        except CheckpointError:
            raise
        except Exception as e:  # corrupt files raise many types
            raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e


def _read_msgpack(path):
    from flax.serialization import msgpack_restore

    try:
        with open(path, "rb") as f:
            tree = msgpack_restore(f.read())
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read flax msgpack ({type(e).__name__}: {e})") from e
    tree = tree.get("params", tree)
    tree = tree.get("model", tree)
    return {part: tree[part] for part in ("encoder", "decoder")}
