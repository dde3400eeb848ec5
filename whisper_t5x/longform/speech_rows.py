"""Decode rows of at most 30 s made of VAD speech segments, with no overlap.

Pure functions on sample ranges; no audio is copied until :meth:`SpeechRow.slice_audio`.

Input: one input's speech segments ``[{"start": sample, "end": sample}, ...]``
(end exclusive), as :func:`whisper_t5x.audio.vad.speech_timestamps` returns
them. They are sorted, clipped to the audio, overlapping ones merged, and any
segment longer than a row is cut into equal parts. Then consecutive segments are
packed greedily into rows of at most ``max_samples`` (30 s) in one of two ways:

``glue`` (faster-whisper's ``collect_chunks``)
    a row is its segments' audio back to back, the silence between them
    removed; each segment is a :class:`RowPiece` that knows where it sits in the
    row and in the original audio.
``span`` (WhisperX's merged chunks)
    a row is one contiguous stretch of the original audio, from its first
    segment's start to its last segment's end, the pauses inside kept; it has
    exactly one piece.

Either way each original sample lands in at most one row, and every speech
sample lands in one. :meth:`SpeechRow.original_time` maps a time inside the
row (seconds from the row's start, e.g. a decoded timestamp) back to the
original audio; it is non-decreasing. Where two glued pieces meet, a time is
taken as the start of the later piece, or with ``is_end=True`` as the end of
the earlier one, so a segment ending at the junction does not swallow the
removed silence. Inputs with no speech give no rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from whisper_t5x.audio.constants import N_SAMPLES, SAMPLE_RATE

__all__ = ["STRATEGIES", "SpeechRowsError", "RowPiece", "SpeechRow", "speech_rows", "rows_for_inputs"]

STRATEGIES = ("glue", "span")


class SpeechRowsError(ValueError):
    """Malformed speech timestamps or options."""


@dataclasses.dataclass(frozen=True)
class RowPiece:
    """Original samples ``[start, end)`` of one input, placed at ``offset`` samples into the row."""

    start: int
    end: int
    offset: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(frozen=True)
class SpeechRow:
    """One decode row of one input: its pieces of the original audio, in order, back to back."""

    input_index: int
    index: int  # position among this input's rows
    pieces: Tuple[RowPiece, ...]

    @property
    def num_samples(self) -> int:
        """Length of the row's audio."""
        last = self.pieces[-1]
        return last.offset + last.length

    @property
    def start(self) -> int:
        """First original sample in the row."""
        return self.pieces[0].start

    @property
    def end(self) -> int:
        """One past the last original sample in the row."""
        return self.pieces[-1].end

    def slice_audio(self, audio: np.ndarray) -> np.ndarray:
        """The row's samples taken from the input's ``audio``."""
        if len(self.pieces) == 1:
            return audio[self.start:self.end]
        return np.concatenate([audio[p.start:p.end] for p in self.pieces])

    def original_sample(self, sample: Union[float, np.ndarray], *, is_end: bool = False):
        """Position in the original audio (samples, float) of ``sample`` samples into the row;
        positions outside the row are clamped to its ends."""
        offsets = np.array([p.offset for p in self.pieces], np.float64)
        starts = np.array([p.start for p in self.pieces], np.float64)
        position = np.clip(np.asarray(sample, np.float64), 0, self.num_samples)
        which = np.searchsorted(offsets, position, side="left" if is_end else "right") - 1
        which = np.clip(which, 0, len(self.pieces) - 1)
        out = starts[which] + (position - offsets[which])
        return float(out) if out.ndim == 0 else out

    def original_time(self, seconds: Union[float, np.ndarray], *, is_end: bool = False):
        """Seconds in the original audio of ``seconds`` into the row (scalars or arrays)."""
        out = self.original_sample(np.asarray(seconds, np.float64) * SAMPLE_RATE, is_end=is_end)
        return out / SAMPLE_RATE


def _segments(timestamps: Sequence[Mapping[str, int]], num_samples: Optional[int],
              max_samples: int) -> List[Tuple[int, int]]:
    """Sorted, clipped, merged segments, each at most ``max_samples`` long."""
    spans = []
    for ts in timestamps:
        try:
            start, end = int(ts["start"]), int(ts["end"])
        except (KeyError, TypeError, ValueError) as e:
            raise SpeechRowsError(f"a speech timestamp must be {{'start': int, 'end': int}}, got {ts!r}") from e
        if start < 0 or end < start:
            raise SpeechRowsError(f"speech timestamp needs 0 <= start <= end, got {ts!r}")
        if num_samples is not None:
            start, end = min(start, num_samples), min(end, num_samples)
        if end > start:
            spans.append((start, end))
    merged: List[List[int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out = []
    for start, end in merged:
        parts = math.ceil((end - start) / max_samples)
        bounds = [start + (end - start) * k // parts for k in range(parts + 1)]
        out.extend(zip(bounds[:-1], bounds[1:]))
    return out


def _glue(segments: List[Tuple[int, int]], max_samples: int) -> List[List[Tuple[int, int]]]:
    rows: List[List[Tuple[int, int]]] = []
    length = 0
    for start, end in segments:
        if not rows or length + (end - start) > max_samples:
            rows.append([])
            length = 0
        if rows[-1] and rows[-1][-1][1] == start:  # touching: one piece
            rows[-1][-1] = (rows[-1][-1][0], end)
        else:
            rows[-1].append((start, end))
        length += end - start
    return rows


def _span(segments: List[Tuple[int, int]], max_samples: int) -> List[List[Tuple[int, int]]]:
    rows: List[List[Tuple[int, int]]] = []
    for start, end in segments:
        if rows and end - rows[-1][0][0] <= max_samples:
            rows[-1] = [(rows[-1][0][0], end)]
        else:
            rows.append([(start, end)])
    return rows


def speech_rows(timestamps: Sequence[Mapping[str, int]], strategy: str = "glue", *, input_index: int = 0,
                max_samples: int = N_SAMPLES, num_samples: Optional[int] = None) -> List[SpeechRow]:
    """One input's speech segments packed into rows of at most ``max_samples`` (see the module doc).

    ``num_samples`` (the input's length), when given, clips the segments to the audio.
    """
    if strategy not in STRATEGIES:
        raise SpeechRowsError(f"unknown row strategy {strategy!r}; expected one of {STRATEGIES}")
    if max_samples < 1:
        raise SpeechRowsError(f"max_samples must be positive, got {max_samples}")
    segments = _segments(timestamps, num_samples, int(max_samples))
    grouped = (_glue if strategy == "glue" else _span)(segments, int(max_samples))
    rows = []
    for index, ranges in enumerate(grouped):
        offsets = np.cumsum([0] + [end - start for start, end in ranges[:-1]])
        pieces = tuple(RowPiece(s, e, int(o)) for (s, e), o in zip(ranges, offsets))
        rows.append(SpeechRow(input_index, index, pieces))
    return rows


def rows_for_inputs(timestamps_per_input: Sequence[Sequence[Mapping[str, int]]], strategy: str = "glue", *,
                    max_samples: int = N_SAMPLES,
                    num_samples: Optional[Sequence[int]] = None) -> List[SpeechRow]:
    """The rows of several inputs, in input order (``input_index`` is the position in the list)."""
    if num_samples is not None and len(num_samples) != len(timestamps_per_input):
        raise SpeechRowsError(f"{len(num_samples)} lengths for {len(timestamps_per_input)} inputs")
    rows: List[SpeechRow] = []
    for i, timestamps in enumerate(timestamps_per_input):
        rows.extend(speech_rows(timestamps, strategy, input_index=i, max_samples=max_samples,
                                num_samples=None if num_samples is None else num_samples[i]))
    return rows
