"""Encoded inputs through the pipeline (tiny.en): what issue 13 item 4 saw return empty text."""

import os
import shutil
import subprocess
import wave

import pytest

from whisper_t5x.audio.loading import AudioError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(REPO, "samples", "jfk.flac")

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or not os.path.exists(JFK),
                                reason="needs ffmpeg and samples/jfk.flac")


@pytest.fixture(scope="module")
def tiny():
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    try:
        return FlaxWhisperPipeline("tiny.en")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"tiny.en not available: {e}")


def test_m4a_bytes_with_the_index_at_the_end_are_transcribed(tiny, tmp_path):
    path = tmp_path / "jfk.m4a"
    done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", JFK, "-c:a", "aac", str(path)],
                          capture_output=True, timeout=120)
    if done.returncode:
        pytest.skip("this ffmpeg has no AAC encoder")
    data = path.read_bytes()
    assert 0 < data.find(b"mdat") < data.find(b"moov")
    text = tiny(data)["text"].lower()  # was "" before: ffmpeg could not seek the pipe
    assert "ask not what your country can do for you" in text


def test_bytes_that_decode_to_nothing_are_an_error_not_an_empty_transcript(tiny, tmp_path):
    path = tmp_path / "header_only.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(AudioError, match="no audio samples"):
        tiny(path.read_bytes())
