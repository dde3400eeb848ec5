"""Audio decoding ahead of the model, and groups of rows of similar duration.

:func:`decode_rows` decodes each :class:`~whisper_t5x.app.label.source.SourceRow`
with :func:`whisper_t5x.audio.loading.load_audio` on a few threads, a bounded
number of rows ahead; a row that cannot be decoded carries its ``error``.

:func:`duration_groups` holds up to ``buffer_size`` decoded rows, sorts them by
duration and hands out groups of ``group_size``: rows decoded together then
have similar lengths, so a batch's rows finish their windows (and their token
loops) at about the same time. Only the last group of the stream is short, and
memory stays bounded in streaming mode.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Iterable, Iterator, List, Optional

import numpy as np

from whisper_t5x.app.label.source import SourceRow
from whisper_t5x.audio.constants import SAMPLE_RATE


@dataclasses.dataclass
class DecodedRow:
    """A source row with its waveform (16 kHz float32), or the reason it has none."""

    row: SourceRow
    audio: Optional[np.ndarray]
    error: Optional[str] = None

    @property
    def duration(self) -> Optional[float]:
        return None if self.audio is None else self.audio.shape[0] / SAMPLE_RATE


def _message(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def decode_one(row: SourceRow) -> DecodedRow:
    """``row``'s audio decoded; any failure becomes the row's ``error``."""
    from whisper_t5x.audio.loading import load_audio

    if row.audio is None:
        return DecodedRow(row, None, "audio decoding failed: the row has no audio (no bytes and no path)")
    try:
        return DecodedRow(row, load_audio(row.audio, SAMPLE_RATE))
    except Exception as e:  # noqa: BLE001 - a bad row costs only itself
        return DecodedRow(row, None, f"audio decoding failed: {_message(e)}")


def decode_rows(rows: Iterable[SourceRow], workers: int = 2) -> Iterator[DecodedRow]:
    """:func:`decode_one` of each row, in order, at most ``2 * workers`` rows ahead."""
    workers = max(1, int(workers))
    ahead = 2 * workers
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="label-decode") as pool:
        pending: collections.deque = collections.deque()
        for row in rows:
            pending.append(pool.submit(decode_one, row))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def duration_groups(rows: Iterable[DecodedRow], group_size: int, buffer_size: int) -> Iterator[List[DecodedRow]]:
    """Groups of ``group_size`` rows of similar duration from a buffer of ``buffer_size``.

    When the buffer is full it is sorted by duration and every full group is
    handed out; the remainder waits for more rows. Rows without audio sort
    first (they cost the model nothing). The stream's end flushes the rest.
    """
    group_size = max(1, int(group_size))
    buffer_size = max(group_size, int(buffer_size))
    buf: List[DecodedRow] = []

    def key(r: DecodedRow) -> float:
        return -1.0 if r.duration is None else r.duration

    for r in rows:
        buf.append(r)
        if len(buf) >= buffer_size:
            buf.sort(key=key)
            n_full = len(buf) // group_size * group_size
            # the longest rows (fewer than a group) wait for the next fill
            out, buf = buf[:n_full], buf[n_full:]
            for i in range(0, n_full, group_size):
                yield out[i:i + group_size]
    buf.sort(key=key)
    for i in range(0, len(buf), group_size):
        yield buf[i:i + group_size]
