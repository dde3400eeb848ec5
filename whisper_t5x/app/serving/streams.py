"""Live streams: the scheduler that decodes every stream due for an update as rows of one batch.

::

    client ─► Stream.append ─► (tick) ─► server VAD ─► item buffer ─► policy row ─┐
                                                                                 ├─► one decode ─► policy ─► events
    client ─► Stream.append ─► (tick) ─► server VAD ─► item buffer ─► policy row ─┘

Every ``interval_s`` the :class:`StreamScheduler` thread takes the audio each
:class:`Stream` received since the last tick, runs the server VAD of all
streams that use it in one batched Silero call, and gathers the rows of every
stream with enough new speech (:meth:`~whisper_t5x.longform.streaming.Policy.ready`)
and of every item that just ended. It decodes them in one call of the shared
decode function (the pipeline's :class:`~whisper_t5x.longform.decoder.Decoder`,
:func:`~whisper_t5x.longform.streaming.decoder_decode_fn`; file requests
reach the same Decoder from the batcher's thread) and lets the policy commit
words. Per-stream state (buffer, committed words, prompt) lives here, on the host.

Events leave through each stream's ``emit`` callback, which must not block
(the WebSocket endpoint puts them on the connection's queue): a slow or
vanished client holds nothing the others wait for. A stream that is closed is
dropped at the next tick and frees its slot at once.

Items: with server VAD (:class:`TurnDetection`), an item starts where speech
starts (with ``prefix_padding_ms`` of audio before it) and ends after
``silence_duration_ms`` of silence; silence between items only fills the
padding ring, so it costs no decoding. Without (``turn_detection=None``) audio
goes straight into the item, and the client ends it with ``commit``. An item's
end is decoded once more with every remaining word committed
(``...transcription.completed``).

Timing: a tick that costs more than ``interval_s`` (``stats["late_ticks"]``) is followed by the next
at once; no stream is skipped or staggered, each due stream's next row simply holds all the audio that
arrived meanwhile. So a stream's update period is ``max(interval_s, cost of one batch of all due rows)``,
and LocalAgreement's latency grows with it (a word needs two updates after it is spoken).

Limits, each a named :class:`StreamError`: ``max_streams`` (``too_many_streams``),
``max_buffer_s`` of audio waiting to be decoded (``input_audio_buffer_overflow``);
the endpoint enforces the idle timeout.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.longform.streaming import Hypothesis, Policy, StreamState

logger = logging.getLogger("whisper_t5x.app.serving")

__all__ = ["StreamError", "TurnDetection", "SpeechDetector", "Stream", "StreamScheduler", "FRAME"]

FRAME = 512  # samples per VAD frame (32 ms; Silero's)
VAD_CONTEXT_FRAMES = 31  # frames (~1 s) re-run before the new ones, so the recurrent state has warmed up


class StreamError(Exception):
    """A stream request refused: OpenAI error fields (``code`` names the limit or the fault)."""

    def __init__(self, code: str, message: str, type: str = "invalid_request_error", param: Optional[str] = None):
        super().__init__(message)
        self.code, self.message, self.type, self.param = code, message, type, param


@dataclasses.dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings (OpenAI's ``server_vad``)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def __post_init__(self):
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")
        for name in ("prefix_padding_ms", "silence_duration_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10000:
                raise ValueError(f"{name} must be a number of milliseconds in [0, 10000], got {v!r}")


class SpeechDetector:
    """Per-stream server VAD over 32 ms frames: routes audio to the item or to the padding ring.

    :meth:`windows` gives the samples to score (the last ~1 s again, then the
    new whole frames); :meth:`apply` takes their probabilities and returns the
    operations in order: ``("start", start_sample, audio)``, ``("audio", audio)``,
    ``("stop", end_sample)``. The scheduler applies them up to the first ``stop``;
    the rest wait until the ended item is decoded.
    """

    def __init__(self, turn: TurnDetection):
        self.turn = turn
        self.negative = max(0.01, turn.threshold - 0.15)
        self.speaking = False
        self.silent_frames = 0
        self.frames = 0  # frames consumed (stream time = frames * FRAME samples)
        self.context = np.zeros(0, np.float32)
        self.pending = np.zeros(0, np.float32)  # samples not yet consumed
        self.ring = np.zeros(0, np.float32)  # the padding kept before speech

    def add(self, audio: np.ndarray) -> None:
        if audio.size:
            self.pending = np.concatenate([self.pending, audio])

    def windows(self) -> Optional[np.ndarray]:
        whole = self.pending.size // FRAME * FRAME
        if not whole:
            return None
        return np.concatenate([self.context, self.pending[:whole]])

    def apply(self, probs: np.ndarray) -> List[tuple]:
        skip = self.context.size // FRAME
        whole = self.pending.size // FRAME
        probs = np.asarray(probs)[skip:skip + whole]
        pad = int(self.turn.prefix_padding_ms * SAMPLE_RATE / 1000)
        need = max(1, int(np.ceil(self.turn.silence_duration_ms * SAMPLE_RATE / 1000 / FRAME)))
        ops: List[tuple] = []
        used = 0
        for j, p in enumerate(probs):
            frame = self.pending[j * FRAME:(j + 1) * FRAME]
            start = (self.frames + j) * FRAME
            used = j + 1
            if not self.speaking:
                if p >= self.turn.threshold:
                    self.speaking, self.silent_frames = True, 0
                    ops.append(("start", start - self.ring.size, np.concatenate([self.ring, frame])))
                    self.ring = np.zeros(0, np.float32)
                else:
                    self.ring = np.concatenate([self.ring, frame])[-pad:] if pad else self.ring[:0]
                continue
            ops.append(("audio", frame))
            self.silent_frames = self.silent_frames + 1 if p < self.negative else 0
            if self.silent_frames >= need:
                self.speaking, self.silent_frames = False, 0
                ops.append(("stop", start + FRAME))
        consumed = self.pending[:used * FRAME]
        self.context = np.concatenate([self.context, consumed])[-VAD_CONTEXT_FRAMES * FRAME:]
        self.pending = self.pending[used * FRAME:]
        self.frames += used
        return ops


class Stream:
    """One live stream (a WebSocket connection): its settings, audio intake, policy state and item ids.

    The client side (:meth:`append`, :meth:`commit`, :meth:`clear`, :meth:`close`,
    :meth:`configure`) only records requests; the scheduler thread acts on them.
    """

    def __init__(self, scheduler: "StreamScheduler", stream_id: str, emit: Callable[[Dict[str, Any]], None],
                 language: Optional[str] = None, prompt: Sequence[int] = (),
                 turn_detection: Optional[TurnDetection] = TurnDetection()):
        self.scheduler = scheduler
        self.id = stream_id
        self.emit = emit
        self.state = StreamState(initial_prompt=tuple(prompt), language=language)
        self.turn_detection = turn_detection
        self.detector = SpeechDetector(turn_detection) if turn_detection is not None else None
        self._lock = threading.Lock()
        self._intake: List[np.ndarray] = []
        self._intake_samples = 0
        self._requests: List[tuple] = []  # (commit | clear | config, intake samples before it, ...), in order
        self.closed = False
        self.item_id: Optional[str] = None
        self.previous_item_id: Optional[str] = None
        self.samples = 0  # samples received since the stream opened (its clock)
        self.item_words = 0
        self.started = time.monotonic()
        self.carry = np.zeros(0, np.float32)  # audio appended after a commit, for the next item
        self.vad_ops: List[tuple] = []  # VAD operations not applied yet (after an end of speech)
        self.vad_failed = False

    # ------------------------------------------------------------------ client side
    def configure(self, language: Optional[str] = None, prompt: Optional[Sequence[int]] = None,
                  turn_detection: Any = "keep") -> None:
        """New settings, applied by the scheduler in order with the audio (``turn_detection="keep"``: unchanged)."""
        with self._lock:
            self._requests.append(("config", self._intake_samples, (language, prompt, turn_detection)))

    @property
    def backlog_s(self) -> float:
        """Seconds of audio received and not yet decoded."""
        detector, ops = self.detector, list(self.vad_ops)
        waiting = (detector.pending.size if detector is not None else 0) + sum(op[-1].size for op in ops
                                                                               if op[0] != "stop")
        return (self._intake_samples + self.state.new_samples + waiting) / SAMPLE_RATE

    def append(self, audio: np.ndarray) -> None:
        """Queue 16 kHz float32 samples (``input_audio_buffer_overflow`` past ``max_buffer_s`` waiting)."""
        audio = np.asarray(audio, np.float32).reshape(-1)
        with self._lock:
            if self.closed:
                raise StreamError("stream_closed", "the stream is closed")
            limit = self.scheduler.max_buffer_s
            if self.backlog_s + audio.size / SAMPLE_RATE > limit:
                raise StreamError("input_audio_buffer_overflow",
                                  f"more than {limit:g} s of audio is waiting to be transcribed; the appended audio "
                                  "was dropped (send audio no faster than real time)", param="audio")
            self._intake.append(audio)
            self._intake_samples += audio.size

    def commit(self) -> None:
        with self._lock:
            self._requests.append(("commit", self._intake_samples, None))

    def clear(self) -> None:
        with self._lock:
            self._requests.append(("clear", self._intake_samples, None))

    def close(self) -> None:
        """The client is gone: the slot is freed now, the state dropped at the next tick."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.scheduler._release(self)

    # ------------------------------------------------------------------ scheduler side
    def _take(self):
        with self._lock:
            audio = np.concatenate(self._intake) if self._intake else np.zeros(0, np.float32)
            self._intake, self._intake_samples = [], 0
            requests, self._requests = self._requests, []
        return audio, requests

    def _send(self, event: Dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.emit(event)
        except Exception:  # noqa: BLE001 - a broken client never stops the scheduler
            logger.debug("stream %s: emit failed", self.id, exc_info=True)

    def _new_item_id(self) -> str:
        self.previous_item_id = self.item_id if self.item_id is not None else self.previous_item_id
        self.item_id = f"item_{self.id}_{next(self.scheduler._item_numbers)}"
        self.item_words = 0
        return self.item_id


@dataclasses.dataclass
class _Update:
    stream: Stream
    final: bool


class StreamScheduler:
    """Decodes the live streams due for an update, every ``interval_s``, as rows of one batch.

    Args:
      decode: rows -> hypotheses (:data:`whisper_t5x.longform.streaming.DecodeFn`).
      policy: the :class:`~whisper_t5x.longform.streaming.Policy` every stream uses.
      interval_s: time between updates of a stream.
      max_streams: open streams beyond which :meth:`open` raises ``too_many_streams``.
      max_buffer_s: audio waiting to be decoded beyond which appends are refused.
      vad: audios -> per-frame speech probabilities (default: the project's Silero VAD, batched).
      min_new_s: a stream is due when it has at least this much audio no row has held.
    """

    def __init__(self, decode: Callable[[Sequence[Any]], Sequence[Hypothesis]], policy: Policy,
                 interval_s: float = 0.5, max_streams: int = 16, max_buffer_s: float = 30.0,
                 vad: Optional[Callable[[Sequence[np.ndarray]], List[np.ndarray]]] = None, min_new_s: float = 0.1):
        self.decode = decode
        self.policy = policy
        self.interval_s = float(interval_s)
        self.max_streams = int(max_streams)
        self.max_buffer_s = float(max_buffer_s)
        self.min_new_s = float(min_new_s)
        self._vad = vad
        self._streams: Dict[str, Stream] = {}
        self._open = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._item_numbers = itertools.count(1)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.stats: "collections.Counter[str]" = collections.Counter()
        self.update_times: "collections.deque[tuple]" = collections.deque(maxlen=10000)  # (rows, seconds)

    # ------------------------------------------------------------------ streams
    @property
    def active(self) -> int:
        with self._lock:
            return self._open

    def open(self, emit: Callable[[Dict[str, Any]], None], language: Optional[str] = None,
             prompt: Sequence[int] = (), turn_detection: Optional[TurnDetection] = TurnDetection()) -> Stream:
        with self._lock:
            if self._open >= self.max_streams:
                self.stats["refused"] += 1
                raise StreamError("too_many_streams",
                                  f"the server already serves {self.max_streams} live streams; try again later",
                                  type="server_error")
            self._open += 1
            stream = Stream(self, f"{next(self._ids)}", emit, language, prompt, turn_detection)
            self._streams[stream.id] = stream
        self.stats["opened"] += 1
        return stream

    def _release(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.pop(stream.id, None) is not None:
                self._open -= 1

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="whisper_t5x-streams", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        # A tick that takes longer than the interval is followed by the next at once: no stream is
        # skipped, every due stream joins the next batch with all the audio that arrived meanwhile, so a
        # stream's update period is max(interval, the batch's cost) and its rows simply grow longer.
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the scheduler never dies
                logger.exception("stream scheduler: tick failed")
            spent = time.monotonic() - started
            self.stats["tick_ms"] += int(spent * 1000)
            if spent > self.interval_s:
                self.stats["late_ticks"] += 1
            self._stop.wait(max(0.0, self.interval_s - spent))

    # ------------------------------------------------------------------ one tick
    def tick(self) -> int:
        """One round: intake, server VAD, one batched decode of the due rows, events. Returns the rows decoded."""
        with self._lock:
            streams = list(self._streams.values())
        self.stats["ticks"] += 1
        updates: List[_Update] = []
        vad_streams = []
        for s in streams:
            audio, requests = s._take()
            s.samples += audio.size
            done, committed = 0, False
            for kind, at, payload in requests:  # audio before a request is the buffer's it acts on
                self._intake(s, audio[done:at], committed)
                done = at
                if kind == "clear":
                    self._clear(s)
                    committed = False
                elif kind == "config":
                    committed = self._configure(s, payload, updates) or committed
                elif not committed:
                    committed = self._commit(s, updates)
            self._intake(s, audio[done:], committed)
            if s.detector is not None and not committed:
                vad_streams.append(s)
        self._run_vad(vad_streams, updates)
        finals = {id(u.stream) for u in updates}
        for s in streams:
            if id(s) not in finals and s.item_id is not None and self.policy.ready(s.state, self.min_new_s):
                updates.append(_Update(s, False))
        if not updates:
            return 0
        self._decode(updates)
        return len(updates)

    def _intake(self, s: Stream, audio: np.ndarray, committed: bool) -> None:
        if not audio.size:
            return
        if committed:  # after a commit in this tick: the next item's (manual) / scored next tick (VAD)
            if s.detector is not None:
                s.detector.add(audio)
            else:
                s.carry = np.concatenate([s.carry, audio])
        elif s.detector is not None:
            s.detector.add(audio)
        else:
            if s.item_id is None:
                s._new_item_id()
            s.state.append(audio)

    def _configure(self, s: Stream, payload: tuple, updates: List[_Update]) -> bool:
        """Applies a session update; a new turn-detection rule first ends the item in progress. Returns whether
        it did (the item is committed)."""
        language, prompt, turn = payload
        s.state.language = language
        if prompt is not None:
            s.state.initial_prompt = tuple(prompt)
        if turn == "keep" or turn == s.turn_detection:
            return False
        ended = False
        if s.item_id is not None and (s.state.buffer.size or s.state.committed):
            ended = self._commit(s, updates)
        s.turn_detection = turn
        s.detector = SpeechDetector(turn) if turn is not None else None
        s.vad_ops = []
        return ended

    def _clear(self, s: Stream) -> None:
        s.state.new_item()
        s.carry = np.zeros(0, np.float32)
        s.vad_ops = []
        if s.detector is not None:
            s.detector = SpeechDetector(s.detector.turn)
        s.item_id = None
        s._send({"type": "input_audio_buffer.cleared"})

    def _commit(self, s: Stream, updates: List[_Update]) -> bool:
        if s.item_id is None or (not s.state.buffer.size and not s.state.committed):
            s._send(error_event("input_audio_buffer_commit_empty",
                                "the input audio buffer is empty: append audio before committing"))
            return False
        s._send({"type": "input_audio_buffer.committed", "previous_item_id": s.previous_item_id,
                 "item_id": s.item_id})
        if s.detector is not None:
            s.detector.speaking = False
        updates.append(_Update(s, True))
        return True

    def _run_vad(self, streams: List[Stream], updates: List[_Update]) -> None:
        todo = [(s, w) for s in streams for w in [s.detector.windows()] if w is not None]
        if todo:
            t0 = time.perf_counter()
            try:
                probs = self._vad_probabilities([w for _, w in todo])
            except Exception as e:  # noqa: BLE001 - transcription goes on: all audio counts as speech
                logger.warning("server VAD failed (%s: %s): audio is treated as speech", type(e).__name__, e)
                self.stats["vad_errors"] += 1
                probs = [np.ones(w.size // FRAME + 1, np.float32) for _, w in todo]
                for s, _ in todo:
                    if not s.vad_failed:
                        s.vad_failed = True
                        s._send(error_event("vad_failed", "the server's voice activity detection failed; items "
                                            "now end only on input_audio_buffer.commit", type="server_error"))
            self.stats["vad_ms"] += int((time.perf_counter() - t0) * 1000)
            for (s, _), p in zip(todo, probs):
                s.vad_ops.extend(s.detector.apply(p))
        for s in streams:
            self._apply_vad(s, updates)

    def _apply_vad(self, s: Stream, updates: Optional[List[_Update]]) -> None:
        """Applies the stream's VAD operations in order, up to the first end of speech (its item then needs
        its final decode: added to ``updates``; with ``None`` the end and what follows wait)."""
        while s.vad_ops:
            op = s.vad_ops[0]
            if op[0] == "stop" and updates is None:
                return
            s.vad_ops.pop(0)
            if op[0] == "start":
                item = s._new_item_id()
                s.state.new_item()
                s.state.append(op[2])
                s._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": _ms(op[1]),
                         "item_id": item})
            elif op[0] == "audio":
                s.state.append(op[1])
            else:  # stop
                s._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": _ms(op[1]),
                         "item_id": s.item_id})
                s._send({"type": "input_audio_buffer.committed", "previous_item_id": s.previous_item_id,
                         "item_id": s.item_id})
                updates.append(_Update(s, True))
                return

    def _vad_probabilities(self, audios: List[np.ndarray]) -> List[np.ndarray]:
        if self._vad is None:
            from whisper_t5x.audio.vad import batch_speech_probabilities

            self._vad = batch_speech_probabilities
        return self._vad(audios)

    def _decode(self, updates: List[_Update]) -> None:
        due = [u for u in updates if u.stream.state.buffer.size]
        rows = [self.policy.row(u.stream.state) for u in due]
        hyps: List[Optional[Hypothesis]] = [None] * len(due)
        if rows:
            t0 = time.perf_counter()
            try:
                hyps = list(self.decode(rows))
                if len(hyps) != len(rows):
                    raise RuntimeError(f"decode returned {len(hyps)} hypotheses for {len(rows)} rows")
            except Exception as e:  # noqa: BLE001 - isolate: each row alone
                logger.warning("stream batch of %d rows failed (%s: %s); decoding them one by one", len(rows),
                               type(e).__name__, e)
                hyps = [self._decode_alone(r) for r in rows]
            seconds = time.perf_counter() - t0
            self.update_times.append((len(rows), seconds))
            self.stats["batches"] += 1
            self.stats["rows"] += len(rows)
            self.stats["aligned_rows"] += sum(bool(getattr(r, "word_times", False)) for r in rows)
            self.stats["decode_ms"] += int(seconds * 1000)
            self.stats["max_rows"] = max(self.stats["max_rows"], len(rows))
        results = dict(zip((id(u) for u in due), hyps))
        for u in updates:
            s = u.stream
            if s.closed:
                continue
            hyp = results.get(id(u), Hypothesis())
            if hyp is None:  # this row failed alone
                s._send(error_event("transcription_failed", "the transcription of this audio failed",
                                    type="server_error"))
                s._send({"type": "conversation.item.input_audio_transcription.failed", "item_id": s.item_id,
                         "content_index": 0, "error": {"type": "server_error", "code": "transcription_failed",
                                                        "message": "the transcription of this audio failed"}})
                s.state.new_item()
                s.item_id = None if u.final else s.item_id
                continue
            words = self.policy.update(s.state, hyp, final=u.final)
            text = "".join(w.text for w in words)
            if s.item_words == 0:
                text = text.lstrip()
            if text:
                s.item_words += len(words)
                s._send({"type": "conversation.item.input_audio_transcription.delta", "item_id": s.item_id,
                         "content_index": 0, "delta": text})
            if u.final:
                seconds = s.state.item_seconds
                s._send({"type": "conversation.item.input_audio_transcription.completed", "item_id": s.item_id,
                         "content_index": 0, "transcript": s.state.text,
                         "usage": {"type": "duration", "seconds": round(seconds, 3)}})
                s.state.new_item()
                s.item_id = None
                if s.detector is not None:  # speech that came after the end: the next item
                    self._apply_vad(s, None)
                if s.carry.size:  # audio appended after the commit: the next item's
                    s._new_item_id()
                    s.state.append(s.carry)
                    s.carry = np.zeros(0, np.float32)
        with self._lock:  # streams closed meanwhile
            for s in [u.stream for u in updates if u.stream.closed]:
                self._streams.pop(s.id, None)

    def _decode_alone(self, row: Any) -> Optional[Hypothesis]:
        try:
            return list(self.decode([row]))[0]
        except Exception as e:  # noqa: BLE001
            logger.warning("stream row failed: %s: %s", type(e).__name__, e)
            return None


def _ms(sample: int) -> int:
    return int(round(max(0, sample) * 1000 / SAMPLE_RATE))


def error_event(code: str, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                event_id: Optional[str] = None) -> Dict[str, Any]:
    """An OpenAI Realtime ``error`` event (``event_id``: the client event it answers, if any)."""
    return {"type": "error", "error": {"type": type, "code": code, "message": message, "param": param,
                                       "event_id": event_id}}
