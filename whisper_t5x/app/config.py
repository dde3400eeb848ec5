"""Run configuration as composed sections: each setting is declared once, every job shares it.

A *section* is a frozen dataclass and a gin configurable, holding one concern:

* :class:`ModelSection` -- which checkpoint, in which dtype, how long a decode may run;
* :class:`PartitionSection` -- the partitioner, the pipeline class, the batch size;
* :class:`DecodeSection` -- task, language, timestamps, long-form mode and
  windowing, temperature fallback and its thresholds, extra ``generate`` options;
* :class:`GroupingSection` -- how inputs reach the pipeline: inputs per call and
  how far audio decoding runs ahead.

A *job config* composes the sections it needs and adds its own fields:
:class:`TranscribeConfig` (the file job), ``LabelConfig``
(:mod:`whisper_t5x.app.label.config`) and :class:`ServeConfig` (the server).
Sections are built through gin when a job config is made, so one binding
(``PartitionSection.batch_size = 32`` in ``configs/hardware/tpu_v4_8.gin``)
configures the transcribe run, the labelling run and the server alike, and
command-line flags become bindings of section fields (``--batch_size`` ->
``PartitionSection.batch_size``). Every check of a value lives with its field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import gin

from whisper_t5x.app import writers
from whisper_t5x.app.gin_config import check_required
from whisper_t5x.longform.fallback import FallbackConfig
from whisper_t5x.longform.windows import window_params
from whisper_t5x.text.languages import to_code
from whisper_t5x.text.tokenizer import TASKS

__all__ = [
    "DTYPES", "DEFAULT_PIPELINE", "ModelSection", "PartitionSection", "DecodeSection", "GroupingSection",
    "TranscribeConfig", "ServeConfig", "SERVE_BATCH_SIZE", "positive_int", "LANGUAGES_HINT",
]

DTYPES = ("float32", "bfloat16", "float16")
WEIGHT_DTYPES = ("float32", "int8", "int8_step", "bfloat16")  # whisper_t5x.model.quantize.WEIGHT_DTYPES (not imported: no jax here)
DEFAULT_PIPELINE = "whisper_t5x.pipeline:FlaxWhisperPipeline"
_FALLBACK = FallbackConfig()
_FALLBACK_KEYS = ("temperature", "compression_ratio_threshold", "logprob_threshold", "no_speech_threshold")
LANGUAGES_HINT = "`whisper-t5x languages` lists the codes and names"


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or ``ValueError`` naming ``name`` (the one home of such checks)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ==================================================================== sections
@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The model.

    Attributes:
      name: named model (``base``, ``tiny.en``) or a checkpoint path / hub id.
      dtype: compute dtype, ``float32`` / ``bfloat16`` / ``float16``.
      max_length: decoder token limit per window (``None``: the model's).
      weights_dtype: storage of the dense kernels: ``float32``; ``int8`` (encoder, decoder and vocabulary
        projection W8A8); ``int8_step`` (the decoder step and vocabulary only); ``bfloat16`` (the decoder
        step and vocabulary) (``FlaxWhisperPipeline(weights_dtype=...)``).
    """

    name: str = "base"
    dtype: str = "float32"
    max_length: Optional[int] = None
    weights_dtype: str = "float32"

    def __post_init__(self):
        check_required(self)
        if str(self.dtype) not in DTYPES:
            raise ValueError(f"ModelSection.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if str(self.weights_dtype) not in WEIGHT_DTYPES:
            raise ValueError(f"ModelSection.weights_dtype must be one of {WEIGHT_DTYPES}, "
                             f"got {self.weights_dtype!r}")
        if self.max_length is not None:
            positive_int(self.max_length, "ModelSection.max_length")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PartitionSection:
    """Devices and batching: what runs the model, how many rows at once.

    Attributes:
      partitioner: ``None`` (single device, or data parallel over this
        process's devices under multi-host), a partitioner, or a factory such
        as ``@partitioning.PjitPartitioner`` (no parentheses), called with
        ``devices=<this process's devices>`` under multi-host.
      pipeline: ``"module:Class"`` (or a callable) building the pipeline.
      batch_size: rows (windows) per forward pass, over all local devices; a
        multiple of the data-parallel size (checked when the pipeline is built,
        :func:`whisper_t5x.app.build.check_batch_size`). ``None``: the
        pipeline's default (the server's: 8).
    """

    partitioner: Any = None
    pipeline: Any = DEFAULT_PIPELINE
    batch_size: Optional[int] = None

    def __post_init__(self):
        check_required(self)
        if self.batch_size is not None:
            positive_int(self.batch_size, "PartitionSection.batch_size")
        if not (callable(self.pipeline) or isinstance(self.pipeline, str)):
            raise ValueError(f"PartitionSection.pipeline must be 'module:Class' or a callable, got {self.pipeline!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeSection:
    """How audio is decoded into text (the arguments of ``FlaxWhisperPipeline.transcribe``).

    Attributes:
      task: ``transcribe`` or ``translate`` (to English).
      language: source language: a code (``en``, ``de``...), English name or
        ``<|code|>`` token of :mod:`whisper_t5x.text.languages`, checked here,
        before any model loads; ``None`` detects it.
      timestamps: segment timestamps (timed srt/vtt/tsv cues; by default from the word alignment of
        the VAD rows, segments cut at sentence ends, pauses and removed silences). ``None`` (default):
        on when a transcribe run writes srt, vtt or tsv, else off; ``False`` keeps them off.
      word_timestamps: word-level timestamps (cross-attention alignment).
      long_form: a mode of the pipeline's ``LONG_FORM_MODES`` (``chunked``:
        batched windows, stitched; ``sequential``: openai-whisper's seek;
        ``vad``: speech rows...); ``None``: the pipeline's default (``auto``: VAD rows).
      chunk_length_s, stride_length_s: windowing of the chunked mode, checked
        here with the pipeline's own rule (:func:`whisper_t5x.longform.windows.window_params`:
        a window of at most 30 s, strides that let windows advance).
      temperature: the fallback schedule (a sequence), or one temperature (no fallback).
      compression_ratio_threshold, logprob_threshold, no_speech_threshold:
        when a decode is retried at the next temperature, or judged silent
        (``None`` disables a test); defaults are openai-whisper's.
      generate_kwargs: further options of ``transcribe(generate_kwargs=...)``
        (``num_beams``, ``prompt_ids``...), applied over the fields above.
    """

    task: str = "transcribe"
    language: Optional[str] = None
    timestamps: Optional[bool] = None
    word_timestamps: bool = False
    long_form: Optional[str] = None
    chunk_length_s: float = 30.0
    stride_length_s: Optional[float] = None
    temperature: Any = _FALLBACK.temperatures
    compression_ratio_threshold: Optional[float] = _FALLBACK.compression_ratio_threshold
    logprob_threshold: Optional[float] = _FALLBACK.logprob_threshold
    no_speech_threshold: Optional[float] = _FALLBACK.no_speech_threshold
    generate_kwargs: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        from whisper_t5x.pipeline import LONG_FORM_MODES

        check_required(self)
        if self.task not in TASKS:
            raise ValueError(f"DecodeSection.task must be one of {TASKS}, got {self.task!r}")
        if self.language is not None:
            try:
                to_code(self.language)
            except ValueError:
                raise ValueError(f"DecodeSection.language: unknown language {self.language!r}; use a code "
                                 f"('en'), an English name ('german') or None to detect it ({LANGUAGES_HINT})"
                                 ) from None
        if self.long_form is not None and self.long_form not in LONG_FORM_MODES:
            raise ValueError(f"DecodeSection.long_form must be one of {LONG_FORM_MODES}, got {self.long_form!r}")
        for name in ("chunk_length_s", "stride_length_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"DecodeSection.{name} must be a finite number of seconds, got {v!r}")
        try:
            window_params(self.chunk_length_s, self.stride_length_s)  # the pipeline's rule, before any model
        except ValueError as e:
            raise ValueError(f"DecodeSection.{e}") from None
        if self.generate_kwargs is not None and not isinstance(self.generate_kwargs, dict):
            raise ValueError(f"DecodeSection.generate_kwargs must be a dict, got {self.generate_kwargs!r}")
        temps = self.temperature if isinstance(self.temperature, (list, tuple)) else (self.temperature,)
        FallbackConfig(temperatures=tuple(temps))  # same rules as the pipeline's
        if isinstance(self.temperature, list):
            object.__setattr__(self, "temperature", tuple(self.temperature))

    @property
    def return_timestamps(self) -> Any:
        """The pipeline's ``return_timestamps``: ``"word"``, ``True`` or ``False``."""
        return "word" if self.word_timestamps else bool(self.timestamps)

    def decoding_options(self) -> Dict[str, Any]:
        """The fallback fields, then :attr:`generate_kwargs` over them (``generate_kwargs=`` of a call)."""
        out: Dict[str, Any] = {k: getattr(self, k) for k in _FALLBACK_KEYS}
        out.update(self.generate_kwargs or {})
        return out

    def transcribe_kwargs(self, **overrides: Any) -> Dict[str, Any]:
        """Keyword arguments of ``pipe.transcribe(inputs, ...)``; ``overrides`` replace fields first.

        ``long_form`` is passed only when set, so the pipeline's default
        applies otherwise and custom pipelines need not know the argument.
        """
        section = dataclasses.replace(self, **overrides) if overrides else self
        kwargs: Dict[str, Any] = dict(
            task=section.task, language=section.language, return_timestamps=section.return_timestamps,
            chunk_length_s=float(section.chunk_length_s), stride_length_s=section.stride_length_s,
            generate_kwargs=section.decoding_options(),
        )
        if section.long_form is not None:
            kwargs["long_form"] = section.long_form
        return kwargs


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GroupingSection:
    """How inputs reach the pipeline (the file job and the labelling job).

    Attributes:
      group_size: at most this many inputs per pipeline call (bounds memory).
      group_batches: a call also holds at most this many batches of windows
        (``batch_size`` each); 1: every input of a call is decoded in the same
        batch, so each is written as soon as it is done and Ctrl-C loses at most
        the batch in flight (see :mod:`whisper_t5x.app.file_job`).
      group_max_audio_s: also close a group once it holds this much audio.
      load_workers: threads decoding audio (ffmpeg) ahead of the model.
    """

    group_size: int = 16
    group_batches: int = 1
    group_max_audio_s: float = 4 * 3600.0
    load_workers: int = 2

    def __post_init__(self):
        check_required(self)
        for name in ("group_size", "group_batches", "load_workers"):
            positive_int(getattr(self, name), f"GroupingSection.{name}")
        if not float(self.group_max_audio_s) > 0:
            raise ValueError(f"GroupingSection.group_max_audio_s must be > 0, got {self.group_max_audio_s!r}")


# ================================================================ job configs
TIMED_FORMATS = frozenset({"srt", "vtt", "tsv"})  # output formats whose cues are timed segments


@gin.configurable
@dataclasses.dataclass
class TranscribeConfig:
    """One ``whisper-t5x transcribe`` / ``benchmark`` run: the sections plus the file job's own fields.

    Attributes:
      model, partition, decode, grouping: the shared sections (bound as
        ``ModelSection.name = 'tiny.en'`` etc.).
      output_dir: where ``<name>.<fmt>`` files and ``config.gin`` go.
      output_formats: ``"txt"``, ``"srt,vtt"``, ``"all"`` or a list of names.
      overwrite: redo files whose outputs all exist (default: skip them; the
        manifest in ``output_dir`` says which input each output belongs to).
      warmup: run the first group once, untimed, before the timed run (benchmarks).
      benchmark_file: if set, metrics JSON written there (relative to output_dir).
      progress: passed to the pipeline (``None``: its default).
    """

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    partition: PartitionSection = dataclasses.field(default_factory=PartitionSection)
    decode: DecodeSection = dataclasses.field(default_factory=DecodeSection)
    grouping: GroupingSection = dataclasses.field(default_factory=GroupingSection)
    output_dir: str = "."
    output_formats: Any = "txt"
    overwrite: bool = False
    warmup: bool = False
    benchmark_file: Optional[str] = None
    progress: Optional[bool] = None

    def __post_init__(self):
        check_required(self)
        self.output_formats = writers.parse_formats(self.output_formats)
        if set(self.output_formats) & TIMED_FORMATS and self.decode.timestamps is None:
            # Timed cues need segment times: without them a cue would span a whole row, silences included.
            self.decode = dataclasses.replace(self.decode, timestamps=True)


SERVE_BATCH_SIZE = 8


@gin.configurable
@dataclasses.dataclass
class ServeConfig:
    """The transcription endpoint (``whisper-t5x serve``, ``configs/runs/serve.gin``).

    Attributes:
      model, partition, decode: the shared sections; ``partition.batch_size``
        is the rows of one compiled batch (windows of several requests; default
        :data:`SERVE_BATCH_SIZE`); ``decode`` gives the long-form mode, the
        windowing and the fallback thresholds (task, language, timestamps and
        temperature come with each request).
      host, port: listen address (port 0: any free port).
      max_batch_delay_ms: how long a request waits for others to batch with.
      max_queue: waiting requests beyond which new ones get 503.
      max_upload_mb: largest accepted upload.
      max_audio_s: longest accepted audio (checked before decoding it all).
      request_timeout_s: a request not answered by then gets 504.
      api_key: if set, the REST API requires ``Authorization: Bearer <api_key>`` and the
        Gradio UI and API a login with it as the password (:mod:`whisper_t5x.app.serving.ui`).
      warmup: compile the common programs before reporting ready.
      warmup_timestamps: also compile the timestamp and word-timestamp programs.
      ui: mount the Gradio UI at ``/``.
      max_streams: live transcription streams (``/v1/realtime``) served at once; 0 turns them off.
      stream_interval_ms: how often each live stream is decoded again (every stream due, one batch).
      stream_policy: which words a live stream emits while audio arrives: ``local_agreement`` (two consecutive
        updates agree on them) or ``alignatt`` (the alignment heads place them far enough before the end);
        :mod:`whisper_t5x.longform.streaming`.
      stream_threshold_s: AlignAtt's distance from the end of the audio.
      stream_max_buffer_s: audio a stream may have waiting to be decoded; appends beyond are refused.
      stream_idle_timeout_s: a live stream with no client event for this long is closed (0: never).
    """

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    partition: PartitionSection = dataclasses.field(default_factory=PartitionSection)
    decode: DecodeSection = dataclasses.field(default_factory=DecodeSection)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_delay_ms: float = 10.0
    max_queue: int = 64
    max_upload_mb: float = 25.0
    max_audio_s: float = 3600.0
    request_timeout_s: float = 600.0
    api_key: Optional[str] = None
    warmup: bool = True
    warmup_timestamps: bool = True
    ui: bool = True
    max_streams: int = 16
    stream_interval_ms: float = 500.0
    stream_policy: str = "local_agreement"
    stream_threshold_s: float = 0.5
    stream_max_buffer_s: float = 30.0
    stream_idle_timeout_s: float = 60.0

    def __post_init__(self):
        check_required(self)
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"ServeConfig.port must be 1-65535 (or 0: any free port), got {port!r}")
        positive_int(self.max_queue, "ServeConfig.max_queue")
        if isinstance(self.max_streams, bool) or not isinstance(self.max_streams, int) or self.max_streams < 0:
            raise ValueError(f"ServeConfig.max_streams must be an integer >= 0, got {self.max_streams!r}")
        from whisper_t5x.longform.streaming import POLICIES

        if self.stream_policy not in POLICIES:
            raise ValueError(f"ServeConfig.stream_policy must be one of {sorted(POLICIES)}, got {self.stream_policy!r}")
        for name in ("stream_interval_ms", "stream_max_buffer_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"ServeConfig.{name} must be a finite number > 0, got {v!r}")
        for name in ("max_batch_delay_ms", "max_upload_mb", "max_audio_s", "request_timeout_s", "stream_threshold_s",
                     "stream_idle_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"ServeConfig.{name} must be a finite number >= 0, got {v!r}")

    @property
    def max_batch_size(self) -> int:
        """Rows per compiled batch: ``partition.batch_size`` or :data:`SERVE_BATCH_SIZE`."""
        return self.partition.batch_size or SERVE_BATCH_SIZE

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
