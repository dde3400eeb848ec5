"""Writing checkpoints for other libraries: a transformers directory and an openai-whisper ``.pt``.

Both accept parameters in either layout, numpy or jax, of any float dtype,
and check them against the config before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional

import numpy as np

from whisper_t5x.audio.constants import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper_t5x.checkpoints import hf, openai_format, safetensors_io
from whisper_t5x.checkpoints.errors import MissingTokenizerError, UnsupportedFormatError
from whisper_t5x.checkpoints.generation import default_generation_config
from whisper_t5x.checkpoints.layout import to_loop_layout
from whisper_t5x.checkpoints.params import check_params, to_numpy
from whisper_t5x.model.config import WhisperConfig

__all__ = ["export_openai_checkpoint", "save_pretrained"]


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


def _write_json(path: str, value: Mapping) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


def _preprocessor_config(config: WhisperConfig) -> Dict[str, Any]:
    """transformers' ``WhisperFeatureExtractor`` settings for Whisper's audio grid."""
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": config.num_mel_bins,
        "sampling_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "chunk_length": CHUNK_LENGTH,
        "n_fft": N_FFT,
        "n_samples": N_SAMPLES,
        "nb_max_frames": N_FRAMES,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
        "processor_class": "WhisperProcessor",
    }


def _copy(source: str, destination: str) -> None:
    if os.path.abspath(source) != os.path.abspath(destination):
        shutil.copyfile(source, destination)


def save_pretrained(directory: str, config: WhisperConfig, params: Mapping, tokenizer_file: Optional[str] = None,
                    generation_config: Optional[Mapping[str, Any]] = None, dtype: Any = np.float32) -> None:
    """Write a directory ``transformers.WhisperForConditionalGeneration.from_pretrained`` loads.

    ``params`` may be in either layout, numpy or jax, of any float dtype. The
    weights are written as ``dtype`` (float32 by default: exact for float16 and
    bfloat16 inputs and loadable by every consumer; pass ``np.float16`` or
    ``"bfloat16"`` for half-size files). ``proj_out`` is tied and not written.
    ``generation_config`` entries override the defaults the config implies.
    A ``tokenizer_file`` that does not exist is a :class:`MissingTokenizerError`,
    raised before anything is written.
    """
    if tokenizer_file and not os.path.isfile(tokenizer_file):
        raise MissingTokenizerError(f"{tokenizer_file}: tokenizer file not found")
    os.makedirs(directory, exist_ok=True)
    params = _prepare(config, params, directory)
    import ml_dtypes  # noqa: F401  (registers "bfloat16" with numpy)

    target = np.dtype(dtype)
    safetensors_io.write(os.path.join(directory, "model.safetensors"), hf.to_state_dict(params), dtype=target,
                         metadata={"format": "pt"})
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(target, "bfloat16")
    _write_json(os.path.join(directory, "config.json"), hf_config)
    generation = default_generation_config(config)
    for key, value in (generation_config or {}).items():
        if key == "ctranslate2":
            continue
        try:
            generation[key] = _json_ready(value)
        except TypeError:
            continue  # not JSON: not a generation setting transformers could read either
    _write_json(os.path.join(directory, "generation_config.json"), generation)
    _write_json(os.path.join(directory, "preprocessor_config.json"), _preprocessor_config(config))
    if tokenizer_file:
        source_dir = os.path.dirname(os.path.abspath(tokenizer_file))
        _copy(tokenizer_file, os.path.join(directory, "tokenizer.json"))
        # The slow-tokenizer files of a transformers directory travel along when present.
        for name in hf.TOKENIZER_FILES[1:]:
            if os.path.isfile(os.path.join(source_dir, name)):
                _copy(os.path.join(source_dir, name), os.path.join(directory, name))


def export_openai_checkpoint(path: str, config: WhisperConfig, params: Mapping, dtype: Any = np.float32) -> None:
    """Write an openai-whisper ``.pt`` (``{"dims", "model_state_dict"}``) that ``whisper.load_model(path)``
    accepts. ``dtype`` is float32 (default) or float16 (what openai publishes); any other is an
    :class:`UnsupportedFormatError` (a ``ValueError``)."""
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise UnsupportedFormatError(f"openai-whisper checkpoints are float32 or float16, not {dtype}")
    params = _prepare(config, params, path)
    openai_format.write(path, config, params, dtype=dtype)
