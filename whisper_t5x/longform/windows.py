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
stitcher (:mod:`whisper_t5x.longform.stitching`) keeps, for each window, the text of
the part it owns.

The last window ends at the end of the audio, and no window is made after a
window that already reaches it (the old Whisper JAX pipeline decoded one
extra, redundant window in that case). Empty audio has zero windows.

:func:`pause_windows` cuts at pauses instead where it finds them: a window
then ends in a pause within its last seconds, and the next one starts
at an earlier pause, 2-5 s before. So windows overlap by a phrase or two and
no word is cut. Whisper often
leaves the last utterance of a window untranscribed; the next window starts
with it, and the seam lies at that next window's start (``stride_left`` is 0,
the left window's ``stride_right`` is the overlap). Where no pause is found it
falls back to the overlapping layout above for that one seam. On continuous
speech this decodes about a quarter fewer windows than the fixed layout (each
window owns ~26 s instead of 20 s).

:func:`skip_leading_quiet` moves the start of a window that begins in a long
quiet stretch to just before the speech after it. Whisper puts the first
timestamp of a window at (or within a second of) the window's start whatever
silence precedes the speech, so without this a window's first segment starts
seconds too early, and the stitcher, trusting those times, drops words that
the model placed before a seam although they were spoken after it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import SAMPLE_RATE  # noqa: F401 (re-exported)
from whisper_t5x.longform.loudness import FRAME_S, Loudness, frame_rms
MAX_CHUNK_LENGTH_S = 30.0

__all__ = [
    "Window",
    "Batch",
    "window_params",
    "split_windows",
    "pause_windows",
    "find_pauses",
    "skip_leading_quiet",
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


MIN_PAUSE_S = 0.15  # quiet stretches shorter than this are not pauses (stops, short gaps inside words)
PAUSE_SEARCH_S = 5.0  # a window's cut is searched in its last PAUSE_SEARCH_S seconds
MAX_OVERLAP_S = 5.0  # audio decoded again at the next window's start: at most this long
MIN_OVERLAP_S = 2.0  # ... and at least this (Whisper often leaves out a window's last seconds)
QUIET_RATIO = 0.1  # "quiet": frame RMS below this fraction of the input's 95th-percentile frame RMS


def find_pauses(audio: np.ndarray, sampling_rate: int = SAMPLE_RATE, min_pause_s: float = MIN_PAUSE_S,
                quiet_ratio: float = QUIET_RATIO) -> np.ndarray:
    """Quiet stretches of ``audio`` as an ``(n, 2)`` int array of ``[start, end)`` samples.

    A frame (10 ms) is quiet when its RMS is below ``quiet_ratio`` times the
    95th percentile of all frames' RMS (so the level of the recording does not
    matter); runs of quiet frames of at least ``min_pause_s`` are pauses.
    Audio without any loud frame (digital silence) has no pauses.
    """
    frame = max(1, int(round(FRAME_S * sampling_rate)))
    rms = frame_rms(audio, frame)
    if rms.size == 0:
        return np.zeros((0, 2), np.int64)
    loud = float(np.percentile(rms, 95))
    if loud <= 0:
        return np.zeros((0, 2), np.int64)
    quiet = np.concatenate([[False], rms < quiet_ratio * loud, [False]])
    edges = np.flatnonzero(quiet[1:] != quiet[:-1])
    runs = edges.reshape(-1, 2)
    runs = runs[(runs[:, 1] - runs[:, 0]) * frame >= min_pause_s * sampling_rate]
    return (runs * frame).astype(np.int64)


def pause_windows(
    audio: np.ndarray,
    chunk_samples: int,
    stride_samples: int,
    input_index: int = 0,
    sampling_rate: int = SAMPLE_RATE,
    search_s: float = PAUSE_SEARCH_S,
    max_overlap_s: float = MAX_OVERLAP_S,
    min_overlap_s: float = MIN_OVERLAP_S,
) -> List[Window]:
    """Windows of at most ``chunk_samples`` that begin and end in pauses (see the module docstring).

    A window ends in the middle of the longest pause within its final
    ``search_s`` seconds (clipped to the window). The next window starts in
    the longest pause ``min_overlap_s`` to ``max_overlap_s`` before that end
    (so the window's last phrases are decoded again, at the start of the next
    window), or at the end itself if there is none. A window with no pause near its end is cut at
    ``chunk_samples`` and overlaps the next by ``2 * stride_samples``, as
    :func:`split_windows` does.
    """
    if chunk_samples <= 0 or stride_samples < 0 or chunk_samples - 2 * stride_samples <= 0:
        raise ValueError(f"bad window geometry: chunk {chunk_samples}, stride {stride_samples}")
    num_samples = int(audio.shape[0])
    if num_samples <= 0:
        return []
    pauses = find_pauses(audio, sampling_rate)
    mids = (pauses[:, 0] + pauses[:, 1]) // 2
    search = int(round(search_s * sampling_rate))
    max_overlap = int(round(max_overlap_s * sampling_rate))
    min_overlap = int(round(min_overlap_s * sampling_rate))
    min_step = chunk_samples // 2  # every window advances by at least half a window
    out: List[Window] = []
    start, left = 0, 0
    while True:
        limit = start + chunk_samples
        if limit >= num_samples:
            out.append(Window(input_index, len(out), start, num_samples, left, 0, num_samples))
            return out
        lo = max(start + 1, limit - search)
        # Pauses overlapping [lo, limit): cut in the middle of the part inside it; the last one wins.
        inside = np.flatnonzero((pauses[:, 1] > lo) & (pauses[:, 0] < limit))
        if len(inside) == 0:
            out.append(Window(input_index, len(out), start, limit, left, stride_samples, num_samples))
            start, left = limit - 2 * stride_samples, stride_samples
            continue
        # The longest pause (likeliest a sentence end, where Whisper ends a window
        # cleanly); the later one on ties.
        clipped = np.minimum(pauses[inside, 1], limit) - np.maximum(pauses[inside, 0], lo)
        k = int(inside[len(inside) - 1 - int(np.argmax(clipped[::-1]))])
        end = (max(int(pauses[k, 0]), lo) + min(int(pauses[k, 1]), limit)) // 2
        # The next window starts at the longest pause min_overlap..max_overlap before the end.
        before = np.flatnonzero((mids < int(pauses[k, 0])) & (mids <= end - min_overlap)
                                & (mids >= max(end - max_overlap, start + min_step)))
        if len(before):
            lengths = pauses[before, 1] - pauses[before, 0]
            nxt = int(mids[before[len(before) - 1 - int(np.argmax(lengths[::-1]))]])
        else:
            nxt = end
        out.append(Window(input_index, len(out), start, end, left, end - nxt, num_samples))
        start, left = nxt, 0


LEAD_IN_S = 0.4  # a window moved to its speech starts this long before it (the VAD's speech padding)
MAX_LEADING_QUIET_S = 1.0  # windows starting with more quiet than this are moved


def skip_leading_quiet(
    windows: Sequence[Window],
    loudness: Optional[Loudness],
    lead_in_s: float = LEAD_IN_S,
    max_quiet_s: float = MAX_LEADING_QUIET_S,
) -> List[Window]:
    """``windows``, each starting no more than ``max_quiet_s`` of quiet before its speech.

    A window whose first ``max_quiet_s`` seconds have no loud frame (see
    :class:`whisper_t5x.longform.loudness.Loudness`) starts instead
    ``lead_in_s`` before its first loud frame. Its end and the end of the
    span it owns stay; its owned span starts where it did or, when the window
    now starts later, at the new start (the skipped audio is quiet, no window
    needs to own it). A window whose speech starts only where the next window
    starts is left out (the next one decodes all of its speech, and owns what
    it owned); the others are renumbered. Windows with no loud frame, and inputs without
    ``loudness``, are left as they are: this only ever removes quiet audio.
    """
    if loudness is None:
        return list(windows)
    rate = loudness.sampling_rate
    lead_in = int(round(lead_in_s * rate))
    max_quiet = int(round(max_quiet_s * rate))
    out: List[Window] = []
    inherited: Optional[int] = None  # the owned start of a window left out just before
    for k, w in enumerate(windows):
        owned_start = w.owned[0] if inherited is None else min(inherited, w.owned[0])
        inherited = None
        onset = loudness.first_loud(w.start, w.end)
        start = w.start
        if onset is not None and onset - w.start > max_quiet:
            nxt = windows[k + 1] if k + 1 < len(windows) else None
            if nxt is not None and nxt.input_index == w.input_index and nxt.start <= onset and nxt.end >= w.end:
                inherited = owned_start
                continue
            start = onset - lead_in
        stride_left = max(0, owned_start - start)
        if (start, stride_left, w.index) != (w.start, w.stride_left, len(out)):
            w = dataclasses.replace(w, start=start, stride_left=stride_left, index=len(out))
        out.append(w)
    return out


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
