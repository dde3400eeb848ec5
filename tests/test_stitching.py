"""Stitching of overlapping window transcripts, on synthetic token sequences."""

import random

import pytest

from whisper_t5x.longform.stitching import Seam, find_seam, majority_language, parse_window, stitch
from whisper_t5x.longform.windows import split_windows, window_params
from whisper_t5x.results import as_pipeline_dict

SR = 16000
EOT, TS = 50257, 50364  # multilingual layout: <|endoftext|>, <|0.00|>
CHUNK, STRIDE = window_params(30.0)


def _view(result):
    """A stitched Transcription as the dict the assertions read: text, language, chunks with statistics."""
    chunks = [dict(timestamp=(seg.start, seg.end), text=seg.text, **seg.statistics()) for seg in result.segments]
    return {"text": result.text, "chunks": chunks, "language": result.language}


def decode(ids):
    return "".join(f" w{t}" for t in ids)


def make_speech(duration_s, seed=0, vocab=None, rate=2.5):
    """Words (token, time) spread over ``duration_s``; ``vocab`` small -> many repeated tokens."""
    rng = random.Random(seed)
    words, t = [], 0.3
    while t < duration_s - 0.3:
        tok = rng.randrange(vocab) + 1 if vocab else len(words) + 1000
        words.append((tok, round(t, 2)))
        t += rng.uniform(0.6, 1.4) / rate
    return words


def window_output(words, w, timestamps, seg_words=5, garble_edges=False, rng=None):
    """What a perfect model would emit for window ``w``: its words, timestamps relative to its start."""
    ws, we = w.start / SR, w.end / SR
    inside = [(tok, t) for tok, t in words if ws <= t < we]
    if garble_edges and inside:
        # Words cut by the window edges are misheard.
        if w.start > 0:
            inside[0] = (inside[0][0] + 7000, inside[0][1])
        if w.end < w.num_samples:
            inside[-1] = (inside[-1][0] + 7000, inside[-1][1])
    seq = [50258, 50259, 50359]  # sot, <|en|>, <|transcribe|> (skipped by the parser)
    if not timestamps:
        return seq + [50363] + [tok for tok, _ in inside] + [EOT, EOT]
    for i in range(0, len(inside), seg_words):
        seg = inside[i:i + seg_words]
        start = max(0.0, seg[0][1] - ws - 0.1)
        end = min(we - ws, seg[-1][1] - ws + 0.3)
        seq += [TS + int(round(start / 0.02))] + [tok for tok, _ in seg] + [TS + int(round(end / 0.02))]
    return seq + [EOT, EOT]


def run(words, duration_s, timestamps, **kw):
    n = int(duration_s * SR)
    wins = split_windows(n, CHUNK, STRIDE)
    trs = [parse_window(window_output(words, w, timestamps, **kw), w, EOT, TS, timestamps, language="en")
           for w in wins]
    return _view(stitch(trs, decode, n / SR, timestamps)), wins


def check_chunks(out, duration):
    prev = 0.0
    for c in out["chunks"]:
        s, e = c["timestamp"]
        assert prev <= s <= e <= duration + 1e-9, out["chunks"]
        prev = e
    assert "".join(c["text"] for c in out["chunks"]) == out["text"]


@pytest.mark.parametrize("timestamps", [False, True])
@pytest.mark.parametrize("duration", [10.0, 30.0, 31.0, 75.0, 200.0])
def test_unique_words_exact(timestamps, duration):
    words = make_speech(duration, seed=int(duration))
    out, wins = run(words, duration, timestamps)
    assert out["text"] == decode([t for t, _ in words])
    assert out["language"] == "en"
    check_chunks(out, duration)


@pytest.mark.parametrize("timestamps", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_repetitive_vocabulary_exact(timestamps, seed):
    # 12 distinct tokens: common runs of 1-2 tokens appear everywhere by chance.
    words = make_speech(150.0, seed=seed, vocab=12)
    out, _ = run(words, 150.0, timestamps)
    assert out["text"] == decode([t for t, _ in words])
    check_chunks(out, 150.0)


@pytest.mark.parametrize("timestamps", [False, True])
def test_garbled_window_edges(timestamps):
    """Words cut by a window's edge are misheard there but heard whole by the neighbour: no trace of the errors."""
    words = make_speech(120.0, seed=5)
    out, _ = run(words, 120.0, timestamps, garble_edges=True)
    assert out["text"] == decode([t for t, _ in words])


def test_timestamps_absolute_and_grouped():
    words = make_speech(80.0, seed=3)
    out, _ = run(words, 80.0, True)
    check_chunks(out, 80.0)
    # Each chunk's first word is at about its start time (absolute, not window-relative).
    times = dict(words)
    for c in out["chunks"]:
        first = int(c["text"].split()[0][1:])
        assert abs(times[first] - c["timestamp"][0]) < 0.5
    # A chunk is never longer than two 5-word segments joined at a seam.
    assert max(len(c["text"].split()) for c in out["chunks"]) <= 10


def test_silent_overlap_uses_time_cut():
    """Speech with a gap around each window boundary: no common text, the time rule splits it."""
    words = [(tok, t) for tok, t in make_speech(70.0, seed=1) if not (17 < t < 28 or 37 < t < 48)]
    out, _ = run(words, 70.0, True)
    assert out["text"] == decode([t for t, _ in words])


def test_no_speech():
    out, wins = run([], 65.0, True)
    assert out == {"text": "", "chunks": [], "language": "en"}
    assert _view(stitch([], decode, 0.0, True)) == {"text": "", "chunks": [], "language": None}


def test_parse_window_clips_and_offsets():
    (w,) = split_windows(SR * 10, CHUNK, STRIDE)
    tr = parse_window([TS + 50, 1, 2, TS + 100, TS + 1000, 3, EOT, 4], w, EOT, TS, True)
    assert [t.token for t in tr.tokens] == [1, 2, 3]
    assert tr.tokens[0].seg_start == pytest.approx(1.0) and tr.tokens[0].seg_end == pytest.approx(2.0)
    # <|20.00|> is past the 10 s audio: clipped; the unclosed last segment ends at the window's end.
    assert tr.tokens[2].seg_start == pytest.approx(10.0) and tr.tokens[2].seg_end == pytest.approx(10.0)
    wins = split_windows(SR * 60, CHUNK, STRIDE)
    tr = parse_window([TS + 50, 1, TS + 100], wins[1], EOT, TS, True)
    assert tr.tokens[0].seg_start == pytest.approx(20.0 + 1.0)


def test_seam_prefers_text_anchor():
    wins = split_windows(SR * 50, CHUNK, STRIDE)
    a = parse_window([1, 2, 3, 4, 5, 6, 7, 8, 9], wins[0], EOT, TS, False)
    b = parse_window([6, 7, 8, 9, 10, 11], wins[1], EOT, TS, False)
    seam = find_seam(a, b)
    assert seam.anchored and seam.match_length == 4
    assert a.ids[:seam.cut_left] + b.ids[seam.cut_right:] == list(range(1, 12))


def test_majority_language():
    wins = split_windows(SR * 100, CHUNK, STRIDE)
    trs = [parse_window([1, 2], w, EOT, TS, False, language=lang) for w, lang in zip(wins, ["es", "en", "es", "en"])]
    assert majority_language(trs, [1, 1, 1, 1]) == "es"  # tie -> earliest
    assert majority_language(trs, [0, 1, 0, 1]) == "en"
    assert majority_language(trs, [0, 0, 0, 0]) == "es"


def test_segment_chunks_carry_window_statistics():
    """Each segment chunk gets its window's avg_logprob / no_speech_prob / temperature; joined ones, a mix."""
    import dataclasses

    duration = 75.0
    words = make_speech(duration, seed=5)
    n = int(duration * SR)
    wins = split_windows(n, CHUNK, STRIDE)
    stats = [(-0.1 * (k + 1), 0.01 * (k + 1), [0.0, 0.2, 0.0][k % 3]) for k in range(len(wins))]
    trs = [dataclasses.replace(parse_window(window_output(words, w, True), w, EOT, TS, True),
                               avg_logprob=lp, no_speech_prob=ns, temperature=t)
           for w, (lp, ns, t) in zip(wins, stats)]
    out = _view(stitch(trs, decode, duration, True))
    check_chunks(out, duration)
    lps = {lp for lp, _, _ in stats}
    for c in out["chunks"]:
        assert {"timestamp", "text", "avg_logprob", "no_speech_prob", "temperature", "compression_ratio"} == set(c)
        assert c["compression_ratio"] > 1.0  # of the window's whole text
        assert min(lps) - 1e-9 <= c["avg_logprob"] <= max(lps) + 1e-9
        assert 0.0 < c["no_speech_prob"] <= 0.01 * len(wins) + 1e-9
        assert c["temperature"] in (0.0, 0.2)
    # The first chunk comes from the first window only; the last from the last window only.
    assert out["chunks"][0]["avg_logprob"] == pytest.approx(stats[0][0])
    assert out["chunks"][-1]["avg_logprob"] == pytest.approx(stats[-1][0])
    assert out["chunks"][-1]["no_speech_prob"] == pytest.approx(stats[-1][1])
    # Every window contributes some chunk's statistics.
    seen = {round(c["avg_logprob"], 6) for c in out["chunks"]}
    assert any(abs(s - lp) < 1e-6 for s in seen for lp in lps - {stats[0][0], stats[-1][0]})
    # Without statistics (not decoded): None; without timestamps: window chunks have no extra keys.
    plain = _view(stitch([parse_window(window_output(words, w, True), w, EOT, TS, True) for w in wins], decode, duration,
                   True))
    assert all(c["avg_logprob"] is None and c["temperature"] is None for c in plain["chunks"])
    windows = stitch(trs, decode, duration, True, chunks="windows")
    # One segment per window; the seed's dict without timestamps carries no statistics.
    assert all(set(c) == {"timestamp", "text"} for c in as_pipeline_dict(windows)["chunks"])


# ----------------------------------------------------------------- pause-aligned windows
def _utterances(n, vocab=None, seed=0):
    """``n`` utterances of 4 words in [2.5u + 0.25, 2.5u + 2.25) s; pauses centred on multiples of 2.5 s."""
    rng = random.Random(seed)
    return [(rng.randrange(vocab) + 1 if vocab else 1000 + 4 * u + k, 2.5 * u + 0.25 + 0.5 * k)
            for u in range(n) for k in range(4)]


def _pause_layout(bounds, overlaps, total_s):
    """Windows ``[bounds[i], bounds[i+1] + overlaps[i])`` (seconds): each ends in a pause and the
    next starts ``overlaps[i]`` earlier, in the pause before the last utterance."""
    from whisper_t5x.longform.windows import Window

    n = int(total_s * SR)
    wins = []
    for i in range(len(bounds) - 1):
        last = i == len(bounds) - 2
        end = n if last else int((bounds[i + 1] + overlaps[i]) * SR)
        wins.append(Window(0, i, int(bounds[i] * SR), end, 0, 0 if last else end - int(bounds[i + 1] * SR), n))
    return wins


@pytest.mark.parametrize("vocab", [None, 6], ids=["unique", "repetitive"])
@pytest.mark.parametrize("drop_last", [False, True], ids=["complete", "left-drops-its-last-utterance"])
def test_pause_windows_overlapping_by_one_utterance_exact(vocab, drop_last):
    # The pipeline cuts at pauses only when it decodes with timestamps.
    timestamps = True
    words = _utterances(24, vocab)
    wins = _pause_layout([0.0, 22.5, 45.0, 60.0], [2.5, 2.5], 60.0)
    trs = []
    for w in wins:
        ws = words
        if drop_last and not w.is_last:  # Whisper often leaves a window's final utterance out
            ws = [(tok, t) for tok, t in words if t < w.end / SR - 2.5]
        trs.append(parse_window(window_output(ws, w, timestamps), w, EOT, TS, timestamps))
    out = _view(stitch(trs, decode, 60.0, timestamps))
    assert out["text"] == decode([tok for tok, _ in words])
    check_chunks(out, 60.0)


@pytest.mark.parametrize("timestamps", [False, True])
def test_abutting_pause_windows_keep_all_text_even_with_repeated_words(timestamps):
    words = _utterances(24, vocab=3)  # three tokens only: text anchors would be everywhere
    wins = _pause_layout([0.0, 25.0, 50.0, 60.0], [0.0, 0.0], 60.0)
    trs = [parse_window(window_output(words, w, timestamps), w, EOT, TS, timestamps) for w in wins]
    for a, b in zip(trs, trs[1:]):
        assert find_seam(a, b) == Seam(len(a.tokens), 0, False)
    assert stitch(trs, decode, 60.0, timestamps).text == decode([tok for tok, _ in words])


# ----------------------------------------------------------------- speech after a long silence (issue 19)
def _loudness(spans_s, duration_s):
    """A Loudness that is loud exactly in ``spans_s`` (seconds)."""
    import numpy as np

    from whisper_t5x.longform.loudness import Loudness

    t = (np.arange(int(duration_s * 100)) + 0.5) / 100
    return Loudness(np.any([(t >= a) & (t < b) for a, b in spans_s], axis=0), SR // 100)


def _ts(seconds):
    return TS + int(round(seconds / 0.02))


# Utterance A (tokens 1-10) at 20.3-31 s, utterance B (11-20) at 46.3-57 s, of 67 s; windows [0,30) [20,50) [40,67).
GAP_ROWS = [
    [_ts(0.0)] + list(range(1, 9)) + [_ts(29.0), _ts(29.0)],  # A (cut by the window's end) said to start at 0 s
    [_ts(0.3)] + list(range(1, 11)) + [_ts(11.0), _ts(26.0)],  # all of A, then B's start is left for later
    # B with its first timestamp at the window's start although the speech starts 6.3 s in (what base did on main).
    [_ts(0.0)] + list(range(11, 21)) + [_ts(17.0)],
]


@pytest.mark.parametrize("with_loudness", [False, True])
def test_speech_after_a_long_silence_is_kept_when_its_window_starts_it_early(with_loudness):
    wins = split_windows(67 * SR, CHUNK, STRIDE)
    extra = {"loudness": _loudness([(20.3, 31.0), (46.3, 57.0)], 67.0)} if with_loudness else {}
    trs = [parse_window(r, w, EOT, TS, True, language="en", **extra) for r, w in zip(GAP_ROWS, wins)]
    out = stitch(trs, decode, 67.0, True)
    assert out.text == decode(list(range(1, 21)))
    if with_loudness:
        assert [t.time for t in trs[2].tokens][0] >= 46.3  # B's tokens lie on its speech


def test_a_right_window_after_a_quiet_window_keeps_all_its_text():
    from whisper_t5x.longform.stitching import WindowTranscript

    quiet, late = split_windows(41 * SR, CHUNK, STRIDE)  # [0,30) digital silence (not decoded), [20,41)
    row = [_ts(0.0)] + list(range(1, 11)) + [_ts(20.4)]  # speech at 30.3-40.4, first timestamp 0.00
    out = stitch([WindowTranscript(quiet, [], None, False), parse_window(row, late, EOT, TS, True)], decode, 41.0, True)
    assert out.text == decode(list(range(1, 11)))


def test_a_segment_that_takes_in_a_pause_is_anchored_on_its_loud_frames():
    """The right window starts in the left's last words, whose segment runs on over a pause to the next speech."""
    wins = split_windows(41 * SR, CHUNK, STRIDE)  # [0,30) [20,41)
    left = [_ts(12.0)] + list(range(1, 11)) + [_ts(22.0)]  # words 1-10 at 12-22 s
    right = [_ts(0.0), 8, 9, 10, _ts(10.52), _ts(10.52)] + list(range(11, 15)) + [_ts(20.48)]  # 8-10 really at 20-22
    loud = _loudness([(12.0, 22.0), (30.5, 40.5)], 41.0)
    trs = [parse_window(r, w, EOT, TS, True, loudness=loud) for r, w in zip([left, right], wins)]
    seam = find_seam(*trs)
    assert seam.anchored
    assert stitch(trs, decode, 41.0, True).text == decode(list(range(1, 15)))
