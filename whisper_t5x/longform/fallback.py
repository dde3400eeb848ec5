"""Temperature fallback decisions (openai-whisper's rules), on the host.

A window's greedy (temperature 0) transcript is *rejected* when it looks like
a failure:

* ``compression_ratio(text) > compression_ratio_threshold`` (2.4): the text
  repeats itself (zlib compresses it too well), the usual decoding loop;
* ``avg_logprob < logprob_threshold`` (-1.0): the model is unsure.

A window is *silent* (:func:`is_silent`) when ``no_speech_prob >
no_speech_threshold`` (0.6) and the model is not sure of its text
(``avg_logprob <= logprob_threshold``; with ``logprob_threshold=None`` the
no-speech probability alone decides, as openai-whisper's skip rule does): it
is not retried, and its text is dropped. Every long-form mode uses this one
test. Rejected windows are decoded again by sampling at the next
temperature (0.2, 0.4, ..., 1.0) until one is accepted. If none is, the
attempt kept is the one with the highest ``avg_logprob`` among those that
pass the compression check (among all attempts if none does), the policy of
faster-whisper; openai-whisper keeps the last (hottest) attempt instead, which
is usually the worst. Chunked, VAD and sequential decoding all apply it
through :class:`whisper_t5x.longform.decoder.Decoder`.

A threshold of ``None`` disables that check; ``temperatures=(0.0,)`` disables
the fallback.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional, Sequence, Tuple

__all__ = ["FallbackConfig", "compression_ratio", "is_silent", "judge", "better", "temperature_schedule", "OK",
           "RETRY", "SILENT"]

OK, RETRY, SILENT = "ok", "retry", "silent"


@dataclasses.dataclass(frozen=True)
class FallbackConfig:
    temperatures: Tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: Optional[float] = 2.4
    logprob_threshold: Optional[float] = -1.0
    no_speech_threshold: Optional[float] = 0.6

    def __post_init__(self):
        temps = tuple(float(t) for t in (self.temperatures if isinstance(self.temperatures, Sequence)
                                         else (self.temperatures,)))
        if not temps or any(t < 0 for t in temps):
            raise ValueError(f"temperatures must be a non-empty sequence of values >= 0, got {self.temperatures!r}")
        object.__setattr__(self, "temperatures", temps)

    @property
    def enabled(self) -> bool:
        return len(self.temperatures) > 1


def compression_ratio(text: str) -> float:
    """``len(utf-8 bytes) / len(zlib-compressed bytes)``; 0 for empty text."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


def _too_repetitive(text: str, cfg: FallbackConfig) -> bool:
    return cfg.compression_ratio_threshold is not None and compression_ratio(text) > cfg.compression_ratio_threshold


def _unsure(avg_logprob: float, cfg: FallbackConfig) -> bool:
    return cfg.logprob_threshold is not None and avg_logprob < cfg.logprob_threshold


def is_silent(avg_logprob: float, no_speech_prob: float, cfg: FallbackConfig) -> bool:
    """Whether a decoded window is silence: its text is dropped and it is not retried."""
    if cfg.no_speech_threshold is None or no_speech_prob <= cfg.no_speech_threshold:
        return False
    return cfg.logprob_threshold is None or avg_logprob <= cfg.logprob_threshold


def judge(text: str, avg_logprob: float, no_speech_prob: float, cfg: FallbackConfig) -> str:
    """``SILENT``, ``RETRY`` or ``OK`` for one decoded window."""
    if is_silent(avg_logprob, no_speech_prob, cfg):
        return SILENT
    if _too_repetitive(text, cfg) or _unsure(avg_logprob, cfg):
        return RETRY
    return OK


def better(a_text: str, a_logprob: float, b_text: str, b_logprob: float, cfg: FallbackConfig) -> bool:
    """Whether attempt A should be kept over attempt B when every attempt was rejected."""
    a_rep, b_rep = _too_repetitive(a_text, cfg), _too_repetitive(b_text, cfg)
    if a_rep != b_rep:
        return not a_rep
    return a_logprob > b_logprob


def temperature_schedule(temperature, default: Tuple[float, ...]) -> Tuple[float, ...]:
    """The ``temperature`` argument of the pipelines as a schedule: ``None`` -> ``default``,
    a number -> that temperature only (no fallback), a sequence -> the fallback schedule."""
    if temperature is None:
        return tuple(default)
    if isinstance(temperature, (list, tuple)) or hasattr(temperature, "__array__"):
        return tuple(float(t) for t in temperature)
    return (float(temperature),)
