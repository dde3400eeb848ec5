"""Live transcription over WebSocket, OpenAI Realtime-compatible: ``GET /v1/realtime?intent=transcription``.

Clients of OpenAI's Realtime transcription sessions work unchanged, e.g. the
official SDK::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        conn.input_audio_buffer.append(audio=base64_pcm16)
        for event in conn: ...   # ...input_audio_transcription.delta / .completed

Client events: ``session.update`` (GA shape, ``session.audio.input.{format,
transcription, turn_detection}``) and ``transcription_session.update`` (the
beta shape, ``input_audio_format``, ``input_audio_transcription``,
``turn_detection``): language, prompt, ``turn_detection`` ``null`` or
``server_vad`` (``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``),
input ``audio/pcm`` (PCM16 little-endian mono) at 24 kHz (default) or 16 kHz;
``input_audio_buffer.append`` (base64 audio), ``.commit``, ``.clear``.

Server events: ``session.created`` / ``session.updated`` (or
``transcription_session.updated``), ``input_audio_buffer.speech_started`` /
``speech_stopped`` / ``committed`` / ``cleared``,
``conversation.item.input_audio_transcription.delta`` (newly committed
text: it is never revised) and ``.completed`` (the item's transcript), and
``error`` (``{"type", "code", "message", "param", "event_id"}``); an error
leaves the connection and the other streams running, except those that end
the session (``too_many_streams``, ``idle_timeout``, ``slow_consumer``,
``not_ready``), which close the socket after the event. With an API key the
handshake needs ``Authorization: Bearer KEY`` (or, for browsers, the
``openai-insecure-api-key.KEY`` subprotocol), else HTTP 401.

Decoding: :mod:`whisper_t5x.app.serving.streams` (one batch for all streams due).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import itertools
import json
import logging
from typing import Any, Dict, Optional

import numpy as np
from fastapi import WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisper_t5x.app.serving.service import Service, ServiceError
from whisper_t5x.app.serving.streams import StreamError, TurnDetection, error_event

logger = logging.getLogger("whisper_t5x.app.serving")

__all__ = ["add_realtime_route", "SessionConfig", "RATES", "MAX_APPEND_BYTES", "MAX_OUTBOX"]

RATES = (24000, 16000)  # accepted PCM16 input rates (OpenAI's is 24 kHz)
MAX_APPEND_BYTES = 15 * 1024 * 1024  # OpenAI's limit on one append's base64 audio
MAX_OUTBOX = 2048  # server events waiting for a client that does not read: beyond, it is dropped
CLOSE_POLICY = 1008  # WebSocket close codes
CLOSE_TRY_LATER = 1013
_INSECURE_KEY = "openai-insecure-api-key."
_UNSUPPORTED = {  # conversation events of the Realtime API that a transcription session does not serve
    "response.create", "response.cancel", "conversation.item.create", "conversation.item.retrieve",
    "conversation.item.truncate", "conversation.item.delete", "output_audio_buffer.clear",
}


class _EventError(Exception):
    def __init__(self, code: str, message: str, param: Optional[str] = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.type = code, message, param, type


class SessionConfig:
    """A transcription session's settings, parsed from either update shape; :meth:`view` is OpenAI's echo."""

    def __init__(self, model: str):
        self.model = model
        self.language: Optional[str] = None
        self.prompt: str = ""
        self.rate = RATES[0]
        self.turn_detection: Optional[TurnDetection] = TurnDetection()

    def update(self, session: Any, beta: bool) -> None:
        """Apply a ``session`` object (only the fields present); :class:`_EventError` on bad values."""
        if not isinstance(session, dict):
            raise _EventError("invalid_value", "'session' must be an object", "session")
        if beta:
            fmt, transcription = session.get("input_audio_format", "keep"), session.get("input_audio_transcription")
            has_turn, turn, where = "turn_detection" in session, session.get("turn_detection"), "session"
        else:
            kind = session.get("type", "transcription")
            if kind != "transcription":
                raise _EventError("unsupported_session_type", f"this server serves transcription sessions only, "
                                  f"got session.type {kind!r}", "session.type")
            audio = session.get("audio") or {}
            inp = audio.get("input") or {} if isinstance(audio, dict) else {}
            if not isinstance(inp, dict):
                raise _EventError("invalid_value", "'session.audio.input' must be an object", "session.audio.input")
            fmt, transcription = inp.get("format", "keep"), inp.get("transcription")
            has_turn, turn, where = "turn_detection" in inp, inp.get("turn_detection"), "session.audio.input"
        rate = self.rate if fmt == "keep" else _rate(fmt, beta, where)
        new_turn = _turn_detection(turn, where) if has_turn else self.turn_detection
        language, prompt = self.language, self.prompt
        if transcription is not None:
            if not isinstance(transcription, dict):
                raise _EventError("invalid_value", "transcription settings must be an object", where)
            if "language" in transcription:
                language = transcription.get("language") or None
            if "prompt" in transcription:
                prompt = transcription.get("prompt") or ""
            if not isinstance(language, (str, type(None))) or not isinstance(prompt, str):
                raise _EventError("invalid_value", "language and prompt must be strings", where + ".transcription")
        self.rate, self.turn_detection, self.language, self.prompt = rate, new_turn, language, prompt

    def view(self, beta: bool, session_id: str) -> Dict[str, Any]:
        turn = None if self.turn_detection is None else {
            "type": "server_vad", "threshold": self.turn_detection.threshold,
            "prefix_padding_ms": int(self.turn_detection.prefix_padding_ms),
            "silence_duration_ms": int(self.turn_detection.silence_duration_ms)}
        transcription = {"model": self.model, "language": self.language, "prompt": self.prompt}
        if beta:
            return {"id": session_id, "object": "realtime.transcription_session",
                    "input_audio_format": "pcm16", "input_audio_transcription": transcription,
                    "turn_detection": turn, "input_audio_noise_reduction": None, "include": None}
        return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.rate}, "transcription": transcription,
                                    "turn_detection": turn, "noise_reduction": None}}, "include": None}


def _rate(fmt: Any, beta: bool, where: str) -> int:
    if beta:
        if fmt != "pcm16":
            raise _EventError("unsupported_audio_format", f"input_audio_format must be 'pcm16', got {fmt!r}",
                              "session.input_audio_format")
        return RATES[0]
    if not isinstance(fmt, dict) or fmt.get("type", "audio/pcm") != "audio/pcm":
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise _EventError("unsupported_audio_format", f"the input format must be audio/pcm (PCM16), got {kind!r}",
                          where + ".format")
    rate = fmt.get("rate", RATES[0])
    if rate not in RATES:
        raise _EventError("unsupported_audio_format", f"audio/pcm rate must be one of {list(RATES)}, got {rate!r}",
                          where + ".format.rate")
    return int(rate)


def _turn_detection(turn: Any, where: str) -> Optional[TurnDetection]:
    if turn is None:
        return None
    if not isinstance(turn, dict) or turn.get("type", "server_vad") != "server_vad":
        kind = turn.get("type") if isinstance(turn, dict) else turn
        raise _EventError("unsupported_turn_detection", f"turn_detection must be null or server_vad, got {kind!r}",
                          where + ".turn_detection")
    values = {k: turn[k] for k in ("threshold", "prefix_padding_ms", "silence_duration_ms")
              if turn.get(k) is not None}
    try:
        return TurnDetection(**values)
    except (TypeError, ValueError) as e:
        raise _EventError("invalid_value", f"turn_detection: {e}", where + ".turn_detection") from None


def _pcm16(data: Any) -> np.ndarray:
    """base64 PCM16 little-endian mono -> float32 in [-1, 1]; :class:`_EventError` ``invalid_audio``."""
    if not isinstance(data, str):
        raise _EventError("invalid_audio", "'audio' must be a base64 string of PCM16 samples", "audio")
    if len(data) > MAX_APPEND_BYTES:
        raise _EventError("audio_too_large", f"one append may carry at most {MAX_APPEND_BYTES // 2 ** 20} MiB of "
                          "base64 audio", "audio")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _EventError("invalid_audio", "'audio' is not valid base64", "audio") from None
    if len(raw) % 2:
        raise _EventError("invalid_audio", f"PCM16 audio has an even number of bytes, got {len(raw)}", "audio")
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


class _Resampler:
    """Streaming resampling of one connection's audio to 16 kHz (continuous across appends)."""

    def __init__(self, rate: int):
        self.rate = rate
        self._stream = None
        if rate != 16000:
            import soxr

            self._stream = soxr.ResampleStream(rate, 16000, 1, dtype="float32", quality="HQ")

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return audio if self._stream is None else self._stream.resample_chunk(audio)


def _authorized(service: Service, ws: Any) -> bool:
    key = service.settings.api_key
    if not key:
        return True
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
        return True
    for proto in ws.headers.get("sec-websocket-protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(_INSECURE_KEY) and hmac.compare_digest(proto[len(_INSECURE_KEY):].encode(), key.encode()):
            return True
    return False


def add_realtime_route(app: Any, service: Service) -> None:
    """Registers ``/v1/realtime`` (WebSocket) on ``app``."""
    session_numbers = itertools.count(1)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        if not _authorized(service, ws):
            has = bool(ws.headers.get("authorization"))
            err = ServiceError(401, "Incorrect API key provided." if has else
                               "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                               code="invalid_api_key" if has else "missing_api_key")
            await ws.send_denial_response(JSONResponse(err.body(), status_code=401,
                                                       headers={"WWW-Authenticate": "Bearer"}))
            return
        protocols = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        await ws.accept(subprotocol="realtime" if "realtime" in protocols else None)
        loop = asyncio.get_running_loop()
        outbox: "asyncio.Queue[Optional[Dict[str, Any]]]" = asyncio.Queue()
        event_ids = itertools.count(1)
        closing: Dict[str, Any] = {}

        def put(event: Optional[Dict[str, Any]]) -> None:  # on the loop
            if closing:
                return
            if event is not None and outbox.qsize() >= MAX_OUTBOX:
                closing["error"] = error_event("slow_consumer", "the client does not read its events; closing",
                                               type="server_error")
                outbox.put_nowait(None)
                return
            outbox.put_nowait(event)

        def emit(event: Dict[str, Any]) -> None:  # from the scheduler thread: never blocks
            loop.call_soon_threadsafe(put, event)

        async def send(event: Dict[str, Any]) -> None:
            event = {"event_id": f"event_{next(event_ids)}", **event}
            await ws.send_text(json.dumps(event))

        async def sender() -> None:
            while True:
                event = await outbox.get()
                if event is None:
                    return
                await send(event)

        async def fatal(code: str, message: str, close_code: int, type: str = "invalid_request_error") -> None:
            try:
                await send(error_event(code, message, type=type))
                await ws.close(close_code)
            except Exception:  # noqa: BLE001 - the client may be gone already
                pass

        intent = ws.query_params.get("intent", "transcription")
        if intent != "transcription":
            await fatal("unsupported_intent", f"this server serves intent=transcription only, got {intent!r}",
                        CLOSE_POLICY)
            return
        if not service.ready or service.streams is None:
            why = "live streams are disabled on this server" if service.ready else \
                f"the model is not ready yet ({service.state}); retry shortly"
            await fatal("not_ready", why, CLOSE_TRY_LATER, "server_error")
            return
        config = SessionConfig(service.settings.model.name)
        try:
            stream = service.streams.open(emit, turn_detection=config.turn_detection)
        except StreamError as e:
            await fatal(e.code, e.message, CLOSE_TRY_LATER, e.type)
            return
        session_id = f"sess_{next(session_numbers)}"
        resample = _Resampler(config.rate)
        task = asyncio.ensure_future(sender())
        idle = service.settings.stream_idle_timeout_s
        try:
            await send({"type": "session.created", "session": config.view(False, session_id)})
            while not task.done():
                try:
                    message = await asyncio.wait_for(ws.receive(), timeout=idle if idle > 0 else None)
                except asyncio.TimeoutError:
                    closing["error"] = error_event("idle_timeout", f"no client event for {idle:g} s; closing")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                client_event_id = None
                try:
                    if text is None:
                        raise _EventError("invalid_event", "send events as JSON text frames, not binary")
                    try:
                        event = json.loads(text)
                    except ValueError as e:
                        raise _EventError("invalid_json", f"the event is not valid JSON: {e}") from None
                    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                        raise _EventError("invalid_event", "an event is a JSON object with a string 'type'", "type")
                    client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
                    kind = event["type"]
                    if kind in ("session.update", "transcription_session.update"):
                        beta = kind == "transcription_session.update"
                        before = config.turn_detection
                        new = copy.copy(config)  # a refused update changes nothing
                        new.update(event.get("session"), beta)
                        try:
                            options = service.make_options(task="transcribe", language=new.language,
                                                           prompt=new.prompt)
                        except ServiceError as e:
                            raise _EventError(e.code or "invalid_value", e.message,
                                              "session.audio.input.transcription." + (e.param or "language")) from None
                        config = new
                        if resample.rate != config.rate:
                            resample = _Resampler(config.rate)
                        stream.configure(options.language, options.prompt_ids,
                                         config.turn_detection if config.turn_detection != before else "keep")
                        name = "transcription_session.updated" if beta else "session.updated"
                        put({"type": name, "session": config.view(beta, session_id)})
                    elif kind == "input_audio_buffer.append":
                        audio = _pcm16(event.get("audio"))
                        try:
                            stream.append(resample(audio))
                        except StreamError as e:
                            raise _EventError(e.code, e.message, e.param, e.type) from None
                    elif kind == "input_audio_buffer.commit":
                        stream.commit()
                    elif kind == "input_audio_buffer.clear":
                        stream.clear()
                    elif kind in _UNSUPPORTED:
                        raise _EventError("unsupported_event", f"{kind} is not served by a transcription session",
                                          "type")
                    else:
                        raise _EventError("invalid_event", f"unknown event type {kind!r}", "type")
                except _EventError as e:
                    put(error_event(e.code, e.message, e.type, e.param, client_event_id))
        except WebSocketDisconnect:
            pass
        except Exception:  # noqa: BLE001 - one connection never takes the server down
            logger.exception("realtime connection failed")
            closing.setdefault("error", error_event("internal_error", "the server failed", type="server_error"))
        finally:
            stream.close()
            error = closing.get("error")
            closing.setdefault("closed", True)
            outbox.put_nowait(None)
            try:
                await asyncio.wait_for(task, timeout=5)
                if error is not None and ws.client_state == WebSocketState.CONNECTED:
                    await send(error)
                if ws.client_state == WebSocketState.CONNECTED:
                    await ws.close(CLOSE_POLICY if error is not None else 1000)
            except Exception:  # noqa: BLE001 - the client is gone
                task.cancel()
