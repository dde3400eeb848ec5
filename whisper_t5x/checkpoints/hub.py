"""Hugging Face hub ids through the standard hub cache.

A cached snapshot is used without network access; otherwise, unless
``HF_HUB_OFFLINE`` is set, the repository's file list picks ONE weight format
(CTranslate2 ``model.bin`` first, then safetensors, PyTorch, Flax) and only
those files and the metadata are downloaded. Whatever stops the hub from
providing weights is a :class:`HubUnavailableError`, so the caller can try
something else (an installed named model) on that type alone.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from whisper_t5x.checkpoints import hf
from whisper_t5x.checkpoints.errors import HubUnavailableError
from whisper_t5x.checkpoints.resolve import has_weights

__all__ = ["hub_snapshot", "offline"]

_PATTERNS = {
    "ctranslate2": ["model.bin", "config.json", "tokenizer.json", "vocabulary.*", "preprocessor_config.json"],
    "safetensors": ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
    "pytorch": ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"],
    "flax": ["flax_model.msgpack", "flax_model.msgpack.index.json", "flax_model-*.msgpack"],
}
_METADATA = ["config.json", "generation_config.json", "preprocessor_config.json"] + list(hf.TOKENIZER_FILES)


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (the variable or huggingface_hub's constant) forbids downloads."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - no or an unusual huggingface_hub: the variable decides
        return False


def _cache_location(cache_dir: Optional[str]) -> str:
    """The hub cache directory, for messages (huggingface_hub resolves it the same way)."""
    return cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")


def _weight_format(files: set) -> Optional[str]:
    if "model.bin" in files:
        return "ctranslate2"
    for kind in ("safetensors", "pytorch", "flax"):
        patterns = [re.compile(p.replace(".", r"\.").replace("*", ".*")) for p in _PATTERNS[kind]]
        if any(p.fullmatch(f) for p in patterns for f in files):
            return kind
    return None


def hub_snapshot(repo_id: str, cache_dir: Optional[str]) -> str:
    """A local snapshot of ``repo_id`` holding one weight format (cache first, then the network)."""
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError as e:
        raise HubUnavailableError(f"hub id {repo_id!r}: huggingface_hub is not installed") from e
    cache = _cache_location(cache_dir)
    every_pattern = sorted({p for ps in _PATTERNS.values() for p in ps} | set(_METADATA))
    try:
        local = snapshot_download(repo_id, allow_patterns=every_pattern, cache_dir=cache_dir, local_files_only=True)
        if has_weights(local):
            return local
        cached_problem = "the cached snapshot has no weights"
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises several types for "not cached"
        cached_problem = f"not in the cache ({type(e).__name__})"
    if offline():
        raise HubUnavailableError(
            f"hub id {repo_id!r}: {cached_problem} at {cache}, and HF_HUB_OFFLINE is set so the Hugging Face "
            f"hub was not asked"
        )
    try:
        files = set(HfApi().list_repo_files(repo_id))
        kind = _weight_format(files)
        if kind is None:
            raise HubUnavailableError(
                f"hub id {repo_id!r}: the repository has no Whisper weights ({sorted(files)[:10]})")
        return snapshot_download(repo_id, allow_patterns=_PATTERNS[kind] + _METADATA, cache_dir=cache_dir)
    except HubUnavailableError:
        raise
    except Exception as e:  # noqa: BLE001 - no network, unknown repository, gated model ...
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise HubUnavailableError(
            f"hub id {repo_id!r}: {cached_problem} at {cache}, and the Hugging Face hub could not be reached "
            f"or does not provide it ({type(e).__name__}: {first_line})"
        ) from e
