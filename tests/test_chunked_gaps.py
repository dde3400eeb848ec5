"""The chunked long-form mode on speech after long silences (issue 19): no lost words, segments on the speech.

On main, ``long_form="chunked"`` dropped "And so my fellow Americans ask" of an utterance that followed 15 s of
silence, started segments 20 s and 6 s before the speech, and lost the end of a sentence that ends a one-window
input. Whisper puts a window's first timestamp near the window's start whatever silence precedes the speech; the
stitcher trusted the resulting token times and cut the words it placed before a seam. The fast tests replay the
rows ``base`` decoded on main; the model tests use ``tiny.en`` (it reproduces every defect ``base`` showed), and
the same cases with ``base`` are marked slow::

    .venv/bin/python -m pytest -q tests/test_chunked_gaps.py            # fast + tiny.en
    .venv/bin/python -m pytest -q -m slow tests/test_chunked_gaps.py    # base
"""

import os

import numpy as np
import pytest

from tests._audio_helpers import ML_TOKENIZER, require
from tests._speech import normalize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(ROOT, "samples", "jfk.flac")
JFK_TEXT = open(os.path.join(ROOT, "samples", "jfk.txt"), encoding="utf-8").read().strip()
SR = 16000
EOT, TS = 50257, 50364  # multilingual layout: <|endoftext|>, <|0.00|>
# jfk.flac's speech: the first 10 ms frame above a tenth of the loud level is at 0.32 s (measured by
# test_jfk_speech_starts_where_the_tests_assume); "country" ends at about 10.3 s.
JFK_SPEECH = (0.32, 10.3)
START_TOLERANCE_S = 1.0

# The rows ``base`` decoded on main (commit fb05745) for the gap audio (after the forced prefix, cut at
# end-of-text), windows [0, 30), [20, 50), [40, 67) s.
BASE_GAP_ROWS = [
    [50364, 400, 370, 452, 7177, 6280, 1029, 406, 437, 428, 1941, 393, 360, 337, 291, 11, 1029, 437, 291, 51814,
     51814],
    [50364, 400, 370, 452, 7177, 6280, 1029, 406, 437, 428, 1941, 393, 360, 337, 291, 11, 1029, 437, 291, 393, 360,
     337, 428, 1941, 13, 50914, 51664],
    [50364, 400, 370, 452, 7177, 6280, 2351, 406, 437, 428, 1941, 393, 360, 337, 291, 11, 1029, 437, 291, 393, 51132,
     51132, 360, 337, 428, 1941, 13, 51186],
]
# ... for 30 s of silence + jfk (41 s): window [0, 30) is digital silence (not decoded), then [20, 41).
BASE_LATE_ROW = [50364, 400, 370, 452, 7177, 6280, 11, 1029, 406, 437, 428, 1941, 393, 360, 337, 291, 11, 1029, 437,
                 291, 393, 51332, 51332, 360, 337, 428, 1941, 13, 51384]


@pytest.fixture(scope="module")
def jfk():
    from whisper_t5x.audio.loading import load_audio

    return load_audio(JFK)


@pytest.fixture(scope="module")
def tokenizer():
    from whisper_t5x.text.tokenizer import WhisperTokenizer

    return WhisperTokenizer.from_file(require(ML_TOKENIZER))


def _quiet(seconds, noise_rms=0.0, seed=0):
    n = int(round(seconds * SR))
    if not noise_rms:
        return np.zeros(n, np.float32)
    return (np.random.default_rng(seed).standard_normal(n) * noise_rms).astype(np.float32)


def gap_audio(jfk, noise_rms=0.0):
    """20 s quiet + jfk + 15 s quiet + jfk + 10 s quiet; returns the audio and where each jfk starts (s)."""
    first = 20.0
    second = first + jfk.size / SR + 15.0
    audio = np.concatenate([_quiet(20, noise_rms, 1), jfk, _quiet(15, noise_rms, 2), jfk, _quiet(10, noise_rms, 3)])
    return audio, (first, second)


def _windows(seconds):
    from whisper_t5x.longform.windows import split_windows, window_params

    chunk, stride = window_params(30.0)
    return split_windows(int(round(seconds * SR)), chunk, stride)


def _texts(tokenizer, rows):
    from whisper_t5x.longform.segments import text_tokens

    return [normalize(tokenizer.decode(text_tokens(r, EOT))) for r in rows]


# ---------------------------------------------------------------------------------------------- no model
def test_jfk_speech_starts_where_the_tests_assume(jfk):
    from whisper_t5x.longform.loudness import frame_rms

    rms = frame_rms(jfk, SR // 100)
    loud = np.flatnonzero(rms >= 0.1 * np.percentile(rms, 95))
    assert loud[0] * 0.01 == pytest.approx(JFK_SPEECH[0], abs=0.02)


@pytest.mark.parametrize("with_loudness", [False, True])
def test_replayed_gap_rows_keep_both_utterances(jfk, tokenizer, with_loudness):
    """base's rows on main: window 2 starts its first segment at 40.00 s although the speech starts at 46.3 s."""
    from whisper_t5x.longform.stitching import parse_window, stitch

    if with_loudness:
        from whisper_t5x.longform.loudness import Loudness
    audio, (first, second) = gap_audio(jfk)
    extra = {"loudness": Loudness.of(audio)} if with_loudness else {}
    wins = _windows(audio.size / SR)
    assert [(w.start / SR, w.end / SR) for w in wins] == [(0, 30), (20, 50), (40, 67)]
    trs = [parse_window(r, w, EOT, TS, True, language="en", **extra) for r, w in zip(BASE_GAP_ROWS, wins)]
    out = stitch(trs, tokenizer.decode, audio.size / SR, True)
    texts = _texts(tokenizer, BASE_GAP_ROWS)
    # Window 1 has the whole first utterance and none of the second; window 2 the whole second.
    assert normalize(out.text) == texts[1] + texts[2]
    if with_loudness:  # window 2's tokens lie on its speech, after the seam at 45 s
        assert min(t.time for t in trs[2].tokens) >= second + JFK_SPEECH[0]


def test_replayed_row_after_a_quiet_window_keeps_its_first_words(tokenizer):
    from whisper_t5x.longform.stitching import WindowTranscript, parse_window, stitch

    quiet, late = _windows(41.0)
    trs = [WindowTranscript(quiet, [], None, False), parse_window(BASE_LATE_ROW, late, EOT, TS, True, language="en")]
    out = stitch(trs, tokenizer.decode, 41.0, True)
    assert normalize(out.text) == normalize(JFK_TEXT)


@pytest.mark.parametrize("noise_rms", [0.0, 1e-4])
def test_gap_audio_windows_start_shortly_before_the_speech(jfk, noise_rms):
    from whisper_t5x.longform.loudness import Loudness
    from whisper_t5x.longform.windows import LEAD_IN_S, skip_leading_quiet

    audio, (first, second) = gap_audio(jfk, noise_rms)
    wins = _windows(audio.size / SR)
    moved = skip_leading_quiet(wins, Loudness.of(audio))
    # [0, 30) is left out: its speech starts at 20.3 s, in [20, 50), which starts 0.3 s before it and is kept;
    # [40, 67) starts 6.3 s before the second jfk: moved to just before it.
    assert [(w.index, w.end) for w in moved] == [(0, wins[1].end), (1, wins[2].end)]
    assert moved[0].start / SR == 20.0 == first
    assert moved[1].start / SR == pytest.approx(second + JFK_SPEECH[0] - LEAD_IN_S, abs=0.15)
    assert [w.owned for w in moved] == [(wins[1].start, wins[1].owned[1]), (moved[1].start, wins[2].owned[1])]


def test_a_one_window_input_that_stops_early_gets_a_continuation(jfk):
    """The model ends with a lone timestamp at 19 s of a 30 s input whose rest is speech: decode it again."""
    from whisper_t5x.longform.chunked import continuation_windows
    from whisper_t5x.longform.loudness import Loudness
    from whisper_t5x.longform.stitching import parse_window

    audio = np.concatenate([jfk, _quiet(8), jfk])  # 30 s
    (w,) = _windows(audio.size / SR)

    def transcript(stop_s):
        row = [TS, 400, 370, TS + int(round(11.0 / 0.02)), TS + int(round(stop_s / 0.02))]
        return parse_window(row, w, EOT, TS, True, language="en")

    tr = transcript(19.0)
    [(cont, clip)] = continuation_windows({0: [tr]}, {0: audio}, 30 * SR, {0: Loudness.of(audio)})
    assert tr.content_end == pytest.approx(19.0)
    assert (cont.start, cont.end) == (int(19.0 * SR), audio.size) and clip.size == cont.end - cont.start
    assert continuation_windows({0: [transcript(29.5)]}, {0: audio}, 30 * SR) == []  # under a second: no
    # Stopped at the end of the first jfk (11 s): the continuation skips the 8 s pause, to just before 19.32 s.
    from whisper_t5x.longform.windows import LEAD_IN_S

    stopped = parse_window([TS, 400, 370, TS + int(round(11.0 / 0.02))], w, EOT, TS, True, language="en")
    [(cont, clip)] = continuation_windows({0: [stopped]}, {0: audio}, 30 * SR, {0: Loudness.of(audio)})
    assert cont.start / SR == pytest.approx(19.0 + JFK_SPEECH[0] - LEAD_IN_S, abs=0.15)
    assert (cont.index, cont.end, clip.size) == (-1, audio.size, cont.end - cont.start)
    silent_rest = audio.copy()
    silent_rest[19 * SR:] = 0
    assert continuation_windows({0: [transcript(19.0)]}, {0: silent_rest}, 30 * SR) == []  # a real pause


# ---------------------------------------------------------------------------------------------- real model
def _pipe(name):
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    try:
        return FlaxWhisperPipeline(name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"checkpoint {name} not available: {e}")


CASES = ("gap", "gap_noise", "end_29.99", "end_30.0", "pause_30")


def _inputs(jfk):
    """name -> (audio, where each jfk starts in it)."""
    out = {"gap": gap_audio(jfk), "gap_noise": gap_audio(jfk, 1e-4)}
    for seconds in (29.99, 30.0):  # jfk at the end of a one-window input
        lead = seconds - jfk.size / SR
        out[f"end_{seconds}"] = (np.concatenate([_quiet(lead), jfk]), (lead,))
    # One window: jfk, 8 s of silence, jfk (both models dropped the second on main).
    out["pause_30"] = (np.concatenate([jfk, _quiet(8), jfk]), (0.0, 19.0))
    return out


def _transcribe_all(pipe, jfk):
    """Every case in one call (windows of all inputs share batches), and the gap audio without timestamps."""
    inputs = _inputs(jfk)
    results = pipe.transcribe([inputs[k][0] for k in CASES], language="en", return_timestamps=True,
                              long_form="chunked")
    untimed = pipe.transcribe(inputs["gap"][0], language="en", return_timestamps=False, long_form="chunked")
    return inputs, dict(zip(CASES, results)), untimed


def check_case(name, inputs, out):
    audio, starts = inputs[name]
    assert normalize(out.text) == normalize(JFK_TEXT) * len(starts), (name, out.text)
    segs = out.segments
    assert segs and all(a.end <= b.start for a, b in zip(segs, segs[1:]))
    # Every segment starts inside an utterance (or within a second before it), never in a silence, and each
    # utterance's first segment starts within a second of its speech.
    spans = [(s + JFK_SPEECH[0], s + 11.0) for s in starts]
    where = []
    for seg in segs:
        inside = [k for k, (lo, hi) in enumerate(spans) if lo - START_TOLERANCE_S <= seg.start <= hi]
        assert inside, (name, seg.start, seg.text, [(s.start, s.end, s.text) for s in segs])
        where.append(inside[0])
    for k, (lo, _) in enumerate(spans):
        firsts = [seg.start for seg, w in zip(segs, where) if w == k]
        assert firsts and abs(firsts[0] - lo) <= START_TOLERANCE_S, (name, k, [(s.start, s.end, s.text) for s in segs])


@pytest.fixture(scope="module")
def tiny_results(jfk):
    return _transcribe_all(_pipe("tiny.en"), jfk)


@pytest.mark.parametrize("name", CASES)
def test_tiny_chunked_keeps_every_word_with_segments_on_the_speech(tiny_results, name):
    inputs, results, _ = tiny_results
    check_case(name, inputs, results[name])


def test_tiny_chunked_gap_audio_without_timestamps_keeps_every_word(tiny_results):
    inputs, results, untimed = tiny_results
    assert normalize(untimed.text) == normalize(JFK_TEXT) * 2
    assert untimed.text == results["gap"].text  # timestamp tokens are decoded either way


@pytest.fixture(scope="module")
def base_results(jfk):
    return _transcribe_all(_pipe("base"), jfk)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_base_chunked_keeps_every_word_with_segments_on_the_speech(base_results, name):
    inputs, results, _ = base_results
    check_case(name, inputs, results[name])


@pytest.mark.slow
def test_base_chunked_gap_audio_without_timestamps_keeps_every_word(base_results):
    inputs, results, untimed = base_results
    assert normalize(untimed.text) == normalize(JFK_TEXT) * 2
