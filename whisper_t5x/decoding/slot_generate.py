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

Rows here have no prompt (the decoder's position is the sequence index) and
one beam; the forced prefix, the logit rules (timestamps or not) and
``max_length`` come from the static :class:`DecodeOptions`.
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

__all__ = ["WhisperSlots", "SlotReport", "check_options", "empty", "insert", "generate_slots"]


class WhisperSlots(NamedTuple):
    """The device state of the engine: the loop's slots plus what Whisper keeps per slot."""

    loop: SlotState  # loop.cache: the self-attention KVCache, ``max_length`` positions per slot
    cross_kv: CrossKV  # per slot, laid out like the cache
    no_speech_prob: Array  # (slots,) float32
    language: Array  # (slots,) int32: forced or detected language token


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


def check_options(options: DecodeOptions) -> None:
    """Slots decode rows without a prompt, one beam each."""
    if options.prompt_length:
        raise ValueError("decode slots take rows without a prompt (prompt_length must be 0)")
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


def empty(module: WhisperModule, options: DecodeOptions, slots: int) -> WhisperSlots:
    """``slots`` free slots for rows decoded with ``options``. Call it under ``jax.jit``: its leaves
    then are separate buffers, which the programs that donate the state need."""
    check_options(options)
    config: WhisperConfig = module.config
    cache = init_cache(config, slots, options.max_length, module.dtype)
    cross = CrossKV(*init_cache(config, slots, config.max_source_positions, module.dtype))
    loop = empty_slots(slots, options.max_length, config.vocab_size, cache, config.special_tokens.eot)
    return WhisperSlots(loop, cross, jnp.zeros((slots,), jnp.float32), jnp.zeros((slots,), jnp.int32))


def insert(module: WhisperModule, params: Any, state: WhisperSlots, input_features: Array, slot_ids: Array,
           temperature: Array, rng: Array, options: DecodeOptions) -> WhisperSlots:
    """Prefill ``input_features`` (rows, n_mels, 3000) and write row ``j`` into slot ``slot_ids[j]``
    (ids ``>= slots`` are padding) with its ``temperature[j]`` and key ``rng[j]``."""
    check_options(options)
    config: WhisperConfig = module.config
    begin = start(module, params, input_features, options, cache_length=options.max_length)
    put_cache = _put_batch(config)
    loop = put_rows(state.loop, slot_ids, begin.seq, begin.cache, begin.logits, begin.sample_begin, temperature, rng,
                    put_cache)
    return WhisperSlots(
        loop=loop,
        cross_kv=put_cache(state.cross_kv, slot_ids, begin.cross_kv),
        no_speech_prob=state.no_speech_prob.at[slot_ids].set(begin.no_speech_prob, mode="drop"),
        language=state.language.at[slot_ids].set(begin.language, mode="drop"),
    )


def generate_slots(module: WhisperModule, params: Any, state: WhisperSlots, options: DecodeOptions, steps: Any,
                   stop_below: Any = 0, span: Optional[int] = None) -> Tuple[WhisperSlots, SlotReport]:
    """Up to ``steps`` steps of every slot (see :func:`~whisper_t5x.decoding.slots.slot_steps`), reading
    the first ``span`` cache positions (default: all)."""
    check_options(options)
    full = options.max_length
    span = full if span is None or span >= full else int(span)
    cache = state.loop.cache
    if span < full:
        cache = jax.tree_util.tree_map(lambda a: a[..., :span, :], cache)
    step = decoder_step(module, params, state.cross_kv, 0, vocab_table(params, options))
    rules = logit_rules_for(options, module.config.special_tokens)
    loop, stats = slot_steps(step, state.loop._replace(cache=cache), rules, steps, stop_below,
                             limit=span if span < full else None)
    if span < full:
        back = jax.tree_util.tree_map(lambda old, part: jax.lax.dynamic_update_slice(old, part, (0,) * old.ndim),
                                      state.loop.cache, loop.cache)
        loop = loop._replace(cache=back)
    state = state._replace(loop=loop)
    report = SlotReport(loop.seq, loop.index, loop.done, loop.sum_logprob, loop.num_tokens, state.no_speech_prob,
                        state.language, stats)
    return state, report
