"""Subtitle and transcript writers for pipeline results.

Every writer is a pure function from a pipeline result dict
(``{"text": str, "chunks": [{"timestamp": (start, end), "text": str}],
"language": ...}``) to a string; :func:`write_outputs` puts them on disk.

Formats (:data:`FORMATS`):

* ``txt``  -- one line per timestamped segment, or the whole text on one line;
* ``srt``  -- numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``;
* ``vtt``  -- ``WEBVTT`` header, ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues;
* ``json`` -- ``{"text", "language", "duration", "segments": [{"id", "start", "end", "text"}]}``;
* ``tsv``  -- header ``start<TAB>end<TAB>text``, times in integer milliseconds.

Segments are normalised by :func:`segments_from_result`: a chunk whose end is
``None`` (the pipeline's last, open chunk) ends at the audio duration; a
result without timestamps becomes one segment spanning the whole file.
No gin, no JAX: safe to import anywhere.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "FORMATS",
    "Segment",
    "format_timestamp",
    "segments_from_result",
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
class Segment:
    start: float
    end: float
    text: str


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


def _result_text(result: Mapping[str, Any]) -> str:
    text = result.get("text")
    if text is None:
        text = "".join(str(c.get("text") or "") for c in (result.get("chunks") or []))
    return str(text).strip()


def segments_from_result(result: Mapping[str, Any], duration: Optional[float] = None) -> List[Segment]:
    """Timestamped segments of ``result``; see the module docstring for the rules.

    Starts that are missing take the previous segment's end (0 for the first);
    ends that are missing take the next segment's start, or ``duration`` for
    the last (falling back to the start). Ends never precede starts. Empty
    chunks are dropped. Without any usable timestamp, one segment
    ``(0, duration or 0)`` holds the whole text (none if the text is empty).
    """
    duration = _num(duration)
    chunks = list(result.get("chunks") or [])
    raw = []
    for c in chunks:
        ts = c.get("timestamp") if isinstance(c, Mapping) else None
        if ts is None and isinstance(c, Mapping) and ("start" in c or "end" in c):
            ts = (c.get("start"), c.get("end"))
        start, end = (None, None) if ts is None else (tuple(ts) + (None, None))[:2]
        text = str((c.get("text") if isinstance(c, Mapping) else "") or "").strip()
        raw.append((_num(start), _num(end), text))
    if not any(s is not None or e is not None for s, e, _ in raw):
        text = _result_text(result)
        return [Segment(0.0, duration or 0.0, text)] if text else []
    segs: List[Segment] = []
    prev_end = 0.0
    for i, (start, end, text) in enumerate(raw):
        if start is None:
            start = prev_end
        if end is None:
            nxt = next((s for s, _, _ in raw[i + 1:] if s is not None), None)
            end = nxt if nxt is not None else (duration if duration is not None else start)
        end = max(end, start)
        prev_end = end
        if text:
            segs.append(Segment(start, end, text))
    return segs


# ---------------------------------------------------------------- writers
def to_txt(result: Mapping[str, Any], duration: Optional[float] = None) -> str:
    chunks = result.get("chunks") or []
    has_ts = any((c.get("timestamp") or (None, None))[0] is not None for c in chunks if isinstance(c, Mapping))
    if has_ts:
        lines = [s.text for s in segments_from_result(result, duration)]
    else:
        text = _result_text(result)
        lines = [text] if text else []
    return "".join(line + "\n" for line in lines)


def to_srt(result: Mapping[str, Any], duration: Optional[float] = None) -> str:
    cues = []
    for i, s in enumerate(segments_from_result(result, duration), start=1):
        cues.append(
            f"{i}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n{s.text}\n"
        )
    return "\n".join(cues)


def to_vtt(result: Mapping[str, Any], duration: Optional[float] = None) -> str:
    out = ["WEBVTT\n"]
    for s in segments_from_result(result, duration):
        out.append(f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text}\n")
    return "\n".join(out)


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item"):  # numpy / jax scalars
        try:
            return x.item()
        except Exception:  # noqa: BLE001
            pass
    return str(x)


def to_json(result: Mapping[str, Any], duration: Optional[float] = None) -> str:
    segs = segments_from_result(result, duration)
    doc = {
        "text": _result_text(result),
        "language": _jsonable(result.get("language")),
        "duration": _num(duration),
        "segments": [
            {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
            for i, s in enumerate(segs)
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def to_tsv(result: Mapping[str, Any], duration: Optional[float] = None) -> str:
    rows = ["start\tend\ttext"]
    for s in segments_from_result(result, duration):
        text = " ".join(s.text.replace("\t", " ").split())
        rows.append(f"{int(round(s.start * 1000))}\t{int(round(s.end * 1000))}\t{text}")
    return "\n".join(rows) + "\n"


FORMATS: Dict[str, Callable[[Mapping[str, Any], Optional[float]], str]] = {
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


def render(result: Mapping[str, Any], fmt: str, duration: Optional[float] = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt](result, duration)


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


def write_outputs(
    result: Mapping[str, Any],
    output_dir: str,
    name: str,
    formats: Sequence[str],
    duration: Optional[float] = None,
) -> Dict[str, str]:
    """Render ``result`` in each format to ``<output_dir>/<name>.<fmt>``; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = output_paths(output_dir, name, formats)
    rendered = {fmt: render(result, fmt, duration) for fmt in formats}  # all or nothing on errors
    for fmt, path in paths.items():
        _atomic_write(path, rendered[fmt])
    return paths
