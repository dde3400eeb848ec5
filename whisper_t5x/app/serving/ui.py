"""The Gradio UI (microphone and file tabs) and the Gradio client API.

Client usage (``gradio_client`` >= 1.0 wants files wrapped in ``handle_file``)::

    from gradio_client import Client, handle_file
    text, runtime = Client("http://127.0.0.1:8000/").predict(
        handle_file("audio.mp3"), "transcribe", False, api_name="/transcribe")

``/transcribe`` takes (audio, task, return_timestamps) and detects the
language; the UI's own buttons are ``/transcribe_file`` and
``/transcribe_microphone`` with a language as fourth input.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

from whisper_t5x.app.writers import format_timestamp, segments_from_result
from whisper_t5x.app.serving.service import Service, ServiceError

from whisper_t5x.text.tokenizer import TASKS  # noqa: E402
DESCRIPTION = (
    "Transcribe or translate speech with Whisper (JAX). Record from the microphone or upload a file; "
    "requests from all users are batched together on the accelerator. An OpenAI-compatible REST API is "
    "served at `/v1/audio/transcriptions` and `/v1/audio/translations`."
)


def _language_choices(service: Service) -> List[Tuple[str, str]]:
    model = str(service.settings.model)
    if service.pipeline is not None:
        langs = service.languages()
    elif model.endswith(".en"):
        langs = {"en": "english"}
    else:
        from whisper_t5x.text.languages import LANGUAGES

        langs = LANGUAGES
    return [("auto (detect)", "auto")] + [(f"{name} ({code})", code) for code, name in langs.items()]


def format_result(result: dict, timestamps: bool) -> str:
    if not timestamps:
        return str(result.get("text") or "").strip()
    lines = []
    for s in segments_from_result(result):
        lines.append(f"[{format_timestamp(s.start, always_include_hours=False)} -> "
                     f"{format_timestamp(s.end, always_include_hours=False)}] {s.text}")
    return "\n".join(lines)


def build_ui(service: Service) -> Any:
    import gradio as gr

    def run(audio_path: Any, task: str, language: str, timestamps: bool) -> Tuple[str, float]:
        if not audio_path:
            raise gr.Error("Record or upload some audio first.")
        path = audio_path if isinstance(audio_path, str) else getattr(audio_path, "path", None) or audio_path.get("path")
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
    with gr.Blocks(title="Whisper T5X") as demo:
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
                if key == "file":
                    # The three-argument client endpoint (language detected).
                    hidden = gr.Button(visible=False)
                    hidden.click(transcribe, [audio, task, timestamps], [text, runtime], api_name="transcribe")
    limit = max(1, int(service.settings.max_batch_size) * 2)
    demo.queue(default_concurrency_limit=limit, max_size=int(service.settings.max_queue))
    return demo
