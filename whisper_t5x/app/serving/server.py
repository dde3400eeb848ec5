"""``whisper-t5x serve``: one process serving the Gradio UI and the OpenAI-compatible API.

::

    whisper-t5x serve --model base --host 127.0.0.1 --port 8000
    python -m whisper_t5x.app.serving --model tiny.en --port 7860 --api_key SECRET
    whisper-t5x serve --gin_file runs/serve --gin_file hardware/gpu --gin.PartitionSection.batch_size=16

Settings are a :class:`whisper_t5x.app.config.ServeConfig`: the shared
sections (``ModelSection``, ``PartitionSection``, ``DecodeSection``, bound by the
same ``configs/hardware/*.gin`` presets as ``transcribe`` and ``label``) plus
the server's own fields. gin first (``configs/runs/serve.gin`` when present,
then any ``--gin_file`` and ``--gin.NAME=VALUE`` / ``--gin_bindings``), then the
flags below, each the binding of one field (:data:`FLAG_FIELDS`).
The API key may also come from ``$WHISPER_T5X_API_KEY``; with one, the REST
API wants ``Authorization: Bearer KEY`` and the Gradio UI and API a login
(any user name, the key as password; see :mod:`.ui`). At start-up the server
prints ``whisper-t5x serve: listening on http://HOST:PORT`` (the port chosen
when ``--port 0``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any, Optional, Sequence

from whisper_t5x.app import gin_config, logs
from whisper_t5x.app.config import DTYPES, ServeConfig
from whisper_t5x.app.serving.service import Service

logger = logging.getLogger("whisper_t5x.app.serving")

API_KEY_ENV = "WHISPER_T5X_API_KEY"
DEFAULT_GIN = "runs/serve.gin"


def create_app(service: Service, start: bool = True) -> Any:
    """The FastAPI app: REST routes, then the Gradio UI mounted at ``/`` (see :func:`.ui.mount_ui`)."""
    import contextlib

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from whisper_t5x.app.serving.api import add_routes
    from whisper_t5x.app.serving.realtime import add_realtime_route

    cleanups = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if start:
            service.start()
        try:
            yield
        finally:
            service.stop()
            for cleanup in cleanups:
                cleanup()

    app = FastAPI(title="whisper_t5x", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    add_routes(app, service)
    add_realtime_route(app, service)
    if service.settings.ui:
        from whisper_t5x.app.serving.ui import mount_ui

        cleanups.append(mount_ui(app, service))
    else:
        @app.get("/")
        async def root():
            return JSONResponse({"service": "whisper_t5x", "model": service.settings.model.name,
                                 "endpoints": ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/realtime",
                                               "/health"]})
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper-t5x serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model name or checkpoint path (ModelSection.name, default 'base')")
    p.add_argument("--host", help="listen address (default: ServeConfig.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port, 1-65535 (default: ServeConfig.port, 8000; 0 picks a free "
                   "one, printed at start-up)")
    p.add_argument("--batch_size", type=int, help="rows per compiled batch (PartitionSection.batch_size, default 8)")
    p.add_argument("--dtype", choices=list(DTYPES), help="compute dtype (ModelSection.dtype)")
    p.add_argument("--max_batch_delay_ms", type=float, help="how long a request waits for others to batch with")
    p.add_argument("--max_queue", type=int, help="waiting requests beyond which new ones get 503")
    p.add_argument("--chunk_length_s", type=float, help="long-form window length (s) (DecodeSection.chunk_length_s)")
    p.add_argument("--max_upload_mb", type=float, help="largest accepted upload (default 25)")
    p.add_argument("--max_audio_s", type=float, help="longest accepted audio in seconds (default 3600)")
    p.add_argument("--request_timeout_s", type=float, help="per-request timeout (default 600)")
    p.add_argument("--api_key", help=f"require the key (or ${API_KEY_ENV}): 'Authorization: Bearer KEY' on /v1/*, "
                   "and a login (any user name, the key as password) for the Gradio UI and API")
    p.add_argument("--max_streams", type=int, help="live streams (/v1/realtime) served at once (default 16; 0: off)")
    p.add_argument("--stream_interval_ms", type=float, help="how often each live stream is decoded (default 500)")
    p.add_argument("--stream_policy", choices=["local_agreement", "alignatt"],
                   help="which words a live stream emits while audio arrives (default local_agreement)")
    p.add_argument("--stream_threshold_s", type=float, help="AlignAtt: distance from the audio's end (default 0.5)")
    p.add_argument("--stream_max_buffer_s", type=float, help="audio a stream may have waiting (default 30)")
    p.add_argument("--stream_idle_timeout_s", type=float, help="close a silent live connection after this (default 60)")
    p.add_argument("--no_warmup", action="store_true", help="report ready without compiling first")
    p.add_argument("--no_warmup_timestamps", action="store_true", help="do not pre-compile timestamp decoding")
    p.add_argument("--no_ui", action="store_true", help="serve the REST API only")
    p.add_argument("--gin_file", action="append", default=[], help="gin file(s), in order")
    p.add_argument("--gin_bindings", action="append", default=[], help="gin binding(s); also --gin.NAME=VALUE")
    p.add_argument("--gin_search_paths", default="", help="comma-separated extra gin search paths")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


# flag -> the field it binds (flags whose value is None were not given)
FLAG_FIELDS = {
    "model": "ModelSection.name",
    "dtype": "ModelSection.dtype",
    "batch_size": "PartitionSection.batch_size",
    "chunk_length_s": "DecodeSection.chunk_length_s",
    **{f: f"ServeConfig.{f}" for f in ("host", "port", "max_batch_delay_ms", "max_queue", "max_upload_mb",
                                        "max_audio_s", "request_timeout_s", "api_key", "max_streams",
                                        "stream_interval_ms", "stream_policy", "stream_threshold_s",
                                        "stream_max_buffer_s", "stream_idle_timeout_s")},
}
# --no_X flags -> ServeConfig.X = False
OFF_FLAGS = {"no_warmup": "warmup", "no_warmup_timestamps": "warmup_timestamps", "no_ui": "ui"}


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    return _parser().parse_args(gin_config.rewrite_gin_args(list(argv)))


def settings_from_args(argv: Sequence[str]) -> ServeConfig:
    """Parses ``argv`` (without the program name); gin first, flags on top (``GinConfigError`` if invalid)."""
    args = _parse(argv)
    search = [s for s in args.gin_search_paths.split(",") if s.strip()]
    files = list(args.gin_file)
    try:  # configs/runs/serve.gin first when the source tree has it (its MODEL/HOST/PORT macros)
        gin_config.resolve_gin_file(DEFAULT_GIN, search + gin_config.default_search_paths())
        files.insert(0, DEFAULT_GIN)
    except gin_config.GinConfigError:
        pass
    explicit = [gin_config.flag_binding(target, getattr(args, flag))
                for flag, target in FLAG_FIELDS.items() if getattr(args, flag) is not None]
    explicit += [gin_config.flag_binding(f"ServeConfig.{field}", False)
                 for flag, field in OFF_FLAGS.items() if getattr(args, flag)]
    gin_config.parse_gin(files, args.gin_bindings, search, explicit)
    settings = gin_config.make(ServeConfig)
    if not settings.api_key and os.environ.get(API_KEY_ENV):
        settings.api_key = os.environ[API_KEY_ENV]
    return settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``whisper_t5x.app.serving.main([prog, *args])``; blocks until the server stops. Returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    try:
        settings = settings_from_args(argv[1:])
    except gin_config.GinConfigError as e:
        print(f"whisper-t5x serve: error: {e}", file=sys.stderr)
        return 2
    logs.setup_logging(getattr(logging, _parse(argv[1:]).log_level.upper()),
                       "%(asctime)s %(levelname).1s %(name)s: %(message)s")
    import uvicorn

    try:  # bound here, so the address printed is the one served (port 0: the free port chosen)
        sock = _bind(settings.host, int(settings.port))
    except OSError as e:
        print(f"whisper-t5x serve: error: cannot listen on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 1
    service = Service(settings)
    app = create_app(service)
    config = uvicorn.Config(app, host=settings.host, port=int(settings.port), log_level="warning",
                            timeout_graceful_shutdown=5)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    logger.info("serving %s (UI %s, API key %s)", settings.model.name, "on" if settings.ui else "off",
                "required" if settings.api_key else "not required")
    print(f"whisper-t5x serve: listening on {url}", flush=True)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (IPv6 when the host has a colon), as uvicorn binds it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
