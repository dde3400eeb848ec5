"""Word-level timestamps from the decoder's cross-attention (Whisper's "alignment heads").

How it works (the method of openai-whisper's ``word_timestamps=True``)::

    tokens = [<|startoftranscript|>, (language, task), <|notimestamps|>, text..., <|endoftext|>]

1. The window's text tokens (timestamps dropped) are run teacher-forced
   through the decoder once, in a batch of windows, under ``jax.jit``; the
   cross-attention probabilities of the *alignment heads* (``config.
   alignment_heads``, read from the checkpoint; by default every head of the
   last half of the decoder layers) and each text token's probability are
   returned.
2. On the host, per window: the weights are cut to the encoder positions
   that hold audio (``num_frames // 2``; 1500 positions = 30 s, 20 ms each)
   and renormalised over them (a softmax over the kept positions), z-scored
   per head and encoder position over the tokens, median-filtered along time
   (width 7), averaged over the heads.
3. Dynamic time warping (:func:`dtw`) finds the monotonic path through
   ``-weights`` (rows: the text tokens and end-of-text; columns: encoder
   positions). A token starts at the first position its row takes on the path.
4. Tokens are grouped into words (:func:`split_to_word_tokens`: at tokens
   starting with a space and at punctuation; by unicode characters for zh,
   ja, th, lo, my, yue); a word spans from its first token's start to the next
   word's start, and its probability is the mean of its tokens'.
5. :func:`attach_words` applies openai-whisper's clean-ups: overlong words
   at sentence ends and after pauses are shortened, punctuation is merged
   into neighbouring words, segment boundaries are reconciled with the
   segment timestamps.

Entry points:

* :func:`word_timestamps` — decoded windows (e.g. ``generate(...,
  return_timestamps=True).sequences``) to lists of ``{"word", "start",
  "end", "probability"}`` per window;
* :func:`find_alignment` — the batched core (text tokens -> :class:`WordTiming`
  per window), and :func:`attach_words` for callers that have segments (the
  sequential long-form mode, :mod:`whisper_t5x.longform.sequential`).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x.audio.constants import FRAMES_PER_SECOND, N_FRAMES, TOKENS_PER_SECOND  # noqa: F401
from whisper_t5x.longform.segments import parse_row, strip_prefix

__all__ = [
    "WordTiming",
    "default_alignment_heads",
    "alignment_heads",
    "median_filter",
    "dtw",
    "split_to_word_tokens",
    "find_alignment",
    "attach_words",
    "frame_loudness",
    "trim_leading_silence",
    "word_timestamps",
    "PREPEND_PUNCTUATIONS",
    "APPEND_PUNCTUATIONS",
]

NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
PREPEND_PUNCTUATIONS = "\"'\u201c\u00bf([{-"
APPEND_PUNCTUATIONS = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"
SENTENCE_END_MARKS = ".\u3002!\uff01?\uff1f"
_ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_REPLACEMENT = "\ufffd"
_TOKEN_BUCKET = 64  # teacher-forced lengths are padded to a multiple of this (few compiles)
_MAX_WEIGHT_BYTES = 512 * 2 ** 20  # attention weights fetched per forward call (rows are split to fit)


@dataclasses.dataclass
class WordTiming:
    word: str
    tokens: List[int]
    start: float  # seconds from the window start
    end: float
    probability: float


# --------------------------------------------------------------------------- heads
def default_alignment_heads(num_layers: int, num_heads: int) -> Tuple[Tuple[int, int], ...]:
    """Every head of the last half of the decoder layers (openai-whisper's default)."""
    return tuple((layer, head) for layer in range(num_layers // 2, num_layers) for head in range(num_heads))


def alignment_heads(config: Any) -> Tuple[Tuple[int, int], ...]:
    """The checkpoint's ``(layer, head)`` alignment heads, or :func:`default_alignment_heads`."""
    heads = tuple(tuple(int(v) for v in h) for h in (getattr(config, "alignment_heads", None) or ()))
    if heads:
        return heads
    return default_alignment_heads(config.decoder_layers, config.decoder_attention_heads)


# --------------------------------------------------------------------------- numerics
def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd ``width`` along the last axis, reflect-padded.

    Inputs not longer than ``width // 2`` along that axis are returned unchanged.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd number, got {width}")
    x = np.asarray(x)
    pad = width // 2
    if x.shape[-1] <= pad or width == 1:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.partition(windows, pad, axis=-1)[..., pad]


def dtw(cost: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through ``cost`` (N x M), from (0, 0) to (N-1, M-1).

    Each step moves diagonally, down (next row) or right (next column). Ties
    prefer, in order: diagonal when strictly cheapest, down when strictly
    cheapest, otherwise right (openai-whisper's rule, so paths agree exactly).
    Returns ``(rows, columns)`` of the path. The cumulative cost is filled one
    anti-diagonal at a time (vectorised; every cell of an anti-diagonal
    depends only on the two before it) and kept in float32 like the reference.
    """
    x = np.asarray(cost, np.float64)
    n, m = x.shape
    acc = np.full((n + 1, m + 1), np.inf, np.float32)
    acc[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        if i.size == 0:
            continue
        j = d - i
        c0 = acc[i - 1, j - 1]
        c1 = acc[i - 1, j]
        c2 = acc[i, j - 1]
        diag = (c0 < c1) & (c0 < c2)
        down = ~diag & (c1 < c0) & (c1 < c2)
        t = np.where(diag, 0, np.where(down, 1, 2)).astype(np.int8)
        best = np.where(t == 0, c0, np.where(t == 1, c1, c2))
        acc[i, j] = (x[i - 1, j - 1] + best.astype(np.float64)).astype(np.float32)
        trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i -= 1
            j -= 1
        elif t == 1:
            i -= 1
        elif t == 2:
            j -= 1
        else:  # pragma: no cover - every reachable cell has a trace
            raise RuntimeError("dtw: broken trace")
    path = np.asarray(path[::-1], np.int64).reshape(-1, 2)
    return path[:, 0], path[:, 1]


# --------------------------------------------------------------------------- words
def _split_on_unicode(tokenizer: Any, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
    """Cut wherever the tokens so far decode to whole unicode characters."""
    full = tokenizer.decode(tokens)
    words, groups, current, offset = [], [], [], 0
    for token in tokens:
        current.append(token)
        decoded = tokenizer.decode(current)
        if _REPLACEMENT not in decoded or full[offset + decoded.index(_REPLACEMENT)] == _REPLACEMENT:
            words.append(decoded)
            groups.append(current)
            current = []
            offset += len(decoded)
    return words, groups


def split_to_word_tokens(tokenizer: Any, tokens: Sequence[int], language: Optional[str] = None
                         ) -> Tuple[List[str], List[List[int]]]:
    """Group text ``tokens`` into words: ``(words, tokens of each word)``.

    Space-delimited languages: a new word begins at a piece that starts with a
    space or is punctuation. zh, ja, th, lo, my, yue: every complete unicode
    piece is a word (no morphological analysis).
    """
    tokens = [int(t) for t in tokens]
    pieces, groups = _split_on_unicode(tokenizer, tokens)
    if language in NO_SPACE_LANGUAGES:
        return pieces, groups
    words: List[str] = []
    word_tokens: List[List[int]] = []
    for piece, group in zip(pieces, groups):
        if not words or piece.startswith(" ") or piece.strip() in _ASCII_PUNCTUATION:
            words.append(piece)
            word_tokens.append(list(group))
        else:
            words[-1] += piece
            word_tokens[-1].extend(group)
    return words, word_tokens


# --------------------------------------------------------------------------- forward
# Compiled forwards of models whose caller keeps no program cache of its own (direct calls, tests);
# the pipeline passes its Decoder's ``alignment_programs``.
_DEFAULT_PROGRAMS: "weakref.WeakKeyDictionary[Any, Dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _forward_fn(model: Any, heads: Tuple[Tuple[int, int], ...], programs: Optional[Dict[Any, Any]] = None,
                audio_ctx: Optional[int] = None):
    """jit(params, features (B, mels, 3000), tokens (B, T)) -> (weights (B, H, T, 1500), next-token probs (B, T)).

    ``audio_ctx``: only the first ``audio_ctx`` encoder positions are encoded (weights ``(B, H, T, audio_ctx)``)."""
    cache = _DEFAULT_PROGRAMS.setdefault(model, {}) if programs is None else programs
    key = heads if audio_ctx is None else (heads, int(audio_ctx))
    if key in cache:
        return cache[key]
    from whisper_t5x.model.whisper import WhisperModule

    module = model.module
    config = model.config
    eot = config.special_tokens.eot

    def run(params, features, tokens):
        hidden = module.apply({"params": params}, features, audio_ctx, method=WhisperModule.encode)
        out, inter = module.apply({"params": params}, tokens, encoder_hidden=hidden,
                                  method=WhisperModule.decode, mutable=["intermediates"])
        layers = inter["intermediates"]["decoder"]["layers"]
        if config.scan_layers:
            stacked = layers["cross_attention_weights"][0]  # (layers, B, heads, T, frames)
            weights = jnp.stack([stacked[layer, :, head] for layer, head in heads], axis=1)
        else:
            weights = jnp.stack(
                [layers[str(layer)]["cross_attention_weights"][0][:, head] for layer, head in heads], axis=1)
        logprobs = jax.nn.log_softmax(out.logits[..., :eot].astype(jnp.float32), axis=-1)
        nxt = jnp.concatenate([tokens[:, 1:], jnp.full_like(tokens[:, :1], eot)], axis=1)
        picked = jnp.take_along_axis(logprobs, jnp.minimum(nxt, eot - 1)[..., None], axis=-1)[..., 0]
        probs = jnp.where(nxt < eot, jnp.exp(picked), 0.0)
        return weights.astype(jnp.float32), probs

    fn = jax.jit(run)
    cache[key] = fn
    return fn


def _sot_sequence(model: Any, language_token: Optional[int], task: Optional[str]) -> List[int]:
    special = model.config.special_tokens
    seq = [special.sot]
    if model.config.is_multilingual:
        seq.append(int(language_token) if language_token is not None else special.first_language)
        seq.append(special.translate if task == "translate" else special.transcribe)
    return seq


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def find_alignment(
    model: Any,
    params: Any,
    features: Any,
    text_tokens: Sequence[Sequence[int]],
    num_frames: Optional[Sequence[int]] = None,
    language_tokens: Optional[Sequence[Optional[int]]] = None,
    task: Optional[str] = None,
    medfilt_width: int = 7,
    heads: Optional[Sequence[Tuple[int, int]]] = None,
    programs: Optional[Dict[Any, Any]] = None,
    audio_ctx: Optional[int] = None,
) -> List[List[WordTiming]]:
    """Word timings (seconds from each window's start) for a batch of windows.

    ``features``: ``(B, n_mels, 3000)`` log-mel windows; ``text_tokens``: per
    window its text token ids (no special or timestamp tokens);
    ``num_frames``: mel frames of real audio in each window (default 3000);
    ``language_tokens``: per window the language token the text was decoded
    with (multilingual checkpoints; it decides how words are split as well);
    ``programs``: the caller's cache of compiled forwards (keyed by heads);
    ``audio_ctx``: encode only the first ``audio_ctx`` positions (every window's audio must end within
    them: ``num_frames <= 2 * audio_ctx``), as the rows were decoded.
    """
    features = np.asarray(features)
    batch = features.shape[0]
    if len(text_tokens) != batch:
        raise ValueError(f"{len(text_tokens)} token sequences for {batch} windows")
    num_frames = [N_FRAMES] * batch if num_frames is None else [int(min(max(f, 0), N_FRAMES)) for f in num_frames]
    language_tokens = [None] * batch if language_tokens is None else list(language_tokens)
    tokenizer = model.tokenizer
    special = model.config.special_tokens
    heads = tuple(tuple(int(v) for v in h) for h in heads) if heads else alignment_heads(model.config)
    results: List[List[WordTiming]] = [[] for _ in range(batch)]

    rows, sequences, prefix_lengths = [], [], []
    for b in range(batch):
        text = [int(t) for t in text_tokens[b] if int(t) < special.eot]
        if not text or num_frames[b] < 2:
            continue
        sot_seq = _sot_sequence(model, language_tokens[b], task)
        rows.append(b)
        sequences.append(sot_seq + [special.no_timestamps] + text + [special.eot])
        prefix_lengths.append(len(sot_seq))
    if not rows:
        return results
    max_len = model.config.max_target_positions
    for seq in sequences:
        if len(seq) > max_len:
            raise ValueError(f"{len(seq)} tokens to align; the decoder has {max_len} positions")
    longest = max(map(len, sequences))
    length = min(max_len, 32 if longest <= 32 else -(-longest // _TOKEN_BUCKET) * _TOKEN_BUCKET)
    per_row = len(heads) * length * features.shape[-1] // 2 * 4
    step = max(1, min(len(rows), 1 << int(np.log2(max(1, _MAX_WEIGHT_BYTES // per_row)))))
    if audio_ctx is not None and max(num_frames[b] for b in rows) > 2 * int(audio_ctx):
        raise ValueError(f"audio of {max(num_frames[b] for b in rows)} frames does not fit audio_ctx {audio_ctx}")
    fn = _forward_fn(model, heads, programs, audio_ctx)
    weight_parts, prob_parts = [], []
    for lo in range(0, len(rows), step):
        part = list(range(lo, min(len(rows), lo + step)))
        size = _next_pow2(len(part))
        tokens = np.full((size, length), special.eot, np.int32)
        for j, k in enumerate(part):
            tokens[j, :len(sequences[k])] = sequences[k]
        take = [rows[k] for k in part]
        feats = features[np.asarray(take + [take[-1]] * (size - len(take)))]
        w, pr = jax.device_get(fn(params, jnp.asarray(feats), jnp.asarray(tokens)))
        weight_parts.append(np.asarray(w, np.float32)[:len(part)])
        prob_parts.append(np.asarray(pr, np.float64)[:len(part)])
    weights = np.concatenate(weight_parts)
    probs = np.concatenate(prob_parts)

    for k, b in enumerate(rows):
        seq, prefix = sequences[k], prefix_lengths[k]
        text = seq[prefix + 1:-1]
        words, word_tokens = split_to_word_tokens(tokenizer, text, _language_code(model, language_tokens[b]))
        if not words:
            continue
        positions = num_frames[b] // 2
        w = weights[k, :, :len(seq), :positions].astype(np.float64)
        w = w / np.maximum(w.sum(-1, keepdims=True), 1e-30)  # softmax over the kept positions
        mean = w.mean(axis=-2, keepdims=True)
        std = w.std(axis=-2, keepdims=True)
        w = (w - mean) / np.maximum(std, 1e-12)
        w = median_filter(w, medfilt_width)
        matrix = w.mean(axis=0)[prefix:-1]  # rows: <|notimestamps|> ... last text token -> text + eot
        token_idx, time_idx = dtw(-matrix)
        jumps = np.pad(np.diff(token_idx), (1, 0), constant_values=1).astype(bool)
        jump_times = time_idx[jumps] / TOKENS_PER_SECOND
        boundaries = np.pad(np.cumsum([len(t) for t in word_tokens]), (1, 0))
        token_probs = probs[k, prefix:prefix + len(text)]  # p(text[i] | prefix, text[:i])
        results[b] = [
            WordTiming(word, toks, float(jump_times[s]), float(jump_times[e]),
                       float(np.mean(token_probs[s:e])))
            for word, toks, s, e in zip(words, word_tokens, boundaries[:-1], boundaries[1:])
        ]
    return results


def _language_code(model: Any, language_token: Optional[int]) -> Optional[str]:
    if language_token is None or not model.config.is_multilingual:
        return None
    tokenizer = model.tokenizer
    return tokenizer.id_to_code.get(int(language_token)) if tokenizer is not None else None


# --------------------------------------------------------------------------- clean-ups
def merge_punctuations(alignment: List[WordTiming], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """Fold leading punctuation into the next word and trailing punctuation into the previous one (in place)."""
    j = len(alignment) - 1
    for i in range(len(alignment) - 2, -1, -1):
        prev, nxt = alignment[i], alignment[j]
        if prev.word.startswith(" ") and prev.word.strip() in prepended:
            nxt.word = prev.word + nxt.word
            nxt.tokens = prev.tokens + nxt.tokens
            prev.word, prev.tokens = "", []
        else:
            j = i
    i = 0
    for j in range(1, len(alignment)):
        prev, nxt = alignment[i], alignment[j]
        if not prev.word.endswith(" ") and nxt.word in appended:
            prev.word = prev.word + nxt.word
            prev.tokens = prev.tokens + nxt.tokens
            nxt.word, nxt.tokens = "", []
        else:
            i = j


def attach_words(
    segments: List[Dict[str, Any]],
    alignment: List[WordTiming],
    time_offset: float,
    last_speech_timestamp: float = 0.0,
    eot: int = 50257,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
) -> float:
    """Give each segment ``"words"`` from one window's ``alignment``; returns the new last-speech time.

    ``segments``: dicts with ``"start"``, ``"end"`` (absolute seconds) and
    ``"tokens"`` (their ids; only those below ``eot``, the end-of-text id, count), in order, whose text
    tokens concatenated are the tokens ``alignment`` was computed for.
    ``time_offset``: the window's start in seconds. Segment ``start``/``end``
    are updated to the words where the words are the better estimate.
    """
    if not segments:
        return last_speech_timestamp
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median_duration = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    max_duration = median_duration * 2
    if len(durations):
        # Words at sentence boundaries are at most twice the median word long.
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - max_duration
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    index = 0
    for segment in segments:
        text_tokens = [t for t in segment["tokens"] if t < eot]
        saved, words = 0, []
        while index < len(alignment) and saved < len(text_tokens):
            timing = alignment[index]
            if timing.word:
                words.append(dict(word=timing.word, start=round(time_offset + timing.start, 2),
                                  end=round(time_offset + timing.end, 2), probability=timing.probability))
            saved += len(timing.tokens)
            index += 1
        if words:
            # The first word after a pause is at most twice the median word long (and the second).
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                words[0]["end"] - words[0]["start"] > max_duration
                or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)
            ):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)
            # Prefer the segment's timestamps over an overlong first or last word.
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words
    return last_speech_timestamp


# --------------------------------------------------------------------------- silence trimming
SILENCE_LEVEL = 0.2  # fraction of the window's loudness range below which a 20 ms frame counts as silent
MIN_SILENCE_S = 0.15  # shorter silences inside a word are left alone (stop closures, breaths)


def frame_loudness(features: np.ndarray, num_frames: int = N_FRAMES) -> np.ndarray:
    """Mean log-mel per encoder position (20 ms) of one window's real audio: ``(num_frames // 2,)``."""
    mel = np.asarray(features, np.float64)[:, : (num_frames // 2) * 2]
    return mel.mean(axis=0).reshape(-1, 2).mean(axis=1)


def trim_leading_silence(words: List[Dict[str, Any]], loudness: np.ndarray, time_offset: float,
                         level: float = SILENCE_LEVEL, min_silence: float = MIN_SILENCE_S) -> None:
    """Move word starts past the pause that precedes their sound (in place).

    Cross-attention DTW has no notion of silence: every encoder position is
    given to some token, and a pause between two words is nearly always given
    to the second, so its start lands at the previous word's end. Here, when
    a word's span holds a silent run of at least ``min_silence`` seconds
    followed by sound, the start moves to the first loud position after the
    last such run. A 20 ms position is silent when its loudness is below
    ``level`` of the way from the window's quiet floor (10th percentile) to
    its speech level (99th percentile). Ends are left alone.
    """
    if loudness.size == 0 or not words:
        return
    floor, peak = np.percentile(loudness, 10), np.percentile(loudness, 99)
    if peak - floor < 1e-6:
        return
    loud = loudness > floor + level * (peak - floor)
    need = max(1, int(round(min_silence * TOKENS_PER_SECOND)))
    for w in words:
        lo = max(0, int(round((w["start"] - time_offset) * TOKENS_PER_SECOND)))
        hi = min(loud.size, int(round((w["end"] - time_offset) * TOKENS_PER_SECOND)))
        new_start, run = None, 0
        for p in range(lo, hi):
            if not loud[p]:
                run += 1
            else:
                if run >= need:
                    new_start = p
                run = 0
        if new_start is not None:
            w["start"] = round(time_offset + new_start / TOKENS_PER_SECOND, 2)


# --------------------------------------------------------------------------- public API
def _window_parts(model: Any, sequence: Sequence[int], time_offset: float, duration: float
                  ) -> Tuple[Optional[int], List[Dict[str, Any]]]:
    """(language token, segments) of one decoded window; segments as :func:`attach_words` wants them."""
    special = model.config.special_tokens
    ids, language = strip_prefix(sequence, special.sot, special.eot, special.timestamp_begin, special.language_ids)
    parsed = parse_row(ids, special.eot, special.timestamp_begin)
    segments = [dict(start=time_offset + (0.0 if r.start is None else r.start),
                     end=time_offset + (duration if r.end is None else r.end), tokens=list(r.tokens))
                for r in parsed.runs]
    return language, segments


def word_timestamps(
    model: Any,
    params: Any,
    features: Any,
    token_sequences: Sequence[Sequence[int]],
    time_offsets: Optional[Sequence[float]] = None,
    num_frames: Optional[Sequence[int]] = None,
    language: Any = None,
    task: Optional[str] = None,
    medfilt_width: int = 7,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
    return_segments: bool = False,
    trim_silence: bool = True,
) -> List[List[Dict[str, Any]]]:
    """Word timestamps for a batch of decoded windows.

    ``features``: the ``(B, n_mels, 3000)`` windows that were decoded;
    ``token_sequences``: per window the decoded ids (a ``generate`` output
    row: ``<|startoftranscript|>``, language, task, text with or without
    timestamp tokens, end-of-text padding); ``time_offsets``: each window's
    start in seconds (default 0); ``num_frames``: mel frames of real audio per
    window (default 3000, i.e. the whole window). ``language``: a language
    (code, name or token id) used where a sequence carries none.

    Returns per window a list of ``{"word", "start", "end", "probability"}``
    (absolute seconds, rounded to 10 ms; words keep their leading space like
    openai-whisper). With ``return_segments=True`` returns per window the
    timestamp segments instead, each ``{"start", "end", "text", "tokens",
    "words"}``.

    ``trim_silence`` (default True) moves word starts past leading silence
    (:func:`trim_leading_silence`); ``False`` gives openai-whisper's timings
    exactly.
    """
    batch = len(token_sequences)
    time_offsets = [0.0] * batch if time_offsets is None else [float(t) for t in time_offsets]
    frames = [N_FRAMES] * batch if num_frames is None else [int(f) for f in num_frames]
    default_language = model.language_token(language) if language is not None else None
    languages, all_segments = [], []
    for b in range(batch):
        lang, segments = _window_parts(model, token_sequences[b], time_offsets[b], frames[b] / FRAMES_PER_SECOND)
        languages.append(lang if lang is not None else default_language)
        all_segments.append(segments)
    texts = [[t for s in segs for t in s["tokens"]] for segs in all_segments]
    alignments = find_alignment(model, params, features, texts, frames, languages, task, medfilt_width)
    out = []
    tokenizer = model.tokenizer
    for b in range(batch):
        segments = all_segments[b]
        attach_words(segments, alignments[b], time_offsets[b], time_offsets[b], model.config.special_tokens.eot,
                     prepend_punctuations, append_punctuations)
        if trim_silence:
            loudness = frame_loudness(np.asarray(features[b]), frames[b])
            trim_leading_silence([w for s in segments for w in s["words"]], loudness, time_offsets[b])
        if return_segments:
            out.append([dict(start=s["start"], end=s["end"], text=tokenizer.decode(s["tokens"]),
                             tokens=s["tokens"], words=s["words"]) for s in segments])
        else:
            out.append([w for s in segments for w in s["words"]])
    return out
