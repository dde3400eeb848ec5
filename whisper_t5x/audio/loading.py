"""Load audio from files, bytes, arrays or dicts as 16 kHz mono float32.

Whisper consumes 16 kHz mono waveforms in [-1, 1]. :func:`load_audio` turns
every input a user is likely to hold into that:

* a path (``str`` / ``os.PathLike``) to anything ffmpeg can read, decoded by the
  ``ffmpeg`` binary to 32-bit float mono at the target rate;
* encoded ``bytes`` (or a binary file object), piped to ffmpeg's stdin;
* a 1-D float array (numpy, or anything ``np.asarray`` accepts such as a jax
  or torch tensor), taken to be at ``sampling_rate`` already;
* a dict ``{"array": x, "sampling_rate": sr}`` (Hugging Face ``datasets``
  style; ``"raw"`` is accepted for ``"array"`` as in transformers pipelines,
  and ``"path"`` / ``"bytes"`` are decoded when no array is given), resampled
  with soxr (high quality) when ``sr`` differs from the target.

Multi-channel arrays are averaged to mono. The channel axis is the dict's
``"channel_axis"`` when given; otherwise a 2-D array must have exactly one
axis of length <= :data:`MAX_INFERRED_CHANNELS` (8), which is taken as the
channel axis, so ``(n, 2)`` and ``(2, n)`` both work for stereo; anything
ambiguous such as ``(4, 6)`` raises :class:`AudioError` asking for
``channel_axis``.

Empty audio (a zero-length array, or a valid file holding no samples) comes
back as an empty float32 array: whether that is an error is the caller's
decision. Every problem with the input raises :class:`AudioError`, a
``ValueError`` whose message names the culprit.
"""

from __future__ import annotations

import numbers
import os
import shutil
import subprocess
from typing import Any, Mapping, Optional

import numpy as np

from whisper_t5x.audio.constants import SAMPLE_RATE  # noqa: F401 (re-exported)
MAX_INFERRED_CHANNELS = 8
FFMPEG = "ffmpeg"

__all__ = ["AudioError", "SAMPLE_RATE", "load_audio", "get_duration", "resample", "to_mono"]


class AudioError(ValueError):
    """The audio input is missing, undecodable or malformed."""


# --------------------------------------------------------------------- checks
def _check_rate(rate: Any, what: str = "sampling_rate") -> int:
    """A positive integral sample rate (ints, numpy ints, or integral floats)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise AudioError(f"{what} must be a positive number of samples per second, got {rate!r} ({type(rate).__name__})")
    if not np.isfinite(rate) or rate <= 0 or float(rate) != int(rate):
        raise AudioError(f"{what} must be a positive whole number of Hz, got {rate!r}")
    return int(rate)


def _as_float_array(array: Any) -> np.ndarray:
    """``array`` as a finite float32 numpy array; rejects integer/complex/object data."""
    try:
        arr = np.asarray(array)
    except Exception as e:  # noqa: BLE001 - anything unconvertible is a user error
        raise AudioError(f"cannot convert audio of type {type(array).__name__} to an array: {e}") from e
    if arr.dtype.kind != "f":
        hint = ""
        if arr.dtype.kind in "iu":
            hint = f" (integer PCM: divide by {float(2 ** (8 * arr.dtype.itemsize - 1)):.0f} to get [-1, 1] floats)"
        raise AudioError(f"audio array must have a floating-point dtype, got {arr.dtype}{hint}")
    arr = arr.astype(np.float32, copy=False)
    if arr.size and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr.reshape(-1)))
        raise AudioError(
            f"audio contains {bad.size} non-finite value(s) (NaN or inf), first at flat index {int(bad[0])}"
        )
    return arr


def to_mono(array: np.ndarray, channel_axis: Optional[int] = None) -> np.ndarray:
    """Average the channels of a 1-D or 2-D array (see the module docstring for the axis rule)."""
    arr = np.asarray(array)
    if arr.ndim == 1:
        return arr
    if arr.ndim != 2:
        raise AudioError(f"audio array must be 1-D (mono) or 2-D (multi-channel), got shape {arr.shape}")
    if channel_axis is None:
        small = [axis for axis in (0, 1) if arr.shape[axis] <= MAX_INFERRED_CHANNELS]
        if len(small) != 1:
            raise AudioError(
                f"cannot tell the channel axis of a 2-D audio array of shape {arr.shape}; pass it "
                "explicitly, e.g. load_audio({'array': x, 'sampling_rate': sr, 'channel_axis': 0})"
            )
        channel_axis = small[0]
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral) or channel_axis not in (0, 1, -1, -2):
        raise AudioError(f"channel_axis must be 0 or 1 for a 2-D array, got {channel_axis!r}")
    return arr.mean(axis=int(channel_axis), dtype=np.float64).astype(np.float32)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D float array with soxr's high-quality setting."""
    orig_sr, target_sr = _check_rate(orig_sr, "orig_sr"), _check_rate(target_sr, "target_sr")
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr or audio.size == 0:
        return audio
    import soxr  # deferred: only needed when rates differ

    return np.ascontiguousarray(soxr.resample(audio, orig_sr, target_sr, quality="HQ"), dtype=np.float32)


# --------------------------------------------------------------------- ffmpeg
def _ffmpeg_binary() -> str:
    path = shutil.which(FFMPEG)
    if path is None:
        raise AudioError(
            f"the '{FFMPEG}' binary is needed to decode audio files and bytes but was not found on PATH; "
            "install it (e.g. `apt-get install ffmpeg`, `brew install ffmpeg` or `conda install ffmpeg`) "
            "or pass a float array / {'array': ..., 'sampling_rate': ...} dict instead"
        )
    return path


def _ffmpeg_decode(data: Optional[bytes], path: Optional[str], rate: int) -> np.ndarray:
    """Decode ``path`` (or ``data`` through stdin) to mono float32 at ``rate``."""
    name = path if path is not None else "<bytes>"
    # "-rematrix_maxval 1.0" makes ffmpeg's downmix normalise its matrix as it
    # does for integer output: stereo becomes (L + R) / 2. Without it, float
    # output uses the -3 dB centre mix, (L + R) * 0.707, i.e. 1.41x louder.
    cmd = [
        _ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-threads", "0",
        "-i", path if path is not None else "pipe:0",
        "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-rematrix_maxval", "1.0", "-ar", str(rate), "pipe:1",
    ]
    if path is not None:
        cmd.insert(1, "-nostdin")
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    except OSError as e:
        raise AudioError(f"could not run {cmd[0]}: {e}") from e
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise AudioError(f"ffmpeg could not decode {name} as audio: {last}")
    out = proc.stdout
    usable = len(out) - len(out) % 4
    return np.frombuffer(out[:usable], dtype="<f4").astype(np.float32)


def _decode_path(path: Any, rate: int) -> np.ndarray:
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise AudioError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise AudioError(f"audio path is a directory, not a file: {path}")
    return _ffmpeg_decode(None, path, rate)


def _decode_bytes(data: bytes, rate: int) -> np.ndarray:
    if len(data) == 0:
        raise AudioError("audio bytes are empty: there is nothing for ffmpeg to decode")
    return _ffmpeg_decode(bytes(data), None, rate)


# --------------------------------------------------------------------- public
def _from_dict(source: Mapping[str, Any], rate: int) -> np.ndarray:
    array = source.get("array")
    if array is None:
        array = source.get("raw")
    if array is None:
        if source.get("bytes") is not None:
            return _decode_bytes(source["bytes"], rate)
        if source.get("path") is not None:
            return _decode_path(source["path"], rate)
        raise AudioError(
            f"audio dict needs 'array' (or 'raw') with 'sampling_rate', or 'path' / 'bytes'; got keys {sorted(source)}"
        )
    if "sampling_rate" not in source:
        raise AudioError("audio dict with an 'array' must also give its 'sampling_rate'")
    orig = _check_rate(source["sampling_rate"], "audio dict 'sampling_rate'")
    arr = to_mono(_as_float_array(array), source.get("channel_axis"))
    return resample(arr, orig, rate)


def load_audio(source: Any, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return ``source`` as a contiguous 1-D float32 waveform at ``sampling_rate``.

    See the module docstring for the accepted inputs. Bare arrays are assumed to
    be at ``sampling_rate`` already (16 kHz by default) and are not resampled;
    use the dict form to say what rate an array has.
    """
    rate = _check_rate(sampling_rate)
    if isinstance(source, (str, os.PathLike)):
        out = _decode_path(source, rate)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        out = _decode_bytes(bytes(source), rate)
    elif isinstance(source, Mapping):
        out = _from_dict(source, rate)
    elif hasattr(source, "read") and not hasattr(source, "__array__"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise AudioError(f"file object returned {type(data).__name__}, not bytes; open it in binary mode ('rb')")
        out = _decode_bytes(bytes(data), rate)
    elif source is None:
        raise AudioError("audio source is None")
    else:
        out = to_mono(_as_float_array(source))
    return np.ascontiguousarray(out, dtype=np.float32)


def get_duration(source: Any, sampling_rate: Optional[int] = None) -> float:
    """Duration of ``source`` in seconds.

    Arrays use ``sampling_rate`` (default 16 kHz), dicts their own rate; files
    and bytes are decoded (exact, unlike container metadata).
    """
    if isinstance(source, Mapping) and (source.get("array") is not None or source.get("raw") is not None):
        array = source.get("array") if source.get("array") is not None else source["raw"]
        rate = _check_rate(source.get("sampling_rate"), "audio dict 'sampling_rate'")
        return to_mono(_as_float_array(array), source.get("channel_axis")).shape[0] / rate
    rate = SAMPLE_RATE if sampling_rate is None else _check_rate(sampling_rate)
    return load_audio(source, rate).shape[0] / rate
