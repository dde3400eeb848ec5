"""Beam search as a ``lax.while_loop`` over a step function.

Beams are folded into the rows (``batch * num_beams`` decoder rows, the beams
of one input consecutive). Scoring follows transformers' beam search so results
can be compared token for token: log-softmax of the raw logits, then the
logit rules, accumulated per beam; the ``2 * num_beams`` best continuations
are kept so that beams ending in end-of-text can be replaced; a finished
hypothesis scores ``sum_logprob / generated_length ** length_penalty``; an
input stops when its ``num_beams`` finished hypotheses can no longer be beaten
(transformers' ``early_stopping=False`` test), and a hypothesis that reaches
the end of the sequence is finished there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from whisper_t5x.decoding.rules_state import LogitRules, TokenHistory
from whisper_t5x.decoding.step import Decoded, ReorderFn, StepFn, take_rows

Array = jax.Array

_BIG = 1.0e9


class BeamResult(NamedTuple):
    sequences: Array  # (batch, num_beams, max_length) int32: finished hypotheses, best first
    scores: Array  # (batch, num_beams) float32: their length-normalised scores (-1e9 where none)
    is_finished: Array  # (batch, num_beams) bool


class _State(NamedTuple):
    cur: Array
    running: Array
    running_scores: Array
    finished: Array
    finished_scores: Array
    is_finished: Array
    improvable: Array
    all_hit: Array
    cache: Any
    logits: Array
    history: TokenHistory


def _gather_beams(x: Array, index: Array) -> Array:
    """``x[b, index[b, j]]`` for arrays shaped ``(batch, beams, ...)``."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(
    step: StepFn,
    seq: Array,
    logits: Array,
    cache: Any,
    sample_begin: int,
    rules: LogitRules,
    num_beams: int,
    length_penalty: float = 1.0,
    reorder: ReorderFn = take_rows,
) -> BeamResult:
    """Beam search from index ``sample_begin`` of ``seq`` (batch * num_beams, max_length).

    ``seq``, ``logits`` (rows, vocab) and ``cache`` hold every beam of an input
    (identical at the start); ``reorder`` moves cache rows to the beams that
    survive a step.
    """
    rows, max_length = seq.shape
    k = num_beams
    batch = rows // k
    eot = rules.eot
    running = seq.reshape(batch, k, max_length)

    def cond(s: _State):
        return jnp.any(s.improvable) & ~s.all_hit & (s.cur < max_length)

    def body(s: _State) -> _State:
        cur = s.cur
        vocab = s.logits.shape[-1]
        logprobs = jax.nn.log_softmax(s.logits, axis=-1)
        logprobs = rules.apply(logprobs, s.history)
        scores = logprobs.reshape(batch, k, vocab) + s.running_scores[:, :, None]
        top_scores, top_index = jax.lax.top_k(scores.reshape(batch, k * vocab), 2 * k)
        origin = top_index // vocab
        token = (top_index % vocab).astype(jnp.int32)
        candidates = _gather_beams(s.running, origin)
        candidates = jax.vmap(lambda c, t: jax.lax.dynamic_update_slice(c, t[:, None], (0, cur)))(candidates, token)
        hit = (token == eot) | (cur + 1 >= max_length)

        # Live beams: the k best candidates that did not end.
        live_scores, live_index = jax.lax.top_k(top_scores - hit * _BIG, k)
        new_running = _gather_beams(candidates, live_index)
        new_origin = jnp.take_along_axis(origin, live_index, axis=1)
        new_token = jnp.take_along_axis(token, live_index, axis=1)

        # Finished hypotheses: ended candidates among the k best, length-normalised.
        # transformers counts the generated length from the end of the decoder
        # prompt, which for Whisper is the forced prefix (sample_begin tokens).
        generated = (cur + 1 - sample_begin).astype(jnp.float32)
        done_scores = top_scores / generated ** length_penalty
        in_top_k = jnp.arange(2 * k)[None, :] < k
        done_scores = done_scores - (~s.improvable)[:, None] * _BIG - (~(hit & in_top_k)) * _BIG
        merged_scores = jnp.concatenate([s.finished_scores, done_scores], axis=1)
        merged = jnp.concatenate([s.finished, candidates], axis=1)
        merged_done = jnp.concatenate([s.is_finished, hit & in_top_k], axis=1)
        fin_scores, fin_index = jax.lax.top_k(merged_scores, k)
        finished = _gather_beams(merged, fin_index)
        is_finished = jnp.take_along_axis(merged_done, fin_index, axis=1)

        # Reorder the per-beam decoder state to the surviving beams' origins.
        flat_origin = (jnp.arange(batch)[:, None] * k + new_origin).reshape(-1)
        history = s.history.take(flat_origin)
        flat_token = new_token.reshape(-1)
        history = rules.record(history, flat_token)
        next_logits, cache = step(flat_token[:, None], reorder(s.cache, flat_origin), cur)

        next_cur = cur + 1
        best_possible = live_scores[:, 0] / (next_cur - sample_begin).astype(jnp.float32) ** length_penalty
        worst_finished = jnp.where(is_finished, jnp.min(fin_scores, axis=1, keepdims=True), -_BIG)
        improvable = s.improvable & jnp.any(best_possible[:, None] > worst_finished, axis=1)
        return _State(
            cur=next_cur,
            running=new_running,
            running_scores=live_scores,
            finished=finished,
            finished_scores=fin_scores,
            is_finished=is_finished,
            improvable=improvable,
            all_hit=jnp.all(hit),
            cache=cache,
            logits=next_logits,
            history=history,
        )

    state = _State(
        cur=jnp.asarray(sample_begin, jnp.int32),
        running=running,
        running_scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(-_BIG),
        finished=running,
        finished_scores=jnp.full((batch, k), -_BIG, jnp.float32),
        is_finished=jnp.zeros((batch, k), bool),
        improvable=jnp.ones((batch,), bool),
        all_hit=jnp.asarray(False),
        cache=cache,
        logits=logits,
        history=TokenHistory.empty(rows),
    )
    s = jax.lax.while_loop(cond, body, state)
    return BeamResult(s.finished, s.finished_scores, s.is_finished)


def best_hypothesis(result: BeamResult, sample_begin: int, eot: int, length_penalty: float = 1.0) -> Decoded:
    """The best finished hypothesis of every input, its log-probability sum recovered from its score."""
    best = result.sequences[:, 0]
    after_prefix = jnp.arange(best.shape[1])[None, :] >= sample_begin
    num_tokens = jnp.sum(after_prefix & (jnp.cumsum(best == eot, axis=1) == 0), axis=1)
    sum_logprob = result.scores[:, 0] * (num_tokens + 1).astype(jnp.float32) ** length_penalty
    return Decoded(best, sum_logprob, num_tokens.astype(jnp.int32))
