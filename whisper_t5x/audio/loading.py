"""Load audio from files, bytes, arrays or dicts as 16 kHz mono float32.

Whisper consumes 16 kHz mono waveforms in [-1, 1]. :func:`load_audio` turns
every input a user is likely to hold into that:

* a path (``str`` / ``os.PathLike``) to anything ffmpeg can read, decoded by the
  ``ffmpeg`` binary to 32-bit float mono at the target rate;
* encoded ``bytes`` (or a binary file object), written to a private temporary
  file first: ffmpeg must be able to seek, as MP4 / M4A files keep their index
  (the ``moov`` atom) at the end, where phones and ffmpeg itself put it;
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

Length limit (``max_duration_s``): a compressed file can hold hours of audio
in a few megabytes, so the limit is enforced before decoding everything. The
container's duration (``ffprobe``) rejects a file that clearly exceeds it
without decoding; otherwise ffmpeg decodes at most ``limit + 1`` s into a
buffer sized by the limit, so memory stays bounded even when the metadata is
missing or lies. Arrays and dicts are checked by their length.
:class:`AudioTooLongError` carries ``duration_s`` and ``limit_s``.

Empty input: an empty array comes back as an empty float32 array (whether
that is an error is the caller's decision); empty bytes or a zero-byte file,
and a non-empty file or byte string from which ffmpeg decodes no samples,
raise :class:`EmptyAudioError`, so a broken upload never becomes an empty
transcript. Every problem with the input raises :class:`AudioError`, a
``ValueError`` whose message names the culprit.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import subprocess
import tempfile
import warnings
from typing import Any, BinaryIO, Mapping, Optional, Tuple

import numpy as np

from whisper_t5x.audio.constants import SAMPLE_RATE  # noqa: F401 (re-exported)

MAX_INFERRED_CHANNELS = 8
FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
DECODE_MARGIN_S = 1.0  # a limited decode stops this far past the limit
PROBE_TIMEOUT_S = 30.0
_READ_CHUNK = 1 << 20  # bytes read from ffmpeg at a time when the length is not bounded

__all__ = [
    "AudioError", "AudioTooLongError", "EmptyAudioError", "SAMPLE_RATE", "load_audio", "get_duration",
    "probe_duration", "resample", "to_mono", "load_input", "LoudAudioWarning", "MAX_FLOAT_PEAK",
]


class AudioError(ValueError):
    """The audio input is missing, undecodable or malformed."""


class LoudAudioWarning(UserWarning):
    """A float waveform far outside [-1, 1] was rescaled (integer PCM passed as floats, most often)."""


MAX_FLOAT_PEAK = 4.0  # float samples beyond this are not [-1, 1] audio with some clipping: they are rescaled
_INT16_FULL_SCALE = 32768.0


def _rescale_loud(arr: np.ndarray) -> np.ndarray:
    """Float audio whose peak exceeds :data:`MAX_FLOAT_PEAK` scaled into [-1, 1], with a :class:`LoudAudioWarning`.

    A peak up to 32768 is taken as 16-bit PCM held in floats (divided by 32768, keeping its level); a larger one
    is divided by its peak. Whisper's features and the VAD see such arrays as noise, and text would be lost.
    """
    peak = float(np.max(np.abs(arr))) if arr.size else 0.0
    if peak <= MAX_FLOAT_PEAK:
        return arr
    scale = _INT16_FULL_SCALE if peak <= _INT16_FULL_SCALE else peak
    warnings.warn(f"float audio peaks at {peak:.4g}, far outside [-1, 1]: divided by {scale:.6g} "
                  f"(pass float samples in [-1, 1])", LoudAudioWarning, stacklevel=4)
    return (arr / np.float32(scale)).astype(np.float32)


class EmptyAudioError(AudioError):
    """The input holds no audio: empty bytes or file, or ffmpeg decoded zero samples from it."""


class AudioTooLongError(AudioError):
    """The audio is longer than ``max_duration_s``.

    ``duration_s`` is the length the container declares when it declares one
    above the limit, ``None`` when only the capped decode showed that the
    audio exceeds ``limit_s``.
    """

    def __init__(self, name: str, duration_s: Optional[float], limit_s: float):
        self.duration_s = None if duration_s is None else float(duration_s)
        self.limit_s = float(limit_s)
        self.name = name
        length = f"{self.duration_s:.1f} s long, " if self.duration_s is not None else ""
        super().__init__(f"{name} is {length}longer than the limit of {self.limit_s:g} s")

    def __reduce__(self):  # picklable (e.g. across a process pool) despite the custom signature
        return type(self), (self.name, self.duration_s, self.limit_s)


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
    return _rescale_loud(arr)


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


def _check_limit(max_duration_s: Any) -> Optional[float]:
    if max_duration_s is None:
        return None
    if isinstance(max_duration_s, bool) or not isinstance(max_duration_s, numbers.Real) \
            or not math.isfinite(max_duration_s) or max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be a positive number of seconds or None, got {max_duration_s!r}")
    return float(max_duration_s)


def probe_duration(path: str) -> Optional[float]:
    """The duration the container declares (``ffprobe``), or ``None`` when it
    declares none, ffprobe is missing or fails. Reads headers only (cheap)."""
    binary = shutil.which(FFPROBE)
    if binary is None:
        return None
    cmd = [binary, "-v", "error", "-show_entries", "format=duration", "-of", "default=noprint_wrappers=1:nokey=1",
           path]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    for line in proc.stdout.decode("ascii", "replace").split():
        try:
            value = float(line)
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def _read_samples(stream: BinaryIO, max_samples: Optional[int], keep: bool = True) -> Tuple[Optional[np.ndarray], int]:
    """Little-endian float32 samples from ``stream``; returns ``(samples, count)``.

    With ``max_samples`` reading stops after ``max_samples + 1`` samples (the
    caller then knows the audio is longer) into one buffer of that size, so
    memory is bounded by the limit. Without it, chunks are gathered and copied
    into one array, freed as they are copied. ``keep=False`` only counts.
    """
    if max_samples is not None and keep:
        buf = np.empty(max_samples + 1, dtype="<f4")
        view = memoryview(buf).cast("B")
        filled = 0
        while filled < len(view):
            got = stream.readinto(view[filled:])
            if not got:
                break
            filled += got
        view.release()
        count = filled // 4
        buf.resize(count, refcheck=False)  # gives back the untouched tail
        return buf, count
    chunks = []
    total = 0
    while max_samples is None or total < 4 * (max_samples + 1):
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if keep:
            chunks.append(chunk)
    count = total // 4 if max_samples is None else min(total // 4, max_samples + 1)
    if not keep:
        return None, count
    out = np.empty(count, dtype=np.float32)
    raw = memoryview(out).cast("B")
    pos = 0
    chunks.reverse()
    while chunks and pos < len(raw):  # free each chunk once copied: peak ~ output + one chunk
        chunk = chunks.pop()
        take = min(len(chunk), len(raw) - pos)
        raw[pos:pos + take] = chunk[:take]
        pos += take
    raw.release()
    return out, count


def _ffmpeg_decode(path: str, rate: int, name: str, max_samples: Optional[int] = None,
                   keep: bool = True) -> Tuple[Optional[np.ndarray], int]:
    """Decode the file ``path`` to mono float32 at ``rate`` (at most ``max_samples + 1`` samples)."""
    # "-rematrix_maxval 1.0" makes ffmpeg's downmix normalise its matrix as it
    # does for integer output: stereo becomes (L + R) / 2. Without it, float
    # output uses the -3 dB centre mix, (L + R) * 0.707, i.e. 1.41x louder.
    cmd = [
        _ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0", "-i", path,
        "-vn", "-sn", "-dn", "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-rematrix_maxval", "1.0",
        "-ar", str(rate),
    ]
    if max_samples is not None:
        cmd += ["-t", f"{(max_samples + 1) / rate + DECODE_MARGIN_S:.3f}"]
    cmd.append("pipe:1")
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise AudioError(f"could not run {cmd[0]}: {e}") from e
        try:
            samples, count = _read_samples(proc.stdout, max_samples, keep)
        except BaseException:  # interrupted, out of memory, ...: do not leave ffmpeg running
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        stopped = max_samples is not None and count > max_samples
        if stopped:
            proc.kill()  # long enough to know it is too long: the rest is not needed
        proc.wait()
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    if name != path:  # a temporary copy: its path means nothing to the caller (and stays private)
        text = text.replace(path, "<input>")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if proc.returncode != 0 and not stopped:
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise AudioError(f"ffmpeg could not decode {name} as audio: {last}")
    if count == 0:
        why = f": {lines[-1]}" if lines else ""
        raise EmptyAudioError(f"ffmpeg decoded no audio samples from {name}{why}")
    return samples, count


def _decode_file(path: str, rate: int, limit: Optional[float], name: str) -> np.ndarray:
    """``path`` (a regular file) decoded, with the length limit checked first by metadata."""
    max_samples = None
    declared = None
    if limit is not None:
        declared = probe_duration(path)
        if declared is not None and declared > limit + DECODE_MARGIN_S:
            raise AudioTooLongError(name, declared, limit)
        max_samples = int(math.floor(limit * rate))
    samples, count = _ffmpeg_decode(path, rate, name, max_samples)
    if max_samples is not None and count > max_samples:
        raise AudioTooLongError(name, declared if declared is not None and declared > limit else None, limit)
    return samples


def _check_file(path: Any) -> str:
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise AudioError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise AudioError(f"audio path is a directory, not a file: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise EmptyAudioError(f"audio file is empty (0 bytes): {path}")
    return path


def _decode_path(path: Any, rate: int, limit: Optional[float] = None) -> np.ndarray:
    path = _check_file(path)
    return _decode_file(path, rate, limit, path)


class _SeekableCopy:
    """Encoded bytes in a private temporary file (mode 0600), removed on exit."""

    def __init__(self, data: bytes):
        self.data = data
        self.path: Optional[str] = None

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="whisper_t5x-audio-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.data)
        except BaseException:
            self.__exit__()
            raise
        return self.path

    def __exit__(self, *exc: Any) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def _check_bytes(data: Any) -> bytes:
    data = bytes(data)
    if len(data) == 0:
        raise EmptyAudioError("audio bytes are empty: there is nothing for ffmpeg to decode")
    _ffmpeg_binary()  # fail before writing a temporary file
    return data


def _decode_bytes(data: bytes, rate: int, limit: Optional[float] = None) -> np.ndarray:
    data = _check_bytes(data)
    with _SeekableCopy(data) as path:
        return _decode_file(path, rate, limit, f"<bytes> ({len(data)} bytes)")


# --------------------------------------------------------------------- public
def _dict_array(source: Mapping[str, Any]) -> Any:
    array = source.get("array")
    return source.get("raw") if array is None else array


def _check_array_length(num_samples: int, rate: int, limit: Optional[float], what: str) -> None:
    if limit is not None and num_samples > limit * rate:
        raise AudioTooLongError(what, num_samples / rate, limit)


def _from_dict(source: Mapping[str, Any], rate: int, limit: Optional[float]) -> np.ndarray:
    array = _dict_array(source)
    if array is None:
        if source.get("bytes") is not None:
            return _decode_bytes(source["bytes"], rate, limit)
        if source.get("path") is not None:
            return _decode_path(source["path"], rate, limit)
        raise AudioError(
            f"audio dict needs 'array' (or 'raw') with 'sampling_rate', or 'path' / 'bytes'; got keys {sorted(source)}"
        )
    if "sampling_rate" not in source:
        raise AudioError("audio dict with an 'array' must also give its 'sampling_rate'")
    orig = _check_rate(source["sampling_rate"], "audio dict 'sampling_rate'")
    arr = to_mono(_as_float_array(array), source.get("channel_axis"))
    _check_array_length(arr.shape[0], orig, limit, "the audio array")  # before resampling it
    return resample(arr, orig, rate)


def _read_file_object(source: Any) -> bytes:
    data = source.read()
    if not isinstance(data, (bytes, bytearray)):
        raise AudioError(f"file object returned {type(data).__name__}, not bytes; open it in binary mode ('rb')")
    return bytes(data)


def load_audio(source: Any, sampling_rate: int = SAMPLE_RATE, max_duration_s: Optional[float] = None) -> np.ndarray:
    """Return ``source`` as a contiguous 1-D float32 waveform at ``sampling_rate``.

    See the module docstring for the accepted inputs. Bare arrays are assumed to
    be at ``sampling_rate`` already (16 kHz by default) and are not resampled;
    use the dict form to say what rate an array has. ``max_duration_s``: raise
    :class:`AudioTooLongError` for longer audio, checked before decoding it all.
    """
    rate = _check_rate(sampling_rate)
    limit = _check_limit(max_duration_s)
    if isinstance(source, (str, os.PathLike)):
        out = _decode_path(source, rate, limit)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        out = _decode_bytes(source, rate, limit)
    elif isinstance(source, Mapping):
        out = _from_dict(source, rate, limit)
    elif hasattr(source, "read") and not hasattr(source, "__array__"):
        out = _decode_bytes(_read_file_object(source), rate, limit)
    elif source is None:
        raise AudioError("audio source is None")
    else:
        out = to_mono(_as_float_array(source))
        _check_array_length(out.shape[0], rate, limit, "the audio array")
    return np.ascontiguousarray(out, dtype=np.float32)


def _count_decoded(path: str, rate: int, name: str) -> int:
    return _ffmpeg_decode(path, rate, name, keep=False)[1]


def get_duration(source: Any, sampling_rate: Optional[int] = None) -> float:
    """Duration of ``source`` in seconds.

    Arrays use ``sampling_rate`` (default 16 kHz), dicts their own rate. Files
    and bytes use the duration their container declares (``ffprobe``: no
    decoding; codecs with priming samples such as AAC may differ from the
    decoded length by a few milliseconds); when there is none, the decoded
    samples are counted without being kept.
    """
    if isinstance(source, Mapping) and _dict_array(source) is not None:
        rate = _check_rate(source.get("sampling_rate"), "audio dict 'sampling_rate'")
        return to_mono(_as_float_array(_dict_array(source)), source.get("channel_axis")).shape[0] / rate
    rate = SAMPLE_RATE if sampling_rate is None else _check_rate(sampling_rate)
    if isinstance(source, Mapping) and source.get("bytes") is None and source.get("path") is not None:
        source = source["path"]
    elif isinstance(source, Mapping) and source.get("bytes") is not None:
        source = source["bytes"]
    elif hasattr(source, "read") and not hasattr(source, "__array__") and not isinstance(source, Mapping):
        source = _read_file_object(source)
    if isinstance(source, (str, os.PathLike)):
        path = _check_file(source)
        declared = probe_duration(path)
        return declared if declared is not None else _count_decoded(path, rate, path) / rate
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = _check_bytes(source)
        with _SeekableCopy(data) as path:
            declared = probe_duration(path)
            return declared if declared is not None else _count_decoded(path, rate, "<bytes>") / rate
    return load_audio(source, rate).shape[0] / rate


def load_input(source: Any, index: int, count: int, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """:func:`load_audio` for input ``index`` of ``count``: with several inputs the error names the input
    (``"input 3: ..."``), keeping its type and attributes (``input_index`` is set)."""
    try:
        return load_audio(source, sampling_rate)
    except AudioError as e:
        if count > 1:
            e.args = (f"input {index}: {e}",)
            e.input_index = index
        raise
