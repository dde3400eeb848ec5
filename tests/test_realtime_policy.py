"""Streaming policies (whisper_t5x.longform.streaming) against a scripted fake decoder: no model, milliseconds.

The fake's audio carries its own clock (sample ``i`` holds the value ``i``), so
a row tells the fake which part of the item it covers; the fake answers the
script's words that end inside the row (times from the row start), a garbled
stub of a word still being spoken at the row's end, and a segment end after
each sentence.
"""

from __future__ import annotations

import numpy as np
import pytest

from whisper_t5x.longform import streaming as st

SR = 16000
SCRIPT = [(" The", 0.2, 0.5), (" quick", 0.5, 0.9), (" brown", 0.9, 1.3), (" fox.", 1.3, 1.9),
          (" It", 2.4, 2.6), (" jumps", 2.6, 3.0), (" over", 3.0, 3.3), (" the", 3.3, 3.45), (" dog.", 3.45, 4.0),
          (" Then", 4.6, 4.9), (" it", 4.9, 5.0), (" sleeps.", 5.0, 5.8)]
FULL = "".join(w for w, _, _ in SCRIPT).strip()


def token(word):
    return (sum(map(ord, word)) % 5000 + 1,)


class FakeDecoder:
    def __init__(self, segments=True, times=True):
        self.segments, self.times = segments, times
        self.calls = []

    def __call__(self, rows):
        self.calls.append(len(rows))
        out = []
        for r in rows:
            start = float(r.audio[0]) / SR if r.audio.size else 0.0
            end = start + r.audio.size / SR
            words, ends = [], []
            for text, s, e in SCRIPT:
                if s < start - 1e-3:
                    continue
                if e <= end + 1e-6:
                    t = (s - start, e - start) if self.times else (None, None)
                    words.append(st.StreamWord(text, *t, token(text)))
                    if text.endswith(".") and self.segments:
                        ends.append((len(words), e - start))
                elif s < end:
                    t = (s - start, end - start) if self.times else (None, None)
                    words.append(st.StreamWord(text[:2] + "zz", *t, (1,)))
                    break
            out.append(st.Hypothesis(tuple(words), tuple(ends)))
        return out


def stream(policy, decode, states, interval=0.5, total=6.5):
    """Feeds every state the clock audio in ``interval`` pieces, one update each; the words committed when."""
    emitted = [[] for _ in states]
    fed = 0
    while fed < int(total * SR):
        piece = np.arange(fed, fed + int(interval * SR), dtype=np.float32)
        fed += piece.size
        for s in states:
            s.append(piece)
        due = [s for s in states if policy.ready(s)]
        for s, words in zip(due, st.step(policy, due, decode)):
            emitted[states.index(s)].extend((fed / SR, w) for w in words)
    finals = st.step(policy, states, decode, final=True)
    for i, words in enumerate(finals):
        emitted[i].extend((fed / SR, w) for w in words)
    return emitted


def text_of(emitted):
    return "".join(w.text for _, w in emitted).strip()


@pytest.mark.parametrize("name", ["local_agreement", "alignatt"])
def test_policy_commits_every_word_once_and_never_a_stub(name):
    policy = st.make_policy(name, min_trim_s=1.0)
    states = [st.StreamState(), st.StreamState()]
    emitted = stream(policy, FakeDecoder(), states)
    for e, s in zip(emitted, states):
        assert text_of(e) == FULL
        assert s.text == FULL
        assert all("zz" not in w.text for _, w in e)
        # committed word times are the script's (item time): trimming kept the clock
        assert [t for _, w in e for t in (w.start, w.end)] == pytest.approx([t for _, b, c in SCRIPT for t in (b, c)])


def test_local_agreement_waits_for_two_agreeing_hypotheses():
    policy = st.LocalAgreement(min_audio_s=0.5, min_trim_s=100)
    emitted = stream(policy, FakeDecoder(), [st.StreamState()], interval=0.5)[0]
    script_end = {w: e for w, _, e in SCRIPT}
    for when, w in emitted[:-3]:
        # a word is whole in the row at the first update after its end, agreed on at the next one
        first_seen = np.ceil(script_end[w.text] / 0.5) * 0.5
        assert when >= first_seen + 0.5 - 1e-6, (w.text, when)
    assert text_of(emitted) == FULL


def test_alignatt_commits_only_words_ending_before_the_threshold():
    policy = st.AlignAtt(threshold_s=0.6, min_audio_s=0.5, min_trim_s=100)
    emitted = stream(policy, FakeDecoder(), [st.StreamState()], interval=0.5)[0]
    final_at = emitted[-1][0]
    for when, w in emitted:
        if when < final_at:
            assert w.end <= when - 0.6 + 1e-6, (w.text, w.end, when)
    # AlignAtt does not wait for a second hypothesis: sooner than LocalAgreement on average
    emitted = stream(st.AlignAtt(threshold_s=0.2, min_audio_s=0.5, min_trim_s=100), FakeDecoder(),
                     [st.StreamState()])[0]
    la = stream(st.LocalAgreement(min_audio_s=0.5, min_trim_s=100), FakeDecoder(), [st.StreamState()])[0]
    lag = lambda e: np.mean([t - w.end for t, w in e[:-2]])  # noqa: E731
    assert lag(emitted) < lag(la)


def test_buffer_is_trimmed_at_finished_segments_and_the_trimmed_text_becomes_the_prompt():
    policy = st.LocalAgreement(min_trim_s=1.0)
    state = st.StreamState()
    seen_rows = []

    def decode(rows):
        seen_rows.extend(rows)
        return FakeDecoder()(rows)

    stream(policy, decode, [state])
    assert max(r.audio.size for r in seen_rows) / SR < 4.0  # never the whole 6.5 s item
    assert state.buffer_start == pytest.approx(4.0)  # cut at the end of " dog."
    trimmed = [t for w, _, _ in SCRIPT[:9] for t in token(w)]  # " dog." ends the second segment
    assert state.history[:len(trimmed)] == trimmed
    # prompts: cut to the short lengths that let streams share a batch
    assert {len(r.prompt) for r in seen_rows} <= {0} | set(st.PROMPT_LENGTHS)


def test_without_segments_or_times_a_long_buffer_is_cut_by_force():
    policy = st.LocalAgreement(max_buffer_s=2.0, min_trim_s=1.0)
    state = st.StreamState()
    emitted = stream(policy, FakeDecoder(segments=False, times=False), [state])[0]
    assert state.buffer_seconds <= 2.5
    # a hard cut may commit the word being spoken at the cut as heard so far; the rest is all there, once
    words = text_of(emitted).split()
    assert [w for w in words if "zz" not in w] == [w for w in FULL.split() if w != "It"]


def test_skip_committed_finds_the_committed_words_in_a_new_hypothesis():
    w = lambda *ts: [st.StreamWord(t) for t in ts]  # noqa: E731
    assert st.skip_committed(w(" a", " b"), w(" a", " b", " c")) == 2
    assert st.skip_committed(w(" A,", " b."), w(" a", " b", " c")) == 2  # case and punctuation ignored
    assert st.skip_committed(w(" x", " a", " b"), w(" a", " b", " c")) == 2  # first committed word lost
    assert st.skip_committed(w(" a", " b"), w(" q", " a", " b", " c")) == 3  # a word inserted before
    assert st.skip_committed([], w(" a")) == 0
    timed = [st.StreamWord(" p", 0.0, 0.4), st.StreamWord(" q", 0.4, 0.9), st.StreamWord(" r", 0.9, 1.2)]
    assert st.skip_committed(w(" u", " v"), timed, committed_end=0.9) == 2


def test_make_policy_names_the_choices():
    with pytest.raises(ValueError, match="alignatt"):
        st.make_policy("wait_k")
    assert isinstance(st.make_policy("alignatt", threshold_s=0.3), st.AlignAtt)
    assert isinstance(st.make_policy("local_agreement", threshold_s=0.3), st.LocalAgreement)
    with pytest.raises(ValueError):
        st.LocalAgreement(max_buffer_s=31)


def test_step_checks_the_decode_answer_count():
    policy = st.LocalAgreement(min_audio_s=0.0)
    s = st.StreamState()
    s.append(np.zeros(16000, np.float32))
    with pytest.raises(RuntimeError, match="2 hypotheses for 1 rows"):
        st.step(policy, [s], lambda rows: [st.Hypothesis(), st.Hypothesis()])


def test_new_item_keeps_the_prompt_history():
    policy = st.LocalAgreement(min_audio_s=0.0)
    s = st.StreamState(initial_prompt=tuple(range(1, 41)))
    assert policy.prompt(s) == tuple(range(9, 41))  # the last 32
    s.append(np.arange(16000 * 2, dtype=np.float32))
    st.step(policy, [s], FakeDecoder(), final=True)
    assert s.text == "The quick brown fox."
    s.new_item()
    assert s.buffer.size == 0 and s.committed == [] and s.history[-1] == token(" fox.")[0]


def _speech_with_pauses(spans, total, sr=SR):
    """Tone bursts at ``spans`` ((start, end) seconds) in silence: a stand-in for words and pauses."""
    t = np.arange(int(total * sr)) / sr
    audio = np.zeros(t.size, np.float32)
    for a, b in spans:
        on = (t >= a) & (t < b)
        audio[on] = 0.3 * np.sin(2 * np.pi * 180 * t[on])
    return audio


def test_quiet_point_finds_the_pause_and_leaves_a_pauseless_boundary_alone():
    audio = _speech_with_pauses([(0.0, 1.0), (1.4, 2.5)], 3.0)
    # a boundary 0.2 s late (inside the next word) moves to the middle of the 1.0-1.4 s pause
    assert st.quiet_point(audio, 0.8, 1.6, 1.6 - 0.0) == pytest.approx(1.2, abs=0.03)
    assert st.quiet_point(audio, 0.9, 1.8, 1.6) == pytest.approx(1.2, abs=0.03)
    # no pause in the span (a steady tone, or the fake decoder's clock audio): the boundary stays
    assert st.quiet_point(audio, 1.5, 2.4, 2.0) == 2.0
    clock = np.arange(4 * SR, dtype=np.float32)
    assert st.quiet_point(clock, 1.6, 2.4, 2.0) == 2.0
    assert st.quiet_point(audio, 1.0, 1.01, 1.3) == 1.3  # too short to judge


def test_a_late_segment_end_is_cut_in_the_pause_not_in_the_next_word():
    # "one two." 0.2-1.0 s, pause, "three four" from 1.4 s; the decoder reports the segment end at 1.6 s
    # (late: inside "three", as Whisper's end timestamps often are); without the pause search the new
    # buffer would start 0.2 s into "three".
    audio = _speech_with_pauses([(0.2, 0.6), (0.6, 1.0), (1.4, 1.9), (1.9, 2.6)], 5.0)
    words = (st.StreamWord(" one", None, None, (1,)), st.StreamWord(" two.", None, None, (2,)),
             st.StreamWord(" three", None, None, (3,)), st.StreamWord(" four", None, None, (4,)))
    decode = lambda rows: [st.Hypothesis(words, ((2, 1.6),)) for _ in rows]  # noqa: E731
    for search, (lo, hi) in ((0.4, (1.05, 1.35)), (0.0, (1.6, 1.6))):
        policy = st.LocalAgreement(min_audio_s=0.0, min_trim_s=1.0, min_keep_s=1.0, cut_search_s=search)
        s = st.StreamState()
        s.append(audio)
        st.step(policy, [s], decode)
        st.step(policy, [s], decode)  # two agreeing hypotheses: all four committed, the segment trimmed
        assert lo - 1e-6 <= s.buffer_start <= hi + 1e-6  # inside the 1.0-1.4 s pause (or at 1.6 without search)
        assert s.history == [1, 2] and s.in_buffer == 2
