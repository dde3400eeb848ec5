"""Greedy and temperature-sampling decoding as a ``lax.while_loop`` over a step function.

Every row samples one token per step (argmax, or a categorical draw at
``temperature``) after the :class:`~whisper_t5x.decoding.rules_state.LogitRules`;
a row that emitted end-of-text keeps emitting it and stops adding to its
log-probability; the loop ends when every row is done or the sequence is full.

The loop can run in stages (:class:`CacheStage`): each stage is its own
``while_loop`` that stops at a sequence index, and before it the caller's
``prepare`` may change the cache (the Whisper decoder grows its
self-attention cache this way, so early steps read a short one).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from whisper_t5x.decoding.rules_state import LogitRules, TokenHistory
from whisper_t5x.decoding.step import Decoded, StepFn

Array = jax.Array


class CacheStage(NamedTuple):
    """Run steps while the next token's sequence index is below ``until``; ``prepare`` the cache first."""

    until: int
    prepare: Optional[Callable[[Any], Any]] = None


class _State(NamedTuple):
    seq: Array
    cache: Any
    logits: Array
    index: Array
    done: Array
    sum_logprob: Array
    num_tokens: Array
    history: TokenHistory
    rng: Array


def greedy_search(
    step: StepFn,
    seq: Array,
    logits: Array,
    cache: Any,
    sample_begin: int,
    rules: LogitRules,
    *,
    sample: Optional[bool] = False,
    temperature: Any = 0.0,
    rng: Optional[Array] = None,
    stages: Optional[Sequence[CacheStage]] = None,
) -> Decoded:
    """Sample from index ``sample_begin`` of ``seq`` (rows, max_length) onwards.

    ``seq`` holds the forced prefix before ``sample_begin`` (later entries are
    overwritten); ``logits`` (rows, vocab) are the step's logits for index
    ``sample_begin`` and ``cache`` the step's cache after the prefix.
    ``stages`` default to one stage up to ``max_length``. ``sample``: draw at
    ``temperature`` (True) or take the argmax (False); None decides from the
    traced ``temperature`` (> 0 samples), so one compiled program serves both.
    """
    rows, max_length = seq.shape
    eot = rules.eot
    temperature = jnp.asarray(temperature, jnp.float32)
    if rng is None:
        rng = jax.random.PRNGKey(0)
    if stages is None:
        stages = (CacheStage(max_length),)

    def argmax(logits, key):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(logits, key):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    def choose(logits, key):
        if sample is None:
            return jax.lax.cond(temperature > 0, draw, argmax, logits, key)
        return draw(logits, key) if sample else argmax(logits, key)

    def body(s: _State) -> _State:
        logits = rules.apply(s.logits, s.history)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        rng, key = jax.random.split(s.rng)
        token = choose(logits, key)
        token = jnp.where(s.done, eot, token)
        token_logprob = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
        sum_logprob = s.sum_logprob + jnp.where(s.done, 0.0, token_logprob)
        done = s.done | (token == eot)
        seq = jax.lax.dynamic_update_slice(s.seq, token[:, None], (0, s.index))
        next_logits, cache = step(token[:, None], s.cache, s.index)
        return _State(
            seq=seq,
            cache=cache,
            logits=next_logits,
            index=s.index + 1,
            done=done,
            sum_logprob=sum_logprob,
            num_tokens=s.num_tokens + (~done).astype(jnp.int32),
            history=rules.record(s.history, token),
            rng=rng,
        )

    state = _State(
        seq=seq,
        cache=cache,
        logits=logits,
        index=jnp.asarray(sample_begin, jnp.int32),
        done=jnp.zeros((rows,), bool),
        sum_logprob=jnp.zeros((rows,), jnp.float32),
        num_tokens=jnp.zeros((rows,), jnp.int32),
        history=TokenHistory.empty(rows),
        rng=rng,
    )
    for stage in stages:
        if stage.prepare is not None:
            state = state._replace(cache=stage.prepare(state.cache))
        limit = min(int(stage.until), max_length)
        state = jax.lax.while_loop(lambda s, limit=limit: (s.index < limit) & ~jnp.all(s.done), body, state)
    return Decoded(state.seq, state.sum_logprob, state.num_tokens)
