"""Speech rows: at most 30 s, no overlap, every speech sample covered, row time -> original time."""

import numpy as np
import pytest

from whisper_t5x.audio.constants import N_SAMPLES, SAMPLE_RATE
from whisper_t5x.longform.speech_rows import SpeechRowsError, rows_for_inputs, speech_rows

S = SAMPLE_RATE


def seg(a, b):
    return {"start": int(a * S), "end": int(b * S)}


def random_timestamps(rng, total):
    """Sorted, disjoint segments of 0.1-40 s with gaps of 0-20 s (some touching)."""
    out, at = [], int(rng.integers(0, 5 * S))
    while True:
        length = int(rng.uniform(0.1, 40 if rng.random() < 0.1 else 12) * S)
        if at + length > total:
            return out
        out.append({"start": at, "end": at + length})
        at += length + (0 if rng.random() < 0.15 else int(rng.uniform(0, 20) * S))


def covered(rows):
    mask = np.zeros(max([r.end for r in rows], default=0), bool)
    for row in rows:
        for p in row.pieces:
            assert not mask[p.start:p.end].any(), "a sample is decoded twice"
            mask[p.start:p.end] = True
    return mask


def test_glue_packs_segments_back_to_back():
    stamps = [seg(1, 9), seg(12, 20), seg(40, 55), seg(56, 60)]
    rows = speech_rows(stamps, "glue")
    assert [[(p.start / S, p.end / S, p.offset / S) for p in r.pieces] for r in rows] == [
        [(1, 9, 0), (12, 20, 8)],  # 16 s; adding 15 s would pass 30 s
        [(40, 55, 0), (56, 60, 15)],
    ]
    first = rows[0]
    assert first.num_samples == 16 * S and (first.start, first.end) == (1 * S, 20 * S)
    assert first.original_time(0.0) == 1.0
    assert first.original_time(7.5) == 8.5
    assert first.original_time(8.0) == 12.0  # the junction: start of the later piece ...
    assert first.original_time(8.0, is_end=True) == 9.0  # ... or end of the earlier one
    assert first.original_time(10.0) == 14.0
    assert first.original_time(16.0) == 20.0 and first.original_time(99.0) == 20.0  # clamped
    np.testing.assert_allclose(first.original_time(np.array([0.0, 8.0, 16.0])), [1.0, 12.0, 20.0])


def test_span_keeps_inner_silences():
    stamps = [seg(1, 9), seg(12, 20), seg(25, 32), seg(40, 50)]  # 1-32 s would be 31 s
    rows = speech_rows(stamps, "span")
    assert [(r.start / S, r.end / S, len(r.pieces)) for r in rows] == [(1, 20, 1), (25, 50, 1)]
    assert rows[0].original_time(11.0) == 12.0 and rows[1].original_time(0.0) == 25.0


def test_long_segments_are_cut_into_equal_rows():
    for strategy in ("glue", "span"):
        rows = speech_rows([seg(0, 70)], strategy)
        assert [r.num_samples for r in rows] == [70 * S // 3, 70 * S // 3, 70 * S - 2 * (70 * S // 3)]
        assert rows[0].end == rows[1].start  # touching, not overlapping


def test_overlapping_unsorted_and_out_of_range_timestamps_are_normalised():
    stamps = [seg(10, 12), seg(1, 5), seg(4, 8), {"start": 20 * S, "end": 99 * S}]
    rows = speech_rows(stamps, "glue", num_samples=25 * S)
    assert [(p.start / S, p.end / S) for r in rows for p in r.pieces] == [(1, 8), (10, 12), (20, 25)]


def test_touching_segments_become_one_piece():
    rows = speech_rows([seg(1, 3), seg(3, 6)], "glue")
    assert len(rows) == 1 and [(p.start, p.end) for p in rows[0].pieces] == [(1 * S, 6 * S)]


def test_no_speech_no_rows():
    assert speech_rows([], "glue") == [] and speech_rows([], "span") == []
    assert rows_for_inputs([[], [seg(1, 2)], []], "span")[0].input_index == 1


@pytest.mark.parametrize("strategy", ["glue", "span"])
@pytest.mark.parametrize("seed", range(8))
def test_random_timestamps_invariants(strategy, seed):
    rng = np.random.default_rng(seed)
    total = int(rng.uniform(30, 900) * S)
    stamps = random_timestamps(rng, total)
    audio = np.arange(total, dtype=np.float64)  # each sample's value is its index
    rows = speech_rows(stamps, strategy, input_index=3, num_samples=total)
    assert all(r.input_index == 3 for r in rows) and [r.index for r in rows] == list(range(len(rows)))
    assert all(0 < r.num_samples <= N_SAMPLES for r in rows)
    speech = np.zeros(total, bool)
    for ts in stamps:
        speech[ts["start"]:ts["end"]] = True
    mask = covered(rows)
    mask = np.pad(mask, (0, total - mask.size))
    assert not (speech & ~mask).any(), "a speech sample is in no row"
    if strategy == "glue":
        assert np.array_equal(mask, speech), "glue keeps only speech"
    else:
        assert all(len(r.pieces) == 1 for r in rows)
    assert all(a.end <= b.start for a, b in zip(rows, rows[1:])), "rows in time order"
    for row in rows:
        samples = row.slice_audio(audio)
        assert samples.size == row.num_samples
        x = np.sort(rng.integers(0, row.num_samples, 200))
        np.testing.assert_array_equal(row.original_sample(x), samples[x])  # the map finds each sample
        grid = np.linspace(-1, row.num_samples / S + 1, 500)
        for is_end in (False, True):
            mapped = row.original_time(grid, is_end=is_end)
            assert np.all(np.diff(mapped) >= 0), "monotonic"
            assert mapped[0] == row.start / S and mapped[-1] == row.end / S
    if strategy == "glue":  # greedy: the next row's first segment would not have fitted
        for a, b in zip(rows, rows[1:]):
            assert a.num_samples + b.pieces[0].length > N_SAMPLES or a.end == b.start


def test_rows_for_inputs_indexes_inputs():
    rows = rows_for_inputs([[seg(0, 1)], [seg(0, 40)]], "glue", num_samples=[S, 40 * S])
    assert [(r.input_index, r.index) for r in rows] == [(0, 0), (1, 0), (1, 1)]


@pytest.mark.parametrize("stamps, kwargs, match", [
    ([{"start": 5, "end": 2}], {}, "start <= end"),
    ([{"start": -1, "end": 2}], {}, "start <= end"),
    ([{"begin": 0}], {}, "'start'"),
    ([], {"strategy": "overlap"}, "unknown row strategy"),
    ([], {"max_samples": 0}, "max_samples"),
])
def test_bad_input(stamps, kwargs, match):
    with pytest.raises(SpeechRowsError, match=match):
        speech_rows(stamps, **kwargs)
