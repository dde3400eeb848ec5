"""The engine's host loop: one :meth:`~whisper_t5x.longform.engine.Engine.decode` call.

:class:`DecodeCall` owns a call's queue of rows, its slot table (which row each slot holds, where it is)
and the fallback bookkeeping; it asks the :class:`~whisper_t5x.longform.engine.Engine` for the compiled
programs (allocate, insert, generate, move) and runs them. Also here: what the engine and its callers share
(:class:`LiveRows`, :class:`SlotLayout`, the engine's errors, :func:`slot_order` of slots on a mesh).
"""

from __future__ import annotations

import collections
import dataclasses
import queue as queue_lib
from typing import Any, Callable, Deque, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x.decoding.generate import DecodeOptions, cache_spans, forced_prefix
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import PROMPT_RESET_TEMPERATURE, DecodedRow, DecodeRequest
from whisper_t5x.longform.segments import cut_at_eot, text_tokens
from whisper_t5x.longform.windows import bucket_size

__all__ = ["DecodeCall", "EngineError", "EngineMeshError", "LiveRows", "SlotLayout", "slot_order", "SPAN_MARGIN"]

SPAN_MARGIN = 8  # a short cache span is used only while every live slot is this far from its end


class EngineError(ValueError):
    """A request or row the engine cannot decode."""


class EngineMeshError(EngineError):
    """A partitioner (mesh) the engine cannot decode under: the caller decodes with the Decoder."""


def slot_order(capacity: int, shards: int) -> np.ndarray:
    """Device slot of each host slot: host slot ``i`` is slot ``i // shards`` of block ``i % shards`` (a block
    per device of the data axis). So the host's lowest free slots (where rows go) alternate between devices,
    and its first ``width`` slots (``width`` a multiple of ``shards``) are the first of every block."""
    i = np.arange(capacity)
    return (i % shards) * (capacity // shards) + i // shards

class LiveRows:
    """Rows that arrive while the engine runs (a server's requests, a live stream): :meth:`put` from any
    thread, :meth:`close` when no more will come. Passed as ``rows`` to :meth:`Engine.decode`, a row put
    while others decode joins them at the next refill instead of waiting for them to end."""

    _CLOSED = object()

    def __init__(self):
        self._queue: "queue_lib.Queue[Any]" = queue_lib.Queue()

    def put(self, key: Hashable, features: np.ndarray, prompt: Optional[Sequence[int]] = None,
            language: Optional[int] = None) -> None:
        """Queue a row; ``prompt``: its own previous-text tokens (else the call's ``prompt``); ``language``:
        its language token (else the request's)."""
        if prompt is None and language is None:
            self._queue.put((key, features))
        else:
            self._queue.put((key, features, None if prompt is None else tuple(prompt), language))

    def close(self) -> None:
        self._queue.put(self._CLOSED)

    def take(self, block: bool) -> Any:
        """The next ``(key, features)`` (or ``(key, features, prompt)``); None when nothing is waiting
        (``block=False``); raises StopIteration once closed."""
        try:
            item = self._queue.get(block=block)
        except queue_lib.Empty:
            return None
        if item is self._CLOSED:
            self._queue.put(item)  # stays closed
            raise StopIteration
        return item


@dataclasses.dataclass
class _Row:
    """One caller row on its way through the fallback schedule."""

    key: Hashable
    serial: int
    features: np.ndarray
    prompt: Tuple[int, ...] = ()  # trimmed to its bucket, as the Decoder trims it
    language: Optional[int] = None  # its language token; None: the request's (or detected)
    level: int = 0  # index into the temperature schedule
    best: Optional[DecodedRow] = None  # best rejected attempt so far
    draws: Dict[int, DecodedRow] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Job:
    """One decode of one row at one temperature (a slot's occupant)."""

    row: _Row
    temperature: float
    draw: int

    @property
    def prompt(self) -> Tuple[int, ...]:
        """The prompt this decode uses: the row's, except for fallback draws hotter than
        ``PROMPT_RESET_TEMPERATURE`` (decoded without it, as the Decoder decodes them)."""
        hot = self.row.level > 0 and self.temperature > PROMPT_RESET_TEMPERATURE
        return () if hot else self.row.prompt

    @property
    def group(self) -> Tuple[int, Optional[int]]:
        """What an insert's rows share (static in its program): prompt length and language."""
        return len(self.prompt), self.row.language


@dataclasses.dataclass(frozen=True)
class SlotLayout:
    """What a compiled program's shapes follow besides the slot count: decode options (the slots' own,
    without a prompt; or an insert's rows', with their prompt length) and the cache positions per slot."""

    options: DecodeOptions
    cache_length: int



class DecodeCall:
    """One :meth:`Engine.decode` call: queue, slot table, fallback bookkeeping."""

    def __init__(self, engine: Any, params: Any, layout: SlotLayout, request: DecodeRequest,
                 rows: Iterable[Any], on_result: Optional[Callable], prompt: Tuple[int, ...] = ()):
        self.e, self.params, self.layout, self.request = engine, params, layout, request
        self.options = layout.options
        self.cfg = request.fallback
        self.temperatures = self.cfg.temperatures if self.cfg.enabled else self.cfg.temperatures[:1]
        self.best_of = max(1, int(request.best_of))
        self.live = rows if isinstance(rows, LiveRows) else None
        self.source = None if self.live is not None else iter(rows)
        self.exhausted = False
        self.serial = 0
        self.queue: Deque[_Job] = collections.deque()
        self.capacity = engine.slots  # slots allocated for this call (fewer for a few rows)
        self.shards = engine.data_size  # devices the slots are split over (a mesh's data axis)
        self.device_slot = slot_order(self.capacity, self.shards)  # host slot -> device slot
        self.slot_job: List[Optional[_Job]] = []
        self.slot_index = np.zeros(0, np.int64)
        self.slot_offset = np.zeros(0, np.int64)  # decoder positions before <|startoftranscript|>
        self.results: Dict[Hashable, DecodedRow] = {}
        self.on_result = on_result
        self._row_layouts: Dict[Tuple[int, Optional[int]], SlotLayout] = {}
        self.prompt = self._checked(engine.trim(request, prompt)) if prompt else ()
        prefix = forced_prefix(self.options, engine.special, engine.config.is_multilingual)
        self.sample_begin = 1 + len(prefix)
        self.spans = cache_spans(self.sample_begin, layout.cache_length)

    def _row_layout(self, prompt_length: int, language: Optional[int] = None) -> SlotLayout:
        """The insert layout of rows with ``prompt_length`` prompt tokens and ``language`` (their options,
        these slots)."""
        key = (prompt_length, language)
        found = self._row_layouts.get(key)
        if found is None:
            if not prompt_length and language is None:
                options = self.options
            else:
                request = self.request if language is None else dataclasses.replace(self.request, language=language)
                options = self.e.row_options(request, prompt_length)
            found = self._row_layouts[key] = SlotLayout(options, self.layout.cache_length)
        return found

    def _checked(self, prompt: Tuple[int, ...]) -> Tuple[int, ...]:
        options = self._row_layout(len(prompt)).options
        if prompt and 1 + len(prompt) + options.max_length > self.layout.cache_length:
            raise EngineError(f"a prompt of {len(prompt)} tokens does not fit before max_length "
                              f"{options.max_length} in slots of {self.layout.cache_length} positions "
                              f"(Engine.decode(..., prompts=True) makes room for prompts)")
        return prompt

    # -------------------------------------------------------------- queue
    def _pull(self, wanted: int, block: bool = False) -> None:
        """Queue rows from the source until ``wanted`` wait; a live source is not waited for unless
        ``block`` (nothing decoding: wait for the first)."""
        while not self.exhausted and len(self.queue) < wanted:
            try:
                item = next(self.source) if self.live is None else self.live.take(block and not self.queue)
            except StopIteration:
                self.exhausted = True
                break
            if item is None:
                break
            key, features = item[0], item[1]
            prompt = self.prompt
            if len(item) > 2 and item[2] is not None:
                prompt = self._checked(self.e.trim(self.request, item[2]))
            language = None if len(item) < 4 or item[3] is None else int(item[3])
            features = np.asarray(features, np.float32)
            self.queue.append(_Job(_Row(key, self.serial, features, prompt, language), self.temperatures[0], 0))
            self.serial += 1

    # -------------------------------------------------------------- device calls
    def _insert(self, state: Any, jobs: List[_Job], slot_ids: List[int]) -> Any:
        """Insert ``jobs`` (rows of one prompt length and language) into ``slot_ids``."""
        e = self.e
        size = bucket_size(len(jobs), e.encode_batch, self.shards)  # on a mesh: rows dividing the data axis if they can
        pad = size - len(jobs)
        feats = np.stack([j.row.features for j in jobs] + [jobs[-1].row.features] * pad)
        ids = np.asarray(self.device_slot[slot_ids].tolist() + [self.capacity] * pad, np.int32)  # padding: nowhere
        temps = np.asarray([j.temperature for j in jobs] + [0.0] * pad, np.float32)
        stride = self.best_of * len(self.temperatures)
        draw_ids = np.asarray([j.row.serial * stride + j.row.level * self.best_of + j.draw for j in jobs]
                              + [0] * pad, np.int32)
        plen = len(jobs[0].prompt)
        # On a mesh of one process the host arrays go to the program as they are (each device receives only
        # its rows); with several processes jit refuses host arrays for sharded inputs: staged as device arrays.
        put = np.asarray if e.partitioner is not None and jax.process_count() == 1 else jnp.asarray
        args = [put(feats), put(ids), put(temps), put(draw_ids), put(np.int32(self.request.seed))]
        if plen:
            args.append(put(np.asarray([j.prompt for j in jobs] + [jobs[-1].prompt] * pad, np.int32)))
        fn = e._insert_fn(self._row_layout(*jobs[0].group), self.capacity, size, feats.ndim == 2, params=self.params,
                          state=state, prompted=bool(plen))
        state = fn(self.params, state, *args)
        for j, s in zip(jobs, slot_ids):
            self.slot_job[s] = j
            self.slot_index[s] = self.sample_begin
            self.slot_offset[s] = 1 + plen if plen else 0
        e.count(engine_inserts=1, engine_insert_rows=len(jobs), padding_rows=pad)
        return state

    def _refill(self, state: Any) -> Any:
        e = self.e
        while True:
            self._pull(e.slots)
            free = [s for s, j in enumerate(self.slot_job) if j is None]
            live = self.capacity - len(free)
            if not self.queue or not free:
                return state
            if live and len(free) < min(e.refill_at, len(self.queue)):
                return state
            group = self.queue[0].group  # an insert takes rows of one prompt length and language: the first's
            same = [j for j in self.queue if j.group == group]
            n = min(len(free), len(same), e.encode_batch)
            if not (self.exhausted and n == len(same)):
                n = 1 << (n.bit_length() - 1)  # a full bucket: no encoder rows wasted on padding
            jobs = same[:n]
            if len(same) == len(self.queue):
                for _ in range(n):
                    self.queue.popleft()
            else:
                taken = {id(j) for j in jobs}
                self.queue = collections.deque(j for j in self.queue if id(j) not in taken)
            state = self._insert(state, jobs, free[:n])

    def _span(self) -> int:
        live = [self.slot_offset[s] + self.slot_index[s] for s, j in enumerate(self.slot_job) if j is not None]
        top = max(live) if live else 0
        for span in self.spans[:-1]:
            if top + SPAN_MARGIN < span:
                return span
        return self.spans[-1]

    def _compact(self, state: Any) -> Any:
        """Move the live slots at the back into the free slots at the front when that halves (or better)
        the slots a step runs (in place, a slot at a time: :func:`~whisper_t5x.decoding.slot_generate.move_slots`)."""
        e = self.e
        live = [s for s, j in enumerate(self.slot_job) if j is not None]
        if self.shards > 1:
            return state  # a move would cross devices: on a mesh the width follows the last live slot
        if not live or bucket_size(len(live), self.capacity) >= bucket_size(live[-1] + 1, self.capacity):
            return state
        source = [s for s in live if s >= len(live)]
        target = [s for s in range(len(live)) if self.slot_job[s] is None]
        pad = [0] * (self.capacity - len(source))
        state = e._move_fn(self.layout, self.capacity, state=state)(state, jnp.asarray(source + pad, jnp.int32),
                                                       jnp.asarray(target + pad, jnp.int32), jnp.int32(len(source)))
        for s, t in zip(source, target):
            self.slot_job[t], self.slot_job[s] = self.slot_job[s], None
            self.slot_index[t] = self.slot_index[s]
            self.slot_offset[t] = self.slot_offset[s]
        e.count(engine_moves=len(source))
        return state

    def _generate(self, state: Any) -> Tuple[Any, Any]:
        e = self.e
        if not self.queue:
            state = self._compact(state)  # the tail: no rows to fill the holes with
        live = sum(j is not None for j in self.slot_job)
        if self.queue:
            stop_below = self.capacity - min(e.refill_at, len(self.queue))  # stop once a refill's worth is free
        elif len(self.temperatures) > 1:
            stop_below = live - 1  # the tail: a row that ends may need a retry at once
        else:
            stop_below = bucket_size(live, self.capacity, self.shards) // 2  # the tail: when half the slots could go
        stop_below = max(0, min(stop_below, live - 1))
        last = max(s for s, j in enumerate(self.slot_job) if j is not None)
        width = bucket_size(last + 1, self.capacity, self.shards)  # live slots at the front: run the first ``width``
        fn = e._generate_fn(self.layout, self.capacity, self._span(), width, params=self.params, state=state)
        state, report = fn(self.params, state, jnp.int32(e.steps_per_call), jnp.int32(stop_below))
        report = jax.device_get(report)
        if self.shards > 1:  # device slots -> host slots
            order = self.device_slot
            report = report._replace(**{k: np.asarray(v)[order] for k, v in report._asdict().items() if k != "stats"})
        steps = int(report.stats.steps)
        e.count(engine_generate_calls=1, engine_steps=steps, engine_slot_steps=steps * width,
                engine_live_slot_steps=int(report.stats.live_slot_steps))
        return state, report

    # -------------------------------------------------------------- results and fallback
    def _decoded(self, report: Any, s: int, temperature: float) -> DecodedRow:
        eot = self.e.special.eot
        tokens = tuple(cut_at_eot(report.seq[s, self.sample_begin:], eot))
        text = self.e.tokenizer.decode(text_tokens(tokens, eot))
        avg = float(report.sum_logprob[s]) / float(int(report.num_tokens[s]) + 1)
        return DecodedRow(tokens, text, avg, float(report.no_speech_prob[s]), float(temperature),
                          int(report.language[s]), False, fb.compression_ratio(text))

    def _retry(self, row: _Row) -> None:
        """Queue ``best_of`` draws of ``row`` at its next temperature, ahead of new rows."""
        row.level += 1
        row.draws = {}
        temperature = self.temperatures[row.level]
        for d in reversed(range(self.best_of)):
            self.queue.appendleft(_Job(row, temperature, d))
        self.e.count(fallback_decodes=self.best_of)

    def _finish(self, row: _Row, result: DecodedRow, verdict: str) -> None:
        if verdict == fb.SILENT:
            self.e.count(silent_rows=1)
            result = dataclasses.replace(result, tokens=(), text="", silent=True, compression_ratio=0.0)
        self.e.count(rows=1)
        self.results[row.key] = result
        row.features = None  # type: ignore[assignment]
        if self.on_result is not None:
            self.on_result(row.key, result)

    def _judge(self, job: _Job, result: DecodedRow) -> None:
        row, cfg = job.row, self.cfg
        if row.level == 0:
            verdict = fb.judge(result.text, result.avg_logprob, result.no_speech_prob, cfg)
            if verdict == fb.RETRY and len(self.temperatures) > 1:
                row.best = result
                self._retry(row)
            else:
                self._finish(row, result, verdict)
            return
        row.draws[job.draw] = result
        if len(row.draws) < self.best_of:
            return
        draws = [row.draws[d] for d in sorted(row.draws)]
        result = max(draws, key=lambda r: r.avg_logprob)  # the most likely draw (the first of equals)
        verdict = fb.judge(result.text, result.avg_logprob, result.no_speech_prob, cfg)
        if verdict != fb.RETRY:
            self._finish(row, result, verdict)
            return
        if fb.better(result.text, result.avg_logprob, row.best.text, row.best.avg_logprob, cfg):
            row.best = result
        if row.level + 1 < len(self.temperatures):
            self._retry(row)
        else:
            self._finish(row, row.best, fb.RETRY)  # every temperature failed: the best attempt

    # -------------------------------------------------------------- the loop
    def run(self) -> Dict[Hashable, DecodedRow]:
        e = self.e
        self._pull(e.slots, block=True)
        if not self.queue:
            return self.results
        if self.exhausted and e.fit_slots and not e.keep_slots:
            # All the rows are known and fewer than the slots: allocate only what they fill (a short
            # input's cross K/V is one row's, not ``slots`` rows'); fallback draws queue for these slots.
            self.capacity = bucket_size(min(len(self.queue), e.slots), e.slots, self.shards)
            self.device_slot = slot_order(self.capacity, self.shards)
        self.slot_job = [None] * self.capacity
        self.slot_index = np.zeros(self.capacity, np.int64)
        self.slot_offset = np.zeros(self.capacity, np.int64)
        state = e._allocate(self.layout, self.capacity)
        e._state = None  # donated from here on; stored back when the call ends
        while True:
            state = self._refill(state)
            if all(j is None for j in self.slot_job):
                if self.exhausted and not self.queue:
                    break
                self._pull(e.slots, block=True)  # a live source: nothing decoding, wait for rows
                continue
            state, report = self._generate(state)
            for s, job in enumerate(self.slot_job):
                if job is None:
                    continue
                self.slot_index[s] = int(report.index[s])
                if report.done[s]:
                    self.slot_job[s] = None
                    self._judge(job, self._decoded(report, s, job.temperature))
        e._state = ((self.layout, self.capacity), state) if e.keep_slots else None
        return self.results
