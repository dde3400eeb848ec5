"""Typed transcription results: :class:`Transcription` of :class:`Segment` of :class:`Word`.

Every long-form algorithm (chunked windows, VAD rows, sequential seek) ends
in a ``Transcription``; writers, REST, the UI and the dataset job read it. The
seed's dictionary (``{"text", "chunks"}``, what ``pipe(...)`` returns) is a
view of it built in one place, :func:`as_pipeline_dict`.

Times are seconds on the input's own timeline, monotonic
(``start <= end <= next start``), clipped to ``[0, duration]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["Word", "Segment", "Transcription", "as_pipeline_dict", "STATISTICS"]

# The per-segment decoding statistics openai-whisper reports.
STATISTICS = ("avg_logprob", "no_speech_prob", "compression_ratio", "temperature")


@dataclasses.dataclass(frozen=True)
class Word:
    """One word with its timing from cross-attention alignment."""

    start: float
    end: float
    word: str  # with its leading space, as Whisper's tokens spell it
    probability: float

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A timed stretch of text and the statistics of the decode it came from.

    ``avg_logprob``, ``no_speech_prob``, ``compression_ratio`` and
    ``temperature`` are those of the window or row the tokens were decoded in
    (token-weighted means for a segment joined across windows); ``None`` when
    no decode produced them. ``words`` is ``None`` unless word timestamps
    were asked for.
    """

    start: float
    end: float
    text: str
    tokens: Tuple[int, ...] = ()
    avg_logprob: Optional[float] = None
    no_speech_prob: Optional[float] = None
    compression_ratio: Optional[float] = None
    temperature: Optional[float] = None
    words: Optional[Tuple[Word, ...]] = None
    seek: Optional[int] = None  # sequential mode: the first mel frame of the window it was decoded in

    def statistics(self) -> Dict[str, Optional[float]]:
        return {k: getattr(self, k) for k in STATISTICS}

    def as_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tokens"] = list(self.tokens)
        out["words"] = None if self.words is None else [w.as_dict() for w in self.words]
        return out


@dataclasses.dataclass(frozen=True)
class Transcription:
    """The result for one input."""

    text: str
    segments: Tuple[Segment, ...]
    language: Optional[str]  # code such as "en"; None when nothing was decoded
    duration: float  # seconds of audio

    @property
    def words(self) -> List[Word]:
        return [w for s in self.segments for w in (s.words or ())]

    def as_dict(self) -> Dict[str, Any]:
        return {"text": self.text, "segments": [s.as_dict() for s in self.segments], "language": self.language,
                "duration": self.duration}


def as_pipeline_dict(result: Transcription, return_timestamps: Any = False,
                     return_language: bool = False) -> Dict[str, Any]:
    """The seed's dictionary: ``{"text", "chunks"}`` (+ ``"language"``).

    ``chunks`` are ``{"timestamp": (start, end), "text"}`` per segment with
    text; with ``return_timestamps=True`` they also carry the segment's
    statistics; with ``"word"`` there is one chunk per word instead, and
    ``"segments"`` holds the timestamped segments (as v0.1 returned them).
    """
    segments = []
    for s in result.segments:
        if not s.text.strip():
            continue
        chunk: Dict[str, Any] = {"timestamp": (s.start, s.end), "text": s.text}
        if return_timestamps:
            chunk.update(s.statistics())
        segments.append(chunk)
    out: Dict[str, Any] = {"text": result.text, "chunks": segments}
    if return_timestamps == "word":
        out["chunks"] = [{"text": w.word, "timestamp": (w.start, w.end)} for w in result.words]
        out["segments"] = segments
    if return_language:
        out["language"] = result.language
    return out
