"""Where an input is loud, frame by frame: chunked windows start at speech, token times lie on it.

Whisper's timestamps are coarse where silence meets speech. It puts a
window's first timestamp near the window's start whatever silence precedes
the speech, and a segment often takes in the pause after it. The chunked
mode relies on those times twice: a segment's start is what the user sees,
and the stitcher (:mod:`whisper_t5x.longform.stitching`) decides by the
estimated time of each token which window keeps it. :class:`Loudness` marks
the frames that are loud relative to the input's own level, so a window can
start shortly before its speech
(:func:`whisper_t5x.longform.windows.skip_leading_quiet`) and a segment's
tokens can be spread over its loud frames instead of its whole span
(:meth:`Loudness.spread`).

"Loud" is relative (a fraction of a high percentile of the input's frame
RMS), so the recording level does not matter; an input with no loud level
(digital silence, or speech in too few frames) has no :class:`Loudness`, and
callers then keep the model's times as they are.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np

from whisper_t5x.audio.constants import SAMPLE_RATE

__all__ = ["FRAME_S", "LOUD_RATIO", "LOUD_PERCENTILE", "Loudness", "frame_rms"]

FRAME_S = 0.01  # energy frame
LOUD_PERCENTILE = 99.0  # an input's loud level: this percentile of its frame RMS (speech in >= 1% of it)
LOUD_RATIO = 0.03  # loud: frame RMS at least this fraction of that level (about 30 dB under it)


def frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS of each whole ``frame``-sample frame of ``audio`` (a trailing partial frame is left out)."""
    n = int(audio.shape[0]) // frame
    frames = np.asarray(audio[: n * frame], np.float32).reshape(n, frame)
    return np.sqrt(np.mean(frames * frames, axis=1))


@dataclasses.dataclass(frozen=True, eq=False)
class Loudness:
    """Which frames of one input are loud. Positions are samples (or seconds) of the whole input."""

    loud: np.ndarray  # (frames,) bool
    frame: int  # samples per frame
    sampling_rate: int = SAMPLE_RATE

    @classmethod
    def of(cls, audio: np.ndarray, sampling_rate: int = SAMPLE_RATE, ratio: float = LOUD_RATIO,
           percentile: float = LOUD_PERCENTILE) -> Optional["Loudness"]:
        """The loud frames of ``audio``; None when it has no loud level to compare with."""
        frame = max(1, int(round(FRAME_S * sampling_rate)))
        rms = frame_rms(audio, frame)
        if rms.size == 0:
            return None
        level = float(np.percentile(rms, percentile))
        if level <= 0:
            return None
        return cls(rms >= ratio * level, frame, sampling_rate)

    def first_loud(self, start: int, end: int) -> Optional[int]:
        """The first sample of the first loud frame that overlaps ``[start, end)``; None if there is none."""
        lo = max(0, start // self.frame)
        hi = min(self.loud.size, -(-end // self.frame))
        hits = np.flatnonzero(self.loud[lo:hi])
        return None if hits.size == 0 else (lo + int(hits[0])) * self.frame

    def spread(self, start_s: float, end_s: float, n: int) -> Optional[List[float]]:
        """Times of ``n`` tokens said in ``[start_s, end_s]``, spread evenly over its loud frames.

        Token ``j`` is put at the ``(j + 0.5) / n`` quantile of the loud time
        in the span (so a segment that took in a long silence places its words
        on the speech). None when no frame of the span is loud.
        """
        if n <= 0 or end_s <= start_s:
            return None
        step = self.frame / self.sampling_rate
        lo = max(0, int(np.floor(start_s / step)))
        hi = min(self.loud.size, int(np.ceil(end_s / step)))
        idx = np.flatnonzero(self.loud[lo:hi]) if hi > lo else np.zeros(0, np.int64)
        if idx.size == 0:
            return None
        centres = (lo + idx + 0.5) * step
        picks = centres[np.minimum(((np.arange(n) + 0.5) / n * idx.size).astype(np.int64), idx.size - 1)]
        return [float(min(max(t, start_s), end_s)) for t in picks]
