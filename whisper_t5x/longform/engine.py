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

The host loop (:meth:`Engine.decode`, :mod:`whisper_t5x.longform.engine_loop`)
pulls rows from the caller, refills free slots, reads which slots finished,
judges each finished row with the one
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

On a mesh (:meth:`Engine.shard` with a data-parallel partitioner) the slot
state is split over the ``data`` axis, each device holding a block of
``slots / data`` slots; every program is jitted with explicit
NamedShardings (parameters as the partitioner placed them, the state's slot
axis on ``data``, the state donated). Host slot ``i`` is device slot
:func:`slot_order`, so rows go to every device in turn and a generate call of
``width`` slots (a multiple of the data size) steps the first
``width / data`` slots of every block, moving nothing between devices. Slots
are not moved at the tail on a mesh (a move would cross devices): the width
follows the last live slot. An insert's rows are split over ``data`` when
their bucket divides it, else replicated (each device encodes them and keeps
those of its slots). On a ``model`` axis larger than 1 the parameters stay as
the partitioner split them and the caches' heads are split as the rules split
the model's heads.

Scope: one beam (greedy with temperature fallback), timestamp tokens or not;
the caller decides (:meth:`Engine.supports`). Callers: VAD rows, chunked
windows and their continuations, the sequential seek (each input a chain of
rows: :mod:`whisper_t5x.longform.sequential`), the server. Beam search and
the seek's word timestamps stay on the
:class:`~whisper_t5x.longform.decoder.Decoder`. Greedy tokens are the
Decoder's; sampled fallback draws use per-slot random keys, so they differ
from the Decoder's draws (same distribution).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import jax

from whisper_t5x.decoding import slot_generate
from whisper_t5x.decoding.generate import DecodeOptions
from whisper_t5x.longform.decoder import DecodedRow, DecodeRequest, trim_prompt
from whisper_t5x.longform.engine_loop import (SPAN_MARGIN, DecodeCall, EngineError, EngineMeshError, LiveRows,
                                              SlotLayout, slot_order)

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineError", "EngineMeshError", "LiveRows", "SlotLayout", "slot_order", "SPAN_MARGIN"]


def _kept(fn: Any, name: str, key: Tuple, donate_argnums: Tuple[int, ...]) -> Any:
    """A jitted program kept on disk by the program cache (:mod:`whisper_t5x.program_cache`), as the
    Decoder's are: a fresh process skips tracing it (the shapes are part of that cache's own key)."""
    from whisper_t5x.program_cache import cached_program

    return cached_program(fn, name, key=key, donate_argnums=donate_argnums)

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
        # Every call allocates ``slots`` slots, so one set of programs serves inputs of every length (each
        # program holds ~25-50 MB of machine code for ``base`` on a CPU; a short input's few rows step at a
        # narrow width all the same). ``fit_slots``: a call whose rows are all known and fewer allocates
        # only what they fill (less memory for a short input, a set of programs per slot count).
        self.fit_slots = False
        self._programs: Dict[Tuple, Any] = {}
        self._lock = threading.Lock()  # callers on several threads (server, streams) build programs once
        self._state: Optional[Tuple[Tuple[DecodeOptions, int], Any]] = None  # ((options, capacity), slots)
        self._stats_lock = threading.Lock()  # calls on several threads (server calls, streams) count exactly
        self.partitioner: Any = None  # a data-parallel mesh the slots are spread over (:meth:`shard`)
        self._param_axes: Any = None
        self._param_shardings: Any = None
        self._heads_axis: Any = None  # the mesh axis of the caches' heads (a model-parallel mesh)

    # ------------------------------------------------------------------ a mesh
    def shard(self, partitioner: Any, param_axes: Any = None) -> None:
        """Decode under ``partitioner`` (a ``partitioning.PjitPartitioner``; ``None``: one device again), with
        parameters placed by ``param_axes`` (its mesh PartitionSpecs, as ``shard_host_params`` placed them).

        The slot state is split over the mesh's ``data`` axis (``slots`` must be a multiple of its size): each
        device steps its own slots; inserts encode their rows split over ``data`` when the rows divide it (else
        replicated) and write each into its slot on whichever device holds it. On a ``model`` axis larger than 1
        the caches' attention heads are split over it as the rules split the model's heads (else replicated)."""
        self._programs.clear()
        self._state = None
        self.partitioner, self._param_axes, self._param_shardings, self._heads_axis = None, None, None, None
        if partitioner is None:
            return
        data, model = int(partitioner.data_mesh_size), int(partitioner.model_mesh_size)
        if self.slots % data:
            raise EngineMeshError(f"{self.slots} decode slots must be a multiple of the data axis ({data} devices)")
        if model > 1 and self.config.decoder_attention_heads % model == 0:
            from jax.sharding import PartitionSpec

            spec = tuple(partitioner.logical_to_mesh_axes(PartitionSpec("heads")) or ())
            self._heads_axis = spec[0] if spec else None
        self.partitioner, self._param_axes = partitioner, param_axes

    def _specs(self, state: Any) -> Any:
        """The slot state's PartitionSpecs on the mesh (slot axis over ``data``, cache heads as the rules say)."""
        return slot_generate.state_specs(self.config, state, heads_axis=self._heads_axis)

    @property
    def data_size(self) -> int:
        """Devices the slots are split over (1 without a mesh)."""
        return 1 if self.partitioner is None else int(self.partitioner.data_mesh_size)

    def _params_sharding(self, params: Any) -> Any:
        """The parameters' NamedShardings (from ``param_axes``, matched to ``params``' containers; else each
        array's own, as the partitioner placed it)."""
        if self._param_shardings is None:
            from partitioning import match_structure

            if self._param_axes is not None:
                specs = match_structure(self.partitioner.to_shardings(self._param_axes), params)
                full = jax.tree.broadcast(specs, params, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
            else:
                full = jax.tree_util.tree_map(lambda a: a.sharding, params)
            self._param_shardings = full
        return self._param_shardings

    def _on_mesh(self, fn: Callable, in_specs: Tuple, out_specs: Any, donate: Tuple[int, ...],
                 rows_sharded: bool = True, params: Any = None) -> Callable:
        """``fn`` jitted over the mesh with explicit shardings: ``in_specs``/``out_specs`` are PartitionSpec
        trees (``"params"`` stands for the parameters' shardings). It is traced under the partitioner's rules
        (the model's activation constraints), with ``batch`` unsharded when the rows do not divide ``data``,
        and called under ``jax.set_mesh``."""
        from flax.linen import partitioning as nn_partitioning
        from jax.sharding import NamedSharding, PartitionSpec

        mesh = self.partitioner.mesh
        rules = tuple(self.partitioner.logical_axis_rules)
        if not rows_sharded:
            rules = (("batch", None),) + rules
        named = lambda tree: jax.tree_util.tree_map(  # noqa: E731
            lambda p: NamedSharding(mesh, p), tree, is_leaf=lambda x: isinstance(x, PartitionSpec))
        ins = tuple(self._params_sharding(params) if spec == "params" else named(spec) for spec in in_specs)

        def traced(*args):
            with nn_partitioning.axis_rules(rules):
                return fn(*args)

        jitted = jax.jit(traced, in_shardings=ins, out_shardings=named(out_specs), donate_argnums=donate)

        def call(*args):
            with jax.set_mesh(mesh):
                return jitted(*args)

        call.jitted = jitted  # lower(...) for checks of the compiled program
        return call

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
        make = lambda: slot_generate.empty(module, layout.options, capacity, layout.cache_length)  # noqa: E731
        if self.partitioner is None:
            # Committed to the default device, as every later state is (an insert's or a generate's output):
            # an uncommitted first state made the first insert a separate compile of the same program.
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            fn = self._program(("allocate", layout, capacity), lambda: jax.jit(make, out_shardings=device))
        else:
            fn = self._program(("allocate", layout, capacity),
                               lambda: self._on_mesh(make, (), self._state_specs(layout, capacity), ()))
        return fn()

    def _state_specs(self, layout: SlotLayout, capacity: int) -> Any:
        shape = jax.eval_shape(lambda: slot_generate.empty(self.module, layout.options, capacity, layout.cache_length))
        return self._specs(shape)

    def _insert_fn(self, layout: SlotLayout, capacity: int, rows: int, audio: bool, params: Any = None,
                   state: Any = None, prompted: bool = False) -> Any:
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

            if self.partitioner is None:
                return _kept(jax.jit(run, donate_argnums=(1,)), "engine_insert", (module, options, audio), (1,))
            from jax.sharding import PartitionSpec as P

            specs = self._specs(state)
            split = rows % self.data_size == 0  # the rows' encoder split over the data axis; else replicated
            row = P("data") if split else P()
            ins = ("params", specs, row, P(), P(), P(), P()) + ((row,) if prompted else ())
            return self._on_mesh(run, ins, specs, (1,), rows_sharded=split, params=params)

        return self._program(("insert", layout, capacity, rows, "audio" if audio else "mel"), build)


    def _move_fn(self, layout: SlotLayout, capacity: int, state: Any = None) -> Any:
        if self.data_size > 1:
            raise EngineMeshError("slots are not moved on a mesh of several devices (a move would cross them)")
        module = self.module

        def move(state, source, target, count):
            return slot_generate.move_slots(module, state, source, target, count)

        def build():
            if self.partitioner is None:
                return _kept(jax.jit(move, donate_argnums=(0,)), "engine_move", (module, layout.options), (0,))
            from jax.sharding import PartitionSpec as P

            specs = self._specs(state)
            return self._on_mesh(move, (specs, P(), P(), P()), specs, (0,))

        return self._program(("move", layout, capacity), build)

    def _generate_fn(self, layout: SlotLayout, capacity: int, span: int, width: int, params: Any = None,
                     state: Any = None) -> Any:
        module, options, shards = self.module, layout.options, self.data_size

        def build():
            def run(params, state, steps, stop_below):
                return slot_generate.generate_slots(module, params, state, options, steps, stop_below, span, width,
                                                    shards)

            if self.partitioner is None:
                return _kept(jax.jit(run, donate_argnums=(1,)), "engine_generate", (module, options, span, width),
                             (1,))
            from jax.sharding import PartitionSpec as P

            specs = self._specs(state)
            return self._on_mesh(run, ("params", specs, P(), P()), (specs, slot_generate.report_specs()), (1,),
                                 params=params)

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
            return DecodeCall(self, params, layout, request, rows, on_result, tuple(prompt)).run()
        except BaseException:
            self._state = None  # the slots may have been donated mid-call: allocate afresh next time
            raise


