"""The decode engine: rows flow through a fixed set of device slots (continuous batching).

JetStream's shape applied to Whisper. A fixed number of decode *slots* live on
the device (self-attention cache, cross-attention K/V, next-token logits,
position, done flag, rule state, sums, temperature and random key per slot:
:class:`~whisper_t5x.decoding.slot_generate.WhisperSlots`). Two verbs run there:

* **insert** encodes a bucket of waiting rows (encoder, cross K/V, forced
  prefix) and writes them into free slots;
* **generate** runs up to ``steps_per_call`` steps of every slot in one
  compiled loop, each slot at its own position, and stops early once enough
  slots are free for the next refill.

The host loop (:meth:`Engine.decode`) pulls rows from the caller, refills free
slots, reads which slots finished, judges each finished row with the one
fallback policy (:mod:`whisper_t5x.longform.fallback`) and re-queues a failed
row as ``best_of`` draws at the next temperature (the most likely draw is
judged; a row that fails every temperature keeps its best attempt, as the
:class:`~whisper_t5x.longform.decoder.Decoder` does). So a short row does not
wait for the longest row of its batch, and the slots stay full while rows of
different lengths come and go. Decode slots may outnumber the encoder batch.

A generate call runs only the first ``width`` slots (a power of two that
holds every live slot): rows are inserted into the lowest free slots, and at
the tail (nothing waiting) the live slots are moved to the front when that
halves the width, so the last rows of a long input, or a short input's few
rows, cost a few rows per step.

Compiled programs (:attr:`Engine.num_programs`, keyed in :meth:`Engine.program_keys`):
per decode options, one allocation, one slot move, one insert per encoder bucket
(powers of two up to ``encode_batch``) and prompt bucket, and one generate per
cache span (:func:`~whisper_t5x.decoding.generate.cache_spans`) and width.

Prompts (a call-wide ``prompt_ids`` or a row's own previous text) are trimmed
and bucketed as the Decoder's (:func:`~whisper_t5x.longform.decoder.trim_prompt`);
an insert takes rows of one prompt length and language, and each slot keeps its
offset (decoder positions before ``<|startoftranscript|>``) and end, so rows of
any prompt length share the one generate program. Fallback draws hotter than
``PROMPT_RESET_TEMPERATURE`` drop the prompt, as the Decoder's do.

Scope: one beam (greedy with temperature fallback), timestamp tokens or not;
the caller decides (:meth:`Engine.supports`). Callers: VAD rows, chunked
windows and their continuations, the sequential seek (each input a chain of
rows: :mod:`whisper_t5x.longform.sequential`), the server. Beam search, a
partitioned model and the seek's word timestamps stay on the
:class:`~whisper_t5x.longform.decoder.Decoder`. Greedy tokens are the
Decoder's; sampled fallback draws use per-slot random keys, so they differ
from the Decoder's draws (same distribution).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue as queue_lib
import threading
from typing import Any, Callable, Deque, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from whisper_t5x.decoding import slot_generate
from whisper_t5x.decoding.generate import DecodeOptions, cache_spans, forced_prefix
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import PROMPT_RESET_TEMPERATURE, DecodedRow, DecodeRequest, trim_prompt
from whisper_t5x.longform.segments import cut_at_eot, text_tokens
from whisper_t5x.longform.windows import bucket_size

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineError", "LiveRows", "SlotLayout"]

SPAN_MARGIN = 8  # a short cache span is used only while every live slot is this far from its end


class EngineError(ValueError):
    """A request or row the engine cannot decode."""


def _kept(fn: Any, name: str, key: Tuple, donate_argnums: Tuple[int, ...]) -> Any:
    """A jitted program kept on disk by the program cache (:mod:`whisper_t5x.program_cache`), as the
    Decoder's are: a fresh process skips tracing it (the shapes are part of that cache's own key)."""
    from whisper_t5x.program_cache import cached_program

    return cached_program(fn, name, key=key, donate_argnums=donate_argnums)


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


class Engine:
    """Decode slots on the device, refilled from a queue; see the module docstring."""

    def __init__(self, model: Any, slots: int = 16, encode_batch: int = 8, steps_per_call: int = 64,
                 refill_at: Optional[int] = None, tokenizer: Any = None, stats: Any = None):
        if slots < 1 or encode_batch < 1 or steps_per_call < 1:
            raise EngineError(f"slots, encode_batch and steps_per_call must be positive, got "
                              f"{slots}, {encode_batch}, {steps_per_call}")
        self.model = model
        self.module = model.module
        self.config = model.config
        self.special = model.config.special_tokens
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.slots = int(slots)
        self.encode_batch = min(int(encode_batch), self.slots)
        self.steps_per_call = int(steps_per_call)
        self._refill_at = None if refill_at is None else int(refill_at)
        self.stats: "collections.Counter[str]" = stats if stats is not None else collections.Counter()
        # Keep the slots allocated between calls (a server); else they are freed when a call ends
        # (the cross K/V of every slot: 37 MB each for ``base`` in float32).
        self.keep_slots = False
        self._programs: Dict[Tuple, Any] = {}
        self._lock = threading.Lock()  # callers on several threads (server, streams) build programs once
        self._state: Optional[Tuple[Tuple[DecodeOptions, int], Any]] = None  # ((options, capacity), slots)
        self._stats_lock = threading.Lock()  # calls on several threads (server calls, streams) count exactly

    def count(self, **amounts: int) -> None:
        with self._stats_lock:
            self.stats.update(amounts)

    @property
    def refill_at(self) -> int:
        """Free slots that end a generate call and trigger a refill (default: half an encoder batch)."""
        wanted = self._refill_at if self._refill_at is not None else self.encode_batch // 2
        return max(1, min(self.encode_batch, wanted))

    @refill_at.setter
    def refill_at(self, value: Optional[int]) -> None:
        self._refill_at = None if value is None else int(value)

    # ------------------------------------------------------------------ options and programs
    def supports(self, request: DecodeRequest, prompt: Iterable[int] = (), prompted: bool = False) -> bool:
        """Whether rows of ``request`` (with ``prompt``) decode here: one beam, whole windows, and the prompt
        (trimmed as the Decoder trims it) fits before ``max_length`` in the model's decoder positions.

        ``prompted``: the caller gives ``prompt`` to :meth:`decode`. A caller that does not say so is
        told a prompted request is not supported (it would decode the rows without their prompt)."""
        if request.num_beams != 1 or request.audio_ctx is not None or request.alignment_heads:
            return False  # beams; a shortened encoder or per-token frames (live streams): the Decoder's
        prompt = self.trim(request, prompt)
        if prompt and not prompted:
            return False
        context = 1 + len(prompt) if prompt else 0
        return context + self.row_options(request, len(prompt)).max_length <= self.config.max_target_positions

    def trim(self, request: DecodeRequest, prompt: Iterable[int]) -> Tuple[int, ...]:
        """The prompt tokens decoded (the last 223, then the last bucket of them; see
        :func:`~whisper_t5x.longform.decoder.trim_prompt`)."""
        return trim_prompt(tuple(prompt), self.config.max_target_positions // 2 - 1, request.prompt_buckets)

    def options(self, request: DecodeRequest) -> DecodeOptions:
        """The static options (compile key) of the slots for ``request``: no prompt, the greedy program."""
        if request.num_beams != 1 or request.audio_ctx is not None or request.alignment_heads:
            raise EngineError("the engine decodes whole windows with one beam (no audio_ctx, alignment_heads)")
        return self.row_options(request, 0)

    def row_options(self, request: DecodeRequest, prompt_length: int) -> DecodeOptions:
        """The options of rows with ``prompt_length`` prompt tokens: the Decoder's (``max_length`` leaves
        room for the prompt when the request does not set it), so a row ends where the Decoder ends it."""
        max_length = request.max_length
        if request.sample_len is not None:
            context = 1 + prompt_length if prompt_length else 0
            prefix = (2 if self.config.is_multilingual else 0) + (0 if request.timestamps else 1)
            max_length = min(1 + prefix + request.sample_len, self.config.max_target_positions - context)
        return self.model.decode_options(
            task=request.task, language=request.language, return_timestamps=request.timestamps,
            max_length=max_length, num_beams=1, length_penalty=request.length_penalty,
            prompt_length=prompt_length, sample=False, suppress_tokens=request.suppress_tokens,
            begin_suppress_tokens=request.begin_suppress_tokens,
        )

    def layout(self, options: DecodeOptions, prompts: bool) -> SlotLayout:
        """The slots for ``options``: a cache of ``max_length`` positions, plus room for a prompt before
        them when rows may have one (none is needed when ``max_length`` is left to the model: a prompted
        row's then ends earlier)."""
        room = 0
        if prompts:
            room = min(self.config.max_target_positions - options.max_length,
                       1 + self.config.max_target_positions // 2 - 1)
        return SlotLayout(options, options.max_length + room)

    @property
    def num_programs(self) -> int:
        """Compiled programs so far (allocation, insert per bucket, generate per span; per options)."""
        return len(self._programs)

    def program_keys(self) -> List[Tuple]:
        """``(verb, shape detail)`` of every compiled program (the options omitted)."""
        return [(k[0],) + k[2:] for k in self._programs]

    def _program(self, key: Tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            fn = self._programs.get(key)
            if fn is None:
                logger.info("engine: compiling %s %s", key[0], key[2:])
                fn = self._programs[key] = build()
            return fn

    def _allocate(self, layout: SlotLayout, capacity: int) -> Any:
        if self._state is not None and self._state[0] == (layout, capacity):
            return self._state[1]
        self._state = None  # free the old slots first
        module = self.module
        fn = self._program(("allocate", layout, capacity), lambda: jax.jit(
            lambda: slot_generate.empty(module, layout.options, capacity, layout.cache_length)))
        return fn()

    def _insert_fn(self, layout: SlotLayout, capacity: int, rows: int, audio: bool) -> Any:
        """The insert program of rows decoded with ``layout.options`` (their prompt length) into slots
        of ``layout.cache_length`` positions; a prompted one takes the rows' prompts as a last argument."""
        module, n_mels, options = self.module, self.config.num_mel_bins, layout.options

        def build():
            def run(params, state, features, slot_ids, temperature, draw_ids, seed, prompt=None):
                if audio:
                    from whisper_t5x.audio.features import log_mel_spectrogram

                    features = log_mel_spectrogram(features, n_mels=n_mels)
                base = jax.random.PRNGKey(seed)
                keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(draw_ids)
                return slot_generate.insert(module, params, state, features, slot_ids, temperature, keys, options,
                                            prompt)

            return _kept(jax.jit(run, donate_argnums=(1,)), "engine_insert", (module, options, audio), (1,))

        return self._program(("insert", layout, capacity, rows, "audio" if audio else "mel"), build)

    def _move_fn(self, layout: SlotLayout, capacity: int) -> Any:
        module = self.module
        return self._program(("move", layout, capacity), lambda: _kept(jax.jit(
            lambda state, source, target, count: slot_generate.move_slots(module, state, source, target, count),
            donate_argnums=(0,)), "engine_move", (module, layout.options), (0,)))

    def _generate_fn(self, layout: SlotLayout, capacity: int, span: int, width: int) -> Any:
        module, options = self.module, layout.options

        def build():
            def run(params, state, steps, stop_below):
                return slot_generate.generate_slots(module, params, state, options, steps, stop_below, span, width)

            return _kept(jax.jit(run, donate_argnums=(1,)), "engine_generate", (module, options, span, width), (1,))

        return self._program(("generate", layout, capacity, span, width), build)

    # ------------------------------------------------------------------ the host loop
    def decode(self, params: Any, rows: Iterable[Any], request: DecodeRequest,
               on_result: Optional[Callable[[Hashable, DecodedRow], None]] = None, prompt: Sequence[int] = (),
               prompts: bool = False) -> Dict[Hashable, DecodedRow]:
        """Decode ``rows`` (``(key, features)`` pairs, pulled lazily as slots free up) with temperature
        fallback; returns ``{key: DecodedRow}`` and calls ``on_result(key, row)`` as each row ends.

        ``features``: ``(n_mels, 3000)`` log-mel, or ``(480000,)`` audio (log-mel computed on the device).
        ``rows`` may be a :class:`LiveRows`: the call then runs until it is closed and every row has ended,
        and rows put meanwhile join the running slots at the next refill (within ``steps_per_call`` steps).
        A plain iterator may yield ``None`` for "nothing to add now": the engine decodes on and asks it
        again at the next refill (rows still decoding may make more, e.g. chunked continuations, made in
        ``on_result``); it must not yield ``None`` while every row it gave has ended.

        ``prompt``: previous-text tokens conditioning every row (``prompt_ids``); a row may bring its own
        as a third element, ``(key, features, prompt)``, when ``prompts`` is set (sequential seek: each
        row's previous text), and its language token as a fourth (``None``: the request's). Prompts are trimmed and bucketed as the Decoder does, so rows of many
        prompt lengths share a few insert programs and one generate program.
        """
        options = self.options(request)
        layout = self.layout(options, prompts or bool(tuple(prompt)))
        try:
            return _Run(self, params, layout, request, rows, on_result, tuple(prompt)).run()
        except BaseException:
            self._state = None  # the slots may have been donated mid-call: allocate afresh next time
            raise


class _Run:
    """One :meth:`Engine.decode` call: queue, slot table, fallback bookkeeping."""

    def __init__(self, engine: Engine, params: Any, layout: SlotLayout, request: DecodeRequest,
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
        size = bucket_size(len(jobs), e.encode_batch)
        pad = size - len(jobs)
        feats = np.stack([j.row.features for j in jobs] + [jobs[-1].row.features] * pad)
        ids = np.asarray(slot_ids + [self.capacity] * pad, np.int32)  # padding rows go nowhere
        temps = np.asarray([j.temperature for j in jobs] + [0.0] * pad, np.float32)
        stride = self.best_of * len(self.temperatures)
        draw_ids = np.asarray([j.row.serial * stride + j.row.level * self.best_of + j.draw for j in jobs]
                              + [0] * pad, np.int32)
        plen = len(jobs[0].prompt)
        args = [jnp.asarray(feats), jnp.asarray(ids), jnp.asarray(temps), jnp.asarray(draw_ids),
                jnp.int32(self.request.seed)]
        if plen:
            args.append(jnp.asarray([j.prompt for j in jobs] + [jobs[-1].prompt] * pad, jnp.int32))
        fn = e._insert_fn(self._row_layout(*jobs[0].group), self.capacity, size, feats.ndim == 2)
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
        if not live or bucket_size(len(live), self.capacity) >= bucket_size(live[-1] + 1, self.capacity):
            return state
        source = [s for s in live if s >= len(live)]
        target = [s for s in range(len(live)) if self.slot_job[s] is None]
        pad = [0] * (self.capacity - len(source))
        state = e._move_fn(self.layout, self.capacity)(state, jnp.asarray(source + pad, jnp.int32),
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
            stop_below = bucket_size(live, self.capacity) // 2  # the tail: stop when half the slots could go
        stop_below = max(0, min(stop_below, live - 1))
        last = max(s for s, j in enumerate(self.slot_job) if j is not None)
        width = bucket_size(last + 1, self.capacity)  # live slots sit at the front: run only the first ``width``
        fn = e._generate_fn(self.layout, self.capacity, self._span(), width)
        state, report = fn(self.params, state, jnp.int32(e.steps_per_call), jnp.int32(stop_below))
        report = jax.device_get(report)
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
        if self.exhausted and not e.keep_slots:
            # All the rows are known and fewer than the slots: allocate only what they fill (a short
            # input's cross K/V is one row's, not ``slots`` rows'); fallback draws queue for these slots.
            self.capacity = bucket_size(min(len(self.queue), e.slots), e.slots)
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
