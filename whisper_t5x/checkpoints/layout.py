"""Convert parameter trees between the loop layout (``layers/{i}/...``) and the
scan layout (one block tree stacked on a leading layers axis)."""

from typing import Any, Dict

import numpy as np


def _is_loop(layers: Dict[str, Any]) -> bool:
    return bool(layers) and all(k.isdigit() for k in layers)


def to_scan_layout(params: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(params)
    for part in ("encoder", "decoder"):
        layers = params[part]["layers"]
        if _is_loop(layers):
            blocks = [layers[str(i)] for i in range(len(layers))]
            stacked = _map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *blocks)
            out[part] = dict(params[part], layers=stacked)
    return out


def to_loop_layout(params: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(params)
    for part in ("encoder", "decoder"):
        layers = params[part]["layers"]
        if not _is_loop(layers):
            count = len(_leaves(layers)[0])
            out[part] = dict(params[part], layers={str(i): _map(lambda x, i=i: x[i], layers) for i in range(count)})
    return out


def _map(fn, *trees):
    if isinstance(trees[0], dict):
        return {k: _map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]
