"""The transcription endpoint (whisper_t5x.app.serving): batcher, REST API, Gradio client, browser.

Three layers, fastest first:

* the batcher and the API's limits/errors against a fake pipeline (in-process,
  no model, milliseconds);
* one real ``python -m whisper_t5x.app.serving --model tiny.en`` subprocess on a
  free port (module fixture, always stopped): health, every response format,
  the Gradio client, 8 concurrent clients plus a corrupt upload, the API key;
* headless Chromium driving the UI, logged in with the API key (skipped without
  Playwright or chromium; ``WHISPER_T5X_UPDATE_SCREENSHOT=1`` refreshes
  benchmarks/results/serving_ui.png).

Security: tests/test_serving_security.py; disconnects, limits and flags:
tests/test_serving_robustness.py; the fakes: tests/_serving_fakes.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402

from tests._server_helpers import REPO, ServerProcess  # noqa: E402
from tests._serving_fakes import FakePipeline, assert_error, fake_app, post_audio, serve_settings, wav_bytes  # noqa: E402,F401,F811,E501
from whisper_t5x.app.serving.batcher import Batcher, DecodeOptions, QueueFull  # noqa: E402
from whisper_t5x.app.serving.service import Service  # noqa: E402

JFK = os.path.join(REPO, "samples", "jfk.flac")
JFK_TEXT = "And so my fellow Americans ask not what your country can do for you ask what you can do for your country"
API_KEY = "test-key-123"
ESPEAK = shutil.which("espeak-ng")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please bring the red umbrella to the train station.",
    "Seven green apples are sitting on the kitchen table.",
    "My grandmother plays the piano every Sunday morning.",
    "The library closes early on Friday evenings.",
    "We watched the rocket launch from the sandy beach.",
    "Turn left at the bakery and walk two more blocks.",
]


# ============================================================== helpers
def words(text: str):
    return re.findall(r"[a-z0-9']+", text.lower())


def recall(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), set(words(hypothesis))
    return sum(w in hyp for w in ref) / max(1, len(ref))


# ============================================================== batcher
def test_batcher_groups_concurrent_requests_and_keeps_them_apart():
    pipe = FakePipeline()
    b = Batcher(pipe, max_batch_size=8, max_delay_s=0.3, trim_to_bucket=False)
    try:
        opts = DecodeOptions()
        futs = [b.submit(np.zeros(1000 + i, np.float32), opts) for i in range(5)]
        assert [f.result(5).text for f in futs] == [f" n={1000 + i}" for i in range(5)]
        assert pipe.calls == [5]
        # Different options are never mixed in one call.
        f1 = b.submit(np.zeros(10, np.float32), DecodeOptions(task="transcribe"))
        f2 = b.submit(np.zeros(11, np.float32), DecodeOptions(task="translate"))
        assert (f1.result(5).text, f2.result(5).text) == (" n=10", " n=11")
        assert pipe.calls[1:] == [1, 1]
        assert {k["task"] for k in pipe.kwargs[1:]} == {"transcribe", "translate"}
    finally:
        b.stop()


def test_batcher_group_is_bounded_by_windows():
    pipe = FakePipeline()
    b = Batcher(pipe, max_batch_size=2, max_delay_s=0.3)
    try:
        long = np.zeros(16000 * 50, np.float32)  # 3 windows: alone
        futs = [b.submit(x, DecodeOptions()) for x in (np.zeros(5, np.float32), long, np.zeros(6, np.float32))]
        for f in futs:
            f.result(5)
        assert sorted(pipe.calls) == [1, 2]
    finally:
        b.stop()


def test_batcher_trims_short_groups_to_a_bucket():
    pipe = FakePipeline()
    b = Batcher(pipe, max_batch_size=8, max_delay_s=0.3, trim_to_bucket=True)
    try:
        futs = [b.submit(np.zeros(100 + i, np.float32), DecodeOptions()) for i in range(7)]
        assert [f.result(5).text for f in futs] == [f" n={100 + i}" for i in range(7)]
        assert pipe.calls == [4, 2, 1]  # no padding rows; arrival order kept
    finally:
        b.stop()


def test_batcher_waits_only_for_announced_requests():
    pipe = FakePipeline()
    b = Batcher(pipe, max_batch_size=8, max_delay_s=3.0, trim_to_bucket=False, announce=True)
    opts = DecodeOptions()
    try:
        t = time.monotonic()
        assert b.submit(np.zeros(10, np.float32), opts).result(5).text == " n=10"
        assert time.monotonic() - t < 1.5  # alone: not held back for the 3 s delay
        # A request still on its way (being received/decoded): the group waits for it.
        release = threading.Event()

        def arrive(n, fail=False):
            with b.arriving():
                release.wait(5)
                if fail:
                    raise ValueError("bad upload")
                return b.submit(np.zeros(n, np.float32), opts)

        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            later = ex.submit(arrive, 12)
            while b._arriving == 0:
                time.sleep(0.005)
            first = b.submit(np.zeros(11, np.float32), opts)
            time.sleep(0.3)
            assert not first.done()
            release.set()
            assert (first.result(5).text, later.result(5).result(5).text) == (" n=11", " n=12")
            assert pipe.calls[-1] == 2
            # One that fails before it is submitted ends the wait too.
            release.clear()
            failing = ex.submit(arrive, 13, True)
            while b._arriving == 0:
                time.sleep(0.005)
            first = b.submit(np.zeros(14, np.float32), opts)
            t = time.monotonic()
            release.set()
            assert first.result(5).text == " n=14" and time.monotonic() - t < 1.5
            with pytest.raises(ValueError):
                failing.result(5)
    finally:
        release.set()
        b.stop()


def test_batcher_failure_costs_only_the_failing_request():
    pipe = FakePipeline()
    b = Batcher(pipe, max_batch_size=8, max_delay_s=0.3, trim_to_bucket=False)
    try:
        bad = np.full(100, 0.5, np.float32)
        futs = [b.submit(x, DecodeOptions()) for x in (np.zeros(7, np.float32), bad, np.zeros(9, np.float32))]
        assert futs[0].result(5).text == " n=7"
        assert futs[2].result(5).text == " n=9"
        with pytest.raises(ValueError, match="poisoned"):
            futs[1].result(5)
        assert pipe.calls == [3, 1, 1, 1]
        assert b.submit(np.zeros(3, np.float32), DecodeOptions()).result(5).text == " n=3"  # still serving
    finally:
        b.stop()


def test_batcher_queue_limit_and_cancelled_requests():
    gate = threading.Event()
    pipe = FakePipeline(gate=gate)
    b = Batcher(pipe, max_batch_size=1, max_delay_s=0.0, max_queue=2)
    try:
        first = b.submit(np.zeros(1, np.float32), DecodeOptions())
        deadline = time.monotonic() + 5
        while not pipe.calls and time.monotonic() < deadline:  # the worker holds `first`
            time.sleep(0.01)
        waiting = [b.submit(np.zeros(2 + i, np.float32), DecodeOptions()) for i in range(2)]
        with pytest.raises(QueueFull):
            b.submit(np.zeros(9, np.float32), DecodeOptions())
        assert waiting[0].cancel()  # the caller gave up: never decoded
        gate.set()
        assert first.result(5).text == " n=1"
        assert waiting[1].result(5).text == " n=3"
        assert pipe.calls == [1, 1]
    finally:
        gate.set()
        b.stop()


def test_batcher_cancelled_requests_free_their_queue_slots():
    gate = threading.Event()
    pipe = FakePipeline(gate=gate)
    b = Batcher(pipe, max_batch_size=1, max_delay_s=0.0, max_queue=2)
    try:
        first = b.submit(np.zeros(1, np.float32), DecodeOptions())
        deadline = time.monotonic() + 5
        while not pipe.calls and time.monotonic() < deadline:  # the worker is busy with `first`
            time.sleep(0.01)
        gave_up = [b.submit(np.zeros(2 + i, np.float32), DecodeOptions()) for i in range(2)]
        assert all(f.cancel() for f in gave_up)  # their callers timed out / disconnected
        assert b.queue_length == 0
        # While the worker is still busy, new requests get the freed slots (no spurious QueueFull).
        fresh = [b.submit(np.zeros(7 + i, np.float32), DecodeOptions()) for i in range(2)]
        with pytest.raises(QueueFull):
            b.submit(np.zeros(9, np.float32), DecodeOptions())
        gate.set()
        assert [f.result(5).text for f in [first] + fresh] == [" n=1", " n=7", " n=8"]
        assert pipe.calls == [1, 1, 1] and b.stats["dropped"] == 2
    finally:
        gate.set()
        b.stop()


def test_warmup_compiles_plain_and_word_timestamp_programs_per_bucket():
    pipe = FakePipeline()
    service = Service(serve_settings(model="fake", ui=False, warmup=True, max_batch_size=4), pipeline=pipe)
    service.start(background=False)
    try:
        assert service.ready
        warm = [(n, kw["return_timestamps"]) for n, kw in zip(pipe.calls, pipe.kwargs)]
        # FakePipeline decodes with timestamp tokens anyway: one plain program per bucket, plus the word path.
        assert warm == [(1, False), (2, False), (4, False), (1, "word"), (2, "word"), (4, "word")]
    finally:
        service.stop()
    pipe = FakePipeline()
    service = Service(serve_settings(model="fake", ui=False, warmup=True, warmup_timestamps=False,
                                      max_batch_size=2), pipeline=pipe)
    service.start(background=False)
    service.stop()
    assert [kw["return_timestamps"] for kw in pipe.kwargs] == [False, False]


# ============================================================== API against a fake pipeline
def test_api_errors_and_limits_fake_pipeline(fake_app):
    client, service, pipe = fake_app()
    one_s = wav_bytes(np.full(16000, 0.1, np.float32))
    r = post_audio(client, one_s)
    assert r.status_code == 200 and r.json() == {"text": "n=16000"}
    assert_error(post_audio(client, b""), 400, "empty_file", "file")
    r = post_audio(client, b"this is not audio at all" * 10)
    assert_error(r, 400, "invalid_audio", "file")
    assert not re.search(r"(^|[\s'\"])/", r.json()["error"]["message"]), r.text  # no server path (temp copy)
    assert_error(post_audio(client, wav_bytes(np.zeros(16000 * 6, np.float32))), 400, "audio_too_long")
    assert_error(post_audio(client, b"RIFF" + os.urandom(600 * 1024)), 413, "file_too_large")
    assert_error(post_audio(client, one_s, response_format="xml"), 400, param="response_format")
    assert_error(post_audio(client, one_s, language="klingon"), 400, "unsupported_language", "language")
    assert_error(post_audio(client, one_s, temperature="hot"), 400, param="temperature")
    # Word timestamps need verbose_json (as OpenAI's API).
    assert_error(post_audio(client, one_s, **{"timestamp_granularities[]": "word"}), 400, "unsupported_value",
                  "timestamp_granularities[]")
    assert_error(post_audio(client, one_s, response_format="srt", **{"timestamp_granularities[]": "word"}), 400,
                  "unsupported_value")
    assert_error(post_audio(client, one_s, **{"timestamp_granularities[]": "line"}), 400)
    assert_error(client.post("/v1/audio/transcriptions", json={"file": "x"}), 400, "invalid_content_type")
    assert_error(client.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                              files={"other": ("x", b"1")}), 400, "missing_file")
    # OpenAI's parameters reach the pipeline.
    r = post_audio(client, one_s, path="/v1/audio/translations", language="german", prompt="Hallo.", temperature="0.4")
    assert r.status_code == 200
    kw = pipe.kwargs[-1]
    assert kw["task"] == "translate" and kw["language"] == "de"
    assert kw["generate_kwargs"]["temperature"] == pytest.approx(0.4)
    assert list(kw["generate_kwargs"]["prompt_ids"]) == [ord(c) for c in " Hallo."]
    assert post_audio(client, one_s).status_code == 200  # errors left the server healthy


def test_verbose_json_words_and_segment_statistics_fake_pipeline(fake_app):
    client, service, pipe = fake_app()
    one_s = wav_bytes(np.full(16000, 0.1, np.float32))
    r = post_audio(client, one_s, response_format="verbose_json")
    assert r.status_code == 200, r.text
    v = r.json()
    assert "words" not in v and pipe.kwargs[-1]["return_timestamps"] is True
    (seg,) = v["segments"]
    assert (seg["avg_logprob"], seg["no_speech_prob"], seg["compression_ratio"], seg["temperature"]) == (
        -0.25, 0.125, 1.5, 0.0)
    assert seg["tokens"] == [ord(c) for c in " n=16000"]  # the segment's own tokens, not re-encoded text
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", one_s, "audio/wav")},
                    data={"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]})
    assert r.status_code == 200, r.text
    v = r.json()
    assert pipe.kwargs[-1]["return_timestamps"] == "word"
    assert v["words"] == [{"word": "n=", "start": 0.0, "end": 0.5}, {"word": "16000", "start": 0.5, "end": 1.0}]
    assert [(s["start"], s["end"], s["text"]) for s in v["segments"]] == [(0.0, 1.0, "n=16000")]
    assert v["text"] == "n=16000" and v["language"] == "english"


def test_api_key_and_timeout_fake_pipeline(fake_app):
    client, service, pipe = fake_app(api_key="s3cret", request_timeout_s=0.3)
    audio = wav_bytes(np.full(1600, 0.1, np.float32))
    assert_error(post_audio(client, audio), 401, "missing_api_key")
    assert_error(post_audio(client, audio, key="wrong"), 401, "invalid_api_key")
    assert client.get("/health").status_code == 200  # health needs no key
    assert post_audio(client, audio, key="s3cret").status_code == 200
    pipe.delay = 1.0
    assert_error(post_audio(client, audio, key="s3cret"), 504, "timeout")
    pipe.delay = 0.0
    time.sleep(0.8)  # the slow call finishes in the background
    assert post_audio(client, audio, key="s3cret").json() == {"text": "n=1600"}


def test_health_not_ready_until_started():
    from fastapi.testclient import TestClient

    from whisper_t5x.app.serving import create_app

    service = Service(serve_settings(model="fake", ui=False, warmup=False), pipeline=FakePipeline())
    with TestClient(create_app(service, start=False)) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert_error(post_audio(client, wav_bytes(np.full(1600, 0.1, np.float32))), 503, "not_ready")
        service.start(background=False)
        assert client.get("/health").json()["status"] == "ok"


def test_settings_from_flags_and_gin(monkeypatch):
    from whisper_t5x.app.gin_config import GinConfigError
    from whisper_t5x.app.serving.server import settings_from_args

    monkeypatch.delenv("WHISPER_T5X_API_KEY", raising=False)
    s = settings_from_args(["--gin.PartitionSection.batch_size=16", "--gin.PORT=9001", "--model", "tiny.en",
                            "--max_upload_mb", "3", "--no_ui"])
    assert (s.model.name, s.port, s.max_batch_size, s.max_upload_mb, s.ui, s.api_key) == ("tiny.en", 9001, 16, 3.0,
                                                                                       False, None)
    assert settings_from_args(["--batch_size", "2", "--port", "7860"]).max_batch_size == 2
    monkeypatch.setenv("WHISPER_T5X_API_KEY", "from-env")
    assert settings_from_args([]).api_key == "from-env"
    with pytest.raises(GinConfigError):
        settings_from_args(["--gin.Nope.x=1"])


# ============================================================== the real server (tiny.en)
@pytest.fixture(scope="module")
def server():
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    srv = ServerProcess(["--model", "tiny.en", "--batch_size", "4", "--max_batch_delay_ms", "50",
                         "--api_key", API_KEY, "--max_upload_mb", "5", "--max_audio_s", "120",
                         "--request_timeout_s", "300"])
    try:
        srv.wait_ready(timeout=300)
        yield srv
    finally:
        srv.stop()


def _auth():
    return {"Authorization": f"Bearer {API_KEY}"}


def _transcribe(url, data, name="a.wav", path="/v1/audio/transcriptions", timeout=240, headers=None, **fields):
    return httpx.post(url + path, files={"file": (name, data)}, data=fields,
                      headers=_auth() if headers is None else headers, timeout=timeout)


def test_health_ready_only_after_warmup(server):
    seen = [body.get("status") for status, body in server.health_log if status != 200 and isinstance(body, dict)]
    assert seen and set(seen) <= {"starting", "loading", "warming_up"}, server.health_log[:5]
    r = httpx.get(server.url + "/health", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "tiny.en" and body["warmup_s"] > 0


def test_every_response_format(server):
    data = open(JFK, "rb").read()
    formats = ["json", "text", "srt", "vtt", "verbose_json"]
    with concurrent.futures.ThreadPoolExecutor(len(formats)) as ex:
        rs = dict(zip(formats, ex.map(lambda f: _transcribe(server.url, data, "jfk.flac", response_format=f,
                                                            model="whisper-1"), formats)))
    for f, r in rs.items():
        assert r.status_code == 200, (f, r.text)
    assert recall(JFK_TEXT, rs["json"].json()["text"]) > 0.9
    assert recall(JFK_TEXT, rs["text"].text) > 0.9 and rs["text"].headers["content-type"].startswith("text/plain")
    srt = rs["srt"].text
    assert srt.startswith("1\n00:00:0") and re.search(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", srt)
    assert "country" in srt
    vtt = rs["vtt"].text
    assert vtt.startswith("WEBVTT") and re.search(r"\d\d:\d\d:\d\d\.\d{3} --> ", vtt) and "country" in vtt
    v = rs["verbose_json"].json()
    assert v["task"] == "transcribe" and v["language"] == "english" and v["duration"] == pytest.approx(11.0, abs=0.1)
    assert recall(JFK_TEXT, v["text"]) > 0.9
    segs = v["segments"]
    assert segs and all({"id", "start", "end", "text", "tokens"} <= set(s) for s in segs)
    assert all(s["start"] <= s["end"] for s in segs) and segs[-1]["end"] <= 11.01
    for s in segs:  # the statistics of the window each segment was decoded in
        assert isinstance(s["avg_logprob"], float) and -5.0 < s["avg_logprob"] <= 0.0, s
        assert isinstance(s["no_speech_prob"], float) and 0.0 <= s["no_speech_prob"] <= 1.0, s
        assert isinstance(s["compression_ratio"], float) and s["compression_ratio"] > 0, s
        assert isinstance(s["temperature"], float) and 0.0 <= s["temperature"] <= 1.0, s
    assert "words" not in v


def test_word_timestamps(server):
    data = open(JFK, "rb").read()
    reference = open(os.path.join(REPO, "samples", "jfk.txt"), encoding="utf-8").read()
    r = _transcribe(server.url, data, "jfk.flac", response_format="verbose_json",
                    **{"timestamp_granularities[]": ["word", "segment"]})
    assert r.status_code == 200, r.text
    v = r.json()
    ws = v["words"]
    assert ws and all(set(w) == {"word", "start", "end"} for w in ws)
    assert all(w["word"] == w["word"].strip() and w["word"] for w in ws)
    prev = 0.0
    for w in ws:  # monotonic, inside the audio
        assert prev <= w["start"] <= w["end"] <= v["duration"] + 0.01, ws
        prev = w["end"]
    joined = " ".join(w["word"] for w in ws)
    assert words(joined) == words(reference), joined
    assert words(joined) == words(v["text"])
    segs = v["segments"]
    assert segs and words(" ".join(s["text"] for s in segs)) == words(joined)
    assert segs[0]["start"] <= ws[0]["start"] and ws[-1]["end"] <= segs[-1]["end"] + 0.01


def test_gradio_client(server):
    from gradio_client import Client, handle_file

    client = Client(server.url + "/", auth=("tester", API_KEY), verbose=False)  # the server has --api_key
    text, runtime = client.predict(handle_file(JFK), "transcribe", False, api_name="/transcribe")
    assert recall(JFK_TEXT, text) > 0.9
    assert isinstance(runtime, (int, float)) and 0 < runtime < 240
    text, _ = client.predict(handle_file(JFK), "transcribe", True, api_name="/transcribe")
    assert re.match(r"\[00:00\.000 -> \d\d:\d\d\.\d{3}\] ", text) and "country" in text


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if ESPEAK is None:
        pytest.skip("espeak-ng not installed")
    d = tmp_path_factory.mktemp("clips")
    out = []
    for i, s in enumerate(SENTENCES):
        p = d / f"clip{i}.wav"
        subprocess.run([ESPEAK, "-v", "en-us", "-s", "140", "-w", str(p), s], check=True, capture_output=True)
        out.append((p.read_bytes(), s))
    return out


def test_concurrent_clients_get_their_own_text_and_a_corrupt_upload_fails_alone(server, clips):
    jobs = [(open(JFK, "rb").read(), JFK_TEXT, "jfk.flac")] + [(b, s, f"clip{i}.wav") for i, (b, s) in enumerate(clips)]
    assert len(jobs) == 8
    corrupt = b"RIFF\x24\x08\x00\x00WAVEfmt " + os.urandom(3000)
    before = httpx.get(server.url + "/health", timeout=10).json()["batches"]

    def send(job):
        data, _, name = job
        return _transcribe(server.url, data, name)

    with concurrent.futures.ThreadPoolExecutor(9) as ex:
        futs = [ex.submit(send, j) for j in jobs[:4]] + [ex.submit(send, (corrupt, "", "bad.wav"))]
        futs += [ex.submit(send, j) for j in jobs[4:]]
        results = [f.result(timeout=300) for f in futs]
    bad = results.pop(4)
    assert_error(bad, 400, "invalid_audio", "file")
    refs = [j[1] for j in jobs]
    for k, r in enumerate(results):
        assert r.status_code == 200, r.text
        text = r.json()["text"]
        scores = [recall(ref, text) for ref in refs]
        assert scores[k] >= 0.5, (refs[k], text)
        assert int(np.argmax(scores)) == k, (refs[k], text, scores)
    after = httpx.get(server.url + "/health", timeout=10).json()["batches"]
    # The requests were decoded together, not one by one: on the engine path (VAD rows, the default mode)
    # they share engine calls, later ones joining a call already running.
    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta("engine_requests") == 8 and delta("requests") == 0
    assert delta("engine_calls") < 8 and delta("engine_joined") > 0


def test_api_key_and_validation_real_server(server):
    data = open(JFK, "rb").read()
    assert_error(_transcribe(server.url, data, headers={}), 401, "missing_api_key")
    assert_error(_transcribe(server.url, data, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    # tiny.en is English-only: translation is a clear 400, not a server error.
    assert_error(_transcribe(server.url, data, path="/v1/audio/translations"), 400, param="task")
    assert_error(_transcribe(server.url, b"\x00" * 10 * 1024 * 1024), 413, "file_too_large")
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


# ============================================================== browser
def test_browser_ui_transcribes_an_upload(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(server.url + "/", wait_until="domcontentloaded")
            # The server has --api_key: Gradio's login form (any user name, the key as password).
            page.locator("input[type=password]").wait_for()
            page.locator("input[type=text]").first.fill("tester")
            page.locator("input[type=password]").fill(API_KEY)
            page.get_by_role("button", name=re.compile("login", re.I)).click()
            page.get_by_role("tab", name="Audio file").click()
            page.locator("#file-audio input[type=file]").set_input_files(JFK)
            page.locator("#file-audio audio, #file-audio [data-testid='waveform-Audio file']").first.wait_for(
                state="attached")
            page.locator("#file-submit").click()
            page.wait_for_function(
                "() => { const t = document.querySelector('#file-text textarea');"
                " return t && /country/i.test(t.value); }", timeout=180_000)
            page.wait_for_function(  # the runtime is filled in too (the event has completed)
                "() => { const r = document.querySelector('#file-runtime input'); return r && r.value !== ''; }")
            page.wait_for_timeout(800)  # let the pending-state styling fade before the screenshot
            text = page.locator("#file-text textarea").input_value()
            runtime = page.locator("#file-runtime input").input_value()
            shot = tmp_path / "serving_ui.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert recall(JFK_TEXT, text) > 0.9
    assert float(runtime) > 0
    # The committed copy is refreshed only on request (keeps test runs from dirtying the tree).
    kept = os.path.join(REPO, "benchmarks", "results", "serving_ui.png")
    if os.environ.get("WHISPER_T5X_UPDATE_SCREENSHOT") or not os.path.exists(kept):
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        shutil.copyfile(shot, kept)
