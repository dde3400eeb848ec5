"""Sequential long-form mode (whisper_t5x.longform.sequential): seek logic, features, batching, openai-whisper parity."""

import functools
import os

import numpy as np
import pytest

from tests._speech import LONG_TEXT, needs_espeak, normalize, synthesize, wer
from whisper_t5x.longform import seek as seek_logic
from whisper_t5x.longform import sequential as sq
from whisper_t5x.longform.decoder import trim_prompt
from whisper_t5x.results import as_pipeline_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(ROOT, "samples", "jfk.flac")
TB = 50364  # <|0.00|> of the multilingual vocabulary


# ----------------------------------------------------------------------------- seek / segments
def _spans(segments):
    return [(round(s["start"], 6), round(s["end"], 6)) for s in segments]


def test_pairs_with_single_timestamp_ending_consume_the_window():
    tokens = [TB, 100, 101, TB + 50, TB + 50, 102, TB + 100]
    segments, seek, single = seek_logic.window_segments(tokens, TB, seek=1500, segment_size=3000)
    assert single and seek == 4500
    assert _spans(segments) == [(15.0, 16.0), (16.0, 17.0)]
    assert segments[0]["tokens"] == [TB, 100, 101, TB + 50] and segments[1]["tokens"] == [TB + 50, 102, TB + 100]


def test_open_last_segment_restarts_at_the_last_complete_timestamp():
    tokens = [TB, 100, TB + 50, TB + 50, 102, 103]  # text after the last pair never closed
    segments, seek, single = seek_logic.window_segments(tokens, TB, seek=0, segment_size=3000)
    assert not single and seek == 100  # 1.00 s = 100 mel frames
    assert _spans(segments) == [(0.0, 1.0)]


def test_trailing_pair_restarts_at_its_timestamp():
    tokens = [TB, 100, TB + 50, TB + 50, 101, TB + 80, TB + 80]
    segments, seek, single = seek_logic.window_segments(tokens, TB, seek=200, segment_size=3000)
    assert not single and seek == 200 + 160
    assert _spans(segments) == [(2.0, 3.0), (3.0, 3.6)]


def test_without_pairs_one_segment_spans_to_the_last_timestamp():
    segments, seek, single = seek_logic.window_segments([TB, 100, 101, TB + 70], TB, seek=0, segment_size=2500)
    assert single and seek == 2500 and _spans(segments) == [(0.0, 1.4)]
    # No timestamp at all (or only <|0.00|>): the segment spans the audio of the window.
    segments, seek, single = seek_logic.window_segments([100, 101], TB, seek=3000, segment_size=1234)
    assert not single and seek == 4234 and _spans(segments) == [(30.0, 42.34)]
    segments, _, _ = seek_logic.window_segments([100, TB], TB, seek=0, segment_size=1000)
    assert _spans(segments) == [(0.0, 10.0)]
    # End-of-text and what follows it are ignored.
    segments, seek, _ = seek_logic.window_segments([TB, 100, TB + 10, 50257, 7, 7], TB, 0, 3000, eot=50257)
    assert seek == 3000 and segments[0]["tokens"] == [TB, 100, TB + 10]


def test_prompt_buckets():
    """The Decoder keeps the newest tokens of a prompt, cut to a bucket length (every mode, item [1/4] 10-11)."""
    def kept(n, buckets=sq.PROMPT_BUCKETS):
        return len(trim_prompt(range(n), 223, buckets))

    assert kept(0) == 0 and kept(15) == 15
    assert kept(16) == 16 and kept(47) == 32
    assert kept(223) == 223 and kept(200) == 192
    assert kept(101, None) == 101
    # Only the last 223 tokens of a long prompt are used, as openai-whisper and faster-whisper do.
    assert trim_prompt(range(6100), 223) == tuple(range(6100 - 223, 6100))
    assert kept(6100, None) == 223


def test_file_log_mel_matches_openai_whisper():
    torch = pytest.importorskip("torch")
    whisper_audio = pytest.importorskip("whisper.audio")
    rng = np.random.default_rng(0)
    audio = (rng.normal(size=16000 * 7 + 123) * np.linspace(0, 0.3, 16000 * 7 + 123)).astype(np.float32)
    ours = seek_logic.file_log_mel(audio, 80, block_frames=1000)
    ref = whisper_audio.log_mel_spectrogram(torch.tensor(audio), 80, padding=whisper_audio.N_SAMPLES).numpy()
    assert ours.shape == ref.shape == (80, audio.size // 160 + 3000)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


# ----------------------------------------------------------------------------- real models
@functools.lru_cache(maxsize=None)
def load(name):
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    return FlaxWhisperForConditionalGeneration.from_pretrained(name, _do_init=False)


SHORT_TEXT = LONG_TEXT[:LONG_TEXT.index("the rocks.") + 10]  # about 37 s: two windows


@needs_espeak
def test_batched_files_match_files_alone():
    """Two files in one batch (rows leave at different steps) give what each gives alone; words included."""
    from whisper_t5x.audio.loading import load_audio

    model, params = load("tiny.en")
    speech, jfk = synthesize(SHORT_TEXT), load_audio(JFK)
    both = sq.transcribe_sequential(model, params, [speech, JFK], temperatures=(0.0,), word_timestamps=True,
                                    batch_size=2)
    alone = sq.transcribe_sequential(model, params, jfk, temperatures=(0.0,), word_timestamps=True)
    assert both[1].text == alone[0].text
    assert normalize(both[1].text)[:4] == ["and", "so", "my", "fellow"]
    assert [w.word for w in both[1].words] == [w.word for w in alone[0].words]
    assert wer(SHORT_TEXT, both[0].text) < 0.1

    res = both[0]
    assert res.language == "en" and len({s.seek for s in res.segments}) >= 2  # two windows
    starts = [s.start for s in res.segments]
    assert starts == sorted(starts) and res.segments[-1].end <= len(speech) / 16000 + 0.5
    chunks = as_pipeline_dict(res)["chunks"]
    assert [c["text"] for c in chunks] == [s.text for s in res.segments if s.text.strip()]
    words = res.words
    assert normalize("".join(w.word for w in words)) == normalize(res.text)
    assert all(w.start <= w.end for w in words)
    assert all(a.start <= b.start + 0.02 for a, b in zip(words, words[1:]))


def test_pipeline_word_timestamps():
    """What ``FlaxWhisperPipeline(..., return_timestamps="word")`` returns: word chunks, typed words and segments."""
    from whisper_t5x import FlaxWhisperPipeline

    model, params = load("tiny.en")
    pipe = FlaxWhisperPipeline((model, params), batch_size=4, compile_cache=False)
    out = pipe(JFK, return_timestamps="word", return_language=True, generate_kwargs={"temperature": 0.0})
    assert set(out) == {"text", "chunks", "segments", "language"} and out["language"] == "en"
    assert normalize("".join(c["text"] for c in out["chunks"])) == normalize(out["text"])
    assert all(c["timestamp"][0] <= c["timestamp"][1] for c in out["chunks"])
    assert out["segments"] and all({"timestamp", "text", "avg_logprob", "no_speech_prob"} <= set(c) for c in out["segments"])
    typed = pipe.transcribe(JFK, return_timestamps="word", generate_kwargs={"temperature": 0.0})
    assert typed.segments and all(s.avg_logprob is not None and s.no_speech_prob is not None and s.words
                                  for s in typed.segments)
    [again] = pipe([JFK], return_timestamps="word", generate_kwargs={"temperature": 0.0})
    assert again["chunks"] == out["chunks"]


def test_errors():
    model, params = load("tiny.en")
    with pytest.raises(ValueError):
        sq.transcribe_sequential(model, params, [np.zeros(16000, np.float32)], task="translate")
    with pytest.raises(ValueError):
        sq.transcribe_sequential(model, params, [np.zeros(16000, np.float32)], batch_size=0)
    # Empty audio: no windows, empty result.
    [res] = sq.transcribe_sequential(model, params, [np.zeros(0, np.float32)])
    assert (res.text, res.segments, as_pipeline_dict(res)["chunks"], res.language) == ("", (), [], "en")


@pytest.mark.slow
@needs_espeak
def test_two_minutes_match_openai_whisper():
    """2.5 min of espeak-ng speech, greedy: the text is within 1 WER point of openai-whisper's transcribe."""
    from tests.test_alignment import openai_base

    model, params = load("base")
    audio = synthesize(LONG_TEXT)
    [ours] = sq.transcribe_sequential(model, params, [audio], language="en", temperatures=(0.0,))
    ref = openai_base().transcribe(audio, language="en", temperature=0.0, fp16=False)
    assert wer(ref["text"], ours.text) <= 0.01
    assert abs(wer(LONG_TEXT, ours.text) - wer(LONG_TEXT, ref["text"])) <= 0.01
    # Exact prompts (no bucketing) reproduce openai-whisper's segments.
    [exact] = sq.transcribe_sequential(model, params, [audio], language="en", temperatures=(0.0,),
                                       prompt_buckets=None)
    assert wer(ref["text"], exact.text) <= 0.005


def test_pipeline_word_mode_gives_monotonic_word_chunks():
    """return_timestamps="word" through the pipeline: one chunk per word, inside the audio, in order."""
    import os

    from whisper_t5x import FlaxWhisperPipeline

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pipe = FlaxWhisperPipeline("tiny.en", batch_size=2)
    jfk = os.path.join(root, "samples", "jfk.flac")
    # long_form="sequential" without words: segments as chunks, with openai-whisper's statistics.
    seq = pipe(jfk, long_form="sequential", return_timestamps=True)
    assert "fellow Americans" in seq["text"] and seq["chunks"]
    assert all(0.0 <= c["timestamp"][0] < c["timestamp"][1] <= 11.1 for c in seq["chunks"])
    assert all(s["avg_logprob"] <= 0 and 0 <= s["no_speech_prob"] <= 1 for s in seq["chunks"])
    with pytest.raises(ValueError, match="long_form"):
        pipe(jfk, long_form="seek")
    out = pipe(jfk, return_timestamps="word")
    words = out["chunks"]
    assert [w["text"].strip() for w in words][:4] == ["And", "so", "my", "fellow"]
    starts = [w["timestamp"][0] for w in words]
    assert starts == sorted(starts) and 0.0 <= starts[0] and words[-1]["timestamp"][1] <= 11.1
