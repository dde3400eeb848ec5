"""Window geometry and batch packing (pure functions, no model)."""

import numpy as np
import pytest

from whisper_t5x.longform.windows import (
    Batch,
    bucket_size,
    pack_batches,
    split_windows,
    window_params,
    windows_for_inputs,
)

SR = 16000
CHUNK, STRIDE = window_params(30.0)  # 480000, 80000
STEP = CHUNK - 2 * STRIDE


def check_tiling(windows, n):
    """Owned spans tile [0, n); every sample is inside some window; strides are 0 at the edges."""
    assert windows[0].start == 0 and windows[0].stride_left == 0
    assert windows[-1].end == n and windows[-1].stride_right == 0
    pos = 0
    for k, w in enumerate(windows):
        assert w.index == k and w.num_samples == n
        assert 0 < w.length <= CHUNK
        a, b = w.owned
        assert a == pos and b > a
        pos = b
        if k:
            assert w.start < windows[k - 1].end  # overlap
    assert pos == n
    # No redundant window: only the last one reaches the end.
    assert [w.is_last for w in windows] == [False] * (len(windows) - 1) + [True]


def test_defaults():
    assert (CHUNK, STRIDE) == (480000, 80000)
    assert window_params(15.0) == (240000, 40000)
    assert window_params(30.0, 0) == (480000, 0)


@pytest.mark.parametrize("kwargs", [dict(chunk_length_s=31), dict(chunk_length_s=0), dict(chunk_length_s=-1),
                                    dict(chunk_length_s=30, stride_length_s=15), dict(chunk_length_s=30, stride_length_s=-1),
                                    dict(chunk_length_s="x")])
def test_bad_params(kwargs):
    with pytest.raises(ValueError):
        window_params(**kwargs)


def test_empty_audio_has_no_windows():
    assert split_windows(0, CHUNK, STRIDE) == []


@pytest.mark.parametrize("n", [1, 100, 8000, SR - 1])
def test_shorter_than_one_second(n):
    (w,) = split_windows(n, CHUNK, STRIDE)
    assert (w.start, w.end, w.stride_left, w.stride_right) == (0, n, 0, 0)
    assert w.owned == (0, n)


def test_exactly_one_window():
    (w,) = split_windows(CHUNK, CHUNK, STRIDE)
    assert (w.start, w.end, w.stride_left, w.stride_right) == (0, CHUNK, 0, 0)


def test_one_sample_more_than_a_window():
    ws = split_windows(CHUNK + 1, CHUNK, STRIDE)
    assert [(w.start, w.end, w.stride_left, w.stride_right) for w in ws] == [
        (0, CHUNK, 0, STRIDE), (STEP, CHUNK + 1, STRIDE, 0)]
    check_tiling(ws, CHUNK + 1)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_exact_multiples_have_no_trailing_window(k):
    n = CHUNK + k * STEP  # the k-th extra window ends exactly at the end
    ws = split_windows(n, CHUNK, STRIDE)
    assert len(ws) == k + 1
    assert all(w.length == CHUNK for w in ws)
    check_tiling(ws, n)


@pytest.mark.parametrize("n", [SR * 31, SR * 60, SR * 125 + 7, SR * 3600])
def test_long_audio_tiling(n):
    ws = split_windows(n, CHUNK, STRIDE)
    check_tiling(ws, n)
    # The count is the minimum: ceil((n - chunk) / step) + 1.
    assert len(ws) == -(-(n - CHUNK) // STEP) + 1


def test_multiple_inputs_and_packing():
    lengths = [SR * 70, 0, SR // 2, SR * 30]
    ws = windows_for_inputs(lengths)
    assert [w.input_index for w in ws] == [0, 0, 0, 2, 3]
    batches = pack_batches(ws, 2)
    assert [b.size for b in batches] == [2, 2, 1]
    assert [w for b in batches for w in b.windows] == ws
    full = pack_batches(ws, 4, pad_last="full")
    assert [b.size for b in full] == [4, 4]
    assert full[-1].is_padding == [False, True, True, True] and full[-1].num_padding == 3
    assert pack_batches(ws, 8)[0].size == 8  # 5 windows -> bucket of 8
    assert pack_batches(ws, 16)[0].size == 8
    assert pack_batches(ws, 3, pad_last="none")[-1].size == 2
    assert pack_batches([], 4) == []


def test_bucket_size():
    assert [bucket_size(c, 8) for c in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [bucket_size(c, 12) for c in (3, 5, 9)] == [4, 8, 12]
    assert [bucket_size(c, 8, multiple_of=2) for c in (1, 3, 5)] == [2, 4, 8]
    with pytest.raises(ValueError):
        pack_batches([], 6, multiple_of=4)
    with pytest.raises(ValueError):
        pack_batches([], 0)


def test_batch_rows():
    ws = split_windows(SR * 50, CHUNK, STRIDE)
    b = Batch(tuple(ws) + (None,))
    assert b.windows == ws and b.size == 3 and b.num_padding == 1


# ----------------------------------------------------------------- pause-aligned windows
def _bursts(pattern, sr=16000, seed=0):
    """Noise bursts (``+seconds``) and silences (``-seconds``): a speech-like test signal."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, 0.3, int(abs(s) * sr)) if s > 0 else np.zeros(int(-s * sr)) for s in pattern]
    return np.concatenate(parts).astype(np.float32)


def _quiet(audio, sample, sr=16000):
    return float(np.abs(audio[max(0, sample - 80):sample + 80]).max()) == 0.0


def test_find_pauses_finds_the_silences_longer_than_the_minimum():
    from whisper_t5x.longform.windows import find_pauses

    audio = _bursts([2, -0.5, 2, -0.05, 2, -1.0, 1])  # the 50 ms gap is not a pause
    pauses = find_pauses(audio) / 16000
    assert pauses.shape == (2, 2)
    np.testing.assert_allclose(pauses, [[2.0, 2.5], [6.55, 7.55]], atol=0.011)
    assert find_pauses(np.zeros(16000, np.float32)).shape == (0, 2)  # digital silence: no speech, no pauses


def test_pause_windows_cut_in_pauses_overlap_by_the_last_utterance_and_tile_the_audio():
    from whisper_t5x.longform.windows import pause_windows

    # 3-4 s utterances separated by 0.4 s pauses, 95 s in all.
    pattern = []
    for k in range(24):
        pattern += [3.0 + (k % 3) * 0.5, -0.4]
    audio = _bursts(pattern)
    n = audio.shape[0]
    chunk, stride = 30 * 16000, 5 * 16000
    wins = pause_windows(audio, chunk, stride)
    assert wins[0].start == 0 and wins[-1].end == n
    assert len(wins) < len(split_windows(n, chunk, stride))  # fewer windows than the fixed layout
    for a, b in zip(wins, wins[1:]):
        assert a.length <= chunk
        assert _quiet(audio, a.end) and _quiet(audio, b.start)  # no utterance is cut
        assert b.stride_left == 0 and a.stride_right == a.end - b.start  # seam at b's start
        assert 0 < a.end - b.start <= 6 * 16000  # one utterance decoded twice
        assert a.owned[1] == b.owned[0]  # owned spans tile the audio
    assert wins[0].owned[0] == 0 and wins[-1].owned[1] == n


def test_pause_windows_fall_back_to_fixed_overlap_without_pauses():
    from whisper_t5x.longform.windows import pause_windows

    audio = _bursts([70.0])
    chunk, stride = 30 * 16000, 5 * 16000
    assert pause_windows(audio, chunk, stride) == split_windows(audio.shape[0], chunk, stride)
    assert pause_windows(np.zeros(0, np.float32), chunk, stride) == []
    short = _bursts([3, -1, 3])
    assert [(w.start, w.end) for w in pause_windows(short, chunk, stride)] == [(0, short.shape[0])]


# ----------------------------------------------------------------- windows that start in quiet
def test_windows_starting_in_long_quiet_start_shortly_before_the_speech():
    from whisper_t5x.longform.loudness import Loudness
    from whisper_t5x.longform.windows import LEAD_IN_S, skip_leading_quiet

    # Speech 0-22 s, quiet 22-46 s, speech 46-57 s, quiet to 67 s: windows [0,30) [20,50) [40,67).
    audio = _bursts([22, -24, 11, -10])
    wins = split_windows(audio.shape[0], CHUNK, STRIDE)
    moved = skip_leading_quiet(wins, Loudness.of(audio))
    assert moved[:2] == wins[:2]  # they start in speech
    assert moved[2].start == int((46 - LEAD_IN_S) * SR) and moved[2].end == wins[2].end
    # The owned spans keep their ends; window 2 now starts after its old owned start (45 s): it owns from there.
    assert [w.owned[1] for w in moved] == [w.owned[1] for w in wins]
    assert moved[2].stride_left == 0 and moved[2].owned[0] == moved[2].start


def test_skip_leading_quiet_keeps_windows_without_a_long_quiet_start_or_without_loud_frames():
    from whisper_t5x.longform.loudness import Loudness
    from whisper_t5x.longform.windows import LEAD_IN_S, MAX_LEADING_QUIET_S, skip_leading_quiet

    short_gap = _bursts([-MAX_LEADING_QUIET_S + 0.05, 5])  # 0.95 s of quiet first: left as is
    (w,) = split_windows(short_gap.shape[0], CHUNK, STRIDE)
    assert skip_leading_quiet([w], Loudness.of(short_gap)) == [w]
    long_gap = _bursts([-3, 5])
    (w,) = split_windows(long_gap.shape[0], CHUNK, STRIDE)
    (m,) = skip_leading_quiet([w], Loudness.of(long_gap))
    assert (m.start, m.end, m.owned) == (int((3 - LEAD_IN_S) * SR), w.end, (m.start, w.end))
    assert skip_leading_quiet([w], None) == [w]  # no loudness (digital silence): nothing known, nothing moved
    assert Loudness.of(np.zeros(SR * 40, np.float32)) is None
    # A window with no loud frame at all stays (the loader's silence threshold decides about it).
    audio = _bursts([5, -60])
    wins = split_windows(audio.shape[0], CHUNK, STRIDE)
    assert skip_leading_quiet(wins, Loudness.of(audio)) == wins


def test_a_window_whose_speech_starts_in_the_next_window_is_left_out():
    from whisper_t5x.longform.loudness import Loudness
    from whisper_t5x.longform.windows import LEAD_IN_S, skip_leading_quiet

    # Speech 0-5 s, quiet 5-40.8 s, speech to 60 s: windows [0,30) [20,50) [40,60); [20,50)'s speech starts in
    # [40,60), which starts less than a second before it (not moved itself).
    audio = _bursts([5, -35.8, 19.2])
    wins = split_windows(audio.shape[0], CHUNK, STRIDE)
    assert [(w.start, w.end) for w in wins] == [(0, 30 * SR), (20 * SR, 50 * SR), (40 * SR, 60 * SR)]
    moved = skip_leading_quiet(wins, Loudness.of(audio))
    assert [(w.index, w.start, w.end) for w in moved] == [(0, 0, 30 * SR), (1, 40 * SR, 60 * SR)]
    assert moved[1].owned == (40 * SR, 60 * SR)  # from its start: nobody owns the quiet [25, 40) s
    # Both starts stay in time order whenever the next window is moved too.
    audio = _bursts([5, -38, 17])  # speech from 43 s: [40,60) is moved to 42.6 s
    moved = skip_leading_quiet(split_windows(audio.shape[0], CHUNK, STRIDE), Loudness.of(audio))
    assert [(w.index, w.start) for w in moved] == [(0, 0), (1, int((43 - LEAD_IN_S) * SR))]
