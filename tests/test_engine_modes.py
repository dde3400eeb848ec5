"""Long-form modes other than VAD rows on the slot engine (issue 21): chunked windows, prompts, the
sequential seek, the label job.

* a random-init Whisper: chunked windows of several inputs (a silent one among them) through refilled
  slots give the Transcriptions the Decoder's batches give;
* prompts: rows of several prompt lengths in refilled slots, and a call-wide ``prompt_ids``, give the
  Decoder's tokens;
* the sequential seek as chains of rows (random model: slow; tiny.en);
* real tiny.en: the pipeline's chunked (slow) and sequential modes with the engine equal them without
  (``tests/test_refactor_golden.py`` checks the chunked and sequential golden texts through the default
  pipeline, which now decodes them on the engine);
* the label job reaches the engine through the pipeline's default mode.

    .venv/bin/python -m pytest -q tests/test_engine_modes.py              # fast
    .venv/bin/python -m pytest -q -m slow tests/test_engine_modes.py      # the two slow ones
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._audio_helpers import ML_TOKENIZER, require
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.chunked import ChunkedSettings, transcribe_chunked
from whisper_t5x.longform.decoder import Decoder, DecodeRequest
from whisper_t5x.longform.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


# ---------------------------------------------------------------------- random-init Whisper, chunked windows
@pytest.fixture(scope="module")
def random_model():
    """multilingual-80 with the end-of-text row of the token table scaled up (rows end at different lengths),
    with the multilingual tokenizer so windows can be parsed and stitched."""
    from tests import _hf_models as H

    model, params = H.eot_twin("multilingual-80")
    model.tokenizer_file = require(ML_TOKENIZER)
    return model, params


def _noise(seconds, scale, seed):
    return (np.random.RandomState(seed).randn(int(seconds * SR)) * scale).astype(np.float32)


def test_chunked_windows_on_the_engine_give_the_decoders_transcriptions(random_model):
    """With timestamp tokens (the chunked default; rows without them are the VAD rows of test_engine.py)."""
    model, params = random_model
    items = [_noise(70, 0.1, 0), _noise(12, 0.3, 1), np.zeros(SR * 40, np.float32), _noise(45, 0.05, 2)]
    request = DecodeRequest(task="transcribe", language="en", timestamps=True, max_length=40,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    settings = ChunkedSettings(chunk=30 * SR, stride=5 * SR, batch_size=2, silence_threshold=1e-4)
    decoder = Decoder(model, params, batch_size=2)
    want_stats, got_stats = {}, {}
    want = transcribe_chunked(decoder, items, request, settings, stats=want_stats)
    engine = Engine(model, slots=4, encode_batch=2, steps_per_call=8, stats=decoder.stats)
    got = transcribe_chunked(decoder, items, request, settings, stats=got_stats, engine=engine)
    assert got == want
    assert got_stats == want_stats
    # Not vacuous: windows of several inputs decoded in refilled slots, texts of different lengths.
    decoded = want_stats["windows"]
    assert decoded >= 7 and want_stats["quiet_windows"] >= 1 and want_stats["continuation_windows"] >= 1
    assert engine.stats["engine_insert_rows"] == decoded and engine.stats["engine_inserts"] >= 4
    assert len({len(t.text) for t in want if t.text}) >= 3 and want[2].text == ""
    assert all(s.end >= s.start for t in want for s in t.segments) and sum(len(t.segments) for t in want) >= 4


def test_prompt_ids_on_the_engine_and_beams_on_the_decoder(random_model):
    """Chunked windows with a call-wide prompt (``prompt_ids``) decode on the engine with the Decoder's tokens;
    beam search stays on the Decoder."""
    model, params = random_model
    request = DecodeRequest(task="transcribe", language="en", timestamps=True, max_length=24,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    settings = ChunkedSettings(chunk=30 * SR, stride=5 * SR, batch_size=2, silence_threshold=1e-4)
    decoder = Decoder(model, params, batch_size=2)
    engine = Engine(model, slots=2, encode_batch=2)
    items, prompt = [_noise(10, 0.1, 3), _noise(5, 0.2, 4)], (1000, 2000, 3000)
    got = transcribe_chunked(decoder, items, request, settings, prompt=prompt, engine=engine)
    assert engine.stats["engine_insert_rows"] == 2
    assert got == transcribe_chunked(decoder, items, request, settings, prompt=prompt)
    assert got != transcribe_chunked(decoder, items, request, settings)  # the prompt mattered
    beams = DecodeRequest(task="transcribe", language="en", timestamps=True, max_length=24, num_beams=2,
                          fallback=fb.FallbackConfig(temperatures=(0.0,)))
    programs = engine.num_programs
    transcribe_chunked(decoder, items[:1], beams, settings, engine=engine)
    assert engine.num_programs == programs and engine.stats["engine_insert_rows"] == 2


# ---------------------------------------------------------------------- prompts
def test_prompted_rows_in_refilled_slots_give_the_decoders_tokens(random_model):
    """Rows with prompts of several lengths (none, 3 tokens, 20 -> its last 16) share 2 slots: each row's
    tokens are the Decoder's for that row and prompt; a call-wide prompt (``prompt_ids``) too."""
    from tests import _hf_models as H
    from whisper_t5x.longform.decoder import Row

    model, params = random_model
    feats = np.stack([H.random_features(1, 80, seed=s)[0] * (0.5 + 0.2 * s) for s in range(6)])
    rng = np.random.RandomState(0)
    prompts = [(), tuple(rng.randint(300, 20000, 3)), tuple(rng.randint(300, 20000, 20))]
    row_prompts = [prompts[k % 3] for k in range(len(feats))]
    request = DecodeRequest(task="transcribe", language="en", timestamps=False, max_length=48,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    decoder = Decoder(model, params, batch_size=1)
    want = decoder.decode([Row(f, p) for f, p in zip(feats, row_prompts)], request)
    eng = Engine(model, slots=2, encode_batch=1, steps_per_call=16)
    got = eng.decode(params, [(k, f, p) for k, (f, p) in enumerate(zip(feats, row_prompts))], request, prompts=True)
    for k, w in enumerate(want):
        assert got[k].tokens == w.tokens, k
        assert got[k].avg_logprob == pytest.approx(w.avg_logprob, abs=1e-4)
    # Programs: an insert per prompt length; the generate programs do not depend on the prompts.
    keys = eng.program_keys()
    assert len([k for k in keys if k[0] == "insert"]) == 3 and len([k for k in keys if k[0] == "generate"]) <= 2 * 2
    # Not vacuous: the prompts change the rows' tokens.
    unprompted = eng.decode(params, [(k, f, ()) for k, f in enumerate(feats)], request, prompts=True)
    assert sum(unprompted[k].tokens != got[k].tokens for k in range(len(feats)) if row_prompts[k]) >= 3
    # A call-wide prompt: every row with it, as the Decoder's submit gives it.
    got = eng.decode(params, list(enumerate(feats[:2])), request, prompt=prompts[2])
    want = decoder.decode([Row(f, prompts[2]) for f in feats[:2]], request)
    assert [got[k].tokens for k in range(2)] == [w.tokens for w in want]
    assert len(eng.program_keys()) == len(keys)  # same programs


# ---------------------------------------------------------------------- the sequential seek
def _same_transcriptions(got, want):
    """Same text, segments, tokens and times; statistics to float32 rounding (the Decoder's average
    log-probability is divided on the device, the engine's on the host)."""
    assert [g.text for g in got] == [w.text for w in want]
    for g, w in zip(got, want):
        assert len(g.segments) == len(w.segments)
        for a, b in zip(g.segments, w.segments):
            assert (a.start, a.end, a.text, a.tokens, a.seek, a.temperature) == (b.start, b.end, b.text, b.tokens,
                                                                                b.seek, b.temperature)
            assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-5)
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-5)


@pytest.mark.slow  # ~65 s CPU (prompt buckets compile on both paths); the tiny.en test below is the fast check
def test_sequential_seek_on_the_engine_gives_the_decoders_transcriptions(random_model):
    """Each input a chain of windows (the next one prompted with the text so far: its last 16 tokens),
    three inputs sharing two slots: the same seek log and text as the Decoder's batches."""
    from whisper_t5x.longform.sequential import SequentialOptions, run_sequential

    model, params = random_model
    items = [_noise(50, 0.1, 5), _noise(8, 0.3, 6), _noise(35, 0.05, 7)]
    request = DecodeRequest(task="transcribe", language="en", fallback=fb.FallbackConfig(temperatures=(0.0,)),
                            prompt_buckets=(16,))
    options = SequentialOptions(initial_prompt=(1000, 2000))
    decoder = Decoder(model, params, batch_size=2)
    want = run_sequential(decoder, items, request, options)
    engine = Engine(model, slots=2, encode_batch=2, steps_per_call=16)
    got = run_sequential(decoder, items, request, options, engine=engine)
    _same_transcriptions(got, want)
    windows = sum(len({s.seek for s in t.segments}) for t in want)
    assert windows >= 5 and engine.stats["engine_insert_rows"] >= windows  # not vacuous: chains of windows


# ---------------------------------------------------------------------- real tiny.en
@pytest.fixture(scope="module")
def pipes():
    from whisper_t5x import FlaxWhisperPipeline

    on = FlaxWhisperPipeline("tiny.en", batch_size=2, decode_slots=4, fallback=False)
    off = FlaxWhisperPipeline((on.model, on.decoder.params), batch_size=2, engine=False, fallback=False)
    return on, off


@pytest.mark.slow  # ~50 s CPU; test_refactor_golden's jfk test runs chunked tiny.en on the engine by default
def test_chunked_pipeline_on_the_engine_equals_the_decoder(pipes):
    """Three inputs of one to three windows; the long one's windows stop early, so continuation windows
    join the slots while the other inputs' windows decode."""
    from whisper_t5x.audio.loading import load_audio

    on, off = pipes
    jfk = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    gap = np.zeros(SR * 2, np.float32)
    inputs = [jfk, np.concatenate([jfk[:SR * 4], gap, jfk, gap, jfk, gap, jfk, gap, jfk]), jfk[:SR * 3]]
    want = off(inputs, long_form="chunked", return_timestamps=True)
    got = on(inputs, long_form="chunked", return_timestamps=True)
    assert got == want
    st = on.last_stats
    assert st["continuation_windows"] >= 1 and st.get("engine_generate_calls", 0) >= 1
    assert st["engine_insert_rows"] == st["windows"]
    assert "engine_generate_calls" not in off.last_stats
    assert "ask not what your country" in got[0]["text"].lower()


# ---------------------------------------------------------------------- the label job
@pytest.fixture(scope="module")
def speech_parquet(tmp_path_factory):
    from tests._speech import ESPEAK, synthesize_file

    datasets = pytest.importorskip("datasets")
    if ESPEAK is None:
        pytest.skip("espeak-ng not installed")
    texts = ["The cat sat on the mat.", "Open the door please, it is cold outside.", "We walk to school."]
    rows = {"id": [f"r{i}" for i in range(len(texts))], "audio": [], "text": texts}
    for i, t in enumerate(texts):
        with open(synthesize_file(t), "rb") as f:
            rows["audio"].append({"bytes": f.read(), "path": f"r{i}.wav"})
    root = tmp_path_factory.mktemp("engine_label")
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    ds.to_parquet(str(root / "train.parquet"))
    return str(root)


def test_the_label_job_decodes_on_the_engine(speech_parquet, tmp_path, monkeypatch):
    """``whisper-t5x label`` builds the pipeline itself (default mode, one process: no partitioner), and its
    VAD rows decode on the engine (whose text equals the Decoder's: test_engine.py)."""
    import pyarrow.dataset as pads

    from whisper_t5x.app.label import main

    calls = []
    decode = Engine.decode

    def counted(self, params, rows, request, on_result=None, **kw):
        got = decode(self, params, rows, request, on_result, **kw)
        calls.append(len(got))
        return got

    monkeypatch.setattr(Engine, "decode", counted)
    argv = ["whisper-t5x", "--dataset", speech_parquet, "--output_dir", str(tmp_path), "--model", "tiny.en",
            "--language", "en", "--quiet", "--gin.DecodeSection.temperature=0.0"]
    assert main(argv) == 0
    rows = {r["id"]: r for r in pads.dataset(os.path.join(tmp_path, "data"), format="parquet").to_table().to_pylist()}
    assert sorted(rows) == ["r0", "r1", "r2"] and all(r["error"] is None for r in rows.values())
    assert sum(calls) == 3  # every row's speech decoded on the engine
    assert "door" in rows["r1"]["text"].lower() and rows["r1"]["segments"]


def test_sequential_pipeline_on_the_engine_equals_the_decoder(pipes):
    from whisper_t5x.audio.loading import load_audio

    on, off = pipes
    jfk = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    gap = np.zeros(SR * 2, np.float32)
    inputs = [jfk, np.concatenate([jfk[:SR * 4], gap, jfk, gap, jfk, gap, jfk, gap, jfk]), jfk[:SR * 3]]
    want = off.transcribe(inputs, long_form="sequential", return_timestamps=True)
    got = on.transcribe(inputs, long_form="sequential", return_timestamps=True)
    _same_transcriptions(got, want)
    assert len({s.seek for s in got[1].segments}) >= 2 and on.last_stats.get("engine_generate_calls", 0) >= 1
    assert "engine_generate_calls" not in off.last_stats
