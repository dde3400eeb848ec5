"""The Gradio UI (microphone, file and live tabs), the Gradio client API, and how both are protected.

Client usage (``gradio_client`` >= 1.0 wants files wrapped in ``handle_file``)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:8000/")                 # server without --api_key
    client = Client("http://127.0.0.1:8000/", auth=("me", KEY))  # with --api_key KEY
    text, runtime = client.predict(handle_file("audio.mp3"), "transcribe", False, api_name="/predict_1")

Endpoints, each ``(audio, task, return_timestamps) -> (text, runtime)`` with
the language detected: ``/predict_1`` (file) and ``/predict`` (microphone),
the names of the Whisper JAX app the seed documented, and ``/transcribe``
(file). The UI's own buttons are ``/transcribe_file`` and
``/transcribe_microphone``, with a language as fourth input.

The *Live* tab (when the server serves live streams) streams the microphone
to the same scheduler as ``/v1/realtime`` (:class:`LiveSession`): the
committed text grows while you speak, each pause (server VAD) closes an item.

With an API key (``--api_key`` / ``$WHISPER_T5X_API_KEY``) the UI shows
Gradio's login form: any user name, the API key as the password. The page,
every ``/gradio_api`` route (calls, queue, uploads, ``/file=``) and
``/config`` need that login; ``gradio_client`` logs in with ``auth=(name,
key)``. The REST API keeps its ``Authorization: Bearer <key>`` header. See
:func:`mount_ui` for the other protections.
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from whisper_t5x.app.writers import cues, format_timestamp
from whisper_t5x.app.serving.service import Service, ServiceError
from whisper_t5x.results import Transcription
from whisper_t5x.text.tokenizer import TASKS

DESCRIPTION = (
    "Transcribe or translate speech with Whisper (JAX). Record from the microphone or upload a file; "
    "requests from all users are batched together on the accelerator. An OpenAI-compatible REST API is "
    "served at `/v1/audio/transcriptions` and `/v1/audio/translations`."
)
LOGIN_MESSAGE = "Log in with any user name; the password is this server's API key."
ANALYTICS_ENV = "GRADIO_ANALYTICS_ENABLED"


class NotUploaded(Exception):
    """The audio named in a request is not a file this server received from a client."""


def analytics_enabled() -> bool:
    """Gradio's telemetry: off unless ``GRADIO_ANALYTICS_ENABLED=True`` is set explicitly."""
    return os.environ.get(ANALYTICS_ENV, "False") == "True"


def uploaded_path(value: Any, upload_dir: str) -> str:
    """The path of an audio input, which must lie inside ``upload_dir`` (after resolving links)."""
    path = value if isinstance(value, str) else getattr(value, "path", None)
    if path is None and isinstance(value, dict):
        path = value.get("path")
    if not isinstance(path, str) or not path:
        raise NotUploaded("no uploaded file")
    folder = os.path.realpath(upload_dir)
    real = os.path.realpath(path)
    if os.path.commonpath([real, folder]) != folder or not os.path.isfile(real):
        raise NotUploaded("not an upload")
    return real


def _language_choices(service: Service) -> List[Tuple[str, str]]:
    model = str(service.settings.model.name)
    if service.pipeline is not None:
        langs = service.languages()
    elif model.endswith(".en"):
        langs = {"en": "english"}
    else:
        from whisper_t5x.text.languages import LANGUAGES

        langs = LANGUAGES
    return [("auto (detect)", "auto")] + [(f"{name} ({code})", code) for code, name in langs.items()]


def format_result(result: Transcription, timestamps: bool) -> str:
    if not timestamps:
        return result.text.strip()
    lines = []
    for s in cues(result):
        lines.append(f"[{format_timestamp(s.start, always_include_hours=False)} -> "
                     f"{format_timestamp(s.end, always_include_hours=False)}] {s.text}")
    return "\n".join(lines)


class LiveSession:
    """One browser's live stream: microphone chunks in, the committed text (items so far) out.

    The stream is opened on the first chunk (``too_many_streams`` and the other
    stream errors become :class:`ServiceError`), events arrive from the
    scheduler thread; :meth:`text` is what the page shows.
    """

    def __init__(self, service: Service):
        self.service = service
        self.stream: Any = None
        self._lock = threading.Lock()
        self._done: List[str] = []  # completed items' transcripts
        self._current = ""  # deltas of the item in progress
        self._resampler: Any = None
        self._rate: Optional[int] = None

    def _emit(self, event: Dict[str, Any]) -> None:
        with self._lock:
            kind = event.get("type", "")
            if kind.endswith("transcription.delta"):
                self._current += event.get("delta", "")
            elif kind.endswith("transcription.completed"):
                if event.get("transcript"):
                    self._done.append(event["transcript"])
                self._current = ""

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._done + ([self._current.strip()] if self._current.strip() else []))

    def feed(self, chunk: Any) -> str:
        """A Gradio streaming chunk ``(rate, samples)`` (int16 or float, mono or channels last) -> the text."""
        from whisper_t5x.app.serving.streams import StreamError, TurnDetection

        if chunk is None:
            return self.text()
        rate, samples = chunk
        audio = np.asarray(samples)
        if audio.ndim > 1:
            audio = audio.mean(axis=-1)
        if np.issubdtype(audio.dtype, np.integer):
            audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
        audio = audio.astype(np.float32)
        if rate != self._rate:
            import soxr

            self._rate = int(rate)
            self._resampler = None if rate == 16000 else soxr.ResampleStream(rate, 16000, 1, dtype="float32")
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        try:
            if self.stream is None:
                self.service.check_ready()
                if self.service.streams is None:
                    raise ServiceError(503, "live streams are disabled on this server", "server_error")
                self.stream = self.service.streams.open(self._emit, turn_detection=TurnDetection())
            self.stream.append(audio)
        except StreamError as e:
            raise ServiceError(503, e.message, e.type, code=e.code) from None
        return self.text()

    def close(self) -> str:
        """Recording stopped: what was said so far is committed, then the stream is closed."""
        if self.stream is not None:
            self.stream.commit()
            deadline = time.monotonic() + 10
            while self._current and time.monotonic() < deadline:
                time.sleep(0.05)
            self.stream.close()
            self.stream = None
        return self.text()


def build_ui(service: Service, upload_dir: Optional[str] = None) -> Any:
    """The Blocks app; ``upload_dir``: where Gradio keeps uploads (the only files a request may name)."""
    import gradio as gr

    if upload_dir is None:
        from gradio.utils import get_upload_folder

        upload_dir = get_upload_folder()

    def run(audio_path: Any, task: str, language: str, timestamps: bool) -> Tuple[str, float]:
        if not audio_path:
            raise gr.Error("Record or upload some audio first.")
        try:
            path = uploaded_path(audio_path, upload_dir)
        except NotUploaded:
            raise gr.Error("Upload the audio with the request: server files cannot be named.") from None
        t0 = time.perf_counter()
        try:
            with service.arriving():
                options = service.make_options(task=task or "transcribe", language=language,
                                               timestamps=bool(timestamps))
                audio = service.decode_audio(path)
                fut = service.submit(audio, options)
            result = service.result(fut)
        except ServiceError as e:
            raise gr.Error(e.message) from None
        return format_result(result, bool(timestamps)), round(time.perf_counter() - t0, 2)

    def transcribe(audio_path: Any, task: str, return_timestamps: bool) -> Tuple[str, float]:
        return run(audio_path, task, "auto", return_timestamps)

    choices = _language_choices(service)
    with gr.Blocks(title="Whisper T5X", analytics_enabled=analytics_enabled()) as demo:
        gr.Markdown("# Whisper T5X\n" + DESCRIPTION)
        for name, source in (("Microphone", "microphone"), ("Audio file", "upload")):
            key = "microphone" if source == "microphone" else "file"
            with gr.Tab(name, id=key):
                with gr.Row():
                    with gr.Column():
                        audio = gr.Audio(sources=[source], type="filepath", label=name, elem_id=f"{key}-audio")
                        task = gr.Radio(TASKS, value="transcribe", label="Task", elem_id=f"{key}-task")
                        language = gr.Dropdown(choices, value="auto", label="Language", elem_id=f"{key}-language")
                        timestamps = gr.Checkbox(value=False, label="Return timestamps", elem_id=f"{key}-timestamps")
                        button = gr.Button("Transcribe", variant="primary", elem_id=f"{key}-submit")
                    with gr.Column():
                        text = gr.Textbox(label="Transcription", lines=8, elem_id=f"{key}-text")
                        runtime = gr.Number(label="Runtime (s)", elem_id=f"{key}-runtime")
                button.click(run, [audio, task, language, timestamps], [text, runtime], api_name=f"transcribe_{key}")
                # The three-argument client endpoints (language detected): the seed's
                # (Whisper JAX's) /predict and /predict_1, and our /transcribe.
                for api_name in (("predict",) if key == "microphone" else ("predict_1", "transcribe")):
                    hidden = gr.Button(visible=False)
                    hidden.click(transcribe, [audio, task, timestamps], [text, runtime], api_name=api_name)
        if service.settings.max_streams > 0:
            with gr.Tab("Live", id="live"):
                gr.Markdown("Speak: the text appears as it is committed; a pause ends a sentence.")
                live_audio = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone",
                                      elem_id="live-audio")
                live_text = gr.Textbox(label="Live transcription", lines=8, elem_id="live-text")
                session = gr.State(None)

                def live_feed(chunk: Any, live: Optional[LiveSession]):
                    live = live or LiveSession(service)
                    try:
                        return live.feed(chunk), live
                    except ServiceError as e:
                        raise gr.Error(e.message) from None

                def live_stop(live: Optional[LiveSession]):
                    return (live.close() if live is not None else ""), None

                live_audio.stream(live_feed, [live_audio, session], [live_text, session], stream_every=0.5,
                                  time_limit=3600, api_name=False, concurrency_limit=None)
                live_audio.stop_recording(live_stop, [session], [live_text, session], api_name=False)
    limit = max(1, int(service.settings.max_batch_size) * 2)
    demo.queue(default_concurrency_limit=limit, max_size=int(service.settings.max_queue))
    return demo


def mount_ui(app: Any, service: Service) -> Callable[[], None]:
    """Mounts the UI at ``/`` of ``app``; returns the clean-up to run at shutdown.

    Gradio's defaults suit a local demo, not a server, so:

    * uploads go to a private folder of this process (mode 0700, removed by
      the clean-up; ``$GRADIO_TEMP_DIR`` is pointed at it), so the files
      Gradio may read or serve are this server's uploads and nothing else;
    * the Blocks is marked as running, as ``launch()`` would: Gradio checks
      that a request's file paths are uploads only for a launched app, and a
      mounted one is never launched, so without this any server file named
      in a request was copied into the cache and served back;
    * :func:`uploaded_path` checks the path again before decoding;
    * ``show_error=False``: clients see only our own messages (no paths),
      never the text of other exceptions;
    * with an API key, Gradio's login guards everything (module docstring);
    * analytics off (:func:`analytics_enabled`).
    """
    os.environ.setdefault(ANALYTICS_ENV, "False")
    import gradio as gr

    key = service.settings.api_key
    previous_root = os.environ.get("GRADIO_TEMP_DIR") or None
    upload_dir = tempfile.mkdtemp(prefix="whisper_t5x-gradio-", dir=previous_root)
    ours = {"GRADIO_TEMP_DIR": upload_dir, "GRADIO_EXAMPLES_CACHE": os.path.join(upload_dir, "examples")}
    saved = {name: os.environ.get(name) for name in ours}
    os.environ.update(ours)
    demo = build_ui(service, upload_dir)
    auth = None
    if key:
        def auth(username: str, password: str) -> bool:
            return bool(username) and hmac.compare_digest(str(password).encode(), key.encode())

    gr.mount_gradio_app(app, demo, path="/", max_file_size=service.settings.max_upload_bytes, footer_links=["api"],
                        auth=auth, auth_message=LOGIN_MESSAGE if key else None, show_error=False,
                        mcp_server=False)
    demo.has_launched = True
    demo.is_running = True

    def cleanup() -> None:
        demo.is_running = False
        shutil.rmtree(upload_dir, ignore_errors=True)
        for name, value in ours.items():
            if os.environ.get(name) != value:
                continue  # changed since (another app mounted later): leave it
            if saved[name] is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved[name]

    return cleanup
