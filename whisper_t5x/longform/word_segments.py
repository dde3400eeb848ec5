"""Segments from aligned words: where a subtitle cue starts and ends, without timestamp tokens.

VAD rows are decoded without timestamp tokens (they lose words at row ends),
so segment times come from the word alignment instead (cross-attention DTW,
:mod:`whisper_t5x.longform.alignment`), as WhisperX does with a second model.
:func:`split_segments` cuts one input's timed words into segments:

* always between two words in different *pieces* (stretches of audio the VAD
  kept; the silence between them was removed), so no segment spans it;
* after a sentence end (``.`` ``?`` ``!`` and their CJK forms);
* at a pause between words of at least ``pause_s``;
* before a segment would exceed ``max_duration_s`` or ``max_chars``
  (subtitle limits: two lines of 42 characters, 7 s a cue), at the best place
  in the segment's second half: after a clause mark (``,`` ``;`` ``:``) or at
  the widest gap between words.

Pure functions over :class:`TimedWord`; the caller maps times back to the
original audio first (:meth:`whisper_t5x.longform.speech_rows.SpeechRow.original_time`).
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

__all__ = ["SegmentLimits", "TimedWord", "split_segments", "SUBTITLE_LIMITS"]

_SENTENCE_ENDS = (".", "?", "!", "\u3002", "\uff01", "\uff1f", "\u2026")
_CLAUSE_ENDS = (",", ";", ":", "\uff0c", "\u3001", "\uff1b", "\uff1a", "\u2014")
_CLOSING = "\"')]}\u201d\u2019\u00bb"


@dataclasses.dataclass(frozen=True)
class SegmentLimits:
    """Where segments are cut (see the module doc)."""

    max_duration_s: float = 7.0
    max_chars: int = 84
    pause_s: float = 1.0
    split_sentences: bool = True

    def __post_init__(self):
        if not self.max_duration_s > 0 or self.max_chars < 1 or not self.pause_s > 0:
            raise ValueError(f"segment limits must be positive, got {self}")


SUBTITLE_LIMITS = SegmentLimits()


@dataclasses.dataclass(frozen=True)
class TimedWord:
    """One aligned word on the input's timeline, with the tokens that spell it and the piece it lies in."""

    start: float
    end: float
    word: str
    probability: float
    tokens: Tuple[int, ...]
    piece: Tuple[int, int]  # (row index, piece index): words of different pieces never share a segment


def _stripped(word: str) -> str:
    return word.rstrip().rstrip(_CLOSING)


def _ends_sentence(word: str) -> bool:
    return _stripped(word).endswith(_SENTENCE_ENDS)


def _ends_clause(word: str) -> bool:
    return _stripped(word).endswith(_CLAUSE_ENDS)


def _chars(words: Sequence[TimedWord]) -> int:
    return len("".join(w.word for w in words).strip())


def _fits(words: Sequence[TimedWord], limits: SegmentLimits) -> bool:
    return words[-1].end - words[0].start <= limits.max_duration_s and _chars(words) <= limits.max_chars


def _best_cut(words: Sequence[TimedWord]) -> int:
    """How many of ``words`` to keep in the segment being closed (at least half, at most all but one)."""
    best, best_score = len(words) - 1, -1.0
    for k in range(max(1, len(words) // 2), len(words)):
        gap = max(0.0, words[k].start - words[k - 1].end)
        score = gap + (1.0 if _ends_clause(words[k - 1].word) else 0.0)
        if score >= best_score:
            best, best_score = k, score
    return best


def split_segments(words: Sequence[TimedWord], limits: SegmentLimits = SUBTITLE_LIMITS) -> List[List[TimedWord]]:
    """``words`` (in order) grouped into segments; every word lands in exactly one segment."""
    segments: List[List[TimedWord]] = []
    current: List[TimedWord] = []
    for word in words:
        if current:
            prev = current[-1]
            hard = (word.piece != prev.piece or word.start - prev.end >= limits.pause_s
                    or (limits.split_sentences and _ends_sentence(prev.word)))
            if hard:
                segments.append(current)
                current = []
            elif not _fits(current + [word], limits):
                keep = _best_cut(current + [word]) if len(current) > 1 else len(current)
                segments.append(current[:keep])
                current = current[keep:]
        current.append(word)
        while len(current) > 1 and not _fits(current, limits):  # a remainder still too long: cut again
            keep = _best_cut(current)
            segments.append(current[:keep])
            current = current[keep:]
    if current:
        segments.append(current)
    return segments
