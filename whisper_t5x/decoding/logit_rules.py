"""Whisper's decoding rules as pure functions on a batch of logits.

Each rule takes float32 logits of shape ``(batch, vocab)`` plus the per-row
decoding state it needs and returns new logits; none of them touch Python
state, so all of them run inside the compiled decode loop. They follow the
reference decoder's rules (openai-whisper ``decoding.py``): suppressed tokens,
blank/end-of-text suppression at the first sampled position, and the
timestamp grammar.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def suppress_tokens(logits: jax.Array, token_ids: Sequence[int]) -> jax.Array:
    """Forbid ``token_ids`` everywhere."""
    if not len(token_ids):
        return logits
    return logits.at[:, jnp.asarray(token_ids, jnp.int32)].set(NEG_INF)


def suppress_at_begin(logits: jax.Array, at_begin: jax.Array, token_ids: Sequence[int]) -> jax.Array:
    """Forbid ``token_ids`` (blank and end-of-text) in rows at their first sampled token."""
    if not len(token_ids):
        return logits
    ids = jnp.asarray(token_ids, jnp.int32)
    masked = logits.at[:, ids].set(NEG_INF)
    return jnp.where(jnp.reshape(at_begin, (-1, 1)), masked, logits)


def force_token(logits: jax.Array, token: jax.Array) -> jax.Array:
    """Make ``token`` (per row) the only possible choice."""
    vocab = jnp.arange(logits.shape[-1])
    return jnp.where(vocab[None, :] == jnp.reshape(token, (-1, 1)), 0.0, NEG_INF).astype(logits.dtype)


def restrict_to(logits: jax.Array, token_ids: Sequence[int]) -> jax.Array:
    """Keep only ``token_ids`` (e.g. the language tokens) possible."""
    allowed = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(token_ids, jnp.int32)].set(True)
    return jnp.where(allowed[None, :], logits, NEG_INF)


def language_probs(logits: jax.Array, language_ids: Sequence[int]):
    """Per-row most likely language token and its probability among languages."""
    restricted = restrict_to(logits, language_ids)
    probs = jax.nn.softmax(restricted, axis=-1)
    best = jnp.argmax(restricted, axis=-1).astype(jnp.int32)
    return best, jnp.take_along_axis(probs, best[:, None], axis=-1)[:, 0]


def timestamp_rules(
    logits: jax.Array,
    *,
    num_sampled: jax.Array,
    last_token: jax.Array,
    penultimate_token: jax.Array,
    last_timestamp: jax.Array,
    timestamp_begin: int,
    eot: int,
    no_timestamps: int,
    max_initial_timestamp_index: Optional[int] = 50,
) -> jax.Array:
    """Whisper's timestamp grammar, per row.

    - ``<|notimestamps|>`` is never sampled;
    - timestamps come in pairs: after a single timestamp comes another
      timestamp or end-of-text, after a pair comes text;
    - timestamps never decrease, and a segment has nonzero length;
    - the first sampled token is a timestamp no later than
      ``max_initial_timestamp_index`` steps of 20 ms;
    - when the summed probability of all timestamps beats every text token,
      a timestamp is forced.

    ``num_sampled``: tokens sampled so far per row; ``last_token`` and
    ``penultimate_token`` are the last two of them (any value when absent);
    ``last_timestamp`` is the last sampled timestamp's index (``-1`` if none).
    """
    vocab = jnp.arange(logits.shape[-1])[None, :]
    col = lambda a: jnp.reshape(a, (-1, 1))  # noqa: E731
    is_ts_token = vocab >= timestamp_begin
    is_text_token = vocab < eot

    logits = logits.at[:, no_timestamps].set(NEG_INF)

    last_was_ts = (num_sampled >= 1) & (last_token >= timestamp_begin)
    penultimate_was_ts = (num_sampled < 2) | (penultimate_token >= timestamp_begin)
    # After a pair: text must follow. After a single timestamp: no text.
    logits = jnp.where(col(last_was_ts & penultimate_was_ts) & is_ts_token, NEG_INF, logits)
    logits = jnp.where(col(last_was_ts & ~penultimate_was_ts) & is_text_token, NEG_INF, logits)

    # Monotonic, and a segment may not be empty: a closing timestamp may equal
    # the opening one only right after it; otherwise it must be strictly later.
    has_ts = last_timestamp >= 0
    floor = jnp.where(last_was_ts & ~penultimate_was_ts, last_timestamp, last_timestamp + 1)
    too_early = is_ts_token & (vocab < timestamp_begin + col(floor))
    logits = jnp.where(col(has_ts) & too_early, NEG_INF, logits)

    at_begin = col(num_sampled == 0)
    logits = jnp.where(at_begin & ~is_ts_token, NEG_INF, logits)
    if max_initial_timestamp_index is not None:
        too_late = vocab > timestamp_begin + max_initial_timestamp_index
        logits = jnp.where(at_begin & too_late, NEG_INF, logits)

    logprobs = jax.nn.log_softmax(logits, axis=-1)
    ts_logprob = jax.nn.logsumexp(jnp.where(is_ts_token, logprobs, NEG_INF), axis=-1)
    max_text_logprob = jnp.max(jnp.where(is_ts_token, NEG_INF, logprobs), axis=-1)
    force_ts = col(ts_logprob > max_text_logprob)
    return jnp.where(force_ts & ~is_ts_token, NEG_INF, logits)
