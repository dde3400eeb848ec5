"""Loudness: which 10 ms frames of an input are loud, relative to its own level (longform/loudness.py)."""

import numpy as np
import pytest

from whisper_t5x.longform.loudness import Loudness, frame_rms

SR = 16000


def _signal(pattern, level=0.3, seed=0):
    """Noise bursts (``+seconds``) at ``level`` and quiet (``-seconds``, zeros)."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, level, int(abs(s) * SR)) if s > 0 else np.zeros(int(-s * SR)) for s in pattern]
    return np.concatenate(parts).astype(np.float32)


def test_frame_rms_leaves_out_a_partial_frame():
    audio = np.ones(SR // 100 * 3 + 7, np.float32)
    np.testing.assert_allclose(frame_rms(audio, SR // 100), [1, 1, 1])


@pytest.mark.parametrize("level", [1e-3, 0.3])  # the recording's level does not matter
def test_loud_frames_are_relative_to_the_input(level):
    audio = _signal([-2, 1, -3, 2], level)
    loud = Loudness.of(audio)
    assert loud.first_loud(0, audio.size) == 2 * SR
    assert loud.first_loud(3 * SR, audio.size) == 6 * SR
    assert loud.first_loud(3 * SR, 6 * SR) is None
    # Quiet noise 40 dB under the speech is not loud.
    noisy = audio + _signal([8], level * 0.01, seed=1)
    assert Loudness.of(noisy).first_loud(0, noisy.size) == 2 * SR


def test_no_loud_level_no_loudness():
    assert Loudness.of(np.zeros(SR * 10, np.float32)) is None
    assert Loudness.of(np.zeros(0, np.float32)) is None


def test_spread_puts_tokens_on_the_loud_frames_of_the_span():
    audio = _signal([-6, 4, -10])  # loud 6-10 s
    loud = Loudness.of(audio)
    times = loud.spread(0.0, 12.0, 4)
    assert times == sorted(times) and all(6.0 <= t <= 10.0 for t in times)
    np.testing.assert_allclose(times, [6.5, 7.5, 8.5, 9.5], atol=0.02)
    assert loud.spread(11.0, 15.0, 3) is None  # nothing loud in the span: the caller interpolates
    assert loud.spread(5.0, 5.0, 3) is None and loud.spread(0.0, 12.0, 0) is None
