"""Whisper's log-mel spectrogram, in numpy (float64) and in jittable JAX.

The definition every Whisper checkpoint was trained on:

1. 16 kHz mono audio, zero-padded (or truncated) to 30 s = 480000 samples;
2. STFT with n_fft = 400, hop = 160, a periodic Hann window and centre
   reflect padding of n_fft // 2 on both sides, giving 3001 frames;
3. power |X|^2 of the 201 one-sided bins, the last frame dropped (3000 left);
4. an 80- or 128-band Slaney mel filterbank (0 to 8 kHz, Slaney area
   normalisation), built here by :func:`mel_filters`;
5. log10(max(mel, 1e-10)), clamped from below at (max - 8) where the max is
   taken per example over its whole (padded) spectrogram, then (x + 4) / 4.

Padding before the STFT (rather than after) matters: the zeros enter the
reflect padding and the per-example max exactly as in transformers'
``WhisperFeatureExtractor`` and openai-whisper's ``log_mel_spectrogram`` on a
``pad_or_trim``-ed waveform.

:func:`log_mel_spectrogram_np` is the float64 numpy reference and accepts
ragged batches; :func:`log_mel_spectrogram` is the float32 JAX version with
static shapes for use under ``jit`` on ``(batch, 480000)`` input.
:class:`WhisperFeatureExtractor` mimics the transformers class of that name so
processor-style code (``fe(audio, sampling_rate=16000,
return_tensors="np")["input_features"]``) keeps working.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np

from whisper_t5x.audio.constants import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE  # noqa: F401 (re-exported)
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each example's maximum

__all__ = [
    "N_SAMPLES", "N_FRAMES", "mel_filters", "hann_window", "pad_or_trim",
    "log_mel_spectrogram_np", "log_mel_spectrogram", "WhisperFeatureExtractor", "FeatureExtractor",
]


# ----------------------------------------------------------------- constants
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-30) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    log_part = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log_part, linear)


@functools.lru_cache(maxsize=8)
def _mel_filters_cached(n_mels: int, n_fft: int, sampling_rate: int, fmax: float) -> np.ndarray:
    bin_hz = np.linspace(0.0, sampling_rate / 2, 1 + n_fft // 2)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every triangle has unit area in Hz.
    weights = triangles * (2.0 / (upper - lower))
    weights.setflags(write=False)
    return weights


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sampling_rate: int = SAMPLE_RATE, fmax: float = 8000.0) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filterbank, shape (n_mels, 1 + n_fft // 2), float64."""
    if n_mels <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    return _mel_filters_cached(int(n_mels), int(n_fft), int(sampling_rate), float(fmax))


def hann_window(n: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (the DFT-even variant used by torch.stft and Whisper)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


# ----------------------------------------------------------------- numpy
def pad_or_trim(audio: Any, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad or truncate the last axis of ``audio`` to ``length`` samples."""
    audio = np.asarray(audio)
    n = audio.shape[-1]
    if n > length:
        return audio[..., :length]
    if n < length:
        widths = [(0, 0)] * (audio.ndim - 1) + [(0, length - n)]
        return np.pad(audio, widths)
    return audio


def _as_batch(audio: Any) -> "tuple[list, bool]":
    """(list of 1-D arrays, whether the input was batched)."""
    if isinstance(audio, np.ndarray) or hasattr(audio, "__array__"):
        arr = np.asarray(audio)
        if arr.ndim == 1:
            return [arr], False
        if arr.ndim == 2:
            return list(arr), True
        raise ValueError(f"audio must be 1-D or a 2-D batch, got shape {arr.shape}")
    if isinstance(audio, (list, tuple)):
        if len(audio) == 0:
            return [], True
        if all(np.ndim(a) == 0 for a in audio):
            return [np.asarray(audio)], False
        items = [np.asarray(a) for a in audio]
        for i, a in enumerate(items):
            if a.ndim != 1:
                raise ValueError(f"batch item {i} must be a 1-D waveform, got shape {a.shape}")
        return items, True
    raise TypeError(f"audio must be an array or a list of arrays, got {type(audio).__name__}")


def log_mel_spectrogram_np(
    audio: Any,
    n_mels: int = 80,
    n_samples: Optional[int] = N_SAMPLES,
) -> np.ndarray:
    """Log-mel features in numpy: (n_mels, frames) for one waveform, (batch, n_mels, frames) for a batch.

    ``audio`` is a 1-D waveform, a 2-D ``(batch, samples)`` array or a list of
    1-D waveforms of any lengths (16 kHz). Each is padded/truncated to
    ``n_samples`` (30 s) first, giving 3000 frames; ``n_samples=None`` keeps
    each length as is (then a batch must share one length) and gives
    ``samples // 160`` frames. Computed in float64, returned as float32.
    """
    items, batched = _as_batch(audio)
    if not items:
        return np.zeros((0, n_mels, (n_samples or 0) // HOP_LENGTH), np.float32)
    if n_samples is not None:
        items = [pad_or_trim(a.astype(np.float32), n_samples) for a in items]
    lengths = {a.shape[0] for a in items}
    if len(lengths) != 1:
        raise ValueError(f"with n_samples=None all batch items need one length, got {sorted(lengths)}")
    x = np.stack(items).astype(np.float64)
    n = x.shape[1]
    if n // HOP_LENGTH == 0:
        out = np.zeros((len(items), n_mels, 0), np.float32)
        return out if batched else out[0]
    # Centre reflect padding; too-short input (n <= n_fft // 2) cannot be reflected, so zero-pad it first.
    pad = N_FFT // 2
    if n <= pad:
        x = np.pad(x, ((0, 0), (0, pad + 1 - n)))
    x = np.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    num_frames = 1 + n // HOP_LENGTH
    starts = np.arange(num_frames) * HOP_LENGTH
    index = starts[:, None] + np.arange(N_FFT)[None, :]
    window, filters = hann_window(N_FFT), mel_filters(n_mels)
    # One row at a time: a row's frames, spectrum and power are ~35 MB in float64, a batch of 8 rows' ~270 MB
    # (benchmarks/step_levers.py --memory); the mel product through matmul (BLAS), not einsum's C loop.
    mel = np.empty((x.shape[0], n_mels, num_frames - 1), np.float64)
    for i, row in enumerate(x):
        spectrum = np.fft.rfft(row[index] * window, axis=-1)  # (frames, n_fft // 2 + 1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2)[:-1]  # drop the last frame
        mel[i] = filters @ power.T
    log_spec = np.log10(np.maximum(mel, LOG_FLOOR))
    peak = log_spec.max(axis=(1, 2), keepdims=True)
    log_spec = (np.maximum(log_spec, peak - DYNAMIC_RANGE) + 4.0) / 4.0
    out = log_spec.astype(np.float32)
    return out if batched else out[0]


# ----------------------------------------------------------------- JAX
def log_mel_spectrogram(audio: Any, n_mels: int = 80) -> Any:
    """Log-mel features in JAX (float32): (..., samples) -> (..., n_mels, samples // 160).

    Pure ``jnp`` with static shapes, so it traces under ``jit``/``vmap`` and runs
    on any backend. Pad to 480000 samples first (:func:`pad_or_trim`) for the
    standard 3000 frames; ``n_mels`` must be static. The mel projection uses
    ``Precision.HIGHEST`` so TPU/GPU matmuls do not drop to bf16/TF32.
    """
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(audio, dtype=jnp.float32)
    if x.ndim == 0:
        raise ValueError("audio must have a samples axis")
    lead, n = x.shape[:-1], x.shape[-1]
    x = x.reshape((-1, n))
    num_frames = 1 + n // HOP_LENGTH
    pad = N_FFT // 2
    if n <= pad:  # reflect padding needs more samples than the pad width
        x = jnp.pad(x, ((0, 0), (0, pad + 1 - n)))
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    # Frame without a gather: cut the signal into hop-sized blocks, and build each
    # 400-sample frame from blocks i, i+1 and the first 80 samples of block i+2.
    blocks_needed = num_frames + 2
    total = blocks_needed * HOP_LENGTH
    x = jnp.pad(x, ((0, 0), (0, max(0, total - x.shape[1]))))[:, :total]
    blocks = x.reshape((x.shape[0], blocks_needed, HOP_LENGTH))
    tail = N_FFT - 2 * HOP_LENGTH
    frames = jnp.concatenate(
        [blocks[:, :num_frames], blocks[:, 1 : num_frames + 1], blocks[:, 2 : num_frames + 2, :tail]], axis=-1
    )
    window = jnp.asarray(hann_window(N_FFT), jnp.float32)
    spectrum = jnp.fft.rfft(frames * window, axis=-1)
    power = (jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2)[:, :-1]  # (batch, frames, bins)
    filters = jnp.asarray(mel_filters(n_mels), jnp.float32)
    mel = jnp.einsum("mf,btf->bmt", filters, power, precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, LOG_FLOOR))
    peak = jnp.max(log_spec, axis=(1, 2), keepdims=True)
    log_spec = (jnp.maximum(log_spec, peak - DYNAMIC_RANGE) + 4.0) / 4.0
    return log_spec.reshape(lead + log_spec.shape[1:])


# ----------------------------------------------------------------- extractor
class BatchFeatures(dict):
    """A dict whose keys are also attributes (``out.input_features``), like transformers' BatchFeature."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class WhisperFeatureExtractor:
    """Small stand-in for transformers' ``WhisperFeatureExtractor``.

    ``extractor(audio, sampling_rate=16000, return_tensors="np")`` returns
    ``{"input_features": (batch, n_mels, 3000) float32}``. ``audio`` is one
    waveform, a ``(batch, samples)`` array, or a list whose items may also be
    anything :func:`whisper_t5x.audio.loading.load_audio` reads (paths, bytes, dicts).
    Bare arrays at another ``sampling_rate`` are resampled with soxr (where
    transformers would raise). ``return_tensors`` is "np", "jax" or None (numpy).
    """

    model_input_names = ["input_features"]

    def __init__(self, feature_size: int = 80, sampling_rate: int = SAMPLE_RATE, chunk_length: int = CHUNK_LENGTH,
                 hop_length: int = HOP_LENGTH, n_fft: int = N_FFT, **unused: Any):
        if sampling_rate != SAMPLE_RATE or hop_length != HOP_LENGTH or n_fft != N_FFT:
            raise ValueError(
                f"only Whisper's front end is supported: sampling_rate={SAMPLE_RATE}, hop_length={HOP_LENGTH}, n_fft={N_FFT}"
            )
        self.feature_size = int(feature_size)
        self.sampling_rate = SAMPLE_RATE
        self.chunk_length = int(chunk_length)
        self.hop_length = HOP_LENGTH
        self.n_fft = N_FFT
        self.n_samples = self.chunk_length * SAMPLE_RATE
        self.nb_max_frames = self.n_samples // HOP_LENGTH

    @property
    def mel_filters(self) -> np.ndarray:
        return mel_filters(self.feature_size)

    def __repr__(self) -> str:
        return f"WhisperFeatureExtractor(feature_size={self.feature_size}, chunk_length={self.chunk_length})"

    def _load(self, item: Any, sampling_rate: Optional[int]) -> np.ndarray:
        from whisper_t5x.audio.loading import load_audio

        if sampling_rate is not None and sampling_rate != SAMPLE_RATE and not isinstance(item, dict):
            if isinstance(item, (np.ndarray, list, tuple)) or hasattr(item, "__array__"):
                item = {"array": item, "sampling_rate": sampling_rate}
        return load_audio(item, SAMPLE_RATE)

    def __call__(self, raw_speech: Any, sampling_rate: Optional[int] = None, return_tensors: Optional[str] = "np",
                 return_attention_mask: bool = False, **unused: Any) -> BatchFeatures:
        # As in transformers: a 2-D array or a list of non-scalars is a batch; output is always batched.
        if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 2:
            items = list(raw_speech)
        elif isinstance(raw_speech, (list, tuple)) and raw_speech and not all(np.ndim(a) == 0 for a in raw_speech):
            items = list(raw_speech)
        else:
            items = [raw_speech]
        waves = [self._load(item, sampling_rate) for item in items]
        features = log_mel_spectrogram_np([pad_or_trim(w, self.n_samples) for w in waves], n_mels=self.feature_size)
        out = BatchFeatures(input_features=features)
        if return_attention_mask:
            mask = np.zeros((len(waves), self.n_samples), np.int32)
            for i, w in enumerate(waves):
                mask[i, : min(len(w), self.n_samples)] = 1
            out["attention_mask"] = mask[:, :: self.hop_length]
        if return_tensors in ("jax", "jnp"):
            import jax.numpy as jnp

            out = BatchFeatures({k: jnp.asarray(v) for k, v in out.items()})
        elif return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be 'np', 'jax' or None, got {return_tensors!r}")
        return out


FeatureExtractor = WhisperFeatureExtractor
