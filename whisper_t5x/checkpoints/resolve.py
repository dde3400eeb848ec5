"""What a checkpoint name is, and which format a local path holds.

A name is tried as a local path first; one that looks like a path is never
tried as anything else. :func:`detect` tells the format of an existing path
from its file names alone (no file is opened), so every reader is handed
exactly the files it reads.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import List, Tuple

from whisper_t5x.checkpoints import hf
from whisper_t5x.checkpoints.errors import UnsupportedFormatError

__all__ = ["LocalCheckpoint", "ct2_parts", "detect", "has_weights", "is_hub_id", "looks_like_path"]

CTRANSLATE2, HUGGINGFACE, OPENAI = "ctranslate2", "huggingface", "openai"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".msgpack", ".json")
_HF_WEIGHT_NAMES = tuple(single for single, _ in hf.WEIGHT_FILES)


@dataclasses.dataclass(frozen=True)
class LocalCheckpoint:
    """A local checkpoint: its format, the directory of its metadata and its weight files."""

    kind: str                 # CTRANSLATE2, HUGGINGFACE or OPENAI
    directory: str            # where config.json / tokenizer.json are looked for
    files: Tuple[str, ...]    # CTranslate2: the model.bin pieces in order; openai: the .pt; HF: ()


def looks_like_path(name: str) -> bool:
    """True for names that can only mean a file or directory (``./x``, ``/x``, ``x.pt``, ``a/b/c``)."""
    return name.startswith((".", "/", "~", os.sep)) or name.endswith(_PATH_SUFFIXES) or name.count("/") > 1


def is_hub_id(name: str) -> bool:
    """True for ``owner/name``."""
    return bool(_HUB_ID.match(name))


def ct2_parts(directory: str) -> List[str]:
    """``model.bin``, or ``model.bin.part1``, ``.part2`` ... in numeric order, or []."""
    single = os.path.join(directory, "model.bin")
    if os.path.isfile(single):
        return [single]
    parts = glob.glob(os.path.join(glob.escape(directory), "model.bin.part*"))
    numbered = sorted((int(m.group(1)), p) for p in parts if (m := re.search(r"\.part(\d+)$", p)))
    return [p for _, p in numbered]


def has_weights(directory: str) -> bool:
    """True when ``directory`` holds CTranslate2 or transformers weights."""
    return bool(ct2_parts(directory) or hf.weight_files(directory))


def detect(path: str) -> LocalCheckpoint:
    """The format of an existing ``path`` (directory or file); :class:`UnsupportedFormatError` if none."""
    if os.path.isdir(path):
        bins = ct2_parts(path)
        if bins:
            return LocalCheckpoint(CTRANSLATE2, path, tuple(bins))
        if hf.weight_files(path) or os.path.isfile(os.path.join(path, "config.json")):
            return LocalCheckpoint(HUGGINGFACE, path, ())
        raise UnsupportedFormatError(
            f"{path}: no checkpoint in this directory (looked for model.bin [CTranslate2], config.json with "
            f"model.safetensors / pytorch_model.bin / flax_model.msgpack [Hugging Face])"
        )
    base = os.path.basename(path)
    directory = os.path.dirname(os.path.abspath(path))
    if base == "model.bin":
        return LocalCheckpoint(CTRANSLATE2, directory, (path,))
    if base in _HF_WEIGHT_NAMES or base.endswith(".index.json"):
        return LocalCheckpoint(HUGGINGFACE, directory, ())
    if base.endswith((".pt", ".pth")):
        return LocalCheckpoint(OPENAI, directory, (path,))
    raise UnsupportedFormatError(
        f"{path}: unknown checkpoint file (expected a directory, model.bin, model.safetensors, pytorch_model.bin, "
        f"flax_model.msgpack or an openai-whisper .pt)"
    )
