"""Tests for whisper_t5x.audio.loading: every input form, resampling, mixing and every error."""

import io
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from tests._audio_helpers import JFK_FLAC, needs_jfk
from whisper_t5x.audio import loading as audio
from whisper_t5x.audio.loading import AudioError, AudioTooLongError, EmptyAudioError, get_duration, load_audio

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")


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


def _ffmpeg(*args):
    done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], capture_output=True,
                          timeout=120)
    if done.returncode:
        pytest.skip(f"this ffmpeg cannot run {args}: {done.stderr.decode(errors='replace')[-200:]}")


# ------------------------------------------------------------------ seekable decoding (issue 13, item 4)
@needs_jfk
@needs_ffmpeg
@pytest.mark.parametrize("ext", ["m4a", "mp4"])
def test_mp4_with_index_at_the_end_decodes_from_bytes(jfk, tmp_path, ext):
    path = tmp_path / f"jfk.{ext}"
    _ffmpeg("-i", JFK_FLAC, "-c:a", "aac", "-b:a", "96k", path)  # no +faststart: ffmpeg's default layout
    data = path.read_bytes()
    assert 0 < data.find(b"mdat") < data.find(b"moov"), "the index (moov) must come after the samples (mdat)"
    from_path = load_audio(str(path))
    assert abs(from_path.shape[0] - jfk.shape[0]) < 2048  # AAC frames of 1024 samples
    n = min(from_path.shape[0], jfk.shape[0])
    assert np.corrcoef(from_path[:n], jfk[:n])[0, 1] > 0.99
    # Through a pipe ffmpeg cannot seek to the index: this came back as an empty array.
    for form in (data, bytearray(data), io.BytesIO(data), {"bytes": data}):
        np.testing.assert_array_equal(load_audio(form), from_path)
    assert get_duration(data) == pytest.approx(11.0, abs=0.1)


@needs_ffmpeg
def test_zero_samples_from_a_non_empty_input_is_a_named_error(tmp_path):
    import wave

    header_only = tmp_path / "header_only.wav"
    with wave.open(str(header_only), "wb") as w:  # a valid WAV holding no frames
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    for source in (str(header_only), header_only.read_bytes()):
        with pytest.raises(EmptyAudioError, match="no audio samples"):
            load_audio(source)
    empty_file = tmp_path / "empty.flac"
    empty_file.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty"):
        load_audio(str(empty_file))
    with pytest.raises(EmptyAudioError, match="empty"):
        load_audio(b"")
    assert issubclass(EmptyAudioError, AudioError)


@needs_ffmpeg
def test_ffmpeg_errors_on_bytes_do_not_name_the_temporary_copy(tmp_path):
    with pytest.raises(AudioError) as info:
        load_audio(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 4000)  # an m4a header and nothing else
    assert "<bytes>" in str(info.value) and "whisper_t5x-audio-" not in str(info.value)
    assert "/tmp" not in str(info.value)


# ------------------------------------------------------------------ length limit (issue 13, item 5)
BOMB_S = 7200.0  # two hours of silence: about 1.3 MB of FLAC, 460 MB as 16 kHz float32


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Two hours of silence as FLAC with a duration in its header, and the same streamed (no duration)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg binary")
    d = tmp_path_factory.mktemp("bombs")
    with_header = d / "silence_2h.flac"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", BOMB_S, "-c:a", "flac", with_header)
    streamed = d / "silence_2h_streamed.flac"  # written to a pipe: STREAMINFO holds no sample count
    with open(streamed, "wb") as f:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                        "-t", str(BOMB_S), "-c:a", "flac", "-f", "flac", "pipe:1"], stdout=f, check=True, timeout=120)
    assert with_header.stat().st_size < 2_000_000
    assert audio.probe_duration(str(with_header)) == pytest.approx(BOMB_S)
    assert audio.probe_duration(str(streamed)) is None
    return with_header, streamed


class _PeakRSS:
    """Samples this process's resident memory every 2 ms while in the ``with`` block."""

    def __enter__(self):
        psutil = pytest.importorskip("psutil")
        self._proc = psutil.Process()
        self.before = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = self._proc.memory_info().rss
        self.peak = max(self.peak, self.after)
        self.growth_mb = (self.peak - self.before) / 2 ** 20
        self.retained_mb = (self.after - self.before) / 2 ** 20


@pytest.mark.parametrize("kind", ["path", "bytes", "streamed path", "streamed bytes"])
def test_decompression_bomb_is_rejected_quickly_in_bounded_memory(bombs, kind):
    path = bombs[1] if kind.startswith("streamed") else bombs[0]
    source = path.read_bytes() if kind.endswith("bytes") else str(path)
    limit = 60.0
    load_audio(np.zeros(10, np.float32))  # warm the imports outside the measurement
    t0 = time.perf_counter()
    with _PeakRSS() as rss, pytest.raises(AudioTooLongError) as info:
        load_audio(source, max_duration_s=limit)
    elapsed = time.perf_counter() - t0
    err = info.value
    assert err.limit_s == limit and isinstance(err, AudioError)
    if kind.startswith("streamed"):  # no metadata: a decode capped at the limit decided
        assert err.duration_s is None and "longer than the limit of 60 s" in str(err)
    else:  # the header decided, nothing was decoded
        assert err.duration_s == pytest.approx(BOMB_S) and "7200.0 s long" in str(err)
    # Decoding it all took 7.2 s and +928 MB RSS (peak 1.39 GB) here; the limit's buffer is 3.7 MB.
    assert elapsed < 5.0, elapsed
    assert rss.growth_mb < 40, (rss.growth_mb, rss.retained_mb)
    assert rss.retained_mb < 20, rss.retained_mb


@needs_jfk
def test_limit_boundaries_and_arrays(jfk):
    np.testing.assert_array_equal(load_audio(JFK_FLAC, max_duration_s=11.0), jfk)  # exactly at the limit: kept
    np.testing.assert_array_equal(load_audio(open(JFK_FLAC, "rb").read(), max_duration_s=11.5), jfk)
    with pytest.raises(AudioTooLongError) as info:  # header says 11 s, within the 1 s margin: the decode decides
        load_audio(JFK_FLAC, max_duration_s=10.5)
    assert info.value.duration_s == pytest.approx(11.0) and info.value.limit_s == 10.5
    with pytest.raises(AudioTooLongError, match="limit of 5 s"):
        load_audio(JFK_FLAC, max_duration_s=5)
    # arrays and dicts: by their length (a dict's at its own rate, before resampling)
    assert load_audio(np.zeros(16000, np.float32), max_duration_s=1.0).shape == (16000,)
    with pytest.raises(AudioTooLongError) as info:
        load_audio(np.zeros(16001, np.float32), max_duration_s=1.0)
    assert info.value.duration_s == pytest.approx(16001 / 16000)
    with pytest.raises(AudioTooLongError) as info:
        load_audio({"array": np.zeros((2 * 44100, 2), np.float32), "sampling_rate": 44100}, max_duration_s=1.5)
    assert info.value.duration_s == pytest.approx(2.0)
    import pickle

    back = pickle.loads(pickle.dumps(info.value))
    assert (type(back), back.duration_s, back.limit_s, str(back)) == (
        AudioTooLongError, info.value.duration_s, 1.5, str(info.value))
    for bad in (0, -1, float("nan"), "60", True):
        with pytest.raises(ValueError, match="max_duration_s"):
            load_audio(jfk, max_duration_s=bad)


@needs_jfk
@needs_ffmpeg
def test_get_duration_uses_metadata_and_counts_streams_without_it(bombs, tmp_path):
    t0 = time.perf_counter()
    assert get_duration(str(bombs[0])) == pytest.approx(BOMB_S)  # from the header: no decode
    assert time.perf_counter() - t0 < 2.0
    streamed = tmp_path / "jfk_streamed.flac"
    with open(streamed, "wb") as f:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", JFK_FLAC, "-f", "flac", "pipe:1"], stdout=f,
                       check=True, timeout=60)
    assert audio.probe_duration(str(streamed)) is None
    assert get_duration(str(streamed)) == pytest.approx(11.0, abs=1e-3)  # samples counted
    assert get_duration({"bytes": streamed.read_bytes()}) == pytest.approx(11.0, abs=1e-3)
