"""VAD long-form transcription: decode only speech, each second of it once.

segmenter  Silero VAD (:mod:`whisper_t5x.audio.vad`) -> speech segments -> rows of at most 30 s
           (:mod:`whisper_t5x.longform.speech_rows`; ``glue``: speech back to back, silence removed, or
           ``span``: contiguous stretches with their pauses), no overlap
decoder    :class:`whisper_t5x.longform.decoder.Decoder`, rows of all inputs in full batches
assembler  :func:`assemble`: rows in order on the input's own timeline

Without timestamp tokens (``row_timestamps=False``, the default) Whisper
transcribes a row whole (it tends to stop early at a timestamp and drop a
row's last words otherwise) and each row is one segment spanning its speech;
with them a row gives finer segments. Times map back through the row's pieces,
so they are monotonic on the original audio. The language is detected per
row. An input without speech is not decoded at all and gives empty text.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import N_SAMPLES, SAMPLE_RATE
from whisper_t5x.audio.loading import load_input
from whisper_t5x.longform.decoder import DecodedRow, Decoder, DecodeRequest
from whisper_t5x.longform.segments import parse_row, text_tokens
from whisper_t5x.longform.speech_rows import STRATEGIES, SpeechRow, speech_rows
from whisper_t5x.longform.word_segments import SUBTITLE_LIMITS, SegmentLimits, TimedWord, split_segments
from whisper_t5x.results import Segment, Transcription, Word

__all__ = ["VadSettings", "transcribe_vad", "assemble", "vad_speech", "BATCHED_VAD", "speech_only", "to_original",
           "InputRows", "vad_request", "row_features"]


@dataclasses.dataclass(frozen=True)
class VadSettings:
    """How speech is found and packed into rows."""

    strategy: str = "glue"  # "glue" (faster-whisper) or "span" (WhisperX)
    row_timestamps: bool = False  # decode timestamp tokens inside rows
    threshold: float = 0.5
    min_silence_duration_ms: int = 160
    speech_pad_ms: int = 400
    max_speech_duration_s: float = 30.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"VAD strategy must be one of {STRATEGIES}, got {self.strategy!r}")


BATCHED_VAD = VadSettings()  # faster-whisper's batched-pipeline VAD options


def vad_speech(audio: np.ndarray, settings: VadSettings) -> List[Dict[str, int]]:
    """Speech segments ``[{"start", "end"}]`` (samples) of one input."""
    from whisper_t5x.audio import vad

    if audio.size == 0:
        return []
    return vad.speech_timestamps(audio, threshold=settings.threshold,
                                 min_silence_duration_ms=settings.min_silence_duration_ms,
                                 speech_pad_ms=settings.speech_pad_ms,
                                 max_speech_duration_s=settings.max_speech_duration_s)


@dataclasses.dataclass
class _Input:
    audio: Optional[np.ndarray]  # released once every row has been cut from it
    rows: List[SpeechRow]
    duration: float
    decoded: Dict[int, DecodedRow] = dataclasses.field(default_factory=dict)
    sliced: int = 0


def _language(decoder: Decoder, token: int) -> Optional[str]:
    if not decoder.config.is_multilingual:
        return "en"
    return decoder.tokenizer.id_to_code.get(int(token))


def _row_segments(decoder: Decoder, row: SpeechRow, decoded: DecodedRow, timestamps: bool) -> List[Segment]:
    """One row's segments on the original timeline."""
    special = decoder.special
    decode = decoder.tokenizer.decode
    stats = dict(avg_logprob=decoded.avg_logprob, no_speech_prob=decoded.no_speech_prob,
                 compression_ratio=decoded.compression_ratio, temperature=decoded.temperature)
    row_end = row.num_samples / SAMPLE_RATE
    if not timestamps:
        tokens = tuple(text_tokens(decoded.tokens, special.eot))
        if not tokens:
            return []
        return [Segment(row.start / SAMPLE_RATE, row.end / SAMPLE_RATE, decode(list(tokens)), tokens, **stats)]
    out = []
    for run in parse_row(decoded.tokens, special.eot, special.timestamp_begin).runs:
        start = 0.0 if run.start is None else min(run.start, row_end)
        end = row_end if run.end is None else min(max(run.end, start), row_end)
        out.append(Segment(float(row.original_time(start)), float(row.original_time(end, is_end=True)),
                           decode(list(run.tokens)), run.tokens, **stats))
    return out


def _aligned_segments(decoder: Decoder, row: SpeechRow, decoded: DecodedRow,
                      words: Sequence[TimedWord], limits: SegmentLimits) -> List[Segment]:
    """One row's segments cut from its aligned words (:func:`split_segments`); one segment if none aligned."""
    if not words:
        return _row_segments(decoder, row, decoded, False)
    stats = dict(avg_logprob=decoded.avg_logprob, no_speech_prob=decoded.no_speech_prob,
                 compression_ratio=decoded.compression_ratio, temperature=decoded.temperature)
    out = []
    for group in split_segments(words, limits):
        tokens = tuple(t for w in group for t in w.tokens)
        out.append(Segment(group[0].start, group[-1].end, decoder.tokenizer.decode(list(tokens)), tokens,
                           words=tuple(Word(w.start, w.end, w.word, w.probability) for w in group), **stats))
    return out


def assemble(decoder: Decoder, rows: Sequence[SpeechRow], decoded: Sequence[DecodedRow], duration: float,
             timestamps: bool, words: Optional[Sequence[Sequence[TimedWord]]] = None,
             limits: Optional[SegmentLimits] = None, keep_words: bool = True) -> Transcription:
    """One input's rows (in order) into a Transcription: times monotonic, clipped to the audio.

    With ``words`` (each row's aligned words) segments are cut from the words by ``limits``
    (:mod:`whisper_t5x.longform.word_segments`); ``keep_words=False`` drops the words from the result
    (segment timestamps asked for, word timestamps not). Else a row is one segment, or the segments its
    timestamp tokens give (``timestamps``).
    """
    segments: List[Segment] = []
    languages: List[str] = []
    for k, (row, res) in enumerate(zip(rows, decoded)):
        if words is not None and not timestamps:
            found = _aligned_segments(decoder, row, res, words[k], limits or SUBTITLE_LIMITS)
        else:
            found = _row_segments(decoder, row, res, timestamps)
            if found and words is not None:
                found = _with_words(found, [Word(w.start, w.end, w.word, w.probability) for w in words[k]])
        segments.extend(found)
        if found:
            lang = _language(decoder, res.language_token)
            if lang:
                languages.append(lang)
    fixed, prev_end = [], 0.0
    for s in segments:
        start = min(max(s.start, prev_end), duration)
        end = min(max(s.end, start), duration)
        fixed.append(dataclasses.replace(s, start=round(start, 3), end=round(end, 3),
                                         words=s.words if keep_words else None))
        prev_end = end
    text = decoder.tokenizer.decode([t for s in fixed for t in s.tokens])
    language = collections.Counter(languages).most_common(1)[0][0] if languages else None
    if language is None and not decoder.config.is_multilingual:
        language = "en"
    return Transcription(text, tuple(fixed), language, float(duration))


def _with_words(segments: List[Segment], words: Sequence[Word]) -> List[Segment]:
    """Hand a row's words to its segments by time (a word goes to the segment its middle falls in)."""
    out, k = [], 0
    for n, s in enumerate(segments):
        mine = []
        while k < len(words) and (n == len(segments) - 1 or (words[k].start + words[k].end) / 2 < s.end):
            mine.append(words[k])
            k += 1
        out.append(dataclasses.replace(s, words=tuple(mine)))
    return out


def timed_words(row: SpeechRow, timing: Sequence[Any]) -> List[TimedWord]:
    """One row's word timings (seconds into the row) on the original timeline, each inside one piece.

    A word belongs to the piece its middle falls in and is clipped to that piece, so no word (and no
    segment cut from words) spans a silence the VAD removed. Tokens of a timing whose text merged into a
    neighbour stay with the word before it, so the words' tokens are the row's text tokens in order.
    """
    offsets = np.array([p.offset for p in row.pieces], np.float64) / SAMPLE_RATE
    out: List[TimedWord] = []
    carry: Tuple[int, ...] = ()
    for w in timing:
        tokens = carry + tuple(int(t) for t in w.tokens)
        if not w.word:
            if out:
                out[-1] = dataclasses.replace(out[-1], tokens=out[-1].tokens + tokens)
                carry = ()
            else:
                carry = tokens
            continue
        carry = ()
        middle = (w.start + w.end) / 2
        k = int(np.clip(np.searchsorted(offsets, middle, side="right") - 1, 0, len(row.pieces) - 1))
        piece = row.pieces[k]
        lo, hi = piece.start / SAMPLE_RATE, piece.end / SAMPLE_RATE
        start = min(max(float(row.original_time(w.start)), lo), hi)
        end = min(max(float(row.original_time(w.end, is_end=True)), start), hi)
        out.append(TimedWord(round(start, 3), round(end, 3), w.word, float(w.probability), tokens, (row.index, k)))
    return out


def _row_words(decoder: Decoder, rows: List[SpeechRow], feats: np.ndarray, decoded: List[DecodedRow],
               request: DecodeRequest) -> List[List[TimedWord]]:
    """Word timings of decoded rows (cross-attention alignment), mapped to the original timeline."""
    from whisper_t5x.longform import alignment as al

    special = decoder.special
    timings = al.find_alignment(
        decoder.model, decoder.params, feats, [text_tokens(d.tokens, special.eot) for d in decoded],
        num_frames=[min(r.num_samples, N_SAMPLES) // 160 for r in rows],
        language_tokens=[d.language_token if decoder.config.is_multilingual else None for d in decoded],
        task=request.task, programs=decoder.alignment_programs)
    out = []
    for row, timing in zip(rows, timings):
        timing = list(timing)
        al.merge_punctuations(timing)  # in place
        out.append(timed_words(row, timing))
    return out


def _prepare(audio: np.ndarray, settings: VadSettings, index: int) -> _Input:
    """The segmenter for one loaded input: VAD, then speech rows (the audio kept only if there are rows)."""
    rows = speech_rows(vad_speech(audio, settings), settings.strategy, input_index=index, num_samples=audio.shape[0])
    return _Input(audio if rows else None, rows, audio.shape[0] / SAMPLE_RATE)


def vad_request(request: DecodeRequest, settings: VadSettings = BATCHED_VAD) -> DecodeRequest:
    """The request VAD rows decode with: timestamp tokens only with ``settings.row_timestamps``."""
    return dataclasses.replace(request, timestamps=settings.row_timestamps)


def _batches(items: Sequence[Any], settings: VadSettings, batch_size: int, progress: Any = None
             ) -> Iterator[Tuple[Dict[int, _Input], List[Tuple[int, int]]]]:
    """Load and VAD inputs one by one; yield (inputs so far, [(input, row index)] of one full batch)."""
    inputs: Dict[int, _Input] = {}
    pending: List[Tuple[int, int]] = []
    for i, item in enumerate(items):
        inputs[i] = inp = _prepare(load_input(item, i, len(items)), settings, i)
        if progress is not None and inp.rows:
            progress.add_total(len(inp.rows))
        pending.extend((i, k) for k in range(len(inp.rows)))
        while len(pending) >= batch_size:
            yield inputs, pending[:batch_size]
            pending = pending[batch_size:]
    yield inputs, pending


def transcribe_vad(decoder: Decoder, items: Sequence[Any], request: DecodeRequest,
                   settings: VadSettings = BATCHED_VAD, prompt: Sequence[int] = (), words: bool = False,
                   stats: Optional[Dict[str, int]] = None, segment_timestamps: bool = False,
                   limits: SegmentLimits = SUBTITLE_LIMITS, progress: Any = None,
                   engine: Any = None) -> List[Transcription]:
    """Transcribe ``items``; one :class:`Transcription` each. Rows of all inputs share batches.

    ``progress``: an object with ``add_total(rows)`` and ``update(rows)`` (the pipeline's bar).
    ``words`` (word timestamps) or ``segment_timestamps``: rows are aligned word by word and, unless
    ``settings.row_timestamps``, segments are cut from the words by ``limits``; ``words`` also keeps the
    words in the result. Otherwise a row is one segment.
    ``engine``: a :class:`~whisper_t5x.longform.engine.Engine` decodes the rows in its slots when it
    supports the request (one beam; ``prompt`` too, conditioning every row); else the ``decoder`` decodes
    them in batches.
    """
    stats = stats if stats is not None else {}
    for key in ("rows", "speech_seconds"):
        stats.setdefault(key, 0)
    request = vad_request(request, settings)
    if engine is not None and engine.supports(request, prompt, prompted=True):
        return _transcribe_with_engine(engine, decoder, items, request, settings, prompt, words, stats,
                                       segment_timestamps, limits, progress)
    align = words or segment_timestamps
    row_words: Dict[Tuple[int, int], List[TimedWord]] = {}
    inputs: Dict[int, _Input] = {}

    def finish(batch, feats, pending) -> None:
        results = pending.result()
        for (i, k), res in zip(batch, results):
            inputs[i].decoded[k] = res
        if progress is not None:
            progress.update(len(batch))
        if align:
            mel = _alignment_mel(decoder, feats)
            found = _row_words(decoder, [inputs[i].rows[k] for i, k in batch], mel[:len(batch)], results, request)
            for key, w in zip(batch, found):
                row_words[key] = w

    in_flight = None
    for inputs, batch in _batches(items, settings, decoder.batch_size, progress):
        if not batch:
            continue
        feats = row_features(decoder, _cut_rows(inputs, batch, stats))
        dispatched = (batch, feats, decoder.submit(feats, request, prompt))
        if in_flight is not None:
            finish(*in_flight)
        in_flight = dispatched
    if in_flight is not None:
        finish(*in_flight)

    return [_assemble_input(decoder, inputs[i], i, request, row_words if align else None, limits, words)
            for i in range(len(items))]


def _assemble_input(decoder: Decoder, inp: _Input, i: int, request: DecodeRequest,
                    row_words: Optional[Dict[Tuple[int, int], List[TimedWord]]], limits: SegmentLimits,
                    words: bool) -> Transcription:
    """Input ``i``'s decoded rows into its Transcription (``row_words``: aligned words by (input, row))."""
    decoded = [inp.decoded[k] for k in range(len(inp.rows))]
    w = None if row_words is None else [row_words.get((i, k), []) for k in range(len(inp.rows))]
    return assemble(decoder, inp.rows, decoded, inp.duration, request.timestamps, w, limits, words)


def _alignment_mel(decoder: Decoder, feats: np.ndarray) -> np.ndarray:
    """Rows' features as the alignment wants them: log-mel (device-feature rows are padded audio)."""
    if decoder.feature_backend == "jax":
        from whisper_t5x.audio.features import log_mel_spectrogram_np

        return log_mel_spectrogram_np(list(feats), n_mels=decoder.config.num_mel_bins)
    return feats


def _cut_rows(inputs: Dict[int, Any], batch: Sequence[Tuple[int, int]], stats: Dict[str, Any]) -> List[np.ndarray]:
    """The audio of a batch's rows; an input's audio is dropped once its last row is cut (bounded memory:
    only inputs with rows still to cut stay loaded)."""
    clips = []
    for i, k in batch:
        inp = inputs[i]
        clips.append(inp.rows[k].slice_audio(inp.audio))
        inp.sliced += 1
        if inp.sliced == len(inp.rows):
            inp.audio = None
    stats["rows"] += len(batch)
    stats["speech_seconds"] += sum(c.size for c in clips) / SAMPLE_RATE
    return clips


def row_features(decoder: Decoder, clips: List[np.ndarray]) -> np.ndarray:
    """Rows' decoder input: log-mel, or padded audio when the features are computed on the device."""
    from whisper_t5x.audio.features import log_mel_spectrogram_np, pad_or_trim

    if decoder.feature_backend == "jax":
        return np.stack([pad_or_trim(c, N_SAMPLES) for c in clips]).astype(np.float32)
    return log_mel_spectrogram_np(clips, n_mels=decoder.config.num_mel_bins)


def _transcribe_with_engine(engine: Any, decoder: Decoder, items: Sequence[Any], request: DecodeRequest,
                            settings: VadSettings, prompt: Sequence[int], words: bool, stats: Dict[str, int],
                            segment_timestamps: bool, limits: SegmentLimits, progress: Any) -> List[Transcription]:
    """:func:`transcribe_vad` through the engine: rows are cut and featurised a batch at a time as the
    engine pulls them, and each row is assembled (and aligned, in batches) as it ends."""
    align = words or segment_timestamps
    inputs: Dict[int, _Input] = {}
    features: Dict[Tuple[int, int], np.ndarray] = {}  # rows in flight, kept for the alignment
    row_words: Dict[Tuple[int, int], List[TimedWord]] = {}
    to_align: List[Tuple[int, int]] = []

    def rows() -> Iterator[Tuple[Tuple[int, int], np.ndarray]]:
        nonlocal inputs
        for inputs, batch in _batches(items, settings, decoder.batch_size, progress):
            if not batch:
                continue
            for key, f in zip(batch, row_features(decoder, _cut_rows(inputs, batch, stats))):
                if align:
                    features[key] = f
                yield key, f

    def flush_alignment() -> None:
        if not to_align:
            return
        feats = _alignment_mel(decoder, np.stack([features.pop(key) for key in to_align]))
        found = _row_words(decoder, [inputs[i].rows[k] for i, k in to_align], feats,
                           [inputs[i].decoded[k] for i, k in to_align], request)
        for key, w in zip(to_align, found):
            row_words[key] = w
        to_align.clear()

    def on_result(key: Tuple[int, int], result: DecodedRow) -> None:
        i, k = key
        inputs[i].decoded[k] = result
        if progress is not None:
            progress.update(1)
        if align:
            to_align.append(key)
            if len(to_align) >= decoder.batch_size:
                flush_alignment()

    engine.decode(decoder.params, rows(), request, on_result, prompt=prompt)
    flush_alignment()
    return [_assemble_input(decoder, inputs[i], i, request, row_words if align else None, limits, words)
            for i in range(len(items))]


# ---------------------------------------------------------------------- one input, decoded by the caller
class InputRows:
    """One input's VAD path split around its decoding, for a caller that decodes the rows itself.

    The server feeds the rows of many inputs, as they arrive, into one running engine call
    (:class:`~whisper_t5x.longform.engine.LiveRows`); each input is finished when its last row ends:

    * construction (host): load, VAD, speech rows; an input without speech has ``num_rows == 0``;
    * :meth:`features` (host): cut and featurise rows when the caller wants them (the audio is released
      after the last row is cut; rows are kept only for the alignment);
    * :meth:`add`: a row's :class:`DecodedRow`, in any order; True once every row has one;
    * :meth:`transcription`: assemble, aligned word by word when ``words`` or ``segment_timestamps``.

    Rows decode with :attr:`request` (:func:`vad_request`); the result is :func:`transcribe_vad`'s for this
    input alone (greedy rows are the same tokens whichever rows shared the decoding).
    """

    def __init__(self, decoder: Decoder, audio: Any, request: DecodeRequest, settings: VadSettings = BATCHED_VAD,
                 words: bool = False, segment_timestamps: bool = False, limits: SegmentLimits = SUBTITLE_LIMITS):
        self.decoder = decoder
        self.request = vad_request(request, settings)
        self.words, self.limits = bool(words), limits
        self.align = bool(words or segment_timestamps)
        self.stats: Dict[str, Any] = {"rows": 0, "speech_seconds": 0.0}
        self._input = _prepare(load_input(audio, 0, 1), settings, 0)
        self._features: Dict[int, np.ndarray] = {}  # rows cut and not yet aligned (alignment only)

    @property
    def num_rows(self) -> int:
        return len(self._input.rows)

    @property
    def duration(self) -> float:
        return self._input.duration

    @property
    def complete(self) -> bool:
        return len(self._input.decoded) == self.num_rows

    def features(self, rows: Sequence[int]) -> np.ndarray:
        """The decoder input of ``rows`` (indices, each cut once): log-mel, or padded audio for device features."""
        rows = list(rows)
        feats = row_features(self.decoder, _cut_rows({0: self._input}, [(0, k) for k in rows], self.stats))
        if self.align:
            self._features.update(zip(rows, feats))
        return feats

    def add(self, row: int, decoded: DecodedRow) -> bool:
        """Row ``row``'s decoding; True once every row has one."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} of an input with {self.num_rows} rows")
        self._input.decoded[row] = decoded
        return self.complete

    def transcription(self) -> Transcription:
        """The input's Transcription (every row decoded); aligned rows in batches of the decoder's size."""
        if not self.complete:
            raise ValueError(f"{self.num_rows - len(self._input.decoded)} of {self.num_rows} rows are not decoded")
        row_words: Optional[Dict[Tuple[int, int], List[TimedWord]]] = None
        if self.align:
            row_words = {}
            order = sorted(self._features)
            for start in range(0, len(order), max(1, self.decoder.batch_size)):
                ks = order[start:start + max(1, self.decoder.batch_size)]
                feats = _alignment_mel(self.decoder, np.stack([self._features.pop(k) for k in ks]))
                found = _row_words(self.decoder, [self._input.rows[k] for k in ks], feats,
                                   [self._input.decoded[k] for k in ks], self.request)
                row_words.update(((0, k), w) for k, w in zip(ks, found))
        return _assemble_input(self.decoder, self._input, 0, self.request, row_words, self.limits, self.words)


# ---------------------------------------------------------------------- sequential with vad_filter
def speech_only(audio: np.ndarray, settings: VadSettings) -> Tuple[np.ndarray, Optional[SpeechRow]]:
    """The input's speech glued back to back (silence removed) and the row that maps it back.

    faster-whisper's ``vad_filter=True`` for its sequential mode: the seek
    algorithm then runs on speech only. No speech gives an empty array and None.
    """
    found = vad_speech(audio, settings)
    if not found:
        return np.zeros(0, np.float32), None
    [row] = speech_rows(found, "glue", num_samples=audio.shape[0], max_samples=max(1, audio.shape[0]))
    return row.slice_audio(audio), row


def to_original(result: Transcription, row: Optional[SpeechRow], duration: float) -> Transcription:
    """A Transcription of :func:`speech_only` audio with its times moved back onto the original audio."""
    if row is None:
        return Transcription(result.text, result.segments, result.language, float(duration))

    def moved_word(w: Word) -> Word:
        start = float(row.original_time(w.start))
        return dataclasses.replace(w, start=round(start, 3),
                                   end=round(max(start, float(row.original_time(w.end, is_end=True))), 3))

    segments = []
    for s in result.segments:
        start = float(row.original_time(s.start))
        end = max(start, float(row.original_time(s.end, is_end=True)))
        words = None if s.words is None else tuple(moved_word(w) for w in s.words)
        segments.append(dataclasses.replace(s, start=round(start, 3), end=round(min(end, duration), 3), words=words))
    return Transcription(result.text, tuple(segments), result.language, float(duration))
