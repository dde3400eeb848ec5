"""Texts before and after the [2/4] redesign: the same for chunked and sequential decoding.

``tests/data/golden_texts_tiny_en.json`` was written by v0.1 (commit 98b6d6b, before the Decoder, the
row parser and typed results existed) with ``tiny.en``: jfk.flac and 2.5 minutes of espeak-ng speech
(``LONG_TEXT``), decoded chunked (with and without timestamps) and sequentially, default fallback.
A change of decoding that moves any of these texts must update the file deliberately.
"""

import json
import os

import pytest

from tests._speech import LONG_TEXT, needs_espeak, synthesize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = json.load(open(os.path.join(ROOT, "tests", "data", "golden_texts_tiny_en.json"), encoding="utf-8"))


@pytest.fixture(scope="module")
def pipe():
    from whisper_t5x import FlaxWhisperPipeline

    return FlaxWhisperPipeline("tiny.en")


def _texts(pipe, audio):
    return {
        "chunked": pipe(audio, long_form="chunked")["text"],
        "chunked_ts": pipe(audio, return_timestamps=True, long_form="chunked")["text"],
        "sequential": pipe(audio, long_form="sequential")["text"],
    }


def test_jfk_unchanged(pipe):
    got = _texts(pipe, os.path.join(ROOT, "samples", "jfk.flac"))
    assert got == {k: GOLDEN[f"jfk/{k}"] for k in got}


@needs_espeak
def test_two_minutes_unchanged(pipe):
    got = _texts(pipe, synthesize(LONG_TEXT))
    for mode, text in got.items():
        assert text == GOLDEN[f"long/{mode}"], mode
