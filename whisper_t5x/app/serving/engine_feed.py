"""The server batcher's engine path: requests' rows join one running engine call per decoding options.

:class:`EngineFeed` is the part of :class:`~whisper_t5x.app.serving.batcher.Batcher` that feeds the
slot engine (:mod:`whisper_t5x.longform.engine`); the Batcher's module docstring says what it does. Its
threads: a feeder (VAD, rows, features: host work), one thread per running engine call
(``Engine.decode`` over a :class:`~whisper_t5x.longform.engine.LiveRows`, ``on_result`` routing rows back)
and a finishing thread (assembly, alignment). State is shared with the Batcher under its condition
``_cond``; the Batcher's constructor sets the fields (``_engine_queue``, ``_calls``, ``_running``,
``_flights``, ``_by_id``, ``_turn``, ``_finisher``...).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Optional, Tuple

from whisper_t5x.longform.engine import LiveRows
from whisper_t5x.longform.vad import InputRows

logger = logging.getLogger("whisper_t5x.app.serving")

__all__ = ["BatcherStopped", "EngineFeed", "EnginePlan", "answer_future", "engine_of"]


class BatcherStopped(RuntimeError):
    """The batcher was shut down."""


@dataclasses.dataclass(frozen=True)
class EnginePlan:
    """How a request decodes on the engine: the call's request (its key), the prompt its rows carry and
    how its rows are assembled. The prompt is not part of the key: requests with different prompts (or
    none) share one call, each row conditioned on its own request's prompt."""

    request: Any  # whisper_t5x.longform.decoder.DecodeRequest
    words: bool
    segment_timestamps: bool
    prompt: Tuple[int, ...] = ()  # prompt_ids (trimmed by the engine as the Decoder trims them)


class _CallRows(LiveRows):
    """An engine call's rows; :meth:`abort` ends the call at its next refill (the batcher stops)."""

    def __init__(self):
        super().__init__()
        self.aborted: Optional[BaseException] = None

    def abort(self, error: BaseException) -> None:
        self.aborted = error
        self.close()

    def take(self, block: bool) -> Any:
        if self.aborted is not None:
            raise self.aborted
        return super().take(block)


class _EngineCall:
    """One running ``Engine.decode`` over a :class:`_CallRows` for one decoding-options key."""

    def __init__(self, key: Any):
        self.key = key
        self.rows = _CallRows()
        self.flights: set = set()  # requests in flight here
        self.in_engine = 0  # rows put and not ended
        self.closed = False
        self.thread: Optional[threading.Thread] = None


@dataclasses.dataclass(eq=False)
class _Flight:
    """An engine-path request from its preparation to its last row."""

    id: int
    request: Any  # the batcher's request (audio, options, future, plan)
    call: Optional[_EngineCall] = None  # joined when prepared with rows (or at once if one runs)
    rows: Optional[InputRows] = None  # None while being prepared
    next_row: int = 0  # rows put so far
    done: bool = False  # every row ended, or failed, or dropped


class EngineFeed:
    """The engine path's methods (a base of the Batcher, sharing its lock and tables)."""

    def _feed(self) -> None:
        """The feeder thread: puts rows of requests in flight (round-robin) while their call has room, else
        prepares the next waiting request. Host work only: the engine threads keep decoding meanwhile."""
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    work = self._row_work() or self._prepare_work()
                    if work is not None:
                        break
                    self._cond.wait()
            try:
                work()
            except Exception:  # noqa: BLE001 - never let the feeder die
                logger.exception("batcher: engine feeder")

    def _row_budget(self) -> int:
        engine = engine_of(self.pipeline)
        return engine.slots + engine.encode_batch

    def _row_work(self) -> Optional[Callable[[], None]]:
        """Under the lock: the next row to put (round-robin over the requests in flight), claimed."""
        n = len(self._flights)
        budget = self._row_budget()
        for j in range(n):
            f = self._flights[(self._turn + j) % n]
            if f.done or f.rows is None or f.next_row >= f.rows.num_rows or f.call.in_engine >= budget:
                continue
            if f.request.future.cancelled():
                self.stats["dropped"] += 1
                self._forget(f)
                return lambda: None  # look again (the flights changed)
            self._turn = (self._turn + j + 1) % n if self.row_order == "round_robin" else 0
            k = f.next_row
            f.next_row += 1
            f.call.in_engine += 1
            return lambda: self._put_row(f, k)
        return None

    def _put_row(self, f: _Flight, k: int) -> None:
        try:
            features = f.rows.features([k])[0]
        except Exception as e:  # noqa: BLE001
            with self._cond:
                f.call.in_engine -= 1
                self._forget(f)
                self._cond.notify_all()
            self._fail(f.request, e)
            return
        f.call.rows.put((f.id, k), features, prompt=f.request.plan.prompt or None)
        self.stats["engine_rows"] += 1

    def _prepare_work(self) -> Optional[Callable[[], None]]:
        """Under the lock: the oldest waiting engine request, joined to its key's open call (started if none)."""
        in_flight = sum(not f.done for f in self._flights)
        while self._engine_queue and in_flight < self.max_in_flight:
            r = self._engine_queue.popleft()
            if r.future.cancelled():
                self.stats["dropped"] += 1
                continue
            f = _Flight(self._next_id, r)
            self._next_id += 1
            self._flights.append(f)
            self._by_id[f.id] = f
            self.stats["engine_requests"] += 1
            call = self._calls.get(r.plan.request)
            if call is not None:  # keeps the running call open while this request is prepared
                self._join(f, call)
            return lambda: self._prepare(f)
        return None

    def _join(self, f: _Flight, call: _EngineCall) -> None:
        f.call = call
        call.flights.add(f)
        self.stats["engine_joined"] += 1  # joins a call that decodes other requests

    def _call_for(self, f: _Flight) -> None:
        """Under the lock: ``f`` (prepared, with rows) in its key's open call, a new one if none."""
        if f.call is not None:
            return
        key = f.request.plan.request
        call = self._calls.get(key)
        if call is not None:
            self._join(f, call)
            return
        call = self._calls[key] = self._start_call(key)
        f.call = call
        call.flights.add(f)

    def _prepare(self, f: _Flight) -> None:
        pipe, r = self.pipeline, f.request
        try:
            rows = InputRows(pipe.decoder, r.audio, r.plan.request, pipe.vad, r.plan.words,
                             r.plan.segment_timestamps, pipe.segment_limits)
        except Exception as e:  # noqa: BLE001 - this request fails alone
            with self._cond:
                self._forget(f)
                self._cond.notify_all()
            self._fail(r, e)
            return
        r.audio = None  # InputRows holds it until its last row is cut
        with self._cond:
            f.rows = rows
            finished = rows.num_rows == 0 and not f.done  # no speech: nothing to decode
            if finished:
                self._forget(f)
            elif not f.done:
                self._call_for(f)
            self._cond.notify_all()
        if finished:
            self._finisher.submit(self._finish, f)

    def _start_call(self, key: Any) -> _EngineCall:
        """Under the lock: a new engine call for ``key`` on its own thread."""
        call = _EngineCall(key)
        call.thread = threading.Thread(target=self._run_call, args=(call,), name="whisper_t5x-engine-call",
                                       daemon=True)
        self._running.add(call)
        self.stats["engine_calls"] += 1
        call.thread.start()
        return call

    def _run_call(self, call: _EngineCall) -> None:
        pipe = self.pipeline
        t0 = time.perf_counter()

        def on_result(key: Any, decoded: Any) -> None:
            fid, k = key
            with self._cond:
                call.in_engine -= 1
                f = self._by_id.get(fid)
                complete = False
                if f is not None and not f.done and f.request.future.cancelled():
                    self.stats["dropped"] += 1  # the caller gave up: its rows still to put are dropped
                    self._forget(f)
                elif f is not None and not f.done:
                    try:
                        complete = f.rows.add(k, decoded)
                    except Exception as e:  # noqa: BLE001
                        self._forget(f)
                        self._finisher.submit(self._fail, f.request, e)
                    if complete:
                        self._forget(f)
                self._cond.notify_all()
            if complete:
                self._finisher.submit(self._finish, f)

        error: Optional[BaseException] = None
        try:
            # prompts=True: the slots leave room for a prompt (the same slots when max_length is the
            # model's), so a prompted request may join the call whichever request started it.
            engine_of(pipe).decode(pipe.decoder.params, call.rows, call.key, on_result, prompts=True)
        except BaseException as e:  # noqa: BLE001 - fail this call's requests; the next call starts clean
            error = e
        with self._cond:
            call.closed = True
            if self._calls.get(call.key) is call:
                del self._calls[call.key]
            self._running.discard(call)
            left = [f for f in call.flights if not f.done]
            for f in left:
                self._forget(f)
            self.stats["engine_busy_ms"] += int(round((time.perf_counter() - t0) * 1000))
            self._cond.notify_all()
        if error is not None and not isinstance(error, BatcherStopped):
            logger.warning("engine call failed (%s: %s); %d request(s) fail with it", type(error).__name__, error,
                           len(left))
        for f in left:
            self._fail(f.request, error or RuntimeError("the engine call ended before the request's rows"))

    def _forget(self, f: _Flight) -> None:
        """Under the lock: ``f`` leaves the flight tables; its call closes when nothing else is in flight."""
        f.done = True
        self._by_id.pop(f.id, None)
        if f in self._flights:
            self._flights.remove(f)
        call = f.call
        if call is None:
            return
        call.flights.discard(f)
        if not call.flights and not call.closed:
            call.closed = True
            if self._calls.get(call.key) is call:
                del self._calls[call.key]
            call.rows.close()

    def _finish(self, f: _Flight) -> None:
        """On the finishing thread: assemble (and align) a request whose rows all ended."""
        try:
            result = f.rows.transcription()
        except Exception as e:  # noqa: BLE001
            self._fail(f.request, e)
            return
        if answer_future(f.request.future, result=result):
            self.stats["engine_done"] += 1

    def _fail(self, r: Any, error: BaseException) -> None:
        if not isinstance(error, BatcherStopped):
            logger.warning("transcription failed: %s: %s", type(error).__name__, error)
        answer_future(r.future, error=error)


def answer_future(future: concurrent.futures.Future, result: Any = None, error: Optional[BaseException] = None) -> bool:
    """Resolves an engine-path request's Future unless its caller cancelled it or it was already answered
    (``stop()``); engine-path Futures stay pending until answered, so a caller can cancel one in flight."""
    try:
        if not future.set_running_or_notify_cancel():
            return False
    except RuntimeError:  # already answered
        return False
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return True


def engine_of(pipeline: Any) -> Any:
    """The pipeline's slot engine, if its calls decode on one (on its mesh too), else None."""
    if getattr(pipeline, "decoder", None) is None:
        return None
    if hasattr(pipeline, "active_engine"):
        return pipeline.active_engine
    return None if getattr(pipeline, "partitioner", None) else getattr(pipeline, "engine", None)
