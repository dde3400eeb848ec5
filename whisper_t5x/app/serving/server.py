"""``whisper-t5x serve``: one process serving the Gradio UI and the OpenAI-compatible API.

::

    whisper-t5x serve --model base --host 127.0.0.1 --port 8000
    python -m whisper_t5x.app.serving --model tiny.en --port 7860 --api_key SECRET
    whisper-t5x serve --gin_file runs/serve --gin_file hardware/gpu --gin.ServeConfig.max_batch_size=16

Settings come from ``launch.ServeConfig`` (gin: ``configs/runs/serve.gin``,
always parsed first when present, then any ``--gin_file`` and
``--gin.NAME=VALUE`` / ``--gin_bindings``), then from the flags below.
Serving limits (upload size, audio duration, timeout, API key) are flags,
or ``ServeConfig`` fields of the same name when it has them.
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

from whisper_t5x.app.serving.service import Service, ServingSettings

logger = logging.getLogger("whisper_t5x.app.serving")

API_KEY_ENV = "WHISPER_T5X_API_KEY"
DEFAULT_GIN = "runs/serve.gin"


def create_app(service: Service, start: bool = True) -> Any:
    """The FastAPI app: REST routes, then the Gradio UI mounted at ``/`` (see :func:`.ui.mount_ui`)."""
    import contextlib

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from whisper_t5x.app.serving.api import add_routes

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
    if service.settings.ui:
        from whisper_t5x.app.serving.ui import mount_ui

        cleanups.append(mount_ui(app, service))
    else:
        @app.get("/")
        async def root():
            return JSONResponse({"service": "whisper_t5x", "model": service.settings.model,
                                 "endpoints": ["/v1/audio/transcriptions", "/v1/audio/translations", "/health"]})
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper-t5x serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model name or checkpoint path (default: ServeConfig.model, 'base')")
    p.add_argument("--host", help="listen address (default: ServeConfig.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port, 1-65535 (default: ServeConfig.port, 8000; 0 picks a free "
                   "one, printed at start-up)")
    p.add_argument("--batch_size", type=int, help="rows per compiled batch (ServeConfig.max_batch_size)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument("--max_batch_delay_ms", type=float, help="how long a request waits for others to batch with")
    p.add_argument("--max_queue", type=int, help="waiting requests beyond which new ones get 503")
    p.add_argument("--chunk_length_s", type=float, help="long-form window length (s)")
    p.add_argument("--max_upload_mb", type=float, help="largest accepted upload (default 25)")
    p.add_argument("--max_audio_s", type=float, help="longest accepted audio in seconds (default 3600)")
    p.add_argument("--request_timeout_s", type=float, help="per-request timeout (default 600)")
    p.add_argument("--api_key", help=f"require the key (or ${API_KEY_ENV}): 'Authorization: Bearer KEY' on /v1/*, "
                   "and a login (any user name, the key as password) for the Gradio UI and API")
    p.add_argument("--no_warmup", action="store_true", help="report ready without compiling first")
    p.add_argument("--no_warmup_timestamps", action="store_true", help="do not pre-compile timestamp decoding")
    p.add_argument("--no_ui", action="store_true", help="serve the REST API only")
    p.add_argument("--gin_file", action="append", default=[], help="gin file(s), in order")
    p.add_argument("--gin_bindings", action="append", default=[], help="gin binding(s); also --gin.NAME=VALUE")
    p.add_argument("--gin_search_paths", default="", help="comma-separated extra gin search paths")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p


_SERVE_FIELDS = ("model", "dtype", "host", "port", "max_batch_size", "max_batch_delay_ms", "max_queue",
                 "chunk_length_s", "max_length", "partitioner", "pipeline")
_LIMIT_FIELDS = ("max_upload_mb", "max_audio_s", "request_timeout_s", "api_key")


def settings_from_args(argv: Sequence[str]) -> ServingSettings:
    """Parses ``argv`` (without the program name); gin first, flags on top."""
    from whisper_t5x.app import launch

    args = _parser().parse_args(launch.rewrite_gin_args(list(argv)))
    search = [s for s in args.gin_search_paths.split(",") if s.strip()]
    files = list(args.gin_file)
    try:  # configs/runs/serve.gin first when the source tree has it (its MODEL/HOST/PORT macros)
        launch.resolve_gin_file(DEFAULT_GIN, search + launch.default_search_paths())
        files.insert(0, DEFAULT_GIN)
    except launch.GinConfigError:
        pass
    launch.parse_gin(files, args.gin_bindings, search)
    config = launch.make_serve_config()
    values = {f: getattr(config, f) for f in _SERVE_FIELDS if hasattr(config, f)}
    values.update({f: getattr(config, f) for f in _LIMIT_FIELDS if getattr(config, f, None) is not None})
    flag_map = {"model": "model", "host": "host", "port": "port", "batch_size": "max_batch_size", "dtype": "dtype",
                "max_batch_delay_ms": "max_batch_delay_ms", "max_queue": "max_queue",
                "chunk_length_s": "chunk_length_s", "max_upload_mb": "max_upload_mb", "max_audio_s": "max_audio_s",
                "request_timeout_s": "request_timeout_s", "api_key": "api_key"}
    for flag, field in flag_map.items():
        v = getattr(args, flag)
        if v is not None:
            values[field] = v
    if not values.get("api_key") and os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    if values.get("pipeline") == launch.DEFAULT_PIPELINE:
        values["pipeline"] = None
    values["warmup"] = not args.no_warmup
    values["warmup_timestamps"] = not args.no_warmup_timestamps
    values["ui"] = not args.no_ui
    settings = ServingSettings(**values)
    if settings.max_batch_size < 1:
        raise launch.GinConfigError(f"batch size must be >= 1, got {settings.max_batch_size}")
    port = settings.port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise launch.GinConfigError(f"port must be 1-65535 (or 0: any free port), got {port!r}")
    settings._log_level = args.log_level  # type: ignore[attr-defined]
    return settings


def _setup_logging(level: str) -> None:
    log = logging.getLogger("whisper_t5x")
    log.setLevel(getattr(logging, level.upper()))
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``whisper_t5x.app.serving.main([prog, *args])``; blocks until the server stops. Returns the exit status."""
    from whisper_t5x.app import launch

    argv = list(sys.argv if argv is None else argv)
    try:
        settings = settings_from_args(argv[1:])
    except launch.GinConfigError as e:
        print(f"whisper-t5x serve: error: {e}", file=sys.stderr)
        return 2
    _setup_logging(getattr(settings, "_log_level", "info"))
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
    logger.info("serving %s (UI %s, API key %s)", settings.model, "on" if settings.ui else "off",
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
