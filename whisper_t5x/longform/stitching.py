"""Stitching per-window token sequences into one transcript with chunks.

Each window (see :mod:`whisper_t5x.longform.windows`) is decoded on its own; its
neighbours see the same audio in their strides, so the transcripts overlap.
For every pair of neighbouring windows A and B this module picks one *seam*:
A's text is kept up to it and B's from it, so every word is kept exactly once.

Finding the seam
----------------
1. Every text token gets an estimated absolute time: with timestamps, it is
   interpolated inside its segment (``<|t0|> text <|t1|>``, offset by the
   window's start); without, it is spread evenly over the window. Given the
   input's :class:`~whisper_t5x.longform.loudness.Loudness`, tokens are spread
   over the loud frames of that span only: a segment that takes in a long
   silence (Whisper starts a window's first segment near the window's start
   whatever silence precedes the speech) then still places its words on the
   speech.
2. The *boundary* ``T`` is where A's owned span ends and B's begins (the middle
   of their overlap). A pure time rule would cut both at ``T``; segment-level
   timestamps are too coarse for that to be exact (a word is easily kept twice
   or lost), so the text decides first:
3. The longest run of identical tokens shared by A's tail and B's head is
   searched (on every alignment of the two, a longest-common-substring
   search). With timestamps only tokens near the overlap take part and a run
   must sit at about the same time in both windows. Equal-length runs are
   ranked by closeness to ``T``. A run of at least ``min_match`` tokens is the
   anchor: both windows agree on it, so cutting anywhere inside it neither
   duplicates nor drops a token; the cut is made at the token closest to ``T``.
4. Without such a run (silence, or windows that disagree) the time rule is
   used: A keeps its tokens before ``T``, B its tokens from ``T`` on, or from
   where A's text ends if that is earlier (a closing timestamp before ``T``, or
   no text at all). B's text between the two is text A did not say; its
   times are the likeliest to be wrong, as Whisper puts a window's first
   timestamp near the window's start whatever silence precedes the speech, so
   dropping it would lose words.

Chunks
------
With timestamps, the kept tokens of each window are grouped by the segment
they came from; a segment cut by a seam is joined with the segment across the
seam, so a sentence straddling two windows becomes one chunk. Times are
absolute, clipped to ``[0, duration]`` and made monotonic (``start <= end <=
next start``). Without timestamps there is one chunk per window (with text),
spanning the audio that window owns.

Segment chunks also carry the decoding statistics of the window(s) their
tokens came from (openai-whisper's per-segment fields): ``avg_logprob``,
``no_speech_prob`` and ``compression_ratio`` (of the window's whole text; for
a segment joined across a seam, the means over its windows weighted by the
tokens each contributed; rounded to 3 decimals) and ``temperature`` (the
highest one used). A value is ``None`` when no contributing window has it (a
window not decoded).

Everything here is pure Python/numpy on token ids; text comes from the
``decode`` callable (e.g. ``WhisperTokenizer.decode``).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.longform.fallback import compression_ratio
from whisper_t5x.longform.loudness import Loudness
from whisper_t5x.longform.segments import parse_row
from whisper_t5x.results import Segment, Transcription
from whisper_t5x.longform.windows import SAMPLE_RATE, Window

from whisper_t5x.audio.constants import TIME_PRECISION  # noqa: F401 (re-exported)

__all__ = [
    "TimedToken",
    "WindowTranscript",
    "Seam",
    "parse_window",
    "find_seam",
    "stitch",
    "majority_language",
]


@dataclasses.dataclass(frozen=True)
class TimedToken:
    token: int
    time: float  # estimated absolute time (s)
    segment: int  # index of the segment inside its window
    seg_start: float  # absolute start of that segment (s)
    seg_end: float  # absolute end of that segment (s)


@dataclasses.dataclass
class WindowTranscript:
    """The decoded text tokens of one window with their estimated times."""

    window: Window
    tokens: List[TimedToken]
    language: Optional[str] = None
    timestamps: bool = False
    last_timestamp: Optional[float] = None  # absolute time of the last timestamp token (end of decoded content)
    content_end: Optional[float] = None  # set when the window's text stops early: the seam after it is no later
    # Decoding statistics of the window (openai-whisper's per-segment fields); None when not decoded.
    avg_logprob: Optional[float] = None
    no_speech_prob: Optional[float] = None
    temperature: Optional[float] = None

    @property
    def ids(self) -> List[int]:
        return [t.token for t in self.tokens]


@dataclasses.dataclass(frozen=True)
class Seam:
    cut_left: int  # tokens [0, cut_left) of the left window are kept
    cut_right: int  # tokens [cut_right, ...) of the right window are kept
    anchored: bool  # True: found by text alignment; False: by time only
    match_length: int = 0


def parse_window(
    sequence: Sequence[int],
    window: Window,
    eot: int,
    timestamp_begin: int,
    timestamps: bool,
    sampling_rate: int = SAMPLE_RATE,
    time_precision: float = TIME_PRECISION,
    language: Optional[str] = None,
    loudness: Optional[Loudness] = None,
) -> WindowTranscript:
    """Text tokens of one window's output with absolute time estimates.

    ``sequence`` is the generated ids *after* the forced prefix (or the whole
    output: special tokens between ``eot`` and ``timestamp_begin`` are
    skipped); it ends at the first ``eot``. It is read by
    :func:`whisper_t5x.longform.segments.parse_row`; timestamps are relative to
    the window's start and are clipped to the window. ``loudness`` (of the
    whole input) puts token times on the loud frames of their span.
    """
    w_start = window.start / sampling_rate
    w_end = window.end / sampling_rate

    def clip(t: float) -> float:
        return min(max(w_start + t, w_start), w_end)

    parsed = parse_row(sequence, eot, timestamp_begin, time_precision)
    if timestamps:
        runs = [(None if r.start is None else clip(r.start), None if r.end is None else clip(r.end), r.tokens)
                for r in parsed.runs]
    else:  # one run of all text, spread over the window
        runs = [(None, None, tuple(t for r in parsed.runs for t in r.tokens))] if parsed.runs else []

    out: List[TimedToken] = []
    prev_end = w_start
    for k, (s, e, toks) in enumerate(runs):
        s = prev_end if s is None else max(s, prev_end)
        if e is None:
            # Unclosed: runs to the next segment's start or the window's end.
            e = w_end
        e = max(e, s)
        if not timestamps:
            s, e = w_start, w_end
        n = len(toks)
        times = None if loudness is None else loudness.spread(s, e, n)
        if times is None:
            times = [s + (j + 0.5) / n * (e - s) for j in range(n)]
        for j, tok in enumerate(toks):
            out.append(TimedToken(tok, times[j], k, s, e))
        prev_end = e if timestamps else w_start
    last_ts = None
    if timestamps and parsed.last_timestamp is not None:
        last_ts = clip(parsed.last_timestamp)
    return WindowTranscript(window, out, language, timestamps, last_ts)


def _runs(a: np.ndarray, b: np.ndarray) -> List[Tuple[int, int, int]]:
    """All maximal runs ``(i, j, length)`` with ``a[i:i+length] == b[j:j+length]``."""
    if a.size == 0 or b.size == 0:
        return []
    eq = a[:, None] == b[None, :]
    out = []
    for d in range(-(a.size - 1), b.size):  # diagonal j - i = d
        diag = np.diagonal(eq, offset=d)
        if not diag.any():
            continue
        padded = np.concatenate([[False], diag, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        for s, e in zip(edges[::2], edges[1::2]):
            i = s if d >= 0 else s - d
            j = s + d if d >= 0 else s
            out.append((int(i), int(j), int(e - s)))
    return out


def _time_cut(tokens: List[TimedToken], boundary: float) -> int:
    """Number of leading tokens estimated before ``boundary``."""
    n = 0
    for t in tokens:
        if t.time < boundary:
            n += 1
        else:
            break
    return n


def find_seam(
    left: WindowTranscript,
    right: WindowTranscript,
    sampling_rate: int = SAMPLE_RATE,
    min_match: int = 3,
    margin_s: float = 2.0,
    max_time_skew_s: float = 4.0,
) -> Seam:
    """Where to stop ``left``'s tokens and start ``right``'s (see the module docstring)."""
    # Where left's owned span ends: the middle of the overlap for fixed windows, the
    # right window's start for pause-aligned ones (whisper_t5x.longform.windows.pause_windows).
    # Continuation windows (no strides) overlap the next window: its middle.
    if left.window.stride_right > 0:
        boundary = left.window.owned[1] / sampling_rate
    else:
        boundary = (left.window.end + right.window.start) / 2 / sampling_rate
    if left.window.end <= right.window.start:
        # Abutting windows (cut in a pause): nothing was decoded twice, so all text
        # is kept, and any text match across the cut would be a false anchor.
        return Seam(len(left.tokens), 0, False)
    if left.content_end is not None:
        # ``right`` continues ``left`` from where its text stopped: a pure time cut
        # (text alignment could only find false anchors in the little overlap).
        boundary = min(boundary, left.content_end)
        return Seam(_time_cut(left.tokens, boundary), _time_cut(right.tokens, boundary), False)
    a_toks, b_toks = left.tokens, right.tokens
    timed = left.timestamps and right.timestamps
    if left.window.stride_right > 0 and right.window.stride_left == 0:
        # Pause-aligned windows overlap by one utterance only: look for the anchor
        # there and nowhere else (a repeated phrase nearby would be a false one).
        margin_s, max_time_skew_s = min(margin_s, 1.0), min(max_time_skew_s, 1.5)
    # Candidate regions: with timestamps, only the overlapping audio (plus a margin).
    a_lo, b_hi = 0, len(b_toks)
    if timed:
        overlap_start = right.window.start / sampling_rate - margin_s
        overlap_end = left.window.end / sampling_rate + margin_s
        while a_lo < len(a_toks) and a_toks[a_lo].time < overlap_start:
            a_lo += 1
        b_hi = 0
        while b_hi < len(b_toks) and b_toks[b_hi].time <= overlap_end:
            b_hi += 1
    a = np.asarray([t.token for t in a_toks[a_lo:]], np.int64)
    b = np.asarray([t.token for t in b_toks[:b_hi]], np.int64)
    best = None
    for i, j, length in _runs(a, b):
        if length < min_match:
            continue
        ia, jb = a_lo + i, j
        ta = [a_toks[ia + k].time for k in range(length)]
        tb = [b_toks[jb + k].time for k in range(length)]
        if timed and abs(float(np.mean(ta)) - float(np.mean(tb))) > max_time_skew_s:
            continue
        mids = [(x + y) / 2 for x, y in zip(ta, tb)]
        k = int(np.argmin([abs(m - boundary) for m in mids]))
        key = (length, -abs(mids[k] - boundary))
        if best is None or key > best[0]:
            best = (key, ia + k, jb + k, length)
    if best is not None:
        return Seam(best[1], best[2], True, best[3])
    # Where left's text ends: the closing timestamp of its last segment (the window's end
    # when that segment is not closed, or without timestamps); its start when it has no text.
    left_end = a_toks[-1].seg_end if a_toks else left.window.start / sampling_rate
    return Seam(_time_cut(a_toks, boundary), _time_cut(b_toks, min(boundary, left_end)), False)


@dataclasses.dataclass
class _Piece:
    start: float
    end: float
    tokens: List[int]
    cut_start: bool  # the segment was cut by a seam at its start
    cut_end: bool  # ... at its end
    sources: List[Tuple[WindowTranscript, int]] = dataclasses.field(default_factory=list)  # (window, tokens kept)


def _pieces(tr: WindowTranscript, lo: int, hi: int) -> List[_Piece]:
    """Kept tokens ``[lo, hi)`` of a window grouped by segment."""
    groups: "collections.OrderedDict[int, List[int]]" = collections.OrderedDict()
    for idx in range(lo, hi):
        groups.setdefault(tr.tokens[idx].segment, []).append(idx)
    out = []
    for seg, idxs in groups.items():
        first, last = tr.tokens[idxs[0]], tr.tokens[idxs[-1]]
        seg_first = idxs[0] == 0 or tr.tokens[idxs[0] - 1].segment != seg
        seg_last = idxs[-1] == len(tr.tokens) - 1 or tr.tokens[idxs[-1] + 1].segment != seg
        out.append(_Piece(first.seg_start, last.seg_end, [tr.tokens[i].token for i in idxs],
                          cut_start=not seg_first, cut_end=not seg_last, sources=[(tr, len(idxs))]))
    return out


def _segment_stats(sources: Sequence[Tuple[WindowTranscript, int]],
                   ratio: Callable[[WindowTranscript], float]) -> Dict[str, Optional[float]]:
    """A segment's window statistics: token-weighted means, and the highest temperature."""
    out: Dict[str, Optional[float]] = {}
    for key in ("avg_logprob", "no_speech_prob", "compression_ratio"):
        get = ratio if key == "compression_ratio" else (lambda tr, k=key: getattr(tr, k))
        vals = [(float(v), max(1, n)) for tr, n in sources for v in [get(tr)] if v is not None]
        weight = sum(w for _, w in vals)
        # 3 decimals: a window's statistics vary by ~1e-6 with the batch it was decoded in (float
        # noise), which should not make results of the same audio differ.
        out[key] = round(sum(v * w for v, w in vals) / weight, 3) if vals else None
    temps = [float(tr.temperature) for tr, _ in sources if tr.temperature is not None]
    out["temperature"] = max(temps) if temps else None
    return out


def majority_language(transcripts: Sequence[WindowTranscript], kept: Sequence[int]) -> Optional[str]:
    """The most common language over windows that kept text (all windows if none did); ties: earliest."""
    voters = [t.language for t, n in zip(transcripts, kept) if n > 0 and t.language is not None]
    if not voters:
        voters = [t.language for t in transcripts if t.language is not None]
    if not voters:
        return None
    counts = collections.Counter(voters)
    top = max(counts.values())
    return next(lang for lang in voters if counts[lang] == top)


def stitch(
    transcripts: Sequence[WindowTranscript],
    decode: Callable[[List[int]], str],
    duration: float,
    timestamps: bool,
    sampling_rate: int = SAMPLE_RATE,
    min_match: int = 3,
    chunks: Optional[str] = None,
) -> Transcription:
    """Merge one input's window transcripts into a :class:`~whisper_t5x.results.Transcription`.

    ``transcripts`` are the input's windows in order. ``duration`` (seconds)
    clips the segment times. ``language`` is :func:`majority_language`.
    ``chunks``: ``"segments"`` (timestamped segments; needs ``timestamps``) or
    ``"windows"`` (one segment per window, spanning what it owns); default
    segments when ``timestamps``. Segments carry ``avg_logprob``,
    ``no_speech_prob``, ``compression_ratio`` and ``temperature`` (see the
    module docstring; per window in ``"windows"`` mode).
    """
    if chunks is None:
        chunks = "segments" if timestamps else "windows"
    if chunks not in ("segments", "windows") or (chunks == "segments" and not timestamps):
        raise ValueError(f"chunks must be 'windows', or 'segments' with timestamps; got {chunks!r}")
    transcripts = sorted(transcripts, key=lambda t: t.window.start)
    n = len(transcripts)
    if n == 0:
        return Transcription("", (), None, float(duration))
    lo = [0] * n
    hi = [len(t.tokens) for t in transcripts]
    for k in range(n - 1):
        seam = find_seam(transcripts[k], transcripts[k + 1], sampling_rate, min_match=min_match)
        hi[k] = seam.cut_left
        lo[k + 1] = seam.cut_right
    for k in range(n):
        if lo[k] > hi[k]:  # both seams inside a window: it contributes nothing
            hi[k] = lo[k]
    kept = [max(0, hi[k] - lo[k]) for k in range(n)]
    all_ids = [tok.token for k, tr in enumerate(transcripts) for tok in tr.tokens[lo[k]:hi[k]]]
    text = decode(all_ids)

    mode = chunks
    if mode == "segments":
        pieces: List[_Piece] = []
        for k, tr in enumerate(transcripts):
            for p in _pieces(tr, lo[k], hi[k]):
                if pieces and p.cut_start and pieces[-1].cut_end:
                    prev = pieces[-1]  # one sentence split by the seam: join the halves
                    pieces[-1] = _Piece(prev.start, p.end, prev.tokens + p.tokens, prev.cut_start, p.cut_end,
                                        prev.sources + p.sources)
                else:
                    pieces.append(p)
        spans = [[p.start, p.end] for p in pieces]
        texts = [decode(p.tokens) for p in pieces]
        tokens = [tuple(p.tokens) for p in pieces]
        ratios: Dict[int, float] = {}

        def ratio(tr: WindowTranscript) -> float:  # of the window's whole text, as openai-whisper reports it
            if id(tr) not in ratios:
                ratios[id(tr)] = compression_ratio(decode(tr.ids))
            return ratios[id(tr)]

        extras = [_segment_stats(p.sources, ratio) for p in pieces]
    else:
        spans, texts, tokens, extras = [], [], [], []
        for k, tr in enumerate(transcripts):
            if kept[k]:
                a, b = tr.window.owned
                spans.append([a / sampling_rate, b / sampling_rate])
                tokens.append(tuple(tok.token for tok in tr.tokens[lo[k]:hi[k]]))
                texts.append(decode(list(tokens[-1])))
                extras.append(_segment_stats([(tr, kept[k])], lambda w: compression_ratio(decode(w.ids))))
    # Clip into the audio and make monotonic: start <= end <= next start.
    prev_end = 0.0
    for idx, span in enumerate(spans):
        s = min(max(span[0], prev_end), duration)
        e = min(max(span[1], s), duration)
        if idx + 1 < len(spans) and e > spans[idx + 1][0]:
            e = max(s, spans[idx + 1][0])  # the next chunk's start wins over this chunk's end
        span[0], span[1] = s, e
        prev_end = e
    segments = tuple(
        Segment(round(span[0], 3), round(span[1], 3), t, tokens[k], **extras[k])
        for k, (span, t) in enumerate(zip(spans, texts)))
    return Transcription(text, segments, majority_language(transcripts, kept), float(duration))
