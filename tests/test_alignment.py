"""Word-level timestamps (whisper_t5x.longform.alignment): numerics against openai-whisper, then real speech."""

import difflib
import functools
import os

import numpy as np
import pytest

from tests._speech import needs_espeak, normalize, synthesize
from whisper_t5x.longform import alignment as al

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(ROOT, "samples", "jfk.flac")


@functools.lru_cache(maxsize=None)
def base():
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    return FlaxWhisperForConditionalGeneration.from_pretrained("base", _do_init=False)


@functools.lru_cache(maxsize=None)
def openai_base(tmp_root="/tmp/whisper_t5x_test_alignment"):
    """openai-whisper on our base weights, with our alignment heads."""
    whisper = pytest.importorskip("whisper")
    import torch

    from whisper_t5x.checkpoints import export_openai_checkpoint

    model, params = base()
    os.makedirs(tmp_root, exist_ok=True)
    path = os.path.join(tmp_root, "base.pt")
    if not os.path.exists(path):
        export_openai_checkpoint(path + ".tmp", model.config, params)
        os.replace(path + ".tmp", path)
    ref = whisper.load_model(path, device="cpu")
    mask = np.zeros((model.config.decoder_layers, model.config.decoder_attention_heads), bool)
    for layer, head in model.config.alignment_heads:
        mask[layer, head] = True
    ref.register_buffer("alignment_heads", torch.tensor(mask).to_sparse(), persistent=False)
    return ref


# ----------------------------------------------------------------------------- numerics
def test_default_alignment_heads():
    assert al.default_alignment_heads(4, 2) == ((2, 0), (2, 1), (3, 0), (3, 1))

    class Cfg:
        alignment_heads = ()
        decoder_layers, decoder_attention_heads = 6, 8

    assert al.alignment_heads(Cfg()) == al.default_alignment_heads(6, 8)
    Cfg.alignment_heads = ((3, 1), (5, 2))
    assert al.alignment_heads(Cfg()) == ((3, 1), (5, 2))


def test_median_filter_matches_reference():
    torch = pytest.importorskip("torch")
    timing = pytest.importorskip("whisper.timing")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 40)).astype(np.float32)
    for width in (1, 3, 7):
        ours = al.median_filter(x, width)
        ref = timing.median_filter(torch.tensor(x), width).numpy()
        np.testing.assert_array_equal(ours, ref)
    short = x[..., :3]
    np.testing.assert_array_equal(al.median_filter(short, 7), short)  # too short to filter
    with pytest.raises(ValueError):
        al.median_filter(x, 4)


def _brute_force_dtw_cost(x):
    n, m = x.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = x[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    return acc[n, m]


@pytest.mark.parametrize("shape", [(1, 1), (3, 9), (9, 3), (12, 40)])
def test_dtw_is_a_minimal_monotonic_path(shape):
    x = np.random.default_rng(sum(shape)).random(shape)
    rows, cols = al.dtw(x)
    assert rows[0] == 0 and cols[0] == 0 and rows[-1] == shape[0] - 1 and cols[-1] == shape[1] - 1
    steps = np.stack([np.diff(rows), np.diff(cols)], 1)
    assert all(tuple(s) in {(1, 1), (1, 0), (0, 1)} for s in steps)
    assert np.isclose(x[rows, cols].sum(), _brute_force_dtw_cost(x), rtol=1e-5)


def test_dtw_matches_openai_paths_including_ties():
    timing = pytest.importorskip("whisper.timing")
    rng = np.random.default_rng(1)
    cases = [rng.normal(size=(20, 70)), rng.integers(0, 3, size=(15, 30)).astype(np.float64),
             np.zeros((5, 9)), rng.normal(size=(30, 12))]
    for x in cases:
        ref = timing.dtw_cpu(x.copy())
        np.testing.assert_array_equal(np.stack(al.dtw(x)), ref)


def test_word_splitting_matches_openai():
    wtok = pytest.importorskip("whisper.tokenizer")
    model, _ = base()
    tok = model.tokenizer
    ref_tok = wtok.get_tokenizer(True, num_languages=99)
    for language, text in [("en", " Hello, world! It's a fine-tuned test (really)."),
                           ("zh", " 你好世界，今天天气很好。"), ("ja", " こんにちは、世界"),
                           ("es", " ¿Dónde está el baño? Allí.")]:
        ids = tok.encode(text)
        ref_tok.language = language
        words, groups = al.split_to_word_tokens(tok, ids, language)
        ref_words, ref_groups = ref_tok.split_to_word_tokens(ids + [ref_tok.eot])
        assert words == ref_words[:-1] and groups == ref_groups[:-1], language
        assert "".join(words) == tok.decode(ids)


def test_merge_punctuations():
    W = al.WordTiming
    words = [W(" (", [1], 0, 1, 1), W("hello", [2], 1, 2, 1), W(",", [3], 2, 3, 1), W(" world", [4], 3, 4, 1),
             W(".", [5], 4, 5, 1)]
    al.merge_punctuations(words)
    assert [w.word for w in words] == ["", " (hello,", "", " world.", ""]
    assert words[1].tokens == [1, 2, 3]


def test_trim_leading_silence():
    loud = np.zeros(200)
    loud[10:40] = loud[100:130] = loud[150:152] = 5.0  # word A, word B after a pause, a click
    words = [{"word": " a", "start": 10.0, "end": 10.9}, {"word": " b", "start": 10.9, "end": 12.7},
             {"word": " c", "start": 12.7, "end": 13.04}, {"word": " d", "start": 12.7, "end": 12.9}]
    al.trim_leading_silence(words, loud, time_offset=10.0)
    # Each start moves to the sound after the last pause (>= 0.15 s) in its span; d holds only silence.
    assert [w["start"] for w in words] == [10.2, 12.0, 13.0, 12.7]
    assert [w["end"] for w in words] == [10.9, 12.7, 13.04, 12.9]  # ends never move
    al.trim_leading_silence(words, np.ones(200), 10.0)  # no dynamics: nothing to trim
    assert words[1]["start"] == 12.0


# ----------------------------------------------------------------------------- real speech
def _decode(model, params, audio):
    from whisper_t5x.audio.features import log_mel_spectrogram_np

    feats = log_mel_spectrogram_np([audio], model.config.num_mel_bins)
    out = model.generate(feats, params=params, language="en", return_timestamps=True)
    return feats, np.asarray(out.sequences)


def _matched_starts(words_a, words_b):
    """Pairs of start times of the words both lists share, matched in order on normalised text."""
    a = [(normalize(w["word"]) or [""])[0] for w in words_a]
    b = [(normalize(w["word"]) or [""])[0] for w in words_b]
    pairs = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            pairs.append((words_a[block.a + k]["start"], words_b[block.b + k]["start"]))
    return pairs


def test_jfk_word_starts_match_openai_whisper():
    from whisper_t5x.audio.loading import load_audio

    model, params = base()
    audio = load_audio(JFK)
    feats, seqs = _decode(model, params, audio)
    words = al.word_timestamps(model, params, feats, seqs, num_frames=[len(audio) // 160])[0]
    text = "".join(w["word"] for w in words)
    assert normalize(text)[:4] == ["and", "so", "my", "fellow"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["end"] >= w["start"] for w in words)
    assert all(0 <= w["probability"] <= 1 for w in words)

    ref = openai_base().transcribe(audio, language="en", word_timestamps=True, fp16=False, temperature=0.0)
    ref_words = [w for s in ref["segments"] for w in s["words"]]
    pairs = _matched_starts(words, ref_words)
    assert len(pairs) >= 0.9 * len(ref_words)
    errors = np.abs(np.subtract(*np.array(pairs).T))
    assert np.median(errors) <= 0.1, errors

    # Segments carry the words of their own text; offsets shift everything.
    segs = al.word_timestamps(model, params, feats, seqs, time_offsets=[10.0], num_frames=[len(audio) // 160],
                              return_segments=True)[0]
    assert [w["word"] for s in segs for w in s["words"]] == [w["word"] for w in words]
    assert segs[0]["words"][0]["start"] == pytest.approx(words[0]["start"] + 10.0, abs=0.011)


WORDS = ["morning", "river", "garden", "yellow", "window", "market", "letters", "mountain", "teacher", "orange",
         "silver", "bicycle"]


@needs_espeak
def test_word_starts_on_words_with_known_gaps():
    """Words spoken one by one and joined with known silences: starts within 0.2 s (median) of the truth."""
    model, params = base()
    rng = np.random.default_rng(0)
    pieces, truth, t = [np.zeros(8000, np.float32)], [], 0.5
    for word in WORDS:
        clip = synthesize(word)
        loud = np.flatnonzero(np.abs(clip) > 0.02 * np.abs(clip).max())
        clip = clip[loud[0]:loud[-1] + 1]
        truth.append((word, t))
        pieces.append(clip)
        gap = float(rng.uniform(0.3, 0.9))
        pieces.append(np.zeros(int(gap * 16000), np.float32))
        t += clip.size / 16000 + gap
    audio = np.concatenate(pieces)
    assert audio.size < 30 * 16000
    feats, seqs = _decode(model, params, audio)
    words = al.word_timestamps(model, params, feats, seqs, num_frames=[len(audio) // 160])[0]
    pairs = _matched_starts(words, [{"word": " " + w, "start": s} for w, s in truth])
    assert len(pairs) >= 0.75 * len(WORDS), [w["word"] for w in words]
    errors = np.abs(np.subtract(*np.array(pairs).T))
    assert np.median(errors) <= 0.2, errors
