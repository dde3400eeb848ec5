"""A model-free pipeline and a small tone dataset for ``whisper-t5x label`` tests in subprocesses.

:class:`SlowPipeline` is what ``--gin.PartitionSection.pipeline='tests._label_fakes:SlowPipeline'``
builds: it says how many samples each input has, after ``LABEL_FAKE_DELAY_S`` seconds per input
(so concurrent runs overlap).
"""

import io
import os
import time
import wave

import numpy as np

from whisper_t5x.results import Segment, Transcription


def wav_bytes(seconds: float, freq: float = 440.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.2 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_tone_dataset(path: str, ids, step_s: float = 0.01) -> str:
    """A Parquet file of tones (``id``, ``audio`` as ``datasets.Audio``, ``text``): row i lasts 0.2 + i * step_s s."""
    import datasets

    rows = {"id": list(ids), "audio": [], "text": []}
    for i, _ in enumerate(rows["id"]):
        rows["audio"].append({"bytes": wav_bytes(0.2 + i * step_s), "path": f"tone{i}.wav"})
        rows["text"].append(f"{int((0.2 + i * step_s) * 16000)} samples")
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    ds.cast_column("audio", datasets.Audio()).to_parquet(path)
    return path


class SlowPipeline:
    """Stands in for FlaxWhisperPipeline (any constructor arguments); see the module docstring."""

    def __init__(self, **kwargs):
        self.delay_s = float(os.environ.get("LABEL_FAKE_DELAY_S", "0"))

    def transcribe(self, inputs, **kwargs):
        out = []
        for x in inputs:
            time.sleep(self.delay_s)
            n = x["array"].shape[0]
            dur = n / 16000
            out.append(Transcription(f" {n} samples", (Segment(0.0, dur, f" {n} samples"),), "en", dur))
        return out
