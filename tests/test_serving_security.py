"""Security of the endpoint against a real ``--api_key`` server (tiny.en subprocess on a free port).

* the API key guards every way to transcribe: REST, the Gradio API, the UI
  and Gradio's upload route (issue 13, item 1);
* the Gradio API never reads a file the client did not upload, and its
  errors name no server path (item 2);
* Gradio analytics are off unless asked for (item 3);
* the seed's Gradio endpoint names (``/predict_1`` file, ``/predict``
  microphone) next to ours (item 9).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

import httpx  # noqa: E402

from tests._server_helpers import REPO, ServerProcess, gradio_call  # noqa: E402

JFK = os.path.join(REPO, "samples", "jfk.flac")
KEY = "sec-test-key-9"
PASSWD = "/etc/passwd"
# Any absolute path of this machine an error message could leak.
_SERVER_PATH = re.compile(r"(/tmp/|/etc/|/work/|/home/|/root/|/var/|gradio_api/file=)")


def _file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def server():
    # Analytics left to the server's default (the helper normally turns them off).
    srv = ServerProcess(["--model", "tiny.en", "--batch_size", "1", "--no_warmup", "--api_key", KEY,
                         "--max_audio_s", "60", "--request_timeout_s", "300"],
                        env={"GRADIO_ANALYTICS_ENABLED": None, "WHISPER_T5X_API_KEY": None})
    try:
        srv.wait_ready(timeout=300)
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def logged_in(server):
    """An ``httpx.Client`` holding the UI's login cookie (user name: anything, password: the API key)."""
    with httpx.Client(timeout=240) as c:
        r = c.post(server.url + "/login", data={"username": "alice", "password": KEY})
        assert r.status_code == 200, r.text
        yield c


def _joined(events) -> str:
    return " ".join(str(d) for _, d in events)


def test_keyless_gradio_calls_and_uploads_are_refused(server):
    from gradio_client import Client

    # Refused before any call: the client cannot even read the app's config.
    with pytest.raises(Exception, match="(?i)login|auth|401"):  # noqa: B017
        Client(server.url + "/", verbose=False)
    with open(JFK, "rb") as f:
        data = f.read()
    with httpx.Client(timeout=60) as anon:
        r = anon.post(server.url + "/gradio_api/upload", files={"files": ("jfk.flac", data, "audio/flac")})
        assert r.status_code == 401, r.text
        status, events = gradio_call(anon, server.url, "transcribe", [_file_data(JFK), "transcribe", False])
        assert status == 401 and "country" not in _joined(events)
        for path in ("/config", "/gradio_api/info", "/gradio_api/queue/status"):
            assert anon.get(server.url + path).status_code in (401, 404), path
        # The page itself is only the login form: no components (Gradio still embeds its API docs).
        page = anon.get(server.url + "/")
        assert page.status_code == 200 and '"auth_required":true' in page.text
        assert '"components":[]' in page.text and 'elem_id":"file-audio' not in page.text
        # Wrong password: no session.
        r = anon.post(server.url + "/login", data={"username": "alice", "password": "not-the-key"})
        assert r.status_code == 400 and not anon.cookies
    with pytest.raises(Exception, match="(?i)login|auth|credentials|401"):  # noqa: B017
        Client(server.url + "/", auth=("alice", "not-the-key"), verbose=False)
    # REST is unchanged: the Bearer key.
    r = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("jfk.flac", data)}, timeout=60)
    assert r.status_code == 401


def test_gradio_client_with_the_key_uses_the_seed_endpoints(server):
    from gradio_client import Client, handle_file

    client = Client(server.url + "/", auth=("anyone", KEY), verbose=False)
    text, runtime = client.predict(handle_file(JFK), "transcribe", False, api_name="/predict_1")  # file
    assert "country" in text.lower() and isinstance(runtime, (int, float)) and runtime > 0
    text, _ = client.predict(handle_file(JFK), "transcribe", False, api_name="/predict")  # microphone
    assert "country" in text.lower()
    text, _ = client.predict(handle_file(JFK), "transcribe", True, api_name="/transcribe")  # ours, kept
    assert text.startswith("[00:00.000 -> ") and "country" in text.lower()


def test_gradio_api_reads_no_server_file(server, logged_in, tmp_path):
    """Even a logged-in client cannot make the server read, copy or serve a file it did not upload."""
    local_audio = tmp_path / "server_local.flac"  # audio that exists on the server only
    shutil.copyfile(JFK, local_audio)
    for api_name in ("transcribe", "predict_1"):
        for path in (PASSWD, str(local_audio)):
            status, events = gradio_call(logged_in, server.url, api_name, [_file_data(path), "transcribe", False])
            joined = _joined(events)
            assert events and events[-1][0] == "error", (api_name, path, events)
            assert "root:" not in joined and "country" not in joined.lower(), joined
            assert not _SERVER_PATH.search(joined), joined  # the error names no path (neither copy nor source)
            for leaked in {PASSWD, path, *re.findall(r"/[\w./-]+", joined)}:
                r = logged_in.get(server.url + "/gradio_api/file=" + leaked)
                assert r.status_code in (403, 404) and "root:" not in r.text, (leaked, r.status_code)
    # A genuine upload still works for that client.
    with open(JFK, "rb") as f:
        r = logged_in.post(server.url + "/gradio_api/upload", files={"files": ("jfk.flac", f, "audio/flac")})
    assert r.status_code == 200, r.text
    (uploaded,) = r.json()
    status, events = gradio_call(logged_in, server.url, "predict_1", [_file_data(uploaded), "transcribe", False])
    assert events[-1][0] == "complete" and "country" in events[-1][1].lower(), events


def test_analytics_off_by_default(server, logged_in):
    config = logged_in.get(server.url + "/config").json()
    assert config["analytics_enabled"] is False
