"""Tests for whisper_t5x.audio.loading: every input form, resampling, mixing and every error."""

import io

import numpy as np
import pytest

from tests._audio_helpers import JFK_FLAC, needs_jfk
from whisper_t5x.audio import loading as audio
from whisper_t5x.audio.loading import AudioError, get_duration, load_audio


@pytest.fixture(scope="module")
def jfk():
    return load_audio(JFK_FLAC)


def _sine(freq, rate, seconds, channels=None):
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return x if channels is None else np.stack([x] * channels, axis=1)


# ------------------------------------------------------------------ files and bytes
@needs_jfk
def test_path_decodes_to_16k_mono_float32(jfk):
    assert jfk.dtype == np.float32 and jfk.ndim == 1 and jfk.flags.c_contiguous
    assert jfk.shape == (176000,)  # 11 s
    assert 0.5 < np.abs(jfk).max() <= 1.0


@needs_jfk
def test_path_matches_openai_whisper_loader(jfk):
    whisper = pytest.importorskip("whisper")
    ref = whisper.load_audio(JFK_FLAC)  # ffmpeg -> s16le: differs by int16 quantisation only
    assert ref.shape == jfk.shape
    assert np.abs(ref - jfk).max() < 1e-4


@needs_jfk
def test_bytes_file_object_pathlike_and_dict_keys_agree(jfk, tmp_path):
    import pathlib

    data = open(JFK_FLAC, "rb").read()
    np.testing.assert_array_equal(load_audio(data), jfk)
    np.testing.assert_array_equal(load_audio(bytearray(data)), jfk)
    np.testing.assert_array_equal(load_audio(io.BytesIO(data)), jfk)
    np.testing.assert_array_equal(load_audio(pathlib.Path(JFK_FLAC)), jfk)
    np.testing.assert_array_equal(load_audio({"path": JFK_FLAC}), jfk)
    np.testing.assert_array_equal(load_audio({"bytes": data, "path": None}), jfk)


@needs_jfk
def test_other_target_rate_and_duration(jfk):
    at8k = load_audio(JFK_FLAC, sampling_rate=8000)
    assert at8k.shape == (88000,)
    assert get_duration(JFK_FLAC) == pytest.approx(11.0)
    assert get_duration(jfk) == pytest.approx(11.0)
    assert get_duration({"array": np.zeros(44100, np.float32), "sampling_rate": 44100}) == pytest.approx(1.0)


@needs_jfk
def test_stereo_44k_dict_matches_ffmpeg_path(jfk):
    sf = pytest.importorskip("soundfile")
    stereo, rate = sf.read(JFK_FLAC, dtype="float32")
    assert stereo.ndim == 2 and rate == 44100
    mixed = load_audio({"array": stereo, "sampling_rate": rate})
    assert mixed.shape == jfk.shape
    # soxr vs ffmpeg's resampler: measured 1.27e-3 max abs, correlation ~1.
    assert np.abs(mixed - jfk).max() < 5e-3
    assert np.corrcoef(mixed, jfk)[0, 1] > 0.99999


def test_wav_file_written_by_soundfile(tmp_path):
    sf = pytest.importorskip("soundfile")
    path = tmp_path / "tone.wav"
    sf.write(str(path), _sine(440, 22050, 0.5, channels=2), 22050, subtype="PCM_16")
    out = load_audio(str(path))
    assert out.shape == (8000,)
    np.testing.assert_allclose(out[1000:7000], _sine(440, 16000, 0.5)[1000:7000], atol=2e-3)


# ------------------------------------------------------------------ arrays and dicts
def test_1d_array_passthrough_and_conversion():
    x = np.linspace(-1, 1, 1000)
    out = load_audio(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32))
    np.testing.assert_array_equal(load_audio(list(x)), out)
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_array_equal(load_audio(jnp.asarray(x, jnp.float32)), out)


def test_raw_key_and_resampling_accuracy():
    x8k = _sine(440, 8000, 1.0).astype(np.float32)
    out = load_audio({"raw": x8k, "sampling_rate": 8000})
    assert out.shape == (16000,)
    np.testing.assert_allclose(out[500:-500], _sine(440, 16000, 1.0)[500:-500], atol=1e-3)
    same = load_audio({"array": x8k, "sampling_rate": 16000})
    np.testing.assert_array_equal(same, x8k)


def test_stereo_channel_axis_rules():
    left, right = np.full(1000, 0.2, np.float32), np.full(1000, 0.6, np.float32)
    frames_first = np.stack([left, right], axis=1)  # (n, 2)
    expected = np.full(1000, 0.4, np.float32)
    np.testing.assert_allclose(load_audio(frames_first), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(frames_first.T), expected, atol=1e-7)  # (2, n)
    # Explicit axis works even where the shape is ambiguous.
    square = np.stack([left[:6], right[:6], left[:6], right[:6]])  # (4, 6)
    with pytest.raises(AudioError, match="channel_axis"):
        load_audio(square)
    out = load_audio({"array": square, "sampling_rate": 16000, "channel_axis": 0})
    np.testing.assert_allclose(out, expected[:6], atol=1e-7)
    with pytest.raises(AudioError, match="channel_axis"):
        load_audio({"array": square, "sampling_rate": 16000, "channel_axis": 2})


def test_empty_audio_returns_empty_array():
    assert load_audio(np.zeros(0, np.float32)).shape == (0,)
    assert load_audio({"array": np.zeros(0), "sampling_rate": 44100}).shape == (0,)
    assert get_duration(np.zeros(0, np.float32)) == 0.0


# ------------------------------------------------------------------ errors
def test_missing_ffmpeg_is_explained(monkeypatch):
    monkeypatch.setattr(audio, "FFMPEG", "ffmpeg-not-installed-xyz")
    with pytest.raises(AudioError, match="ffmpeg-not-installed-xyz.*apt-get install ffmpeg"):
        load_audio(b"RIFF....")
    # Arrays never need ffmpeg.
    assert load_audio(np.zeros(3, np.float32)).shape == (3,)


def test_file_not_found_names_path(tmp_path):
    missing = str(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="not found: .*nope.wav"):
        load_audio(missing)
    with pytest.raises(AudioError, match="directory"):
        load_audio(str(tmp_path))


def test_undecodable_names_file_and_ffmpeg_reason(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioError, match=r"notes\.wav.*Invalid data"):
        load_audio(str(bad))
    with pytest.raises(AudioError, match=r"<bytes>.*Invalid data"):
        load_audio(b"definitely not audio")
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")
    assert issubclass(AudioError, ValueError)


@pytest.mark.parametrize(
    "source, pattern",
    [
        (np.zeros(10, np.int16), "floating-point dtype.*int16.*32768"),
        (np.zeros(10, np.complex64), "floating-point dtype"),
        (np.array([0.0, np.nan], np.float32), "non-finite.*index 1"),
        (np.array([np.inf, 0.0]), "non-finite"),
        (np.zeros((2, 3, 4), np.float32), "1-D .* or 2-D"),
        (None, "None"),
        ({"array": np.zeros(4)}, "sampling_rate"),
        ({"array": np.zeros(4), "sampling_rate": "16k"}, "sampling_rate.*'16k'"),
        ({"array": np.zeros(4), "sampling_rate": -8000}, "positive"),
        ({"array": np.zeros(4), "sampling_rate": 16000.5}, "whole number"),
        ({"array": np.zeros(4), "sampling_rate": True}, "sampling_rate"),
        ({"text": "hi"}, "'array'"),
    ],
)
def test_bad_inputs_raise_audio_error(source, pattern):
    with pytest.raises(AudioError, match=pattern):
        load_audio(source)


def test_bad_target_rate():
    with pytest.raises(AudioError, match="sampling_rate"):
        load_audio(np.zeros(3, np.float32), sampling_rate="16000")
