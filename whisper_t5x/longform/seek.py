"""The seek step of openai-whisper's sequential algorithm, as pure functions.

* :func:`file_log_mel`: the log-mel of a whole file (plus 30 s of zeros), so
  any 30 s window can be cut from it at a frame position;
* :func:`window_segments`: one window's decoded tokens -> its segments and the
  frame where the next window starts;
* :func:`word_seek`: with word timestamps, the seek moves to the end of the
  last word, and hallucinated segments after long silences are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import FRAMES_PER_SECOND, HOP_LENGTH, INPUT_STRIDE, N_FRAMES, SAMPLE_RATE
from whisper_t5x.longform import alignment as al
from whisper_t5x.longform.segments import parse_row

__all__ = ["file_log_mel", "mel_window", "window_segments", "SeekState", "word_seek"]

_PUNCTUATION = "\"'\u201c\u00bf([{-\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"


def file_log_mel(audio: np.ndarray, n_mels: int = 80, block_frames: int = 6000) -> np.ndarray:
    """Log-mel of a whole file followed by 30 s of zeros: ``(n_mels, len(audio) // 160 + 3000)``.

    Same definition as :func:`whisper_t5x.audio.features.log_mel_spectrogram_np`
    but over the whole waveform, so the clamp at (max - 8) uses the file's
    maximum (openai-whisper's ``log_mel_spectrogram(audio, padding=N_SAMPLES)``).
    Computed in blocks of frames to bound memory on long files.
    """
    from whisper_t5x.audio.features import LOG_FLOOR, DYNAMIC_RANGE, N_FFT, hann_window, mel_filters

    x = np.concatenate([np.asarray(audio, np.float32).reshape(-1), np.zeros(N_FRAMES * HOP_LENGTH, np.float32)])
    x = x.astype(np.float64)
    n = x.shape[0]
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    num_frames = n // HOP_LENGTH  # the STFT's last frame is dropped
    filters = mel_filters(n_mels)
    window = hann_window(N_FFT)
    out = np.empty((n_mels, num_frames), np.float64)
    for lo in range(0, num_frames, block_frames):
        hi = min(num_frames, lo + block_frames)
        starts = np.arange(lo, hi) * HOP_LENGTH
        frames = x[starts[:, None] + np.arange(N_FFT)[None, :]]
        spectrum = np.fft.rfft(frames * window, axis=-1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        out[:, lo:hi] = np.log10(np.maximum(filters @ power.T, LOG_FLOOR))
    out = (np.maximum(out, out.max() - DYNAMIC_RANGE) + 4.0) / 4.0
    return out.astype(np.float32)


def _mel_window(mel: np.ndarray, seek: int, size: int) -> np.ndarray:
    """``size`` frames from ``seek``, zero-padded to a whole window."""
    segment = mel[:, seek:seek + size]
    if segment.shape[1] < N_FRAMES:
        segment = np.pad(segment, ((0, 0), (0, N_FRAMES - segment.shape[1])))
    return segment


def mel_window(mel: np.ndarray, seek: int, size: int) -> np.ndarray:
    """``size`` frames from ``seek``, zero-padded to a whole window."""
    segment = mel[:, seek:seek + size]
    if segment.shape[1] < N_FRAMES:
        segment = np.pad(segment, ((0, 0), (0, N_FRAMES - segment.shape[1])))
    return segment


def window_segments(
    tokens: Sequence[int],
    timestamp_begin: int,
    seek: int,
    segment_size: int,
    eot: Optional[int] = None,
) -> Tuple[List[Dict[str, Any]], int, bool]:
    """Cut one window's sampled tokens into segments and find where the next window starts.

    ``tokens``: the sampled ids (after the forced prefix); ``seek``: the
    window's first mel frame; ``segment_size``: mel frames of audio in the
    window. Returns ``(segments, next_seek, single_timestamp_ending)``, each
    segment ``{"start", "end", "tokens"}`` with absolute seconds and its
    tokens (timestamps included). The row is read by
    :func:`whisper_t5x.longform.segments.parse_row`.

    * With a segment boundary (``<|a|><|b|>``) the text is cut at every
      timestamp. If the transcript ends with a single timestamp after text,
      the last segment closes there and the whole window is consumed;
      otherwise the next window starts at the last timestamp of the last
      complete segment (the open text after it is dropped and decoded again).
    * Without any boundary the whole output is one segment, ending at its last
      timestamp (or at the window end), and the window is consumed.
    """
    parsed = parse_row(tokens, eot, timestamp_begin)
    ids = list(parsed.tokens)
    time_offset = seek * HOP_LENGTH / SAMPLE_RATE
    segments: List[Dict[str, Any]] = []
    if parsed.has_boundary:
        closed = [r for r in parsed.runs if r.closed]
        for r in closed:
            segments.append(dict(start=time_offset + (0.0 if r.start is None else r.start),
                                 end=time_offset + r.end, tokens=ids[r.span[0]:r.span[1]]))
        if parsed.single_timestamp_ending or not closed:
            next_seek = seek + segment_size
        else:
            next_seek = seek + (ids[closed[-1].span[1] - 1] - timestamp_begin) * INPUT_STRIDE
    else:
        duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        if parsed.last_timestamp:  # a last timestamp other than <|0.00|>
            duration = parsed.last_timestamp
        segments.append(dict(start=time_offset, end=time_offset + duration, tokens=ids))
        next_seek = seek + segment_size
    return segments, next_seek, parsed.single_timestamp_ending


def _word_anomaly_score(word: Dict[str, Any]) -> float:
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: Optional[Dict[str, Any]]) -> bool:
    if segment is None or not segment.get("words"):
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return next((s for s in segments if s.get("words")), None)


def _last_word_end(segments: List[Dict[str, Any]]) -> Optional[float]:
    for s in reversed(segments):
        if s.get("words"):
            return s["words"][-1]["end"]
    return segments[-1]["end"] if segments else None


@dataclasses.dataclass
class SeekState:
    """Where one file's decoding stands."""

    content_frames: int  # mel frames of real audio
    seek: int = 0  # first mel frame of the next window
    last_speech_timestamp: float = 0.0  # end of the last word (word timestamps)

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames


def word_seek(f: "SeekState", segments, alignment, time_offset, window_end_time, size, single_ending, previous_seek,
               threshold, eot, prepend, append) -> bool:
    """Word timestamps for one window's segments, the word-based seek and the hallucination filter.

    Mutates ``segments`` (adds ``words``; may truncate it), ``f.seek`` and
    ``f.last_speech_timestamp``. Returns True when the whole window is to be
    skipped (a hallucination after a long silence at its start).
    """
    al.attach_words(segments, alignment, time_offset, f.last_speech_timestamp, eot, prepend, append)
    if not single_ending:
        last_end = _last_word_end(segments)
        if last_end is not None and last_end > time_offset:
            f.seek = round(last_end * FRAMES_PER_SECOND)
    if threshold is not None:
        if not single_ending:
            last_end = _last_word_end(segments)
            if last_end is not None and last_end > time_offset:
                if window_end_time - last_end > threshold:
                    f.seek = round(last_end * FRAMES_PER_SECOND)
                else:
                    f.seek = previous_seek + size
        first = _next_words_segment(segments)
        if first is not None and _is_segment_anomaly(first):
            gap = first["start"] - time_offset
            if gap > threshold:
                f.seek = previous_seek + round(gap * FRAMES_PER_SECOND)
                return True
        content_duration = f.content_frames / FRAMES_PER_SECOND
        segment_duration = size / FRAMES_PER_SECOND
        hal_last_end = f.last_speech_timestamp
        for si in range(len(segments)):
            segment = segments[si]
            if not segment.get("words"):
                continue
            if _is_segment_anomaly(segment):
                nxt = _next_words_segment(segments[si + 1:])
                hal_next_start = nxt["words"][0]["start"] if nxt is not None else time_offset + segment_duration
                silence_before = (segment["start"] - hal_last_end > threshold or segment["start"] < threshold
                                  or segment["start"] - time_offset < 2.0)
                silence_after = (hal_next_start - segment["end"] > threshold or _is_segment_anomaly(nxt)
                                 or window_end_time - segment["end"] < 2.0)
                if silence_before and silence_after:
                    f.seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                    if content_duration - segment["end"] < threshold:
                        f.seek = f.content_frames
                    segments[si:] = []
                    break
            hal_last_end = segment["end"]
    last_end = _last_word_end(segments)
    if last_end is not None:
        f.last_speech_timestamp = last_end
    return False
