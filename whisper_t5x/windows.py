"""Cutting long audio into overlapping 30 s windows, and packing windows into batches.

Pure functions on sample counts; no audio is copied here.

A long input of ``n`` samples is covered by windows of ``chunk`` samples that
advance by ``step = chunk - 2 * stride``. Neighbouring windows overlap by
``2 * stride`` samples; each window *owns* the part of the audio between its
left and right stride::

    window k:      |stride|....... owned .......|stride|
    window k+1:                         |stride|....... owned .......|stride|

The owned spans tile the audio exactly: window ``k`` owns
``[start + stride_left, end - stride_right)`` and the first window has no left
stride, the last no right stride (they own up to the audio's edges). The
stitcher (:mod:`whisper_t5x.stitching`) keeps, for each window, the text of
the part it owns.

The last window ends at the end of the audio, and no window is made after a
window that already reaches it (the old Whisper JAX pipeline decoded one
extra, redundant window in that case). Empty audio has zero windows.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Sequence, Tuple

SAMPLE_RATE = 16000
MAX_CHUNK_LENGTH_S = 30.0

__all__ = [
    "Window",
    "Batch",
    "window_params",
    "split_windows",
    "windows_for_inputs",
    "pack_batches",
    "bucket_size",
]


@dataclasses.dataclass(frozen=True)
class Window:
    """One window of one input, in samples of that input's 16 kHz audio.

    ``stride_left`` / ``stride_right`` are the overlapping margins shared with
    the previous / next window (0 at the audio's start / end); the window owns
    ``[start + stride_left, end - stride_right)``.
    """

    input_index: int
    index: int  # position of this window within its input
    start: int  # first sample (inclusive)
    end: int  # last sample (exclusive)
    stride_left: int
    stride_right: int
    num_samples: int  # length of the whole input

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end >= self.num_samples

    @property
    def owned(self) -> Tuple[int, int]:
        """The samples ``[a, b)`` whose transcript this window contributes."""
        return self.start + self.stride_left, self.end - self.stride_right

    def seconds(self, sampling_rate: int = SAMPLE_RATE) -> Tuple[float, float]:
        return self.start / sampling_rate, self.end / sampling_rate


@dataclasses.dataclass(frozen=True)
class Batch:
    """Windows decoded together. ``rows`` has ``size`` entries; padding rows are None.

    Padding rows repeat the last real window's audio (so they finish decoding
    when it does, instead of running a blank window to ``max_length``); their
    results are dropped.
    """

    rows: Tuple[Optional[Window], ...]

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def windows(self) -> List[Window]:
        return [w for w in self.rows if w is not None]

    @property
    def num_padding(self) -> int:
        return sum(w is None for w in self.rows)

    @property
    def is_padding(self) -> List[bool]:
        return [w is None for w in self.rows]


def window_params(
    chunk_length_s: float = MAX_CHUNK_LENGTH_S,
    stride_length_s: Optional[float] = None,
    sampling_rate: int = SAMPLE_RATE,
) -> Tuple[int, int]:
    """Validate the window settings; returns ``(chunk_samples, stride_samples)``.

    ``stride_length_s`` is the overlap on *each* side of a window (default
    ``chunk_length_s / 6``: 5 s for 30 s windows, so each window owns 20 s).
    """
    try:
        chunk_length_s = float(chunk_length_s)
    except (TypeError, ValueError):
        raise ValueError(f"chunk_length_s must be a number of seconds, got {chunk_length_s!r}") from None
    if not 0 < chunk_length_s <= MAX_CHUNK_LENGTH_S:
        raise ValueError(
            f"chunk_length_s must be in (0, {MAX_CHUNK_LENGTH_S:g}] seconds (Whisper sees 30 s at a time), "
            f"got {chunk_length_s:g}"
        )
    if stride_length_s is None:
        stride_length_s = chunk_length_s / 6.0
    try:
        stride_length_s = float(stride_length_s)
    except (TypeError, ValueError):
        raise ValueError(f"stride_length_s must be a number of seconds, got {stride_length_s!r}") from None
    chunk = int(round(chunk_length_s * sampling_rate))
    stride = int(round(stride_length_s * sampling_rate))
    if stride < 0 or chunk - 2 * stride <= 0:
        raise ValueError(
            f"stride_length_s must be >= 0 and less than half of chunk_length_s ({chunk_length_s:g} s), "
            f"got {stride_length_s:g}: windows would not advance"
        )
    return chunk, stride


def split_windows(
    num_samples: int,
    chunk_samples: int,
    stride_samples: int,
    input_index: int = 0,
) -> List[Window]:
    """The windows covering ``num_samples`` samples (see the module docstring).

    Zero samples give no windows; audio no longer than one window gives one
    window with no strides.
    """
    if chunk_samples <= 0 or stride_samples < 0 or chunk_samples - 2 * stride_samples <= 0:
        raise ValueError(f"bad window geometry: chunk {chunk_samples}, stride {stride_samples}")
    num_samples = int(num_samples)
    if num_samples <= 0:
        return []
    step = chunk_samples - 2 * stride_samples
    out: List[Window] = []
    start = 0
    while True:
        end = min(start + chunk_samples, num_samples)
        is_last = end >= num_samples
        out.append(
            Window(
                input_index=input_index,
                index=len(out),
                start=start,
                end=end,
                stride_left=0 if start == 0 else stride_samples,
                stride_right=0 if is_last else stride_samples,
                num_samples=num_samples,
            )
        )
        if is_last:
            return out
        start += step


def windows_for_inputs(
    lengths: Iterable[int],
    chunk_length_s: float = MAX_CHUNK_LENGTH_S,
    stride_length_s: Optional[float] = None,
    sampling_rate: int = SAMPLE_RATE,
) -> List[Window]:
    """All windows of several inputs (given by their sample counts), input by input."""
    chunk, stride = window_params(chunk_length_s, stride_length_s, sampling_rate)
    out: List[Window] = []
    for i, n in enumerate(lengths):
        out.extend(split_windows(n, chunk, stride, input_index=i))
    return out


def bucket_size(count: int, batch_size: int, multiple_of: int = 1) -> int:
    """Rows to pad a last batch of ``count`` windows to.

    The smallest of ``multiple_of * 2**k`` (k >= 0) and ``batch_size`` that
    holds ``count``: a short last batch does not pay for a full batch of
    padding on hardware where cost grows with rows (CPU), and only
    ``log2(batch_size)`` shapes are ever compiled.
    """
    if count <= 0:
        raise ValueError("count must be positive")
    if count > batch_size:
        raise ValueError(f"{count} windows do not fit in a batch of {batch_size}")
    size = max(1, multiple_of)
    while size < count:
        size *= 2
    return min(size, batch_size)


def pack_batches(
    windows: Sequence[Window],
    batch_size: int,
    pad_last: str = "bucket",
    multiple_of: int = 1,
) -> List[Batch]:
    """Group ``windows`` (of all inputs, in order) into batches of ``batch_size`` rows.

    Every batch but the last is full. The last is padded with ``None`` rows to
    ``batch_size`` (``pad_last="full"``), to :func:`bucket_size`
    (``"bucket"``, the default) or not at all (``"none"``).
    ``multiple_of`` (e.g. the data-parallel mesh size) must divide
    ``batch_size``; padded sizes are multiples of it.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    if multiple_of < 1 or batch_size % multiple_of:
        raise ValueError(f"batch_size {batch_size} must be a multiple of {multiple_of} (the data-parallel size)")
    if pad_last not in ("bucket", "full", "none"):
        raise ValueError(f"pad_last must be 'bucket', 'full' or 'none', got {pad_last!r}")
    windows = list(windows)
    batches: List[Batch] = []
    for i in range(0, len(windows), batch_size):
        rows: List[Optional[Window]] = list(windows[i:i + batch_size])
        if len(rows) < batch_size and pad_last != "none":
            size = batch_size if pad_last == "full" else bucket_size(len(rows), batch_size, multiple_of)
            rows += [None] * (size - len(rows))
        batches.append(Batch(tuple(rows)))
    return batches
