"""Log-mel parity with transformers' WhisperFeatureExtractor (and openai-whisper), numpy and JAX.

Measured max abs differences on CPU (jfk.flac, random and short audio, 80 and 128 mels):
numpy (float64) vs transformers' default torch float32 path <= 1.5e-5, vs its numpy
float64 path <= 1.2e-7; JAX float32 rfft vs transformers <= 2.6e-5. All are asserted
at 1e-4, the tolerance asked for.
"""

import numpy as np
import pytest

from tests._audio_helpers import JFK_FLAC, needs_jfk
from whisper_t5x.audio.features import (
    N_FRAMES,
    N_SAMPLES,
    FeatureExtractor,
    WhisperFeatureExtractor,
    hann_window,
    log_mel_spectrogram,
    log_mel_spectrogram_np,
    mel_filters,
    pad_or_trim,
)

TOL = 1e-4

transformers = pytest.importorskip("transformers")
HFExtractor = transformers.WhisperFeatureExtractor


@pytest.fixture(scope="module")
def waves():
    from whisper_t5x.audio.loading import load_audio

    rng = np.random.default_rng(0)
    out = {
        "random_3s": (0.1 * rng.standard_normal(48000)).astype(np.float32),
        "short_0.4s": (0.3 * rng.standard_normal(6400)).astype(np.float32),
        "tiny_100": (0.3 * rng.standard_normal(100)).astype(np.float32),
        "silence": np.zeros(16000, np.float32),
    }
    import os

    if os.path.exists(JFK_FLAC):
        jfk = load_audio(JFK_FLAC)
        out["jfk"] = jfk
        out["jfk_x4_over_30s"] = np.tile(jfk, 4)
    return out


@pytest.fixture(scope="module", params=[80, 128])
def n_mels(request):
    return request.param


@pytest.fixture(scope="module")
def hf(n_mels):
    return HFExtractor(feature_size=n_mels)


@pytest.fixture(scope="module")
def jitted():
    import jax

    return jax.jit(log_mel_spectrogram, static_argnums=1)


def _hf(extractor, x):
    return extractor(x, sampling_rate=16000, return_tensors="np")["input_features"]


# ------------------------------------------------------------------ building blocks
def test_filterbank_and_window_match_references(hf, n_mels):
    assert mel_filters(n_mels).shape == (n_mels, 201)
    np.testing.assert_allclose(mel_filters(n_mels), hf.mel_filters.T, rtol=0, atol=1e-12)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(hann_window(400), torch.hann_window(400, dtype=torch.float64).numpy(), atol=1e-15)


def test_pad_or_trim():
    assert pad_or_trim(np.ones(10), 16).tolist() == [1.0] * 10 + [0.0] * 6
    assert pad_or_trim(np.ones((2, 20)), 16).shape == (2, 16)


# ------------------------------------------------------------------ numpy parity
def test_numpy_matches_transformers(waves, hf, n_mels):
    for name, x in waves.items():
        ref = _hf(hf, x)[0]
        ours = log_mel_spectrogram_np(x, n_mels)
        assert ours.shape == ref.shape == (n_mels, N_FRAMES), name
        assert ours.dtype == np.float32
        assert np.abs(ours - ref).max() < TOL, name


def test_numpy_matches_transformers_float64_path(waves, hf, n_mels):
    if not hasattr(hf, "_np_extract_fbank_features"):
        pytest.skip("transformers' numpy path not available")
    for name, x in waves.items():
        ref = hf._np_extract_fbank_features(pad_or_trim(x)[None].astype(np.float32), "cpu")[0]
        assert np.abs(log_mel_spectrogram_np(x, n_mels) - ref).max() < 1e-6, name


@needs_jfk
def test_numpy_matches_openai_whisper(waves, n_mels):
    whisper = pytest.importorskip("whisper")
    torch = pytest.importorskip("torch")
    x = waves["jfk"]
    ref = whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(x)), n_mels=n_mels).numpy()
    assert np.abs(log_mel_spectrogram_np(x, n_mels) - ref).max() < TOL


def test_silence_is_constant():
    out = log_mel_spectrogram_np(np.zeros(100, np.float32))
    np.testing.assert_allclose(out, -1.5)  # (log10(1e-10) + 4) / 4


def test_numpy_batches_equal_single(waves, n_mels):
    names = list(waves)
    batch = log_mel_spectrogram_np([waves[k] for k in names], n_mels)
    assert batch.shape == (len(names), n_mels, N_FRAMES)
    for i, k in enumerate(names):
        np.testing.assert_array_equal(batch[i], log_mel_spectrogram_np(waves[k], n_mels))
    stacked = np.stack([pad_or_trim(waves[k]) for k in names])
    np.testing.assert_array_equal(log_mel_spectrogram_np(stacked, n_mels), batch)


def test_unpadded_lengths_and_empty():
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    assert log_mel_spectrogram_np(x, n_samples=None).shape == (80, 100)
    assert log_mel_spectrogram_np(np.zeros(0, np.float32)).shape == (80, N_FRAMES)
    assert log_mel_spectrogram_np(np.zeros(0, np.float32), n_samples=None).shape == (80, 0)
    assert log_mel_spectrogram_np([]).shape == (0, 80, N_FRAMES)


# ------------------------------------------------------------------ JAX parity
def test_jax_matches_transformers_under_jit(waves, hf, n_mels, jitted):
    names = list(waves)
    batch = np.stack([pad_or_trim(waves[k]) for k in names])
    out = np.asarray(jitted(batch, n_mels))
    assert out.shape == (len(names), n_mels, N_FRAMES) and out.dtype == np.float32
    ref = _hf(hf, [waves[k] for k in names])
    errors = {k: float(np.abs(out[i] - ref[i]).max()) for i, k in enumerate(names)}
    assert max(errors.values()) < TOL, errors
    # Batched equals per-example.
    single = np.asarray(jitted(batch[:1], n_mels))[0]
    np.testing.assert_allclose(out[0], single, atol=1e-6)
    unbatched = np.asarray(jitted(batch[1], n_mels))
    assert unbatched.shape == (n_mels, N_FRAMES)
    np.testing.assert_allclose(out[1], unbatched, atol=1e-6)


def test_jax_short_unpadded_matches_numpy():
    x = np.random.default_rng(2).standard_normal(3200).astype(np.float32)
    ours = np.asarray(log_mel_spectrogram(x))
    assert ours.shape == (80, 20)
    np.testing.assert_allclose(ours, log_mel_spectrogram_np(x, n_samples=None), atol=TOL)


# ------------------------------------------------------------------ extractor class
def test_extractor_matches_transformers_call(waves, hf, n_mels):
    ours = WhisperFeatureExtractor(feature_size=n_mels)
    items = list(waves.values())
    got = ours(items, sampling_rate=16000, return_tensors="np")
    ref = hf(items, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    assert got["input_features"].shape == ref["input_features"].shape
    assert np.abs(got.input_features - ref["input_features"]).max() < TOL
    single = ours(items[0], sampling_rate=16000)["input_features"]
    assert single.shape == (1, n_mels, N_FRAMES)
    masked = ours(items, return_attention_mask=True)
    np.testing.assert_array_equal(masked["attention_mask"], ref["attention_mask"])


def test_extractor_inputs_and_tensors(waves):
    fe = FeatureExtractor()
    x = waves["random_3s"]
    jax_out = fe(x, return_tensors="jax")["input_features"]
    assert jax_out.shape == (1, 80, N_FRAMES) and not isinstance(jax_out, np.ndarray)
    # A bare array at another rate is resampled (transformers would raise).
    at8k = fe(x[::2], sampling_rate=8000)["input_features"]
    assert at8k.shape == (1, 80, N_FRAMES)
    with pytest.raises(ValueError, match="return_tensors"):
        fe(x, return_tensors="tf")
    with pytest.raises(ValueError, match="n_fft"):
        WhisperFeatureExtractor(n_fft=512)


@needs_jfk
def test_extractor_reads_paths(waves):
    out = FeatureExtractor()([JFK_FLAC, waves["jfk"]])["input_features"]
    assert out.shape == (2, 80, N_FRAMES)
    np.testing.assert_array_equal(out[0], out[1])
    assert N_SAMPLES == 480000
