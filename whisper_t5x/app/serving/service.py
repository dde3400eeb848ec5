"""The transcription service behind both front ends (REST API and Gradio UI).

:class:`Service` loads the pipeline in a background thread, warms it up
(compiles the common programs) and only then reports ready; it validates
requests, enforces the server's limits and hands decoded
audio to the :class:`~whisper_t5x.app.serving.batcher.Batcher`. Its settings are a
:class:`whisper_t5x.app.config.ServeConfig`: the shared model, partition and decode
sections plus the server's own limits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from whisper_t5x.app.config import ServeConfig
from whisper_t5x.app.serving.batcher import Batcher, BatcherStopped, DecodeOptions, QueueFull
from whisper_t5x.app.serving.streams import StreamScheduler
from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.audio.loading import AudioError, AudioTooLongError, EmptyAudioError, load_audio
from whisper_t5x.longform.stream_decode import AUDIO_CTX_BUCKETS, decoder_decode_fn, stream_request, warmup_seconds
from whisper_t5x.longform.streaming import make_policy
from whisper_t5x.results import Transcription
from whisper_t5x.text.tokenizer import TASKS

logger = logging.getLogger("whisper_t5x.app.serving")

__all__ = ["ServeConfig", "Service", "ServiceError", "MAX_PROMPT_TOKENS"]

# openai-whisper keeps at most n_text_ctx // 2 - 1 prompt tokens.
MAX_PROMPT_TOKENS = 223


class ServiceError(Exception):
    """A request failure with an HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bucket_sizes(max_batch_size: int) -> List[int]:
    sizes, s = [], 1
    while s < max_batch_size:
        sizes.append(s)
        s *= 2
    sizes.append(max_batch_size)
    return sizes


def _warmup_audio(seconds: float = 2.0) -> np.ndarray:
    """A quiet, non-silent signal (silent windows are skipped, so would not compile)."""
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    return (0.05 * np.sin(2 * math.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


class Service:
    """Pipeline + batcher + readiness; thread-safe.

    ``pipeline``: an already built pipeline (tests); otherwise one is built
    from ``settings`` in the background by :meth:`start`. ``engine=False``: requests never join a
    running engine call (the batcher's grouped path only; see :mod:`~whisper_t5x.app.serving.batcher`).
    """

    def __init__(self, settings: ServeConfig, pipeline: Any = None,
                 pipeline_factory: Optional[Callable[[ServeConfig], Any]] = None,
                 stream_decode: Optional[Callable[..., Any]] = None, stream_vad: Optional[Callable[..., Any]] = None,
                 engine: bool = True):
        self.settings = settings
        self.engine = bool(engine)
        self.pipeline = pipeline
        self._factory = pipeline_factory or _build_pipeline
        self.batcher: Optional[Batcher] = None
        # live streams (/v1/realtime): decoded by the pipeline's Decoder unless a decode function is given
        self.streams: Optional[StreamScheduler] = None
        self._stream_decode, self._stream_vad = stream_decode, stream_vad
        self.state = "starting"  # starting -> loading -> warming_up -> ready | error
        self.error: Optional[str] = None
        self.started_at = time.time()
        self.ready_at: Optional[float] = None
        self.warmup_s: Optional[float] = None
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- lifecycle
    def start(self, background: bool = True) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._startup, name="whisper_t5x-startup", daemon=True)
        self._thread.start()
        if not background:
            self._thread.join()

    def _startup(self) -> None:
        try:
            if self.pipeline is None:
                self.state = "loading"
                t = time.perf_counter()
                self.pipeline = self._factory(self.settings)
                logger.info("model %s loaded in %.1f s", self.settings.model.name, time.perf_counter() - t)
            s = self.settings
            self.batcher = Batcher(self.pipeline, s.max_batch_size, s.max_batch_delay_ms / 1000.0, s.max_queue,
                                   s.decode, announce=True, engine=self.engine)
            self.streams = self._make_streams()
            if s.warmup:
                self.state = "warming_up"
                t = time.perf_counter()
                self._warmup()
                self.warmup_s = time.perf_counter() - t
                logger.info("warm-up (compilation) took %.1f s", self.warmup_s)
            if self.streams is not None:
                self.streams.start()
            self.state = "ready"
            self.ready_at = time.time()
            self._ready.set()
            logger.info("ready: serving %s", s.model.name)
        except Exception as e:  # noqa: BLE001
            self.state = "error"
            self.error = f"{type(e).__name__}: {e}"
            logger.exception("server start-up failed")
            self._ready.set()

    def _warmup(self) -> None:
        """Compile what requests will run, for each batch bucket: greedy decoding, plain and with
        timestamps, and the word-timestamp path (sequential decoding and the alignment pass); the engine
        path's calls (:meth:`Batcher.warm_up_engine`); live streams' rows."""
        audio = _warmup_audio()
        s = self.settings
        # Pipelines that decode with timestamp tokens anyway compile the same
        # program for both settings; others need both.
        both = s.warmup_timestamps and not getattr(self.pipeline, "decode_with_timestamps", False)
        modes: List[Any] = [False, True] if both else [False]
        if s.warmup_timestamps:
            modes.append("word")
        for ts in modes:
            for size in _bucket_sizes(s.max_batch_size):
                kwargs = DecodeOptions(return_timestamps=bool(ts), temperature=0.0,
                                       word_timestamps=ts == "word").pipeline_kwargs(s.decode)
                self.pipeline.transcribe([audio] * size, batch_size=s.max_batch_size, **kwargs)
        if self.batcher is not None and self.batcher.use_engine:
            self.batcher.warm_up_engine(audio)  # the programs of requests joining a running engine call
        if self.streams is not None:
            self._warmup_streams(audio)

    def _make_streams(self) -> Optional[StreamScheduler]:
        """The live-stream scheduler over the pipeline's Decoder (None: streams off, or no Decoder)."""
        s = self.settings
        if s.max_streams <= 0:
            return None
        decode = self._stream_decode
        if decode is None:
            decoder = getattr(self.pipeline, "decoder", None)
            if decoder is None:
                logger.warning("live streams are off: the pipeline has no Decoder")
                return None
            # Short buffers encode only the positions they need (benchmarks/results/streaming_levers_quiet.md:
            # 4 tiny.en streams 3.36 -> 1.54 s mean latency on an idle 2-core Xeon); word times read while decoding.
            decode = decoder_decode_fn(decoder, stream_request(), audio_ctx=AUDIO_CTX_BUCKETS, inline_alignment=True)
        policy = make_policy(s.stream_policy, threshold_s=s.stream_threshold_s)
        return StreamScheduler(decode, policy, s.stream_interval_ms / 1000.0, s.max_streams, s.stream_max_buffer_s,
                               vad=self._stream_vad)

    def _warmup_streams(self, audio: np.ndarray) -> None:
        """Compile the stream rows' programs: each batch bucket up to ``max_streams``, with each prompt length
        streams use, word times included (the alignment forward); each ``audio_ctx`` bucket of the decode
        function (at the longest prompt); and the VAD."""
        from whisper_t5x.longform.streaming import PROMPT_LENGTHS, StreamRow

        sizes = [n for n in _bucket_sizes(self.settings.max_batch_size) if n <= max(1, self.settings.max_streams)]
        tokens = tuple(self.pipeline.tokenizer.encode(" warm up" * 40))
        for size in sizes:
            for length in (0,) + PROMPT_LENGTHS:
                self.streams.decode([StreamRow(audio, tokens[:length], None, True)] * size)
            buckets = getattr(self.streams.decode, "audio_ctx", None)
            for seconds in (warmup_seconds(buckets) if buckets else []):  # each bucket, then the whole window
                clip = np.resize(audio, int(seconds * 16000)).astype(np.float32)
                self.streams.decode([StreamRow(clip, tokens[:PROMPT_LENGTHS[0]], None, True)] * size)
        self.streams._vad_probabilities([audio])

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        self._ready.wait(timeout)
        return self.state == "ready"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def stop(self) -> None:
        if self.streams is not None:
            self.streams.stop()
        if self.batcher is not None:
            self.batcher.stop()

    def health(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"status": "ok" if self.ready else self.state, "model": self.settings.model.name}
        if self.error:
            out["error"] = self.error
        if self.warmup_s is not None:
            out["warmup_s"] = round(self.warmup_s, 2)
        if self.batcher is not None:
            out["queue"] = self.batcher.queue_length
            out["batches"] = dict(self.batcher.stats)
        if self.streams is not None:
            out["streams"] = {"active": self.streams.active, "max": self.settings.max_streams,
                              **dict(self.streams.stats)}
        return out

    # ----------------------------------------------------------------- requests
    @property
    def multilingual(self) -> bool:
        tok = getattr(self.pipeline, "tokenizer", None)
        return bool(getattr(tok, "is_multilingual", True))

    def languages(self) -> Dict[str, str]:
        """Code -> English name of the languages the loaded model knows (before load: all)."""
        from whisper_t5x.text.languages import LANGUAGES

        tok = getattr(self.pipeline, "tokenizer", None)
        if tok is not None and not tok.is_multilingual:
            return {"en": "english"}
        n = getattr(tok, "num_languages", len(LANGUAGES)) if tok is not None else len(LANGUAGES)
        return dict(list(LANGUAGES.items())[:n])

    def check_ready(self) -> None:
        if not self.ready:
            if self.state == "error":
                raise ServiceError(503, f"the model failed to load: {self.error}", "server_error", code="not_ready")
            raise ServiceError(503, f"the model is not ready yet ({self.state}); retry shortly", "server_error",
                               code="not_ready")

    def make_options(self, task: str = "transcribe", language: Optional[str] = None, timestamps: bool = False,
                     temperature: Optional[float] = None, prompt: Optional[str] = None,
                     word_timestamps: bool = False) -> DecodeOptions:
        """Validated decoding options (ServiceError 400 on bad values)."""
        self.check_ready()
        task = (task or "transcribe").strip().lower()
        if task not in TASKS:
            raise ServiceError(400, f"unknown task {task!r}; use transcribe or translate", param="task")
        lang = (language or "").strip()
        if lang.lower() in ("", "auto", "none", "detect"):
            lang_code = None
        else:
            tok = self.pipeline.tokenizer
            try:
                lang_code = tok.language_code(lang)
            except (ValueError, KeyError) as e:
                raise ServiceError(400, f"unsupported language {lang!r}: {e}", param="language",
                                   code="unsupported_language") from None
        try:
            self.pipeline.tokenizer.sot_sequence(lang_code, task, timestamps)
        except ValueError as e:
            raise ServiceError(400, f"{e} (model {self.settings.model.name})",
                               param="language" if lang_code else "task") from None
        if temperature is not None:
            if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or not 0 <= temperature <= 1:
                raise ServiceError(400, f"temperature must be between 0 and 1, got {temperature!r}",
                                   param="temperature")
            # OpenAI semantics: 0 (the default) means "start greedy, raise the
            # temperature when the output looks wrong" -- the pipeline's fallback.
            temperature = None if temperature == 0 else float(temperature)
        prompt_ids: tuple = ()
        if prompt and prompt.strip():
            ids = self.pipeline.tokenizer.encode(" " + prompt.strip())
            prompt_ids = tuple(int(i) for i in ids[-MAX_PROMPT_TOKENS:])
        return DecodeOptions(task, lang_code, bool(timestamps), temperature, prompt_ids, bool(word_timestamps))

    def decode_audio(self, data: Any) -> np.ndarray:
        """Upload (bytes or path) -> 16 kHz waveform, with the upload and duration limits.

        The duration limit is checked before decoding it all (``load_audio``'s
        ``max_duration_s``: the container's duration, else a decode capped just
        past the limit), so a small file holding hours of audio costs neither
        the time nor the memory of decoding them. Error messages name no
        server path (the upload's temporary copy, Gradio's cache).
        """
        if isinstance(data, (bytes, bytearray)):
            if len(data) == 0:
                raise ServiceError(400, "the uploaded file is empty", param="file", code="empty_file")
            if len(data) > self.settings.max_upload_bytes:
                raise ServiceError(413, f"the uploaded file is larger than {self.settings.max_upload_mb:g} MB",
                                   param="file", code="file_too_large")
        limit = self.settings.max_audio_s
        try:
            audio = load_audio(data, SAMPLE_RATE, max_duration_s=limit)
        except AudioTooLongError as e:
            length = f"{e.duration_s:.1f} s long" if e.duration_s is not None else "longer than that"
            raise ServiceError(400, f"the audio is {length}; the limit is {e.limit_s:g} s", param="file",
                               code="audio_too_long") from None
        except EmptyAudioError:
            raise ServiceError(400, "the uploaded file contains no audio samples", param="file",
                               code="empty_audio") from None
        except AudioError as e:
            raise ServiceError(400, f"could not decode the audio: {redact_paths(str(e), data)}", param="file",
                               code="invalid_audio") from None
        if audio.shape[0] == 0:
            raise ServiceError(400, "the uploaded file contains no audio samples", param="file", code="empty_audio")
        if not np.all(np.isfinite(audio)):
            raise ServiceError(400, "the audio contains non-finite samples", param="file", code="invalid_audio")
        duration = audio.shape[0] / SAMPLE_RATE
        if duration > limit:
            raise ServiceError(400, f"the audio is {duration:.1f} s long; the limit is {limit:g} s",
                               param="file", code="audio_too_long")
        return audio

    def submit(self, audio: np.ndarray, options: DecodeOptions) -> concurrent.futures.Future:
        self.check_ready()
        try:
            return self.batcher.submit(audio, options)
        except QueueFull as e:
            raise ServiceError(503, f"the server is busy: {e}", "server_error", code="queue_full") from None
        except BatcherStopped as e:
            raise ServiceError(503, str(e), "server_error", code="shutting_down") from None

    def arriving(self) -> Any:
        """Context for a request being received/decoded before :meth:`submit` (see ``Batcher.announce``).

        Every front end wraps its requests in it: the batcher holds a group
        open for companions only while some request is inside.
        """
        if self.batcher is None:
            return contextlib.nullcontext()
        return self.batcher.arriving()

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Transcription:
        """Blocking transcription with the request timeout (for the UI's worker threads)."""
        return self.result(self.submit(audio, options))

    def result(self, fut: concurrent.futures.Future) -> Transcription:
        """Waits for a submitted request, with the request timeout."""
        try:
            return fut.result(timeout=self.settings.request_timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ServiceError(504, f"the transcription took longer than {self.settings.request_timeout_s:g} s",
                               "server_error", code="timeout") from None
        except ServiceError:
            raise
        except Exception as e:  # noqa: BLE001
            raise internal_error(e) from None


_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/][^\s:'\"]+")


def redact_paths(message: str, source: Any = None) -> str:
    """``message`` with file paths (``source`` if it is one, and anything path-like) replaced by ``<upload>``."""
    if isinstance(source, (str, os.PathLike)):
        for form in {os.fspath(source), os.path.realpath(os.fspath(source))}:
            message = message.replace(form, "<upload>")
    return _PATH.sub("<upload>", message)


def internal_error(e: BaseException) -> ServiceError:
    return ServiceError(500, f"transcription failed: {type(e).__name__}: {redact_paths(str(e))}", "server_error",
                        code="internal_error")


def _build_pipeline(settings: ServeConfig) -> Any:
    from whisper_t5x.app import build

    return build.build_pipeline(settings.model, settings.partition, batch_size=settings.max_batch_size)
