"""The endpoint under hostile or unlucky use, against fake pipelines (no model; seconds).

* flags: a port outside 1-65535 is refused, ``--port 0`` serves on the port it prints;
* clients that disconnect are dropped quietly (debug log) and free their queue slot;
* the seed's Gradio call, unchanged, on a server without a key;
* hours of audio in a small upload are refused before being decoded (memory bound).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402

from tests._server_helpers import REPO, InProcessServer, get_json  # noqa: E402
from tests._serving_fakes import FakePipeline, assert_error, fake_app, post_audio, serve_settings, wav_bytes  # noqa: E402,F401,F811,E501
from whisper_t5x.app.serving.service import Service  # noqa: E402


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(field)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs") or shutil.which("ffmpeg") is None,
                    reason="needs Linux /proc and ffmpeg")
def test_hours_of_audio_in_a_small_upload_are_refused_before_decoding(fake_app, tmp_path):
    """A 1 h FLAC of silence (about 0.6 MB) against a 5 s limit: 400 without decoding the hour.

    Two files: one whose container declares its duration, one streamed (no
    duration in its header: only a capped decode can tell). Decoded whole,
    one hour is 230 MB of float32 in this process; the peak and the retained
    growth stay far below that.
    """
    client, service, pipe = fake_app(max_upload_mb=25)
    files = {"declared": tmp_path / "hour.flac", "streamed": tmp_path / "hour_stream.flac"}
    src = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "3600", "-c:a", "flac"]
    subprocess.run(src + [str(files["declared"])], check=True)
    with open(files["streamed"], "wb") as out:
        subprocess.run(src + ["-f", "flac", "-"], check=True, stdout=out)
    uploads = {k: p.read_bytes() for k, p in files.items()}
    post_audio(client, wav_bytes(np.full(1600, 0.1, np.float32)))  # warm the request path first
    for name, data in uploads.items():
        before = _rss_mb()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current RSS
        t = time.monotonic()
        r = post_audio(client, data)
        elapsed = time.monotonic() - t
        assert_error(r, 400, "audio_too_long", "file")
        assert "limit is 5 s" in r.json()["error"]["message"]
        peak, after = _rss_mb("VmHWM") - before, _rss_mb() - before
        assert peak < 100 and after < 30, (name, peak, after)
        assert elapsed < 15, (name, elapsed)
    assert pipe.calls == [1]  # only the warm-up request reached the model


def test_port_out_of_range_is_rejected(monkeypatch, capsys):
    from whisper_t5x.app.gin_config import GinConfigError
    from whisper_t5x.app.serving.server import main, settings_from_args

    for bad in (["--port", "99999"], ["--port", "-1"], ["--port", "65536"], ["--gin.PORT=70000"]):
        with pytest.raises(GinConfigError, match="65535"):
            settings_from_args(bad)
    assert settings_from_args(["--port", "65535"]).port == 65535
    assert settings_from_args(["--port", "0"]).port == 0
    assert main(["whisper-t5x serve", "--port", "99999"]) == 2
    assert "port must be 1-65535" in capsys.readouterr().err


def test_port_zero_serves_on_the_printed_port():
    cmd = [sys.executable, "-m", "whisper_t5x.app.serving", "--model", "tiny.en", "--no_ui", "--no_warmup",
           "--host", "127.0.0.1", "--port", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        seen, port = [], None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port and port != 0, "".join(seen)
        status, body = None, None
        while status is None and time.monotonic() < deadline:
            status, body = get_json(f"http://127.0.0.1:{port}/health", timeout=5)
            time.sleep(0.2)
        assert status in (200, 503) and body["model"] == "tiny.en", (status, body)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _raw_multipart(port: int, data: bytes, send_all: bool = True) -> socket.socket:
    """A transcription request over a raw socket (left open; the caller closes it to "disconnect")."""
    boundary = "testboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + (body if send_all else body[:len(body) // 2]))
    return sock


def test_disconnected_clients_are_dropped_quietly_and_free_their_slots(caplog):
    from whisper_t5x.app.serving import create_app

    caplog.set_level(logging.DEBUG, logger="whisper_t5x")
    gate = threading.Event()
    pipe = FakePipeline(gate=gate)
    service = Service(serve_settings(model="fake", ui=False, warmup=False, max_batch_size=1, max_batch_delay_ms=0,
                                      max_queue=1), pipeline=pipe)
    audio = {n: wav_bytes(np.full(n, 0.1, np.float32)) for n in (1600, 3200, 4800)}
    try:
        with InProcessServer(create_app(service)) as srv, concurrent.futures.ThreadPoolExecutor(2) as ex:
            assert service.wait_ready(10)
            first = ex.submit(httpx.post, srv.url + "/v1/audio/transcriptions",
                              files={"file": ("a.wav", audio[1600])}, timeout=30)
            deadline = time.monotonic() + 10
            while not pipe.calls and time.monotonic() < deadline:  # the worker is busy with `first`
                time.sleep(0.01)
            gone = _raw_multipart(srv.port, audio[3200])  # queued behind it, then its client leaves
            while service.batcher.queue_length == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.batcher.queue_length == 1
            gone.close()
            half = _raw_multipart(srv.port, audio[3200], send_all=False)  # leaves in the middle of its upload
            time.sleep(0.2)
            half.close()
            while service.batcher.queue_length and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.batcher.queue_length == 0
            # The single queue slot is free again while the worker is still busy.
            fresh = ex.submit(httpx.post, srv.url + "/v1/audio/transcriptions",
                              files={"file": ("a.wav", audio[4800])}, timeout=30)
            while service.batcher.queue_length == 0 and not fresh.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            gate.set()
            assert first.result(30).json() == {"text": "n=1600"}
            assert fresh.result(30).json() == {"text": "n=4800"}
        assert pipe.calls == [1, 1]  # the abandoned request was never decoded
    finally:
        gate.set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "client disconnected" in caplog.text


def test_seed_gradio_call_without_a_key_fake_pipeline():
    """The seed's documented call, unchanged, on a server without --api_key (and /predict, /transcribe)."""
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from whisper_t5x.app.serving import create_app

    service = Service(serve_settings(model="fake", warmup=False, max_batch_delay_ms=1.0), pipeline=FakePipeline())
    with InProcessServer(create_app(service)) as srv:
        assert service.wait_ready(10)
        client = Client(srv.url + "/", verbose=False)
        names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/predict", "/predict_1", "/transcribe", "/transcribe_file", "/transcribe_microphone"} <= names
        path = os.path.join(REPO, "samples", "jfk.flac")
        text, runtime = client.predict(handle_file(path), "transcribe", False, api_name="/predict_1")
        assert text == "n=176000" and isinstance(runtime, (int, float)) and runtime >= 0
        assert client.predict(handle_file(path), "transcribe", False, api_name="/predict")[0] == "n=176000"
        assert client.predict(handle_file(path), "transcribe", False, api_name="/transcribe")[0] == "n=176000"
        config = httpx.get(srv.url + "/config", timeout=10).json()
        assert config["analytics_enabled"] is False
