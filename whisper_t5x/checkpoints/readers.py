"""One reader per format: local files -> :class:`LoadedCheckpoint` (host numpy, loop layout).

Each reader builds the :class:`~whisper_t5x.model.config.WhisperConfig` its
format describes, the generation settings and the tokenizer path, and hands
the tree to :func:`_finish`, which fills in the audio sinusoids some exports
leave out, checks every shape against the config and casts the dtype.
:func:`load_path` picks the reader from :func:`~whisper_t5x.checkpoints.resolve.detect`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from whisper_t5x.checkpoints import ctranslate2_format, hf, openai_format, resolve
from whisper_t5x.checkpoints.errors import CorruptCheckpointError, UnsupportedFormatError
from whisper_t5x.checkpoints.generation import default_generation_config
from whisper_t5x.checkpoints.layout import to_loop_layout
from whisper_t5x.checkpoints.params import cast_params, check_params, sinusoids
from whisper_t5x.model.config import WhisperConfig

__all__ = ["LoadedCheckpoint", "load_ctranslate2", "load_huggingface", "load_openai", "load_path"]


@dataclasses.dataclass
class LoadedCheckpoint:
    """A checkpoint on the host: ``params`` are numpy arrays in the loop layout."""

    config: WhisperConfig
    params: Dict[str, Any]
    tokenizer_file: Optional[str]
    generation_config: Dict[str, Any]
    source: str  # "<format>:<path>", e.g. "ctranslate2:/.../model.bin"


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{path}: expected a JSON object")
    return value


def _tokenizer_beside(directory: str) -> Optional[str]:
    path = os.path.join(directory, "tokenizer.json")
    return path if os.path.isfile(path) else None


def _finish(params, config: WhisperConfig, dtype, source: str, tokenizer: Optional[str], generation: dict,
            origin: str) -> LoadedCheckpoint:
    params = to_loop_layout(params)
    if "embed_positions" not in params.get("encoder", {}):
        # Some exports leave out the fixed audio sinusoids; they are Whisper's, always.
        params["encoder"]["embed_positions"] = {"embedding": sinusoids(config.max_source_positions, config.d_model)}
    check_params(params, config, origin)
    return LoadedCheckpoint(config, cast_params(params, dtype), tokenizer, generation, source)


def load_huggingface(directory: str, dtype) -> LoadedCheckpoint:
    """A transformers directory: ``config.json``, optional ``generation_config.json``, the weights."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise CorruptCheckpointError(f"{directory}: no config.json beside the weights")
    try:
        config = WhisperConfig.from_dict(_read_json(config_path))
    except CorruptCheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise UnsupportedFormatError(f"{config_path}: not a Whisper config ({e})") from e
    generation_path = os.path.join(directory, "generation_config.json")
    file_generation = _read_json(generation_path) if os.path.isfile(generation_path) else {}
    changes = {}
    for key in ("alignment_heads", "suppress_tokens", "begin_suppress_tokens"):
        if not getattr(config, key) and file_generation.get(key):
            changes[key] = file_generation[key]
    if changes:
        config = config.replace(**changes)
    generation = dict(file_generation)
    for key, value in default_generation_config(config).items():
        if key not in ("lang_to_id", "task_to_id"):  # only the file's own language table
            generation.setdefault(key, value)
    params = hf.read_weights(directory)
    files = hf.weight_files(directory)
    kind = "flax" if files[0].endswith(".msgpack") else "huggingface"
    return _finish(params, config, dtype, f"{kind}:{directory}", _tokenizer_beside(directory), generation,
                   f"{directory} (weights {', '.join(os.path.basename(f) for f in files[:3])}"
                   f"{' ...' if len(files) > 3 else ''}; config {config_path})")


def load_ctranslate2(config_dir: str, bins: Sequence[str], dtype, label: str) -> LoadedCheckpoint:
    """A CTranslate2 model: ``model.bin`` (or its pieces in order) with ``config.json`` in ``config_dir``."""
    origin = " + ".join(bins)
    params, sizes, info = ctranslate2_format.load(bins, origin)
    config_path = os.path.join(config_dir, "config.json")
    extra = _read_json(config_path) if os.path.isfile(config_path) else {}
    try:
        config = WhisperConfig(
            **sizes,
            suppress_tokens=tuple(extra.get("suppress_ids") or ()),
            begin_suppress_tokens=tuple(extra.get("suppress_ids_begin") or ()),
            alignment_heads=tuple(map(tuple, extra.get("alignment_heads") or ())),
        )
    except (TypeError, ValueError) as e:
        raise UnsupportedFormatError(f"{origin}: the weights do not describe a Whisper model ({e})") from e
    generation = default_generation_config(config, extra.get("lang_ids"))
    generation["ctranslate2"] = dict(info)
    return _finish(params, config, dtype, f"ctranslate2:{label}", _tokenizer_beside(config_dir), generation, origin)


def load_openai(path: str, dtype) -> LoadedCheckpoint:
    """An openai-whisper ``.pt``; no tokenizer file (openai's is tiktoken's, not a tokenizer.json)."""
    dims, params, extras = openai_format.read(path)
    try:
        config = WhisperConfig.from_openai_dims(dims, alignment_heads=tuple(extras.get("alignment_heads") or ()))
    except (TypeError, ValueError, KeyError) as e:
        raise UnsupportedFormatError(f"{path}: bad 'dims' {dims} ({e})") from e
    # openai's MLP is 4 x d_model, which from_openai_dims assumes; check_params confirms it.
    suppress = _openai_suppress_tokens(config)
    if suppress:
        config = config.replace(suppress_tokens=suppress)
    return _finish(params, config, dtype, f"openai:{path}", None, default_generation_config(config), path)


def _openai_suppress_tokens(config: WhisperConfig) -> Tuple[int, ...]:
    """openai-whisper's default ``suppress_tokens="-1"`` set, from its tokenizer when installed."""
    try:
        from whisper.tokenizer import get_tokenizer
    except ImportError:
        return ()
    try:
        special = config.special_tokens
        tokenizer = get_tokenizer(config.is_multilingual, num_languages=special.num_languages)
        return tuple(sorted(set(tokenizer.non_speech_tokens) | {
            special.transcribe, special.translate, special.sot, special.sot_prev, special.sot_lm, special.no_speech}))
    except Exception:  # noqa: BLE001 - no tiktoken files or another openai-whisper version: left to the caller
        return ()


def load_path(path: str, dtype) -> LoadedCheckpoint:
    """The checkpoint at an existing local ``path`` (directory or file), whatever its format."""
    found = resolve.detect(path)
    if found.kind == resolve.CTRANSLATE2:
        return load_ctranslate2(found.directory, found.files, dtype, path)
    if found.kind == resolve.OPENAI:
        return load_openai(path, dtype)
    return load_huggingface(found.directory, dtype)
