"""``load_checkpoint``: a path, a named model or a hub id -> :class:`LoadedCheckpoint`.

Order: an existing local path; else (unless the name looks like a path) the
installed named model; else the hub id (a named model's own hub id too);
else, for a hub id a named model was converted from, that installed model.
Only "not there" errors (:class:`NamedModelNotInstalledError`,
:class:`HubUnavailableError`) move on to the next source; a checkpoint that
is found but broken raises its own error at once. When nothing is found the
error lists every source tried and why each failed.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from whisper_t5x.checkpoints import named, resolve
from whisper_t5x.checkpoints.errors import (
    CheckpointNotFoundError,
    HubUnavailableError,
    NamedModelNotInstalledError,
)
from whisper_t5x.checkpoints.hub import hub_snapshot
from whisper_t5x.checkpoints.readers import LoadedCheckpoint, load_ctranslate2, load_path

__all__ = ["load_checkpoint"]


def _load_named(name: str, dtype, label: str) -> LoadedCheckpoint:
    directory, bins = named.resolve_named_model(name)
    return load_ctranslate2(directory, bins, dtype, f"{label} ({directory})")


def load_checkpoint(name_or_path: Any, dtype: Any = None, cache_dir: Optional[str] = None) -> LoadedCheckpoint:
    """Load a Whisper checkpoint of any supported format to host numpy (see :mod:`whisper_t5x.checkpoints`).

    Raises :class:`CheckpointNotFoundError` (:class:`HubUnavailableError` when
    the hub was the last hope) when nothing is found; the other
    :class:`CheckpointError` types for a checkpoint that is found but unusable.
    """
    name = os.fspath(name_or_path)
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return load_path(path, dtype)
    tried: List[str] = [f"local path {path!r}: does not exist"]
    if resolve.looks_like_path(name):
        raise CheckpointNotFoundError(
            f"checkpoint {name!r} not found: {tried[0]} (it looks like a path, so it was not tried as a "
            f"named model or a hub id)"
        )

    canonical = named.canonical_name(name)
    named_missing = False
    if canonical in named.NAMED_MODELS:
        try:
            return _load_named(canonical, dtype, canonical)
        except NamedModelNotInstalledError as e:
            named_missing = True
            tried.append(str(e))
        hub_id = named.NAMED_MODELS[canonical].hub_id
    else:
        tried.append(f"named models: {name!r} is none of {named.known_names()}")
        hub_id = name

    if not resolve.is_hub_id(hub_id):
        tried.append(f"hub: {name!r} is not a hub id of the form 'owner/name'")
        raise CheckpointNotFoundError(f"checkpoint {name!r} not found. Tried: " + "; ".join(tried))
    try:
        snapshot = hub_snapshot(hub_id, cache_dir)
    except HubUnavailableError as e:
        tried.append(str(e))
    else:
        loaded = load_path(snapshot, dtype)
        loaded.source = f"{loaded.source} (hub {hub_id})"
        return loaded
    fallback = named.hub_fallback(hub_id)
    if fallback and not named_missing:
        try:
            return _load_named(fallback, dtype, f"{fallback} for {hub_id}")
        except NamedModelNotInstalledError as e:
            tried.append(str(e))
    raise HubUnavailableError(f"checkpoint {name!r} not found. Tried: " + "; ".join(tried))
