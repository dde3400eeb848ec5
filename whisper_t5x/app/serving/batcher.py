"""Cross-request batching: concurrent requests decoded in shared compiled batches.

Requests (decoded 16 kHz waveforms plus decoding options) are put on a queue.
One worker thread owns the pipeline. It takes the oldest waiting request,
then keeps collecting requests with the *same* decoding options (task,
language, timestamps, temperature, prompt) for up to ``max_delay_s`` (counted
from the request's arrival, so a request that queued while the previous call
ran does not wait again) or until their windows fill ``max_batch_size`` rows,
and transcribes them in one pipeline call. With ``announce``, front ends
announce requests still being received or decoded (:meth:`Batcher.arriving`)
and the wait also ends as soon as none is on its way: a lone request is not
held back for companions that are not coming. The pipeline packs the windows of all the inputs of a call into
its compiled batches (``FlaxWhisperPipeline.transcribe`` with a list), so eight
concurrent one-window requests cost one batch of eight rows instead of eight
batches of one.

Isolation: if a grouped call raises, every request of the group is retried
alone, so one bad request fails only itself. Requests whose caller gave up
(timeout, disconnect) before their group started are dropped unprocessed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from whisper_t5x.app.config import DecodeSection
from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.longform.windows import split_windows, window_params
from whisper_t5x.results import Transcription

logger = logging.getLogger("whisper_t5x.app.serving")

__all__ = ["DecodeOptions", "Batcher", "QueueFull", "BatcherStopped"]


def _default_trim() -> bool:
    try:
        import jax

        return jax.default_backend() == "cpu"
    except Exception:  # noqa: BLE001
        return False


class QueueFull(RuntimeError):
    """Too many requests are waiting; the caller should answer 503."""


class BatcherStopped(RuntimeError):
    """The batcher was shut down."""


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """A request's options, which must be equal for requests to share a batch (hashable).

    The rest (long-form mode, windowing, fallback thresholds) is the server's
    :class:`~whisper_t5x.app.config.DecodeSection`, the same for every request.
    """

    task: str = "transcribe"
    language: Optional[str] = None
    return_timestamps: bool = False
    temperature: Optional[float] = None  # None: the pipeline's fallback schedule
    prompt_ids: Tuple[int, ...] = ()
    word_timestamps: bool = False  # sequential decoding with word timings (whisper_t5x.longform.sequential)

    def pipeline_kwargs(self, decode: Optional[DecodeSection] = None) -> Dict[str, Any]:
        """``pipe.transcribe`` keyword arguments: ``decode`` (default: a plain
        :class:`DecodeSection`) with this request's options over it."""
        decode = decode if decode is not None else DecodeSection()
        kwargs = decode.transcribe_kwargs(task=self.task, language=self.language,
                                          timestamps=bool(self.return_timestamps),
                                          word_timestamps=bool(self.word_timestamps))
        gk = kwargs["generate_kwargs"]
        if self.temperature is not None:
            gk["temperature"] = float(self.temperature)
        if self.prompt_ids:
            gk["prompt_ids"] = np.asarray(self.prompt_ids, np.int32)
        return kwargs


@dataclasses.dataclass(eq=False)  # identity equality (holds arrays)
class _Request:
    audio: np.ndarray
    options: DecodeOptions
    future: concurrent.futures.Future
    num_windows: int
    enqueued: float


class Batcher:
    """Owns ``pipeline`` in a worker thread; :meth:`submit` returns a Future of the
    :class:`~whisper_t5x.results.Transcription`.

    Args:
      pipeline: a ``FlaxWhisperPipeline`` (or anything with its ``transcribe`` signature).
      max_batch_size: rows per compiled batch; a group is closed once its
        requests hold this many windows.
      max_delay_s: how long the first request of a group may wait (from its
        arrival) for companions.
      max_queue: waiting requests beyond which :meth:`submit` raises :class:`QueueFull`.
      decode: the server's decoding section (windowing, long-form mode,
        fallback thresholds; default: a plain :class:`DecodeSection`).
      call: what is called instead of ``pipeline.transcribe``.
      trim_to_bucket: close a short group at a power-of-two number of windows
        instead of padding it (default: on for the CPU backend, where padding
        rows cost as much as real ones; off on accelerators).
      announce: every request is announced (:meth:`arriving`) before it is
        submitted, so the worker waits for companions only while some are
        on their way. Off: it always waits ``max_delay_s``.
    """

    def __init__(self, pipeline: Any, max_batch_size: int = 8, max_delay_s: float = 0.01, max_queue: int = 64,
                 decode: Optional[DecodeSection] = None, call: Optional[Callable[..., Any]] = None,
                 trim_to_bucket: Optional[bool] = None, announce: bool = False):
        self.pipeline = pipeline
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.max_queue = max(1, int(max_queue))
        self.decode = decode if decode is not None else DecodeSection()
        self._chunk, self._stride = window_params(self.decode.chunk_length_s, self.decode.stride_length_s,
                                                  SAMPLE_RATE)
        self._call = call or pipeline.transcribe
        if trim_to_bucket is None:
            trim_to_bucket = _default_trim()
        self.trim_to_bucket = bool(trim_to_bucket)
        self.announce = bool(announce)
        self._arriving = 0
        self._queue: Deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="whisper_t5x-batcher", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- public
    def submit(self, audio: np.ndarray, options: DecodeOptions) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        n = max(1, len(split_windows(int(audio.shape[0]), self._chunk, self._stride)))
        with self._cond:
            if self._stopped:
                raise BatcherStopped("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                self._drop_cancelled()  # callers that gave up hold no slot
            if len(self._queue) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._queue)} requests are already waiting; try again later")
            self._queue.append(_Request(audio, options, fut, n, time.monotonic()))
            self._cond.notify_all()
        return fut

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request as on its way (being received or decoded) until it is submitted or fails."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def transcribe(self, audio: np.ndarray, options: DecodeOptions, timeout: Optional[float] = None) -> Transcription:
        """Blocking helper: submit and wait (the Future is cancelled on timeout)."""
        fut = self.submit(audio, options)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    @property
    def queue_length(self) -> int:
        """Requests waiting (those whose caller gave up not counted)."""
        with self._cond:
            self._drop_cancelled()
            return len(self._queue)

    def _drop_cancelled(self) -> None:
        """Forgets waiting requests whose Future was cancelled (caller timed out or disconnected); under the lock."""
        live = [r for r in self._queue if not r.future.cancelled()]
        if len(live) != len(self._queue):
            self.stats["dropped"] += len(self._queue) - len(live)
            logger.debug("dropped %d request(s) whose caller gave up", len(self._queue) - len(live))
            self._queue = collections.deque(live)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for r in pending:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(BatcherStopped("the server is shutting down"))
        self._thread.join(timeout=timeout)

    # ----------------------------------------------------------------- worker
    def _compatible(self, first: _Request) -> Tuple[List[_Request], int]:
        """Waiting requests (in arrival order) that can join ``first``'s group."""
        picked, windows = [first], first.num_windows
        for r in self._queue:
            if r is first or r.options != first.options or r.future.cancelled():
                continue
            if windows + r.num_windows > self.max_batch_size:
                continue
            picked.append(r)
            windows += r.num_windows
            if windows >= self.max_batch_size:
                break
        return picked, windows

    def _trim(self, picked: List[_Request]) -> List[_Request]:
        """Keep a prefix whose windows fit the largest bucket not above their count.

        A short batch is padded up to a bucket (a power of two, or the full
        batch); where padding rows cost as much as real ones (CPU) it is
        cheaper to leave the extra requests for the next batch.
        """
        total = sum(r.num_windows for r in picked)
        if total >= self.max_batch_size or len(picked) == 1:
            return picked
        target = 1
        while target * 2 <= total:
            target *= 2
        kept, windows = [], 0
        for r in picked:
            if kept and windows + r.num_windows > target:
                continue
            kept.append(r)
            windows += r.num_windows
        return kept

    def _take_group(self) -> Optional[List[_Request]]:
        """Blocks for the oldest live request, then gathers compatible ones.

        Requests stay in the queue until the group is decided, so the ones
        left out (by :meth:`_trim`) keep their place at its head.
        """
        with self._cond:
            while True:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return None
                self._drop_cancelled()
                if not self._queue:
                    continue
                first = self._queue[0]
                # The wait counts from the first request's arrival: requests that
                # queued while the previous batch ran do not wait again.
                deadline = first.enqueued + self.max_delay_s
                while True:
                    picked, windows = self._compatible(first)
                    left = deadline - time.monotonic()
                    if windows >= self.max_batch_size or left <= 0 or self._stopped or first.future.cancelled():
                        break
                    if self.announce and self._arriving == 0:
                        break  # no companion is on its way: waiting would only add latency
                    self._cond.wait(timeout=left)
                if self._stopped:
                    return None
                if self.trim_to_bucket:
                    picked = self._trim(picked)
                group = []
                for r in picked:
                    self._queue.remove(r)
                    if r.future.set_running_or_notify_cancel():
                        group.append(r)
                if group:
                    return group

    def _run(self) -> None:
        while True:
            try:
                group = self._take_group()
            except Exception:  # noqa: BLE001 - never let the worker die
                logger.exception("batcher: cannot take requests")
                time.sleep(0.05)
                continue
            if group is None:
                return
            t0 = time.perf_counter()
            self._process(group)
            self.stats["busy_ms"] += int(round((time.perf_counter() - t0) * 1000))  # time in pipeline calls

    def _process(self, group: List[_Request]) -> None:
        self.stats["groups"] += 1
        self.stats["requests"] += len(group)
        self.stats["windows"] += sum(r.num_windows for r in group)
        self.stats["max_group"] = max(self.stats["max_group"], len(group))
        kwargs = group[0].options.pipeline_kwargs(self.decode)
        t0 = time.perf_counter()
        try:
            results = self._call([r.audio for r in group], batch_size=self.max_batch_size, **kwargs)
            if isinstance(results, Transcription):
                results = [results]
            results = list(results)
            if len(results) != len(group):
                raise RuntimeError(f"pipeline returned {len(results)} results for {len(group)} inputs")
        except Exception as e:  # noqa: BLE001
            if len(group) == 1:
                logger.warning("transcription failed: %s: %s", type(e).__name__, e)
                group[0].future.set_exception(e)
                return
            logger.warning("batched transcription of %d requests failed (%s: %s); retrying one by one",
                           len(group), type(e).__name__, e)
            for r in group:
                self._process_alone(r)
            return
        logger.debug("batch of %d request(s), %d window(s) in %.2f s", len(group),
                     sum(r.num_windows for r in group), time.perf_counter() - t0)
        for r, res in zip(group, results):
            r.future.set_result(res)

    def _process_alone(self, r: _Request) -> None:
        try:
            res = self._call([r.audio], batch_size=self.max_batch_size, **r.options.pipeline_kwargs(self.decode))
            r.future.set_result(res[0] if isinstance(res, list) else res)
        except Exception as e:  # noqa: BLE001
            logger.warning("transcription failed: %s: %s", type(e).__name__, e)
            r.future.set_exception(e)
