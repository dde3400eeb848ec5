"""Chunked long-form transcription: overlapping 30 s windows of all inputs, decoded in parallel, stitched.

segmenter  :mod:`whisper_t5x.longform.windows` (fixed strides, or pause-aligned)
decoder    the slot engine (:class:`whisper_t5x.longform.engine.Engine`: each window joins the running slots,
           continuations included) when it takes the request (one beam), else the
           :class:`whisper_t5x.longform.decoder.Decoder` (full batches, one in flight); fallback either way
assembler  :func:`whisper_t5x.longform.stitching.stitch`

A loader thread (:class:`WindowLoader`) loads each input, cuts it into
windows, packs the windows of *all* inputs into full batches and computes
their log-mel features, while the main thread decodes: on the Decoder,
batch ``k + 1`` is dispatched before batch ``k`` is fetched and judged; on
the engine, windows are pulled as slots free up. Either way the device never
waits for host work, and each input's window transcripts are kept in the
order the windows were cut, so both paths stitch (and continue) the same
lists: greedy text is the same on both. Windows that are digitally silent are
not decoded. Where each input is loud (:mod:`whisper_t5x.longform.loudness`)
is used twice: a window that begins in a long quiet stretch starts just
before the speech instead (:func:`whisper_t5x.longform.windows.skip_leading_quiet`),
so that the model's first timestamp, which it puts near the window's start,
is right; and the stitcher spreads each segment's tokens over its loud frames.
When a window's text stops well before the end of the audio it
owns, a continuation window is decoded from its last timestamp
(:func:`continuation_windows`).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from whisper_t5x.audio.constants import N_SAMPLES, SAMPLE_RATE
from whisper_t5x.audio.loading import load_input
from whisper_t5x.longform.decoder import DecodedRow, Decoder, DecodeRequest, Pending
from whisper_t5x.longform.loudness import Loudness
from whisper_t5x.longform.stitching import WindowTranscript, parse_window, stitch
from whisper_t5x.longform.windows import (Batch, Window, bucket_size, pause_windows, skip_leading_quiet,
                                          split_windows)
from whisper_t5x.results import Transcription

__all__ = ["ChunkedSettings", "transcribe_chunked", "WindowLoader", "continuation_windows", "window_features",
           "EARLY_STOP_S", "EARLY_STOP_AT_PAUSE_S", "EARLY_STOP_AT_END_S"]

EARLY_STOP_S = 3.0  # a window whose text stops this long before its owned end gets a continuation
# ... where its owned end is a pause (pause-aligned windows): speech should reach it, so a shorter gap counts.
EARLY_STOP_AT_PAUSE_S = 1.0
# ... where its owned end is the end of the input: no later window decodes what it left out.
EARLY_STOP_AT_END_S = 1.0


@dataclasses.dataclass(frozen=True)
class ChunkedSettings:
    chunk: int  # window length in samples
    stride: int  # stride in samples
    batch_size: int
    silence_threshold: float  # windows with a lower peak are not decoded
    cut_at_pauses: bool = False
    continue_early_stops: bool = True
    # Use where the audio is loud: windows (and continuations) start at most ~1 s of quiet before their
    # speech, and token times are estimated on the loud frames of their segment.
    loudness: bool = True


# ---------------------------------------------------------------------- loader messages
@dataclasses.dataclass(frozen=True)
class InputLoaded:
    index: int
    num_samples: int
    num_windows: int


@dataclasses.dataclass(frozen=True)
class BatchReady:
    batch: Batch
    features: Any  # (rows, n_mels, 3000) float32, or (rows, 480000) audio for device features; None if empty
    silent: List[Window]  # silent windows met since the previous batch (not decoded)


@dataclasses.dataclass(frozen=True)
class LoaderFailed:
    error: BaseException


class _Stopped(Exception):
    pass


def window_features(clips: Sequence[np.ndarray], rows: int, n_mels: int, on_device: bool) -> np.ndarray:
    """Features (or, for device features, padded audio) of a batch; padding rows repeat the last clip."""
    from whisper_t5x.audio.features import log_mel_spectrogram_np, pad_or_trim

    clips = list(clips) + [clips[-1]] * (rows - len(clips))
    if on_device:
        return np.stack([pad_or_trim(c, N_SAMPLES) for c in clips]).astype(np.float32)
    return log_mel_spectrogram_np(clips, n_mels=n_mels)


class WindowLoader:
    """Loader thread: inputs -> windows -> full batches with features, as typed messages on a queue."""

    def __init__(self, items: Sequence[Any], settings: ChunkedSettings, featurize: Callable, data_size: int,
                 keep_audio: bool):
        self.items, self.settings, self.featurize, self.data_size = items, settings, featurize, data_size
        self.audio: Dict[int, np.ndarray] = {}  # inputs kept for continuations; the caller pops each when done
        self.loudness: Dict[int, Optional[Loudness]] = {}  # set before the input's InputLoaded message
        self.keep_audio = keep_audio
        self._queue: "queue.Queue" = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="whisper_t5x-loader", daemon=True)

    def __enter__(self) -> "WindowLoader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def messages(self) -> Iterator[Union[InputLoaded, BatchReady]]:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            if isinstance(msg, LoaderFailed):
                raise msg.error
            yield msg

    def _put(self, msg: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._queue.put(msg, timeout=0.1)
                return
            except queue.Full:
                continue

    def _windows(self, index: int, audio: np.ndarray) -> List[Window]:
        s = self.settings
        if s.cut_at_pauses:
            windows = pause_windows(audio, s.chunk, s.stride, input_index=index)
        else:
            windows = split_windows(audio.shape[0], s.chunk, s.stride, input_index=index)
        loudness = Loudness.of(audio) if s.loudness else None
        self.loudness[index] = loudness
        return skip_leading_quiet(windows, loudness)

    def _run(self) -> None:
        s = self.settings
        pending: List[tuple] = []
        silent: List[Window] = []

        def emit(final: bool = False) -> None:
            nonlocal pending, silent
            while len(pending) >= s.batch_size or (final and pending):
                take, pending = pending[:s.batch_size], pending[s.batch_size:]
                size = bucket_size(len(take), s.batch_size, self.data_size)
                rows = tuple(w for w, _ in take) + (None,) * (size - len(take))
                self._put(BatchReady(Batch(rows), self.featurize([a for _, a in take], size), silent))
                silent = []
            if final and silent:
                self._put(BatchReady(Batch(()), None, silent))
                silent = []

        try:
            for i, item in enumerate(self.items):
                audio = load_input(item, i, len(self.items))
                if self.keep_audio and audio.shape[0] > 0:
                    self.audio[i] = audio
                windows = self._windows(i, audio)
                self._put(InputLoaded(i, int(audio.shape[0]), len(windows)))
                for w in windows:
                    clip = audio[w.start:w.end]
                    if s.silence_threshold > 0 and (clip.size == 0 or float(np.abs(clip).max()) < s.silence_threshold):
                        silent.append(w)
                    else:
                        pending.append((w, clip))
                emit()
            emit(final=True)
            self._put(None)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            try:
                self._put(LoaderFailed(e))
            except _Stopped:
                pass


# ---------------------------------------------------------------------- continuations
def continuation_windows(transcripts: Dict[int, List[WindowTranscript]], audio: Dict[int, np.ndarray],
                         chunk: int, loudness: Optional[Dict[int, Optional[Loudness]]] = None) -> List[tuple]:
    """Windows to decode again from where a window's text stopped early (openai-whisper's "seek"), once.

    Whisper sometimes ends a window's transcript long before the end of its
    audio (most often on repetitive speech). When the text of a window stops
    more than ``EARLY_STOP_S`` (``EARLY_STOP_AT_PAUSE_S`` where that end is a
    pause, ``EARLY_STOP_AT_END_S`` where it is the end of the input: an input
    of one window loses its last sentence when the model takes it to run past
    the window) before the end of the audio it owns and that remaining audio is not
    quiet, a *continuation* window starting at the last timestamp is made; the
    stopped window is marked to be cut at its last timestamp
    (``content_end``), and the stitcher takes the text after it from the
    continuation. Given the inputs' ``loudness``, a continuation that would
    begin in a long quiet stretch starts just before the speech (see
    :func:`whisper_t5x.longform.windows.skip_leading_quiet`) and spans up to
    ``chunk`` samples from there. Returns ``(window, clip)`` pairs.
    """
    extra = []
    for i, trs in transcripts.items():
        samples = audio.get(i)
        if samples is None:
            continue
        mine = []
        starts_at = {o.window.start for o in trs if o.window.stride_left == 0}
        for tr in list(trs):
            w = tr.window
            owned_end = w.owned[1] / SAMPLE_RATE
            at_pause = w.stride_right > 0 and w.owned[1] in starts_at
            limit = EARLY_STOP_AT_END_S if w.is_last else EARLY_STOP_AT_PAUSE_S if at_pause else EARLY_STOP_S
            if not tr.tokens or tr.last_timestamp is None or owned_end - tr.last_timestamp < limit:
                continue
            start = int(round(tr.last_timestamp * SAMPLE_RATE))
            rest, whole = samples[start:w.owned[1]], samples[w.start:w.end]
            if rest.size == 0 or np.percentile(np.abs(rest), 95) < 0.1 * np.percentile(np.abs(whole), 95):
                continue  # the model stopped at a real pause
            tr.content_end = tr.last_timestamp
            end = min(start + chunk, samples.shape[0])
            mine.append(Window(i, -1, start, end, 0, 0, int(samples.shape[0])))
        if loudness is not None and loudness.get(i) is not None:  # one by one: none is left out
            mine = [dataclasses.replace(m, index=-1, end=min(m.start + chunk, m.num_samples))
                    for w in mine for m in skip_leading_quiet([w], loudness[i])]
        extra.extend((w, samples[w.start:w.end].copy()) for w in mine)  # copies: the input can be freed
    return extra


# ---------------------------------------------------------------------- the algorithm
def _window_transcript(decoder: Decoder, w: Window, row: DecodedRow, timestamps: bool,
                       loudness: Optional[Loudness] = None) -> WindowTranscript:
    special = decoder.special
    language = "en" if not decoder.config.is_multilingual else decoder.tokenizer.id_to_code.get(row.language_token)
    tr = parse_window(row.tokens, w, special.eot, special.timestamp_begin, timestamps, SAMPLE_RATE,
                      language=language, loudness=loudness)
    return dataclasses.replace(tr, avg_logprob=row.avg_logprob, no_speech_prob=row.no_speech_prob,
                               temperature=row.temperature)


def transcribe_chunked(
    decoder: Decoder,
    items: Sequence[Any],
    request: DecodeRequest,
    settings: ChunkedSettings,
    prompt: Sequence[int] = (),
    segments: str = "segments",
    progress: Optional[Any] = None,
    stats: Optional[Dict[str, int]] = None,
    engine: Any = None,
) -> List[Transcription]:
    """Transcribe ``items`` (loadable by :func:`load_audio`); one :class:`Transcription` per item.

    ``segments``: ``"segments"`` (timestamped segments) or ``"windows"`` (one per window).
    ``engine``: a :class:`~whisper_t5x.longform.engine.Engine` decodes the windows (and continuations) in its
    slots when it supports the request (one beam; ``prompt`` too); else the ``decoder`` decodes them in batches.
    The windows, their transcripts and the stitching are the same either way.
    """
    stats = stats if stats is not None else {}
    for key in ("windows", "padding_rows", "quiet_windows", "continuation_windows"):
        stats.setdefault(key, 0)
    on_engine = engine is not None and engine.supports(request, prompt, prompted=True)
    on_device = decoder.feature_backend == "jax"
    n_mels = decoder.config.num_mel_bins

    def featurize(clips, rows):
        # The engine takes rows one by one and pads its own encoder buckets: no padding rows here.
        return window_features(clips, len(clips) if on_engine else rows, n_mels, on_device)

    keep_audio = request.timestamps and settings.continue_early_stops
    loader = WindowLoader(items, settings, featurize, decoder.data_size, keep_audio)
    run = _WindowRun(decoder, len(items), request, settings, loader, featurize, stats, progress)
    with loader:
        if on_engine:
            run.decode_on_engine(engine, prompt)
        else:
            run.decode_in_batches(prompt)
    return run.stitched(segments)


class _WindowRun:
    """One :func:`transcribe_chunked` call: each input's window transcripts (kept in the order the windows
    were cut, so both decode paths stitch and continue the same list), and the continuations to decode."""

    def __init__(self, decoder: Decoder, count: int, request: DecodeRequest, settings: ChunkedSettings,
                 loader: WindowLoader, featurize: Callable, stats: Dict[str, int], progress: Optional[Any]):
        self.decoder, self.request, self.settings, self.loader = decoder, request, settings, loader
        self.featurize, self.stats, self.progress = featurize, stats, progress
        self.transcripts: Dict[int, List[WindowTranscript]] = {i: [] for i in range(count)}
        self.lengths: Dict[int, int] = {}
        self.expected: Dict[int, int] = {}  # windows per input
        self.extra: List[tuple] = []  # continuation (window, clip) pairs
        self._order: Dict[int, int] = {}  # id(transcript) -> when its window was cut (or its continuation made)
        self._cut = 0

    # -------------------------------------------------------------- bookkeeping shared by both paths
    def ticket(self) -> int:
        """The next position in cutting order."""
        self._cut += 1
        return self._cut

    def add(self, ticket: int, tr: WindowTranscript) -> None:
        self._order[id(tr)] = ticket
        trs = self.transcripts[tr.window.input_index]
        trs.append(tr)
        if len(trs) > 1 and self._order[id(trs[-2])] > ticket:  # decoded out of order (the engine)
            trs.sort(key=lambda t: self._order[id(t)])

    def loaded(self, msg: InputLoaded) -> None:
        self.lengths[msg.index] = msg.num_samples
        self.expected[msg.index] = msg.num_windows
        if self.progress is not None:
            self.progress.add_total(msg.num_windows)

    def quiet(self, windows: Sequence[Window]) -> None:
        for w in windows:
            self.add(self.ticket(), WindowTranscript(w, [], None, False))
        self.check_done(w.input_index for w in windows)
        self.stats["quiet_windows"] += len(windows)
        if self.progress is not None:
            self.progress.update(len(windows))

    def check_done(self, indices) -> None:
        """Once all windows of an input are decoded: its continuations, and its audio is released."""
        loader = self.loader
        for i in sorted(set(indices)):
            if len(self.transcripts[i]) == self.expected.get(i) and i in loader.audio:
                samples = loader.audio.pop(i)
                self.extra.extend(continuation_windows({i: self.transcripts[i]}, {i: samples}, self.settings.chunk,
                                                       loader.loudness))

    def decoded(self, ticket: int, w: Window, row: DecodedRow, continuing: bool) -> None:
        self.add(ticket, _window_transcript(self.decoder, w, row, self.request.timestamps,
                                            self.loader.loudness.get(w.input_index)))
        if not continuing:
            self.check_done([w.input_index])
        self.stats["windows"] += 1
        if self.progress is not None:
            self.progress.update(1)

    def take_continuations(self) -> List[tuple]:
        extra, self.extra = self.extra, []
        if extra:
            self.stats["continuation_windows"] += len(extra)
            if self.progress is not None:
                self.progress.add_total(len(extra))
        return extra

    # -------------------------------------------------------------- the Decoder: full batches, one in flight
    def decode_in_batches(self, prompt: Sequence[int]) -> None:
        decoder, request = self.decoder, self.request

        def finish(ready: BatchReady, tickets: List[int], pending: Pending, continuing: bool = False) -> None:
            for t, w, row in zip(tickets, ready.batch.windows, pending.result()):
                self.decoded(t, w, row, continuing)
            self.stats["padding_rows"] += ready.batch.num_padding

        in_flight = None
        for msg in self.loader.messages():
            if isinstance(msg, InputLoaded):
                self.loaded(msg)
                continue
            self.quiet(msg.silent)
            if msg.batch.size == 0:
                continue
            tickets = [self.ticket() for _ in msg.batch.windows]
            dispatched = (msg, tickets, decoder.submit(msg.features, request, prompt, count=len(tickets)))
            if in_flight is not None:
                finish(*in_flight)
            in_flight = dispatched
        if in_flight is not None:
            finish(*in_flight)

        extra = self.take_continuations()
        size_of = self.settings.batch_size
        for k in range(0, len(extra), size_of):
            take = extra[k:k + size_of]
            size = bucket_size(len(take), size_of, decoder.data_size)
            rows = tuple(w for w, _ in take) + (None,) * (size - len(take))
            ready = BatchReady(Batch(rows), self.featurize([c for _, c in take], size), [])
            tickets = [self.ticket() for _ in take]
            finish(ready, tickets, decoder.submit(ready.features, request, prompt, count=len(take)), continuing=True)

    # -------------------------------------------------------------- the engine: windows join running slots
    def decode_on_engine(self, engine: Any, prompt: Sequence[int] = ()) -> None:
        """Every window (and then every continuation) is one engine row; rows are pulled as slots free
        up and each is parsed as it ends. Continuations are made once all of an input's windows have
        ended (as on the Decoder path), so they join the slots while other inputs' windows still decode."""
        windows: Dict[int, Tuple[Window, bool]] = {}  # ticket -> (window, is a continuation), while decoding

        def rows() -> Iterator[Optional[Tuple[int, np.ndarray]]]:
            for msg in self.loader.messages():
                if isinstance(msg, InputLoaded):
                    self.loaded(msg)
                    continue
                self.quiet(msg.silent)
                for w, f in zip(msg.batch.windows, msg.features if msg.batch.size else ()):
                    t = self.ticket()
                    windows[t] = (w, False)
                    yield t, f
            while True:  # continuations, made as inputs end
                extra = self.take_continuations()
                if extra:
                    for (w, _), f in zip(extra, self.featurize([c for _, c in extra], len(extra))):
                        t = self.ticket()
                        windows[t] = (w, True)
                        yield t, f
                elif windows and self.loader.keep_audio:
                    yield None  # rows still decoding may make continuations: ask again later
                else:
                    return

        def on_result(t: int, row: DecodedRow) -> None:
            w, continuing = windows.pop(t)
            self.decoded(t, w, row, continuing)

        engine.decode(self.decoder.params, rows(), self.request, on_result, prompt=prompt)

    # -------------------------------------------------------------- the assembler
    def stitched(self, segments: str) -> List[Transcription]:
        decode = self.decoder.tokenizer.decode
        return [stitch(self.transcripts[i], decode, self.lengths[i] / SAMPLE_RATE, self.request.timestamps,
                       chunks=segments) for i in range(len(self.transcripts))]
