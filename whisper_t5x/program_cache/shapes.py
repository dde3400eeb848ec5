"""A model's parameter shapes (an ``eval_shape`` of its ``init``) kept in a keyed JSON file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Hashable

from whisper_t5x.program_cache import files, keys

logger = logging.getLogger("whisper_t5x.program_cache")


def _shapes_to_json(tree: Any) -> Any:
    import jax

    if isinstance(tree, Mapping):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("only string keys")
        return {k: _shapes_to_json(v) for k, v in tree.items()}
    if isinstance(tree, jax.ShapeDtypeStruct):
        return [list(tree.shape), str(tree.dtype)]
    raise TypeError(f"not a nested dict of ShapeDtypeStruct ({type(tree).__name__})")


def _shapes_from_json(tree: Any) -> Any:
    import jax
    import numpy as np

    if isinstance(tree, dict):
        return {k: _shapes_from_json(v) for k, v in tree.items()}
    shape, dtype = tree
    return jax.ShapeDtypeStruct(tuple(int(d) for d in shape), np.dtype(dtype) if dtype != "bfloat16"
                                else jax.numpy.bfloat16)


def cached_shapes(fn: Callable[[], Any], name: str, key: Hashable) -> Any:
    """``fn()`` -- an ``eval_shape`` returning nested dicts of ``ShapeDtypeStruct`` (a model's parameter
    shapes) -- kept in a small JSON file under the same key rules as programs, so a fresh process does not
    trace the model's ``init`` to learn them. Other results are returned uncached; off like programs."""
    directory = keys.program_cache_dir()
    if directory is None:
        return fn()
    key_text = json.dumps({"name": name, "key": repr(key), "environment": dict(keys.environment())}, sort_keys=True)
    path = os.path.join(directory, f"{name}-{hashlib.sha256(key_text.encode()).hexdigest()[:32]}.shapes.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            if not isinstance(stored, dict) or stored.get("key") != key_text:
                raise files.ProgramFileError("written for another key")
            return _shapes_from_json(stored["tree"])
        except Exception as e:  # noqa: BLE001 - a bad file is ignored, never fatal
            logger.warning("ignoring shape cache file %s (%s: %s)", path, type(e).__name__, e)
    result = fn()
    try:
        blob = json.dumps({"key": key_text, "tree": _shapes_to_json(result)}).encode()
    except TypeError:
        return result
    files.write_blob(path, blob)
    return result
