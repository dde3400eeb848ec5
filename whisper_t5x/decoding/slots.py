"""Decode slots: rows that each sit at their own position, stepped together (continuous batching).

:func:`~whisper_t5x.decoding.greedy.greedy_search` decodes a batch of rows that
start together and share one sequence index, so the batch runs until its
longest row ends. Here a fixed number of *slots* live in one
:class:`SlotState`; each slot has its own sequence index, done flag, rule
state, sums, temperature and random key. :func:`slot_steps` runs up to
``steps`` decoding steps of every slot in one ``lax.while_loop``; a caller
(the engine, :mod:`whisper_t5x.longform.engine`) collects the slots that
finished, frees them and writes new rows into them (:func:`put_rows`) while
the others carry on.

Like the other loops this module never sees a model: it calls a
:class:`~whisper_t5x.decoding.step.StepFn` whose ``position`` is a vector
``(slots,)``, every row's own sequence index.

A step of one slot is the step of :func:`greedy_search`: the logit rules,
argmax (or a categorical draw at the slot's temperature), end-of-text ends
the row, as does reaching its ``end`` (a full sequence, or less for a row
whose prompt takes decoder positions). A done (or free) slot does not move: its
index stays, nothing is written to its sequence and its sums stay.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from whisper_t5x.decoding.rules_state import LogitRules, TokenHistory
from whisper_t5x.decoding.step import StepFn

Array = jax.Array


class SlotState(NamedTuple):
    """Every slot's decoding state; all leading axes are the slot axis except inside ``cache``."""

    seq: Array  # (slots, max_length) int32: forced prefix, sampled tokens, end-of-text after
    cache: Any  # the step's cache (its rows laid out as the step wants them)
    logits: Array  # (slots, vocab) float32: logits of each slot's next token
    index: Array  # (slots,) int32: sequence index of each slot's next token
    done: Array  # (slots,) bool: finished, or free
    sum_logprob: Array  # (slots,) float32
    num_tokens: Array  # (slots,) int32: sampled tokens, end-of-text excluded
    history: TokenHistory  # what the logit rules read
    temperature: Array  # (slots,) float32: 0 is greedy
    rng: Array  # (slots, 2) uint32: each slot's random key
    end: Array  # (slots,) int32: a row ends at this sequence index at the latest (at most ``max_length``)


class LoopStats(NamedTuple):
    """What one :func:`slot_steps` call did."""

    steps: Array  # () int32: steps run
    live_slot_steps: Array  # () int32: slot-steps of slots still decoding (useful work)


def empty_slots(slots: int, max_length: int, vocab: int, cache: Any, eot: int) -> SlotState:
    """``slots`` free slots (done, nothing decoded) around an allocated ``cache``."""
    return SlotState(
        seq=jnp.full((slots, max_length), eot, jnp.int32),
        cache=cache,
        logits=jnp.zeros((slots, vocab), jnp.float32),
        index=jnp.zeros((slots,), jnp.int32),
        done=jnp.ones((slots,), bool),
        sum_logprob=jnp.zeros((slots,), jnp.float32),
        num_tokens=jnp.zeros((slots,), jnp.int32),
        history=TokenHistory.empty(slots),
        temperature=jnp.zeros((slots,), jnp.float32),
        rng=jnp.zeros((slots, 2), jnp.uint32),
        end=jnp.full((slots,), max_length, jnp.int32),
    )


def put_rows(state: SlotState, slot_ids: Array, seq: Array, cache: Any, logits: Array, sample_begin: int,
             temperature: Array, rng: Array, put_cache: Callable[[Any, Array, Any], Any],
             end: Optional[Any] = None) -> SlotState:
    """Write new rows (after their forced prefix) into slots ``slot_ids``; ids past the last slot are dropped
    (padding rows). ``put_cache(state_cache, slot_ids, cache)`` writes the rows' cache (the step owns its layout).
    ``end``: the rows' last sequence index + 1 (default: the whole sequence, ``max_length``)."""
    rows = slot_ids.shape[0]
    end = state.seq.shape[1] if end is None else end
    put = lambda old, new: old.at[slot_ids].set(new, mode="drop")  # noqa: E731
    fresh = TokenHistory.empty(rows)
    return SlotState(
        seq=put(state.seq, seq),
        cache=put_cache(state.cache, slot_ids, cache),
        logits=put(state.logits, logits.astype(jnp.float32)),
        index=put(state.index, jnp.full((rows,), sample_begin, jnp.int32)),
        done=put(state.done, jnp.zeros((rows,), bool)),
        sum_logprob=put(state.sum_logprob, jnp.zeros((rows,), jnp.float32)),
        num_tokens=put(state.num_tokens, jnp.zeros((rows,), jnp.int32)),
        history=TokenHistory(*(put(a, b) for a, b in zip(state.history, fresh))),
        temperature=put(state.temperature, jnp.asarray(temperature, jnp.float32)),
        rng=put(state.rng, jnp.asarray(rng, jnp.uint32)),
        end=put(state.end, jnp.broadcast_to(jnp.asarray(end, jnp.int32), (rows,))),
    )


def choose_tokens(logits: Array, temperature: Array, keys: Array, live: Array) -> Array:
    """Per slot: argmax at temperature 0, else a categorical draw at its temperature with its key.
    The draws are computed only when a live slot samples."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        drawn = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(live & (temperature > 0)), sampled, lambda _: greedy, None)


def slot_steps(step: StepFn, state: SlotState, rules: LogitRules, steps: Any, stop_below: Any = 0,
               limit: Optional[Any] = None) -> Tuple[SlotState, LoopStats]:
    """Run at most ``steps`` steps of every live slot; stop earlier when every slot is done, when
    the number of live slots falls to ``stop_below`` or below (the caller has rows waiting for slots),
    or before a live slot would step at an index ``>= limit`` (e.g. the end of a shortened cache; a
    ``(slots,)`` array: each slot's own limit).
    ``steps`` and ``stop_below`` are traced: changing them compiles nothing."""
    slots, max_length = state.seq.shape
    eot = rules.eot
    steps = jnp.asarray(steps, jnp.int32)
    stop_below = jnp.asarray(stop_below, jnp.int32)
    rows = jnp.arange(slots)

    def cond(carry):
        s, n, _ = carry
        live = ~s.done
        fits = True if limit is None else jnp.all(s.done | (s.index < limit))
        return (n < steps) & (jnp.sum(live.astype(jnp.int32)) > stop_below) & fits

    def body(carry):
        s, n, useful = carry
        live = ~s.done
        logits = rules.apply(s.logits, s.history)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        keys = jax.vmap(jax.random.split)(s.rng)  # (slots, 2, 2)
        token = choose_tokens(logits, s.temperature, keys[:, 1], live)
        token = jnp.where(s.done, eot, token)
        token_logprob = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
        ended = s.done | (token == eot)
        index = s.index + live.astype(jnp.int32)
        # Done slots write nowhere (an index past the sequence is dropped).
        seq = s.seq.at[rows, jnp.where(s.done, max_length, s.index)].set(token, mode="drop")
        position = jnp.minimum(s.index, max_length - 1)
        next_logits, cache = step(token[:, None], s.cache, position)
        new = SlotState(
            seq=seq,
            cache=cache,
            logits=next_logits.astype(jnp.float32),
            index=index,
            done=ended | (index >= s.end),
            sum_logprob=s.sum_logprob + jnp.where(s.done, 0.0, token_logprob),
            num_tokens=s.num_tokens + (~ended).astype(jnp.int32),
            history=TokenHistory(*(jnp.where(live, a, b) for a, b in
                                   zip(rules.record(s.history, token), s.history))),
            temperature=s.temperature,
            rng=jnp.where(live[:, None], keys[:, 0], s.rng),
            end=s.end,
        )
        return new, n + 1, useful + jnp.sum(live.astype(jnp.int32))

    zero = jnp.zeros((), jnp.int32)
    state, n, useful = jax.lax.while_loop(cond, body, (state, zero, zero))
    return state, LoopStats(n, useful)
