"""Whisper on decode slots: the two programs of the engine (:mod:`whisper_t5x.longform.engine`).

* :func:`insert`: encode a bucket of new rows, compute their cross-attention
  K/V, read no-speech and language at ``<|startoftranscript|>`` and force the
  prefix (the same :func:`~whisper_t5x.decoding.generate.start` as
  :func:`~whisper_t5x.decoding.generate.generate`), then write each row into
  its slot. Padding rows carry a slot id past the last slot and are dropped.
* :func:`generate_slots`: up to ``steps`` steps of every slot in one loop
  (:func:`~whisper_t5x.decoding.slots.slot_steps`), each slot at its own
  position. With ``span`` shorter than the cache the loop reads only the
  cache's first ``span`` positions (a decoding step reads its whole cache, so
  short rows step faster; :data:`~whisper_t5x.decoding.generate.CACHE_SPANS`)
  and stops before a slot would pass them.

Rows have one beam. A row may have a prompt (``<|startofprev|>`` and the
previous text before ``<|startoftranscript|>``): it is written into the
slot's cache by :func:`insert` (one prompt length per insert; the prompt
tokens themselves are traced), and the slot keeps its *offset* (decoder
positions before ``<|startoftranscript|>``: 0, or 1 + the prompt's length)
and its own end, so rows of different prompt lengths share the slots and
one generate program: a slot's decoder position is its offset plus its
sequence index. The forced prefix and the logit rules (timestamps or not)
come from the static :class:`DecodeOptions`; the slots' sequences are
``max_length`` of the options the slots were made with (no prompt), their
cache ``cache_length`` positions (room for a prompt before them).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from whisper_t5x.decoding.generate import DecodeOptions, decoder_step, logit_rules_for, start, vocab_table
from whisper_t5x.decoding.slots import LoopStats, SlotState, empty_slots, put_rows, slot_steps
from whisper_t5x.model.config import WhisperConfig
from whisper_t5x.model.whisper import CrossKV, WhisperModule, init_cache

Array = jax.Array

__all__ = ["WhisperSlots", "SlotReport", "check_options", "empty", "cache_length_of", "insert", "generate_slots",
           "move_slots", "state_specs", "report_specs"]


class WhisperSlots(NamedTuple):
    """The device state of the engine: the loop's slots plus what Whisper keeps per slot."""

    loop: SlotState  # loop.cache: the self-attention KVCache, ``max_length`` positions per slot
    cross_kv: CrossKV  # per slot, laid out like the cache
    no_speech_prob: Array  # (slots,) float32
    language: Array  # (slots,) int32: forced or detected language token
    offset: Array  # (slots,) int32: decoder positions before <|startoftranscript|> (<|startofprev|> + prompt)


class SlotReport(NamedTuple):
    """What the host reads after a :func:`generate_slots` call (small: no cache)."""

    seq: Array
    index: Array
    done: Array
    sum_logprob: Array
    num_tokens: Array
    no_speech_prob: Array
    language: Array
    stats: LoopStats


def check_options(options: DecodeOptions, prompt: bool = False) -> None:
    """Slots decode one beam per row; their own options have no prompt (``prompt``: the options of an
    insert, whose rows may have one)."""
    if options.prompt_length and not prompt:
        raise ValueError("decode slots are made and stepped with options without a prompt (prompt_length 0); "
                         "a row's prompt is given when it is inserted")
    if options.num_beams != 1:
        raise ValueError("decode slots decode greedily or by sampling (num_beams must be 1)")


def _batch_axis(config: WhisperConfig) -> int:
    return 1 if config.scan_layers else 0


def _put_batch(config: WhisperConfig):
    axis = _batch_axis(config)

    def put(old: Any, slot_ids: Array, new: Any) -> Any:
        where = (slice(None),) * axis + (slot_ids,)
        return jax.tree_util.tree_map(lambda o, n: o.at[where].set(n.astype(o.dtype), mode="drop"), old, new)

    return put


def empty(module: WhisperModule, options: DecodeOptions, slots: int,
          cache_length: Optional[int] = None) -> WhisperSlots:
    """``slots`` free slots for rows decoded with ``options``, each with a self-attention cache of
    ``cache_length`` positions (default ``options.max_length``: rows without a prompt). Call it under
    ``jax.jit``: its leaves then are separate buffers, which the programs that donate the state need."""
    check_options(options)
    config: WhisperConfig = module.config
    cache_length = options.max_length if cache_length is None else int(cache_length)
    if not options.max_length <= cache_length <= config.max_target_positions:
        raise ValueError(f"cache_length {cache_length} must lie in [max_length {options.max_length}, "
                         f"{config.max_target_positions}]")
    cache = init_cache(config, slots, cache_length, module.dtype)
    cross = CrossKV(*init_cache(config, slots, config.max_source_positions, module.dtype))
    loop = empty_slots(slots, options.max_length, config.vocab_size, cache, config.special_tokens.eot)
    zeros = jnp.zeros((slots,), jnp.int32)
    return WhisperSlots(loop, cross, jnp.zeros((slots,), jnp.float32), zeros, zeros)


def cache_length_of(state: WhisperSlots) -> int:
    """Self-attention cache positions per slot."""
    return jax.tree_util.tree_leaves(state.loop.cache)[0].shape[-2]


def insert(module: WhisperModule, params: Any, state: WhisperSlots, input_features: Array, slot_ids: Array,
           temperature: Array, rng: Array, options: DecodeOptions, prompt_ids: Optional[Array] = None) -> WhisperSlots:
    """Prefill ``input_features`` (rows, n_mels, 3000) and write row ``j`` into slot ``slot_ids[j]``
    (ids ``>= slots`` are padding) with its ``temperature[j]`` and key ``rng[j]``.

    ``options``: the rows' own (as :func:`~whisper_t5x.decoding.generate.generate` would decode them):
    with ``prompt_length`` tokens of ``prompt_ids`` (rows, prompt_length) each, and their ``max_length``
    (at most the slots' sequence length; a row ends there)."""
    check_options(options, prompt=True)
    config: WhisperConfig = module.config
    width = state.loop.seq.shape[1]
    if options.max_length > width:
        raise ValueError(f"rows of max_length {options.max_length} do not fit slots of {width}")
    begin = start(module, params, input_features, options, prompt_ids, cache_length=cache_length_of(state))
    seq = jnp.pad(begin.seq, ((0, 0), (0, width - options.max_length)), constant_values=config.special_tokens.eot)
    put_cache = _put_batch(config)
    loop = put_rows(state.loop, slot_ids, seq, begin.cache, begin.logits, begin.sample_begin, temperature, rng,
                    put_cache, end=options.max_length)
    put = lambda old, new: old.at[slot_ids].set(new, mode="drop")  # noqa: E731
    return WhisperSlots(
        loop=loop,
        cross_kv=put_cache(state.cross_kv, slot_ids, begin.cross_kv),
        no_speech_prob=put(state.no_speech_prob, begin.no_speech_prob),
        language=put(state.language, begin.language),
        offset=put(state.offset, jnp.full(slot_ids.shape, begin.context, jnp.int32)),
    )


def move_slots(module: WhisperModule, state: WhisperSlots, source: Array, target: Array, count: Any) -> WhisperSlots:
    """Copy slot ``source[i]`` over slot ``target[i]`` for ``i < count``, then free each source slot (the engine
    moves the live slots at the back into free slots at the front, so fewer slots step at a long input's tail).

    One slot at a time, in place: under ``jax.jit`` with the state donated it holds one slot's copy at a time,
    where gathering the whole state in a new order held a second state (the 8-slot state of ``base`` is
    ~370 MB). Targets must be free slots that are not also sources. ``count`` is traced; ``source`` and
    ``target`` have a fixed length (padding past ``count`` is ignored), so one program moves any number."""
    axis = _batch_axis(module.config)

    def copy(leaf_axis: int):
        def run(a, i):
            row = jax.lax.dynamic_slice_in_dim(a, source[i], 1, axis=leaf_axis)
            return jax.lax.dynamic_update_slice_in_dim(a, row, target[i], axis=leaf_axis)
        return run

    def body(i, s: WhisperSlots) -> WhisperSlots:
        at0 = lambda a: copy(0)(a, i)  # noqa: E731
        at_axis = lambda a: copy(axis)(a, i)  # noqa: E731
        loop = s.loop
        fields = {k: jax.tree_util.tree_map(at0, v) for k, v in loop._asdict().items() if k != "cache"}
        loop = loop._replace(cache=jax.tree_util.tree_map(at_axis, loop.cache), **fields)
        loop = loop._replace(done=loop.done.at[source[i]].set(True))
        return WhisperSlots(loop, jax.tree_util.tree_map(at_axis, s.cross_kv), at0(s.no_speech_prob),
                            at0(s.language), at0(s.offset))

    return jax.lax.fori_loop(0, jnp.asarray(count, jnp.int32), body, state)


def state_specs(config: WhisperConfig, state: Any, data_axis: str = "data", heads_axis: Any = None) -> WhisperSlots:
    """The PartitionSpec of every leaf of a :class:`WhisperSlots` (arrays or shapes) on a mesh: the slot axis
    over ``data_axis`` (slots are rows: a device steps its own slots), the attention heads of the caches and
    cross K/V over ``heads_axis`` (a model-parallel mesh, as its rules split the heads), the rest replicated."""
    from jax.sharding import PartitionSpec as P

    axis = _batch_axis(config)
    at0, at_axis = P(data_axis), P(*([None] * axis + [data_axis, heads_axis]))
    loop = state.loop
    fields = {k: jax.tree_util.tree_map(lambda _: at0, v) for k, v in loop._asdict().items() if k != "cache"}
    loop = loop._replace(cache=jax.tree_util.tree_map(lambda _: at_axis, loop.cache), **fields)
    return WhisperSlots(loop, jax.tree_util.tree_map(lambda _: at_axis, state.cross_kv), at0, at0, at0)


def report_specs(data_axis: str = "data") -> SlotReport:
    """The PartitionSpecs of a :class:`SlotReport`: per-slot fields over ``data_axis``, the loop's counts replicated."""
    from jax.sharding import PartitionSpec as P

    at0 = P(data_axis)
    return SlotReport(at0, at0, at0, at0, at0, at0, at0, LoopStats(P(), P()))


def _front(a: Array, width: int, axis: int, shards: int) -> Array:
    """The first ``width`` slots of ``a`` along ``axis``; with ``shards`` > 1 the slot axis is ``shards`` equal
    blocks (one per device of a mesh) and the front is the first ``width // shards`` slots of every block, so
    taking it moves nothing between devices."""
    if shards == 1:
        return jax.lax.slice_in_dim(a, 0, width, axis=axis)
    n = a.shape[axis]
    blocks = a.reshape(a.shape[:axis] + (shards, n // shards) + a.shape[axis + 1:])
    part = jax.lax.slice_in_dim(blocks, 0, width // shards, axis=axis + 1)
    return part.reshape(a.shape[:axis] + (width,) + a.shape[axis + 1:])


def _first_slots(tree: Any, width: int, axis: int, shards: int = 1) -> Any:
    return jax.tree_util.tree_map(lambda a: _front(a, width, axis, shards), tree)


def _write_front(full: Any, part: Any, axis: int, shards: int = 1) -> Any:
    """``part`` written over the start of ``full``, leaf by leaf (every axis from 0; a leaf of ``part`` may be
    shorter along any axis: the front slots, and the cache's first positions). With ``shards`` > 1 the front
    slots along ``axis`` (0 outside the cache) are the front of every block, as :func:`_front` takes them."""
    if shards == 1:
        return jax.tree_util.tree_map(lambda a, b: jax.lax.dynamic_update_slice(a, b, (0,) * a.ndim), full, part)

    def put(a, b, at):
        split = lambda x: x.reshape(x.shape[:at] + (shards, x.shape[at] // shards) + x.shape[at + 1:])  # noqa: E731
        return jax.lax.dynamic_update_slice(split(a), split(b), (0,) * (a.ndim + 1)).reshape(a.shape)

    fields = {k: jax.tree_util.tree_map(lambda a, b: put(a, b, 0), getattr(full, k), v)
              for k, v in part._asdict().items() if k != "cache"}
    return full._replace(cache=jax.tree_util.tree_map(lambda a, b: put(a, b, axis), full.cache, part.cache),
                         **fields)


def generate_slots(module: WhisperModule, params: Any, state: WhisperSlots, options: DecodeOptions, steps: Any,
                   stop_below: Any = 0, span: Optional[int] = None, width: Optional[int] = None,
                   shards: int = 1) -> Tuple[WhisperSlots, SlotReport]:
    """Up to ``steps`` steps of the first ``width`` slots (default: all; the others must be free), see
    :func:`~whisper_t5x.decoding.slots.slot_steps`, reading the first ``span`` cache positions (default: all;
    a slot stops before its decoder position, offset + sequence index, would pass them).

    A step costs in proportion to the slots it runs, so a caller that keeps its live slots at the front
    runs a few rows (a short input, the tail of a long one) at the cost of a few.

    ``shards``: the slot axis is split in that many equal blocks (the devices of a mesh's data axis); the
    "first ``width``" slots are then the first ``width // shards`` of every block (``width`` a multiple of
    ``shards``), so a narrow call steps the same number of slots on every device and moves none."""
    check_options(options)
    axis = _batch_axis(module.config)
    full = cache_length_of(state)
    slots = state.loop.index.shape[0]
    span = full if span is None or span >= full else int(span)
    width = slots if width is None or width >= slots else int(width)
    if slots % shards or width % shards:
        raise ValueError(f"{slots} slots and a width of {width} must be multiples of the {shards} shards")
    loop = state.loop
    cross_kv = state.cross_kv
    offset = state.offset
    if width < slots:
        fields = {k: _first_slots(v, width, 0, shards) for k, v in loop._asdict().items() if k != "cache"}
        loop = loop._replace(cache=_first_slots(loop.cache, width, axis, shards), **fields)
        cross_kv = _first_slots(cross_kv, width, axis, shards)
        offset = _front(offset, width, 0, shards)
    cache = loop.cache
    if span < full:
        cache = jax.tree_util.tree_map(lambda a: a[..., :span, :], cache)
    at_index = decoder_step(module, params, cross_kv, 0, vocab_table(params, options))

    def step(tokens, step_cache, position):  # a slot's decoder position: its offset + its sequence index
        return at_index(tokens, step_cache, jnp.minimum(position + offset, full - 1))  # (done slots: clamped)

    rules = logit_rules_for(options, module.config.special_tokens)
    loop, stats = slot_steps(step, loop._replace(cache=cache), rules, steps, stop_below,
                             limit=span - offset if span < full else None)
    loop = _write_front(state.loop, loop, axis, shards)  # the cache's positions and the slots that ran
    state = state._replace(loop=loop)
    report = SlotReport(loop.seq, loop.index, loop.done, loop.sum_logprob, loop.num_tokens, state.no_speech_prob,
                        state.language, stats)
    return state, report
