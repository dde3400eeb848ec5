"""Window geometry and batch packing (pure functions, no model)."""

import pytest

from whisper_t5x.windows import (
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
