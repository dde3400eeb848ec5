"""The greedy and beam loops with a fake step function (no model), against brute force on a tiny vocabulary.

The fake is a second-order Markov chain: the logits of the next token are a
fixed table indexed by the last two tokens, the older one kept in the step's
cache. So beam search must reorder the cache correctly to score correctly.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_t5x.decoding.beam import beam_search, best_hypothesis
from whisper_t5x.decoding.greedy import CacheStage, greedy_search
from whisper_t5x.decoding.rules_state import LogitRules

TEXT, EOT, SOT = (0, 1), 2, 3  # two text tokens, end-of-text, start (never sampled)
V = 4


def _table(seed):
    return np.random.RandomState(seed).randn(V, V, V).astype(np.float32) * 1.5


def _fake_step(table):
    table = jnp.asarray(table)

    def step(tokens, cache, position):
        del position
        last = tokens[:, -1]
        return table[cache, last], last  # cache: each row's token before ``last``

    return step


def _rules(begin_suppress=(EOT,)):
    return LogitRules(eot=EOT, timestamp_begin=V, suppress_tokens=(SOT,), begin_suppress_tokens=begin_suppress)


def _logprobs(table, prev, last):
    x = table[prev, last].astype(np.float64)
    return x - np.log(np.sum(np.exp(x - x.max()))) - x.max()


def _start(table, first_tokens, max_length):
    """Rows begin ``[SOT, first]`` (a forced prefix of two), sampling from index 2."""
    rows = len(first_tokens)
    seq = np.full((rows, max_length), EOT, np.int32)
    seq[:, 0], seq[:, 1] = SOT, first_tokens
    logits = table[np.full(rows, SOT), np.asarray(first_tokens)]
    return jnp.asarray(seq), jnp.asarray(logits), jnp.asarray(first_tokens, jnp.int32)  # cache: the last fed token


def _masked(lp, step_index, begin_suppress=(EOT,)):
    lp = lp.copy()
    lp[SOT] = -np.inf
    if step_index == 0:
        lp[list(begin_suppress)] = -np.inf
    return lp


def _greedy_reference(table, first, max_length):
    """Tokens, logprob sum and text-token count of the greedy chain from ``[SOT, first]``."""
    seq, total, prev, last = [SOT, first], 0.0, SOT, first
    while len(seq) < max_length:
        x = _masked(table[prev, last].astype(np.float64), len(seq) - 2)  # the rules, then log-softmax
        lp = x - np.log(np.sum(np.exp(x[np.isfinite(x)] - x.max()))) - x.max()
        token = int(np.argmax(lp))
        seq.append(token)
        total += lp[token]
        prev, last = last, token
        if token == EOT:
            break
    n = len(seq) - 2 - (seq[-1] == EOT)
    return seq + [EOT] * (max_length - len(seq)), total, n


def test_greedy_matches_the_chain_and_stops_at_end_of_text_or_max_length():
    table, max_length = _table(0).copy(), 9
    table[0, 1, EOT] += 6.0  # after 0 1 the chain ends: rows starting with 0 stop early
    table[1, 0, EOT] -= 9.0  # rows starting with 1 never end
    firsts = [0, 1, 0, 1]
    refs = [_greedy_reference(table, f, max_length) for f in firsts]
    assert [r[2] for r in refs] == [1, 7, 1, 7]  # one text token then end-of-text; a full row
    seq, logits, cache = _start(table, firsts, max_length)
    out = jax.jit(lambda s, l, c: greedy_search(_fake_step(table), s, l, c, 2, _rules()))(seq, logits, cache)
    np.testing.assert_array_equal(np.asarray(out.sequences), np.array([r[0] for r in refs]))
    np.testing.assert_allclose(np.asarray(out.sum_logprob), [r[1] for r in refs], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.num_tokens), [r[2] for r in refs])


def test_begin_suppression_applies_at_the_first_sampled_token_only():
    table, max_length = _table(0).copy(), 6
    table[:, :, EOT] += 20.0  # end-of-text is always the favourite
    seq, logits, cache = _start(table, [0], max_length)
    step = _fake_step(table)
    free = greedy_search(step, seq, logits, cache, 2, _rules(begin_suppress=()))
    held = greedy_search(step, seq, logits, cache, 2, _rules())
    assert np.asarray(free.sequences)[0, 2] == EOT and int(free.num_tokens[0]) == 0
    assert np.asarray(held.sequences)[0, 2] != EOT and np.asarray(held.sequences)[0, 3] == EOT


def test_greedy_stages_prepare_the_cache_and_give_the_same_result():
    table, max_length = _table(0), 9
    seq, logits, cache = _start(table, [0, 1], max_length)
    step = _fake_step(table)
    calls = []

    def prepare(c):
        calls.append(c.shape)
        return c

    one = greedy_search(step, seq, logits, cache, 2, _rules())
    staged = greedy_search(step, seq, logits, cache, 2, _rules(), stages=[CacheStage(4, prepare), CacheStage(9, prepare)])
    assert calls == [(2,), (2,)]
    for a, b in zip(one, staged):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sampling_is_reproducible_and_near_zero_temperature_is_greedy():
    table, max_length = _table(0), 12
    seq, logits, cache = _start(table, [0, 1, 0, 1], max_length)
    step = _fake_step(table)
    run = jax.jit(lambda t, key: greedy_search(step, seq, logits, cache, 2, _rules(), sample=True,
                                               temperature=t, rng=key).sequences)
    a, b = run(1.0, jax.random.PRNGKey(1)), run(1.0, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    draws = {tuple(np.asarray(run(1.0, jax.random.PRNGKey(i))).ravel()) for i in range(4)}
    assert len(draws) > 1  # sampling does sample
    greedy = greedy_search(step, seq, logits, cache, 2, _rules()).sequences
    np.testing.assert_array_equal(np.asarray(run(1e-7, jax.random.PRNGKey(5))), np.asarray(greedy))


def _hypotheses(table, first, max_length):
    """Every hypothesis beam search can finish, with its log-probability sum (log-softmax, then the rules)."""
    m = max_length - 2
    out = []
    for j in range(1, m + 1):
        for tokens in itertools.product(range(V), repeat=j):
            if any(t == EOT for t in tokens[:-1]) or (j < m and tokens[-1] != EOT):
                continue
            total, prev, last = 0.0, SOT, first
            for i, t in enumerate(tokens):
                total += _masked(_logprobs(table, prev, last), i)[t]
                prev, last = last, t
            if np.isfinite(total):
                out.append(([SOT, first] + list(tokens) + [EOT] * (m - j), total, j))
    return out


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_finds_the_brute_force_ranking(length_penalty):
    # 12 beams over 3 sampleable tokens and 4 steps keep every live prefix, so
    # the beam must return exactly the brute-force best 12.
    table, max_length, k = _table(3), 6, 12
    firsts = [0, 1]
    seq, logits, cache = _start(table, firsts, max_length)
    rep = lambda a: jnp.repeat(a, k, axis=0)  # noqa: E731
    result = jax.jit(lambda s, l, c: beam_search(_fake_step(table), s, l, c, 2, _rules(), k, length_penalty))(
        rep(seq), rep(logits), rep(cache)
    )
    best = best_hypothesis(result, 2, EOT, length_penalty)
    for row, first in enumerate(firsts):
        hyps = _hypotheses(table, first, max_length)
        ranked = sorted(hyps, key=lambda h: -h[1] / h[2] ** length_penalty)[:k]
        np.testing.assert_array_equal(np.asarray(result.sequences[row]), np.array([h[0] for h in ranked]))
        np.testing.assert_allclose(np.asarray(result.scores[row]), [h[1] / h[2] ** length_penalty for h in ranked],
                                   rtol=1e-5)
        assert np.asarray(result.is_finished[row]).all()
        top_seq, top_sum, top_len = ranked[0]
        n_text = top_len - (top_seq[1 + top_len] == EOT)
        assert int(best.num_tokens[row]) == n_text
        if top_seq[1 + top_len] == EOT:  # the recovered sum is exact when the hypothesis ended with end-of-text
            np.testing.assert_allclose(float(best.sum_logprob[row]), top_sum, rtol=1e-5)


def test_length_penalty_changes_the_winner():
    table, max_length = _table(3), 6
    winners = set()
    for lp in (0.0, 2.0):
        hyps = _hypotheses(table, 0, max_length)
        winners.add(tuple(max(hyps, key=lambda h: h[1] / h[2] ** lp)[0]))
    assert len(winners) == 2  # so the parametrised ranking test above can tell penalties apart


def test_one_beam_gives_the_greedy_tokens():
    table, max_length = _table(0), 10
    seq, logits, cache = _start(table, [0, 1, 1], max_length)
    step = _fake_step(table)
    greedy = greedy_search(step, seq, logits, cache, 2, _rules())
    beam = best_hypothesis(beam_search(step, seq, logits, cache, 2, _rules(), 1), 2, EOT)
    np.testing.assert_array_equal(np.asarray(beam.sequences), np.asarray(greedy.sequences))
    np.testing.assert_array_equal(np.asarray(beam.num_tokens), np.asarray(greedy.num_tokens))
