"""Fakes shared by the serving tests: a pipeline that answers ``"n=<samples>"``, WAV bytes, an in-process API."""

from __future__ import annotations

import io
import threading
import time
import wave

import numpy as np
import pytest

from whisper_t5x.app.config import ModelSection, PartitionSection, ServeConfig
from whisper_t5x.app.serving.service import Service
from whisper_t5x.results import Segment, Transcription, Word


def serve_settings(model: str = "fake", max_batch_size=None, **fields) -> ServeConfig:
    """A ServeConfig with ``model`` and ``max_batch_size`` in their sections, the rest at their defaults."""
    import gin

    gin.clear_config()  # nothing bound by an earlier test
    return ServeConfig(model=ModelSection(name=model), partition=PartitionSection(batch_size=max_batch_size),
                       **fields)


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


class FakeTokenizer:
    is_multilingual = True
    num_languages = 99

    def language_code(self, language):
        from whisper_t5x.text.languages import to_code

        return to_code(language)

    def sot_sequence(self, language=None, task=None, timestamps=False):
        return [0]

    def encode(self, text):
        return [ord(c) for c in text]


class FakePipeline:
    """Answers ``"n=<samples>"`` per input; an input starting with 0.5 raises; records call sizes."""

    decode_with_timestamps = True

    def __init__(self, delay: float = 0.0, gate: threading.Event = None):
        self.tokenizer = FakeTokenizer()
        self.calls = []
        self.kwargs = []
        self.delay = delay
        self.gate = gate

    def transcribe(self, inputs, task=None, language=None, return_timestamps=False, chunk_length_s=30.0,
                   batch_size=None, generate_kwargs=None, **_):
        self.calls.append(len(inputs))
        self.kwargs.append(dict(task=task, language=language, generate_kwargs=generate_kwargs))
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        self.kwargs[-1]["return_timestamps"] = return_timestamps
        out = []
        for a in inputs:
            if a.shape[0] and abs(float(a[0]) - 0.5) < 1e-3:
                raise ValueError("poisoned input")
            n = a.shape[0]
            d = n / 16000
            tokens = tuple(ord(c) for c in f" n={n}")
            if return_timestamps == "word":  # segments carry their words
                words = (Word(0.0, d / 2, " n=", 0.9), Word(d / 2, d, f" {n}", 0.8))
                seg = Segment(0.0, d, f" n={n}", tokens=tokens, words=words)
            else:  # each segment with its tokens and its window's statistics
                seg = Segment(0.0, d, f" n={n}", tokens=tokens, avg_logprob=-0.25, no_speech_prob=0.125,
                              compression_ratio=1.5, temperature=0.0)
            out.append(Transcription(f" n={n}", (seg,), "en", d))
        return out


@pytest.fixture()
def fake_app():
    from fastapi.testclient import TestClient

    from whisper_t5x.app.serving import create_app

    def make(**overrides):
        values = dict(model="fake", ui=False, warmup=False, max_upload_mb=0.5, max_audio_s=5.0, max_batch_delay_ms=1.0)
        settings = serve_settings(**{**values, **overrides})
        pipe = FakePipeline()
        service = Service(settings, pipeline=pipe)
        client = TestClient(create_app(service))
        client.__enter__()
        assert service.wait_ready(10)
        made.append(client)
        return client, service, pipe

    made = []
    yield make
    for c in made:
        c.__exit__(None, None, None)


def post_audio(client, data, key=None, path="/v1/audio/transcriptions", **fields):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(path, files={"file": ("a.wav", data, "audio/wav")}, data=fields, headers=headers)


def assert_error(r, status, code=None, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
