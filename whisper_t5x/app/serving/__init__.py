"""The transcription endpoint: a Gradio UI and an OpenAI-compatible REST API in one process.

Start it with ``whisper-t5x serve`` (or ``python -m whisper_t5x.app.serving``);
see :mod:`whisper_t5x.app.serving.server` for the flags. Pieces:

* :mod:`.batcher` -- cross-request batching of decoded audio;
* :mod:`.service` -- model loading, warm-up, limits, validation;
* :mod:`.api` -- ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/health``;
* :mod:`.ui` -- the Gradio Blocks app, its client endpoints (``/predict_1``, ``/predict``,
  ``/transcribe``) and its protections (login with the API key, uploads only);
* :mod:`.server` -- the FastAPI app and ``main(argv)``.
"""

from whisper_t5x.app.serving.batcher import Batcher, DecodeOptions, QueueFull
from whisper_t5x.app.serving.service import ServeConfig, Service, ServiceError


def main(argv=None) -> int:
    """Entry point used by ``whisper-t5x serve`` (``argv[0]`` is the program name)."""
    from whisper_t5x.app.serving.server import main as _main

    return _main(argv)


def create_app(service, start: bool = True):
    from whisper_t5x.app.serving.server import create_app as _create_app

    return _create_app(service, start)


__all__ = ["Batcher", "DecodeOptions", "QueueFull", "ServeConfig", "Service", "ServiceError", "main",
           "create_app"]
