"""The one parser of a decoded row: tokens -> text runs between timestamps.

Whisper writes ``<|t0|> text <|t1|><|t1|> text <|t2|>``: a *timestamp
group* (one or two consecutive timestamp tokens) closes the run before it and
opens the run after it. :func:`parse_row` cuts a row's tokens at every group
and reports, per run, its text tokens, the times of the timestamps around it
(seconds from the row's start, ``None`` where there is none) and where it lies
in the token list (so the seek algorithm can keep timestamps in its prompt
history). Stitching, word alignment, the sequential seek and the VAD
assembler all read rows through it; :func:`text_tokens` is the
"cut at end-of-text, drop special tokens" rule they share.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

from whisper_t5x.audio.constants import TIME_PRECISION

__all__ = ["TextRun", "ParsedRow", "cut_at_eot", "text_tokens", "parse_row", "strip_prefix"]


@dataclasses.dataclass(frozen=True)
class TextRun:
    """Text tokens between two timestamp groups of one row."""

    tokens: Tuple[int, ...]  # text tokens only
    start: Optional[float]  # seconds from the row start of the timestamp before the text; None: none
    end: Optional[float]  # ... of the timestamp after it; None: the run is not closed
    span: Tuple[int, int]  # [lo, hi) in the cut token list: the opening timestamp (if any) to the closing one

    @property
    def closed(self) -> bool:
        return self.end is not None


@dataclasses.dataclass(frozen=True)
class ParsedRow:
    tokens: Tuple[int, ...]  # the row cut at end-of-text (timestamps and text)
    runs: Tuple[TextRun, ...]  # non-empty text runs in order
    has_boundary: bool  # a pair of consecutive timestamps occurs (a segment boundary)
    single_timestamp_ending: bool  # the row ends with text followed by one timestamp
    last_timestamp: Optional[float]  # seconds of the last timestamp token, None without any


def cut_at_eot(tokens: Sequence[int], eot: int) -> List[int]:
    ids = [int(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]
    return ids[:ids.index(eot)] if eot in ids else ids


def text_tokens(tokens: Sequence[int], eot: int) -> List[int]:
    """The text tokens of a row: cut at the first end-of-text, special and timestamp tokens dropped."""
    return [t for t in cut_at_eot(tokens, eot) if t < eot]


def strip_prefix(tokens: Sequence[int], sot: int, eot: int, timestamp_begin: int,
                 language_ids: Sequence[int] = ()) -> Tuple[List[int], Optional[int]]:
    """Drop a prompt and the forced prefix (``... <|startoftranscript|> <|lang|> <|task|>``).

    Returns the sampled tokens and the language token found in the prefix (or None).
    """
    ids = [int(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]
    if sot in ids:
        ids = ids[ids.index(sot) + 1:]
    language = None
    languages = set(int(t) for t in language_ids)
    while ids and eot < ids[0] < timestamp_begin:
        if ids[0] in languages:
            language = ids[0]
        ids = ids[1:]
    return ids, language


def parse_row(tokens: Sequence[int], eot: Optional[int], timestamp_begin: int,
              time_precision: float = TIME_PRECISION) -> ParsedRow:
    """Cut one row's sampled tokens (after the forced prefix) into text runs.

    Special tokens between ``eot`` and ``timestamp_begin`` (language, task,
    ``<|notimestamps|>``) carry no text and are skipped; the row ends at the
    first ``eot``. Runs with no text (two groups in a row) are dropped.
    ``eot=None``: the row is not cut and every token below ``timestamp_begin`` is text.
    """
    if eot is None:
        ids = [int(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]
        eot = timestamp_begin
    else:
        ids = cut_at_eot(tokens, eot)
    is_ts = [t >= timestamp_begin for t in ids]

    def seconds(t: int) -> float:
        return (t - timestamp_begin) * time_precision

    runs: List[TextRun] = []
    text: List[int] = []
    start: Optional[float] = None
    lo = 0  # index of the opening timestamp of the current run (or of its first token)
    for i, tok in enumerate(ids):
        if is_ts[i]:
            if text:
                runs.append(TextRun(tuple(text), start, seconds(tok), (lo, i + 1)))
                text = []
            if not (i + 1 < len(ids) and is_ts[i + 1]):  # the last timestamp of a group opens the next run
                start, lo = seconds(tok), i
        elif tok < eot:
            if not text and start is None:
                lo = i
            text.append(tok)
    if text:
        runs.append(TextRun(tuple(text), start, None, (lo, len(ids))))
    has_boundary = any(is_ts[i] and is_ts[i + 1] for i in range(len(ids) - 1))
    stamps = [t for t in ids if t >= timestamp_begin]
    return ParsedRow(
        tokens=tuple(ids),
        runs=tuple(runs),
        has_boundary=has_boundary,
        single_timestamp_ending=is_ts[-2:] == [False, True],
        last_timestamp=seconds(stamps[-1]) if stamps else None,
    )
