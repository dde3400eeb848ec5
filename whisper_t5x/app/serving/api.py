"""OpenAI-compatible REST API: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/health``.

Requests are ``multipart/form-data`` as in OpenAI's audio API:

``file`` (required), ``model`` (accepted, ignored: this server has one
model), ``language`` (code or English name; absent or ``auto``: detected),
``prompt`` (text conditioning the first window), ``response_format``
(``json`` default, ``text``, ``srt``, ``vtt``, ``verbose_json``),
``temperature`` (0 default: greedy with the temperature fallback; >0: that
temperature only), ``timestamp_granularities[]`` (``segment``, ``word``).

``word`` (as in OpenAI's API, only with ``response_format=verbose_json``;
otherwise 400) adds ``"words": [{"word", "start", "end"}]`` to the response.
Such requests are decoded with the sequential long-form algorithm and word
alignment (``return_timestamps="word"``; see :mod:`whisper_t5x.longform.sequential`),
so they are batched only with other word-timestamp requests. verbose_json
segments carry ``avg_logprob``, ``no_speech_prob``, ``compression_ratio``
and ``temperature`` of the window they were decoded in.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx
status; with an API key configured, ``Authorization: Bearer <key>`` is
required on ``/v1/*``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from whisper_t5x.app import writers as outputs_lib
from whisper_t5x.app.serving.service import Service, ServiceError, internal_error
from whisper_t5x.results import STATISTICS, Transcription

logger = logging.getLogger("whisper_t5x.app.serving")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_FORM_OVERHEAD = 64 * 1024  # multipart headers and small fields on top of the file
CLIENT_CLOSED = 499  # nginx's status for "client closed the request"; nobody reads it


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _until_disconnected(request: Request) -> None:
    """Returns when the client disconnects (call once the body has been read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


async def _wait_result(request: Request, fut: Any, timeout: float) -> Transcription:
    """The submitted request's result; cancels it if the client disconnects first or the timeout passes.

    A cancelled request still waiting in the batcher is never decoded and no
    longer holds a queue slot; one already being decoded finishes unused.
    """
    wrapped = asyncio.wrap_future(fut)
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        done, _ = await asyncio.wait({wrapped, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        fut.cancel()
        wrapped.cancel()
        raise
    finally:
        gone.cancel()
    if wrapped not in done:
        fut.cancel()
        wrapped.cancel()
        if gone in done:
            raise ClientGone()
        raise ServiceError(504, f"the transcription took longer than {timeout:g} s", "server_error",
                           code="timeout")
    try:
        return wrapped.result()
    except ServiceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise internal_error(e) from None


def error_response(err: ServiceError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _check_api_key(service: Service, request: Request) -> None:
    key = service.settings.api_key
    if not key:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if not auth:
        raise ServiceError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                           code="missing_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ServiceError(401, "Incorrect API key provided.", code="invalid_api_key")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_big = ServiceError(413, f"the request is larger than the upload limit ({limit // (1024 * 1024)} MB)",
                           param="file", code="file_too_large")
    if declared is not None:
        try:
            if int(declared) > limit + _FORM_OVERHEAD:
                raise too_big
        except ValueError:
            raise ServiceError(400, "invalid Content-Length header") from None
    chunks: List[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + _FORM_OVERHEAD:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def _field(form: Any, name: str) -> Optional[str]:
    value = form.get(name)
    if value is None or not isinstance(value, str):
        return None
    return value


def _parse_temperature(raw: Optional[str]) -> Optional[float]:
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ServiceError(400, f"temperature must be a number, got {raw!r}", param="temperature") from None


def _float(value: Any, digits: int = 4) -> Optional[float]:
    try:
        return None if value is None else round(float(value), digits)
    except (TypeError, ValueError):
        return None


def _verbose_segments(result: Transcription) -> List[Dict[str, Any]]:
    """OpenAI's verbose_json segments: each segment's own tokens and decoding statistics (None where absent)."""
    out = []
    for i, c in enumerate(outputs_lib.cues(result)):
        s = c.segment  # None: the one cue of a result without segments
        stat = {k: None if s is None else getattr(s, k) for k in STATISTICS}
        seek = s.seek if s is not None and s.seek is not None else int(round(c.start * 100))
        out.append({
            "id": i, "seek": int(seek), "start": round(c.start, 3), "end": round(c.end, 3), "text": c.text,
            "tokens": [int(t) for t in s.tokens] if s is not None else [],
            "temperature": _float(stat["temperature"], 2), "avg_logprob": _float(stat["avg_logprob"]),
            "compression_ratio": _float(stat["compression_ratio"]), "no_speech_prob": _float(stat["no_speech_prob"]),
        })
    return out


def _verbose_words(result: Transcription) -> List[Dict[str, Any]]:
    """OpenAI's ``words``: ``{"word", "start", "end"}`` of every aligned word with text."""
    out = []
    for w in result.words:
        word = w.word.strip()
        if word:
            start = round(float(w.start), 3)
            out.append({"word": word, "start": start, "end": max(start, round(float(w.end), 3))})
    return out


def render(result: Transcription, fmt: str, task: str, words: bool = False) -> Response:
    """The response body of ``result`` in ``fmt``; ``words``: verbose_json also lists OpenAI's ``words``."""
    text = result.text.strip()
    if fmt == "json":
        return JSONResponse({"text": text})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt == "srt":
        return PlainTextResponse(outputs_lib.to_srt(result))
    if fmt == "vtt":
        return PlainTextResponse(outputs_lib.to_vtt(result), media_type="text/vtt")
    # verbose_json
    from whisper_t5x.text.languages import LANGUAGES

    lang = result.language
    body = {
        "task": task,
        "language": LANGUAGES.get(lang, lang) if lang else None,
        "duration": round(float(result.duration), 3),
        "text": text,
        "segments": _verbose_segments(result),
    }
    if words:
        body["words"] = _verbose_words(result)
    return JSONResponse(body)


def add_routes(app: FastAPI, service: Service) -> None:
    """Registers the REST routes on ``app`` (before the UI is mounted at ``/``)."""

    @app.get("/health")
    async def health():
        body = service.health()
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            _check_api_key(service, request)
        except ServiceError as e:
            return error_response(e)
        model = {"id": service.settings.model.name, "object": "model", "owned_by": "whisper_t5x"}
        return {"object": "list", "data": [model]}

    async def handle(request: Request, task: str) -> Response:
        try:
            _check_api_key(service, request)
            service.check_ready()
            ctype = request.headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                raise ServiceError(400, "send the audio as multipart/form-data with a 'file' field",
                                   param="file", code="invalid_content_type")
            # Announced to the batcher from the first byte until submitted (it may hold a
            # group open for this request, never for one that is not coming).
            with service.arriving():
                # Read (bounded) first; request.form() then parses the kept body.
                request._body = await _read_limited(request, service.settings.max_upload_bytes)
                try:
                    form = await request.form(max_files=1, max_fields=64)
                except Exception as e:  # noqa: BLE001 - malformed multipart bodies
                    raise ServiceError(400, f"could not parse the multipart form: {e}", param="file") from None
                try:
                    upload = form.get("file")
                    if upload is None or isinstance(upload, str):
                        raise ServiceError(400, "the 'file' field (an audio file) is required", param="file",
                                           code="missing_file")
                    data = await upload.read()
                    fmt = (_field(form, "response_format") or "json").strip().lower()
                    if fmt not in RESPONSE_FORMATS:
                        raise ServiceError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                                           f"got {fmt!r}", param="response_format")
                    granularities = [g.strip().lower() for g in form.getlist("timestamp_granularities[]")
                                     + form.getlist("timestamp_granularities") if isinstance(g, str) and g.strip()]
                    bad = [g for g in granularities if g not in ("segment", "word")]
                    if bad:
                        raise ServiceError(400, f"timestamp_granularities must be 'segment' or 'word', got {bad}",
                                           param="timestamp_granularities[]")
                    words = "word" in granularities
                    if words and fmt != "verbose_json":
                        raise ServiceError(400, "timestamp_granularities[]=word needs response_format=verbose_json",
                                           param="timestamp_granularities[]", code="unsupported_value")
                    timestamps = fmt in ("srt", "vtt", "verbose_json") or "segment" in granularities
                    options = service.make_options(
                        task=task, language=_field(form, "language"), timestamps=timestamps,
                        temperature=_parse_temperature(_field(form, "temperature")), prompt=_field(form, "prompt"),
                        word_timestamps=words,
                    )
                finally:
                    await form.close()
                audio = await run_in_threadpool(service.decode_audio, data)
                del data
                fut = service.submit(audio, options)
            result = await _wait_result(request, fut, service.settings.request_timeout_s)
            return render(result, fmt, task, words=options.word_timestamps)
        except ClientGone:
            logger.debug("%s request dropped: the client disconnected", task)
            return Response(status_code=CLIENT_CLOSED)
        except ServiceError as e:
            if e.status >= 500:
                logger.warning("request failed (%d): %s", e.status, e.message)
            return error_response(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never let one request take the server down
            logger.exception("unexpected error while serving a request")
            return error_response(internal_error(e))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await handle(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        return await handle(request, "translate")
