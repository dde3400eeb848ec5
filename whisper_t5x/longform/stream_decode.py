"""Stream rows decoded by the long-form :class:`~whisper_t5x.longform.decoder.Decoder`: the ``decode``
function the policies of :mod:`whisper_t5x.longform.streaming` take (rows in, hypotheses out), with the two
options that make short rows cheaper (``audio_ctx`` buckets, word times read while decoding)."""

from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from whisper_t5x.longform.streaming import DecodeFn, Hypothesis, StreamRow, StreamWord, normalize_word  # noqa: F401

__all__ = ["decoder_decode_fn", "stream_request", "AUDIO_CTX_BUCKETS", "AUDIO_CTX_MARGIN_S", "audio_ctx_for",
           "frame_word_times", "warmup_seconds"]

AUDIO_CTX_BUCKETS = (250, 500, 750, 1000)  # encoder positions (20 ms each) a stream row may be encoded with
AUDIO_CTX_MARGIN_S = 0.5  # audio_ctx_for: positions past a row's audio (a little silence after the last word)


def stream_request(sample_len: int = 128) -> Any:
    """The :class:`~whisper_t5x.longform.decoder.DecodeRequest` of stream rows: transcription with timestamps
    (segment ends), greedy only (a partial last word is no reason to re-sample), silent rows dropped."""
    from whisper_t5x.longform.decoder import DecodeRequest
    from whisper_t5x.longform.fallback import FallbackConfig

    return DecodeRequest(task="transcribe", language=None, timestamps=True, sample_len=int(sample_len),
                         fallback=FallbackConfig(temperatures=(0.0,)))


class _Timing(NamedTuple):
    start: float
    end: float


def _features(audio: np.ndarray, n_mels: int) -> np.ndarray:
    from whisper_t5x.audio.features import log_mel_spectrogram_np

    return log_mel_spectrogram_np(np.asarray(audio, np.float32)[:N_SAMPLES], n_mels=n_mels)


def audio_ctx_for(samples: int, buckets: Optional[Sequence[int]], margin_s: float = AUDIO_CTX_MARGIN_S
                  ) -> Optional[int]:
    """The encoder positions to decode ``samples`` of audio with: the smallest of ``buckets`` holding
    the audio plus ``margin_s``; None (the whole window) when none does, or without buckets."""
    if not buckets:
        return None
    need = int(np.ceil((samples / SAMPLE_RATE + margin_s) * SAMPLE_RATE / (2 * HOP_LENGTH)))
    full = N_SAMPLES // (2 * HOP_LENGTH)
    for b in sorted(int(b) for b in buckets):
        if need <= b < full:
            return b
    return None


def frame_word_times(frames: Sequence[int], groups: Sequence[Sequence[int]], seconds: float
                     ) -> List[Tuple[float, float]]:
    """(start, end) of each word from its tokens' attention frames (:attr:`DecodedRow.frames` of the text
    tokens, in order): a word ends at its latest token's frame (20 ms each; kept non-decreasing over the
    words and within ``seconds``) and starts where the word before it ends, as the post-hoc alignment
    (:func:`~whisper_t5x.longform.alignment.find_alignment`) places them."""
    out, k, previous = [], 0, 0.0
    for g in groups:
        got = [f for f in frames[k:k + len(g)] if f >= 0]
        k += len(g)
        end = min(seconds, max(previous, (max(got) if got else 0) * 2 * HOP_LENGTH / SAMPLE_RATE))
        out.append((previous, end))
        previous = end
    return out


def warmup_seconds(buckets: Optional[Sequence[int]]) -> List[float]:
    """Row lengths (seconds) that compile every ``audio_ctx`` program a decode function over ``buckets``
    runs: one row per bucket, and one past them all (the whole window)."""
    if not buckets:
        return [2.0]
    return [b * 2 * HOP_LENGTH / SAMPLE_RATE - AUDIO_CTX_MARGIN_S - 0.1 for b in sorted(buckets)] + [25.0]


def decoder_decode_fn(decoder: Any, request: Any = None,
                      audio_ctx: Optional[Sequence[int]] = None, inline_alignment: bool = False) -> DecodeFn:
    """A :data:`DecodeFn` over the long-form ``decoder``: rows decoded in its batches (one call for all).

    Words come from splitting each row's text tokens
    (:func:`~whisper_t5x.longform.alignment.split_to_word_tokens`), finished
    segments from its timestamp runs (:func:`~whisper_t5x.longform.segments.parse_row`);
    rows that ask for ``word_times`` get word starts and ends from the
    cross-attention alignment of the decoded text, one batched forward.

    ``audio_ctx``: encoder position buckets (e.g. :data:`AUDIO_CTX_BUCKETS`); a call then encodes only
    the positions its longest row needs (:func:`audio_ctx_for`; the encoder's cost falls with them),
    and decodes and aligns against those. None: every row is encoded as a whole 30 s window.

    ``inline_alignment``: word times come from the alignment heads' attention read while decoding
    (:attr:`~whisper_t5x.decoding.generate.DecodeOptions.alignment_heads`, :func:`frame_word_times`): a
    call with rows that ask for word times decodes with those heads recorded, and no second forward runs.
    """
    from whisper_t5x.longform.alignment import alignment_heads, find_alignment, split_to_word_tokens
    from whisper_t5x.longform.decoder import Row
    from whisper_t5x.longform.segments import parse_row

    request = request if request is not None else stream_request()
    model = decoder.model
    special = model.config.special_tokens
    n_mels = model.config.num_mel_bins
    heads = alignment_heads(model.config)
    multilingual = model.config.is_multilingual

    def language_token(code: Optional[str]) -> Optional[int]:
        return model.language_token(code) if (code and multilingual) else None

    def code_of(token: Optional[int]) -> Optional[str]:
        if not multilingual:
            return "en"
        return decoder.tokenizer.id_to_code.get(int(token)) if token is not None else None

    def decode(rows: Sequence[StreamRow]) -> List[Hypothesis]:
        if not rows:
            return []
        features = np.stack([_features(r.audio, n_mels) for r in rows])
        ctx = audio_ctx_for(max(r.audio.shape[0] for r in rows), audio_ctx)
        call = request if ctx is None else dataclasses.replace(request, audio_ctx=ctx)
        inline = inline_alignment and any(r.word_times for r in rows)
        if inline:
            call = dataclasses.replace(call, alignment_heads=heads)
        decoded = decoder.decode([Row(features[i], tuple(r.prompt), language_token(r.language))
                                  for i, r in enumerate(rows)], call)
        parts = []
        for r, d in zip(rows, decoded):
            parsed = parse_row(d.tokens, special.eot, special.timestamp_begin)
            text = [t for run in parsed.runs for t in run.tokens]
            lang = code_of(d.language_token)
            words, groups = split_to_word_tokens(decoder.tokenizer, text, lang) if text and not d.silent else ([], [])
            ends, seen, k, count = [], 0, 0, 0
            for run in parsed.runs:
                seen += len(run.tokens)
                while k < len(groups) and count + len(groups[k]) <= seen:
                    count += len(groups[k])
                    k += 1
                if run.closed and count == seen and k:
                    ends.append((k, float(run.end)))
            parts.append((words, groups, tuple(ends), d))
        timings: List[Any] = [None] * len(rows)
        need = [i for i, r in enumerate(rows) if r.word_times and parts[i][1]]
        if need and inline:
            for i in need:
                d = parts[i][3]
                text_frames = [f for t, f in zip(d.tokens, d.frames) if t < special.eot]
                timings[i] = [_Timing(a, b) for a, b in frame_word_times(text_frames, parts[i][1],
                                                                          rows[i].audio.shape[0] / SAMPLE_RATE)]
        elif need:
            found = find_alignment(model, decoder.params, features[need],
                                   [[t for g in parts[i][1] for t in g] for i in need],
                                   [rows[i].audio.shape[0] // HOP_LENGTH for i in need],
                                   [parts[i][3].language_token if multilingual else None for i in need],
                                   task="transcribe", programs=decoder.alignment_programs, audio_ctx=ctx)
            for i, f in zip(need, found):
                timings[i] = f
        out = []
        for i, (words, groups, ends, _) in enumerate(parts):
            times = timings[i]
            if times is not None and len(times) == len(words):
                ws = tuple(StreamWord(w, t.start, t.end, tuple(g)) for w, g, t in zip(words, groups, times))
            else:
                ws = tuple(StreamWord(w, None, None, tuple(g)) for w, g in zip(words, groups))
            out.append(Hypothesis(ws, ends))
        return out

    decode.audio_ctx = tuple(audio_ctx) if audio_ctx else None  # type: ignore[attr-defined]  # for warm-ups
    return decode
