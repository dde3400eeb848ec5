"""Subtitle and transcript writers for typed results.

Every writer is a pure function from a :class:`~whisper_t5x.results.Transcription`
to a string; :func:`write_outputs` puts them on disk.

Formats (:data:`FORMATS`):

* ``txt``  -- one line per segment, or the whole text on one line when there are none;
* ``srt``  -- numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``;
* ``vtt``  -- ``WEBVTT`` header, ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues;
* ``json`` -- ``{"text", "language", "duration", "segments": [...]}``, each segment
  ``{"id", "start", "end", "text", "tokens", "avg_logprob", "no_speech_prob",
  "compression_ratio", "temperature"}`` plus ``"words"`` when word timestamps were decoded;
* ``tsv``  -- header ``start<TAB>end<TAB>text``, times in integer milliseconds.

Cues come from :func:`cues`: times are clipped to ``[0, duration]``, a missing
start takes the previous end, a missing end the next start (the duration for the last),
segments without text are dropped, and a transcription with text but no
segments is one cue over the whole file. No gin, no JAX: safe to import anywhere.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from whisper_t5x.results import STATISTICS, Segment, Transcription

__all__ = [
    "FORMATS",
    "Cue",
    "cues",
    "format_timestamp",
    "to_txt",
    "to_srt",
    "to_vtt",
    "to_json",
    "to_tsv",
    "render",
    "output_paths",
    "outputs_exist",
    "write_outputs",
    "parse_formats",
]


@dataclass(frozen=True)
class Cue:
    """A segment as written: times made safe to print, text stripped."""

    start: float
    end: float
    text: str
    segment: Optional[Segment] = None  # None for the whole-file cue of a transcription without segments


def _num(x: Any) -> Optional[float]:
    """``x`` as a finite float, or ``None``."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def format_timestamp(seconds: float, decimal_marker: str = ".", always_include_hours: bool = True) -> str:
    """``HH:MM:SS.mmm`` (``decimal_marker`` is ``,`` for SRT); negatives clamp to 0."""
    ms = max(0, int(round(float(seconds) * 1000.0)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if (always_include_hours or hours) else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def cues(result: Transcription) -> List[Cue]:
    """The cues of ``result``; see the module docstring for the rules."""
    duration = _num(result.duration)
    segments = list(result.segments)
    if not segments:
        text = result.text.strip()
        return [Cue(0.0, duration or 0.0, text)] if text else []
    out: List[Cue] = []
    prev_end = 0.0
    for i, seg in enumerate(segments):
        start = _num(seg.start)
        start = prev_end if start is None else max(start, 0.0)
        end = _num(seg.end)
        if end is None:
            nxt = next((_num(s.start) for s in segments[i + 1:] if _num(s.start) is not None), None)
            end = nxt if nxt is not None else (duration if duration is not None else start)
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        end = max(end, start)
        prev_end = end
        text = seg.text.strip()
        if text:
            out.append(Cue(start, end, text, seg))
    return out


# ---------------------------------------------------------------- writers
def to_txt(result: Transcription) -> str:
    return "".join(c.text + "\n" for c in cues(result))


def to_srt(result: Transcription) -> str:
    return "\n".join(f"{i}\n{format_timestamp(c.start, ',')} --> {format_timestamp(c.end, ',')}\n{c.text}\n"
                     for i, c in enumerate(cues(result), start=1))


def to_vtt(result: Transcription) -> str:
    out = ["WEBVTT\n"]
    for c in cues(result):
        out.append(f"{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n{c.text}\n")
    return "\n".join(out)


def _segment_doc(i: int, c: Cue) -> Dict[str, Any]:
    doc: Dict[str, Any] = {"id": i, "start": round(c.start, 3), "end": round(c.end, 3), "text": c.text}
    seg = c.segment
    if seg is not None:
        doc["tokens"] = [int(t) for t in seg.tokens]
        doc.update({k: _num(getattr(seg, k)) for k in STATISTICS})
        if seg.words is not None:
            doc["words"] = [{"start": round(float(w.start), 3), "end": round(float(w.end), 3), "word": w.word,
                             "probability": _num(w.probability)} for w in seg.words]
    return doc


def to_json(result: Transcription) -> str:
    doc = {
        "text": result.text.strip(),
        "language": result.language,
        "duration": _num(result.duration),
        "segments": [_segment_doc(i, c) for i, c in enumerate(cues(result))],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def to_tsv(result: Transcription) -> str:
    rows = ["start\tend\ttext"]
    for c in cues(result):
        text = " ".join(c.text.replace("\t", " ").split())
        rows.append(f"{int(round(c.start * 1000))}\t{int(round(c.end * 1000))}\t{text}")
    return "\n".join(rows) + "\n"


FORMATS: Dict[str, Callable[[Transcription], str]] = {
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "json": to_json,
    "tsv": to_tsv,
}


def parse_formats(spec: Any) -> List[str]:
    """``"all"``, ``"srt"``, ``"srt,vtt"`` or a sequence of names -> ordered, checked list."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: List[str] = []
    for item in items:
        name = str(item).strip().lower().lstrip(".")
        if not name:
            continue
        names = list(FORMATS) if name == "all" else [name]
        for n in names:
            if n not in FORMATS:
                raise ValueError(f"unknown output format {item!r}; choose from {', '.join(FORMATS)} or 'all'")
            if n not in out:
                out.append(n)
    return out


def render(result: Transcription, fmt: str) -> str:
    if not isinstance(result, Transcription):
        raise TypeError(f"writers take a Transcription, got {type(result).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt](result)


def output_paths(output_dir: str, name: str, formats: Iterable[str]) -> Dict[str, str]:
    return {fmt: os.path.join(output_dir, f"{name}.{fmt}") for fmt in formats}


def outputs_exist(output_dir: str, name: str, formats: Sequence[str]) -> bool:
    """True when every requested output of ``name`` is already on disk."""
    return bool(formats) and all(os.path.isfile(p) for p in output_paths(output_dir, name, formats).values())


def _atomic_write(path: str, text: str) -> None:
    """Write via a temporary file + rename, so a file that exists is complete.

    The temporary file is created with mode 0666 and the process umask
    applies, as for any file the user's tools create (``mkstemp`` would make
    every output 0600).
    """
    directory = os.path.dirname(path) or "."
    for _ in range(100):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(6)}-{os.path.basename(path)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a temporary file next to {path}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(result: Transcription, output_dir: str, name: str, formats: Sequence[str]) -> Dict[str, str]:
    """Render ``result`` in each format to ``<output_dir>/<name>.<fmt>``; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = output_paths(output_dir, name, formats)
    rendered = {fmt: render(result, fmt) for fmt in formats}  # all or nothing on errors
    for fmt, path in paths.items():
        _atomic_write(path, rendered[fmt])
    return paths
