"""Beam search inside the compiled decode loop.

Beams are folded into the batch (``batch * num_beams`` decoder rows) while
the cross-attention K/V stay one copy per audio row (the decoder folds beams
into the query length). Scoring follows transformers' beam search so results
can be compared token for token: log-softmax of the raw logits, then the
logit rules, accumulated per beam; the ``2 * num_beams`` best continuations
are kept so that beams ending in end-of-text can be replaced; a finished
hypothesis scores ``sum_logprob / generated_length ** length_penalty``; a row
stops when its ``num_beams`` finished hypotheses can no longer be beaten.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from whisper_t5x.model.whisper import WhisperModule, map_batch

_BIG = 1.0e9


def _gather_beams(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[b, index[b, j]]`` for arrays shaped ``(batch, beams, ...)``."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_generate(module: WhisperModule, params: Any, input_features, options, prompt_ids=None):
    from whisper_t5x.decoding import generate as decoding  # circular at import time only

    config = module.config
    special = config.special_tokens
    variables = {"params": params}
    batch, k = input_features.shape[0], options.num_beams
    length_penalty = 1.0 if options.length_penalty is None else float(options.length_penalty)
    begin = decoding.start(module, params, input_features, options, prompt_ids, beams=k)
    cross_kv, context, sample_begin = begin.cross_kv, begin.context, begin.sample_begin
    running = begin.seq.reshape(batch, k, options.max_length)
    neg = jnp.full((batch, k), -_BIG, jnp.float32)
    flat = batch * k

    state = dict(
        cur=jnp.asarray(sample_begin, jnp.int32),
        running=running,
        running_scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(-_BIG),
        finished=running,
        finished_scores=neg,
        is_finished=jnp.zeros((batch, k), bool),
        improvable=jnp.ones((batch,), bool),
        all_hit=jnp.asarray(False),
        cache=begin.cache,
        logits=begin.logits,
        num_sampled=jnp.zeros((flat,), jnp.int32),
        last_token=jnp.full((flat,), -1, jnp.int32),
        penultimate_token=jnp.full((flat,), -1, jnp.int32),
        last_timestamp=jnp.full((flat,), -1, jnp.int32),
    )

    def cond(s):
        return jnp.any(s["improvable"]) & ~s["all_hit"] & (s["cur"] < options.max_length)

    def body(s):
        cur = s["cur"]
        vocab = s["logits"].shape[-1]
        logprobs = jax.nn.log_softmax(s["logits"], axis=-1)
        logprobs = decoding._apply_rules(logprobs, s, options, special)
        scores = logprobs.reshape(batch, k, vocab) + s["running_scores"][:, :, None]
        top_scores, top_index = jax.lax.top_k(scores.reshape(batch, k * vocab), 2 * k)
        origin = top_index // vocab
        token = (top_index % vocab).astype(jnp.int32)
        candidates = _gather_beams(s["running"], origin)
        candidates = jax.vmap(lambda c, t: jax.lax.dynamic_update_slice(c, t[:, None], (0, cur)))(candidates, token)
        hit = (token == special.eot) | (cur + 1 >= options.max_length)

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
        done_scores = done_scores - (~s["improvable"])[:, None] * _BIG - (~(hit & in_top_k)) * _BIG
        merged_scores = jnp.concatenate([s["finished_scores"], done_scores], axis=1)
        merged = jnp.concatenate([s["finished"], candidates], axis=1)
        merged_done = jnp.concatenate([s["is_finished"], hit & in_top_k], axis=1)
        fin_scores, fin_index = jax.lax.top_k(merged_scores, k)
        finished = _gather_beams(merged, fin_index)
        is_finished = jnp.take_along_axis(merged_done, fin_index, axis=1)

        # Reorder the per-beam decoder state to the surviving beams' origins.
        flat_origin = (jnp.arange(batch)[:, None] * k + new_origin).reshape(-1)
        cache = map_batch(lambda a, axis: jnp.take(a, flat_origin, axis=axis), s["cache"], config)
        history = {n: jnp.take(s[n], flat_origin, axis=0) for n in ("num_sampled", "last_token", "penultimate_token", "last_timestamp")}
        flat_token = new_token.reshape(-1)
        history = decoding._record(history, flat_token, special)
        out = module.apply(
            variables, flat_token[:, None], cache=cache, cache_index=context + cur, cross_kv=cross_kv,
            method=WhisperModule.decode,
        )

        next_cur = cur + 1
        best_possible = live_scores[:, 0] / (next_cur - sample_begin).astype(jnp.float32) ** length_penalty
        worst_finished = jnp.where(is_finished, jnp.min(fin_scores, axis=1, keepdims=True), -_BIG)
        improvable = s["improvable"] & jnp.any(best_possible[:, None] > worst_finished, axis=1)
        return dict(
            s,
            **history,
            cur=next_cur,
            running=new_running,
            running_scores=live_scores,
            finished=finished,
            finished_scores=fin_scores,
            is_finished=is_finished,
            improvable=improvable,
            all_hit=jnp.all(hit),
            cache=out.cache,
            logits=out.logits[:, -1],
        )

    s = jax.lax.while_loop(cond, body, state)
    best = s["finished"][:, 0]
    after_prefix = jnp.arange(options.max_length)[None, :] >= sample_begin
    num_tokens = jnp.sum(after_prefix & (jnp.cumsum(best == special.eot, axis=1) == 0), axis=1)
    best_score = s["finished_scores"][:, 0]
    sum_logprob = best_score * (num_tokens + 1).astype(jnp.float32) ** length_penalty
    return decoding.GenerateOutput(
        sequences=best,
        sum_logprob=sum_logprob,
        avg_logprob=sum_logprob / (num_tokens + 1).astype(jnp.float32),
        num_tokens=num_tokens.astype(jnp.int32),
        no_speech_prob=begin.no_speech_prob,
        language_token=begin.language,
        language_prob=begin.language_prob,
    )
