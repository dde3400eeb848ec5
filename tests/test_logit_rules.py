"""Each decoding rule alone, on hand-made logits."""

import jax.numpy as jnp
import numpy as np

from whisper_t5x.decoding import logit_rules as R

TS, EOT, NO_TS = 20, 10, 19  # a toy vocabulary: text < 10, eot 10, specials, timestamps >= 20
V = 30


def _logits(batch=1, value=0.0):
    return jnp.full((batch, V), value, jnp.float32)


def _ts(logits, **state):
    defaults = dict(num_sampled=jnp.array([3]), last_token=jnp.array([1]), penultimate_token=jnp.array([2]),
                    last_timestamp=jnp.array([-1]))
    defaults.update({k: jnp.asarray(v) for k, v in state.items()})
    return np.asarray(R.timestamp_rules(logits, timestamp_begin=TS, eot=EOT, no_timestamps=NO_TS,
                                        max_initial_timestamp_index=2, **defaults))[0]


def test_suppress_tokens_forbids_only_those():
    out = np.asarray(R.suppress_tokens(_logits(), [3, 7]))[0]
    assert np.isneginf(out[[3, 7]]).all() and np.isfinite(np.delete(out, [3, 7])).all()


def test_suppress_at_begin_applies_per_row():
    out = np.asarray(R.suppress_at_begin(_logits(2), jnp.array([True, False]), [5, EOT]))
    assert np.isneginf(out[0, [5, EOT]]).all()
    assert np.isfinite(out[1]).all()


def test_language_probs_only_over_language_tokens():
    logits = _logits().at[0, 2].set(9.0).at[0, 12].set(1.0).at[0, 13].set(2.0)
    best, prob = R.language_probs(logits, [12, 13, 14])
    assert int(best[0]) == 13
    e = np.exp([1.0, 2.0, 0.0])
    assert abs(float(prob[0]) - e[1] / e.sum()) < 1e-6


def test_first_sampled_token_is_a_timestamp_not_after_max_initial():
    out = _ts(_logits(), num_sampled=[0])
    assert np.isneginf(out[:TS]).all()
    assert np.isfinite(out[TS:TS + 3]).all() and np.isneginf(out[TS + 3:]).all()


def test_no_timestamps_token_is_never_sampled():
    assert np.isneginf(_ts(_logits())[NO_TS])


def test_after_a_timestamp_pair_text_must_follow():
    out = _ts(_logits(), last_token=[TS + 4], penultimate_token=[TS + 3], last_timestamp=[4])
    assert np.isneginf(out[TS:]).all() and np.isfinite(out[:EOT]).all()


def test_after_a_single_timestamp_no_text_and_no_earlier_timestamp():
    logits = _logits().at[0, EOT].set(5.0)  # end-of-text outweighs the timestamps
    out = _ts(logits, last_token=[TS + 4], penultimate_token=[5], last_timestamp=[4])
    assert np.isneginf(out[:EOT]).all()
    assert np.isneginf(out[TS:TS + 4]).all()  # monotonic
    assert np.isfinite(out[TS + 4:]).all()  # the closing timestamp may equal the opening one
    assert np.isfinite(out[EOT])


def test_timestamps_strictly_increase_after_text():
    out = _ts(_logits(), last_token=[3], penultimate_token=[4], last_timestamp=[6])
    assert np.isneginf(out[TS:TS + 7]).all() and np.isfinite(out[TS + 7:]).all()


def test_timestamp_forced_when_their_total_probability_wins():
    # 10 timestamps at logit 0 sum to more mass than the best text token at logit 1.
    logits = _logits(value=-30.0).at[0, TS:].set(0.0).at[0, 4].set(1.0)
    out = _ts(logits)
    assert np.isneginf(out[:TS]).all()
    # ... and not when the text token dominates.
    logits = logits.at[0, 4].set(5.0)
    assert np.isfinite(_ts(logits)[4])


def test_force_token():
    out = np.asarray(R.force_token(_logits(2), jnp.array([3, 4])))
    assert out[0].argmax() == 3 and out[1].argmax() == 4 and np.isneginf(out[0, 4])
