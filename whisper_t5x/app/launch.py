"""Launch-time wiring for the ``whisper-t5x`` command: gin, configs, processes, the pipeline.

This is the edge of the system, the one place (with ``whisper_t5x.main``)
that imports gin. It holds:

* :class:`TranscribeConfig` -- every knob of a transcription / benchmark run,
  a gin configurable (``TranscribeConfig.batch_size = 16``) whose defaults
  are the command's defaults; :class:`ServeConfig` for the server;
* :func:`parse_gin` -- gin files and bindings composed in order, with search
  paths and clear errors (:class:`GinConfigError`);
* :func:`initialize_distributed` -- ``jax.distributed`` for multi-host runs;
* :func:`build_pipeline` -- the pipeline (and partitioner) a config names.

The file job itself (discovering files, output names, resume, groups,
writing) is :mod:`whisper_t5x.app.file_job` with :mod:`whisper_t5x.app.inputs`.

Multi-host model: every process runs the same command, takes every
``process_count``-th file of the sorted list (round-robin) and transcribes it
on its *local* devices with its own mesh, writing only its own outputs; no
cross-host collectives are needed, so one slow or failing host never stalls
the others. Process 0 writes the run's ``config.gin``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin

from whisper_t5x.app import writers as outputs_lib

logger = logging.getLogger("whisper_t5x.app.launch")

from whisper_t5x.audio.constants import SAMPLE_RATE  # noqa: F401 (re-exported)

from whisper_t5x.app.inputs import (  # noqa: E402,F401 (re-exported: the file job's inputs)
    AUDIO_EXTENSIONS, InputFile, assign_output_names, discover_audio, shard_for_process,
)

DTYPES = ("float32", "bfloat16", "float16")
from whisper_t5x.text.tokenizer import TASKS  # noqa: E402
DEFAULT_PIPELINE = "whisper_t5x.pipeline:FlaxWhisperPipeline"
CONFIG_FILENAME = "config.gin"


# =================================================================== config
class GinConfigError(ValueError):
    """A gin file or binding could not be parsed, names something unknown, or
    leaves a required value unset."""


def _check_required(config: Any) -> None:
    """Fields still bound to ``%gin.REQUIRED`` (directly or through a macro)."""
    missing = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) is gin.REQUIRED]
    if missing:
        name = type(config).__name__
        raise GinConfigError(
            "required value(s) not provided: " + ", ".join(f"{name}.{m}" for m in missing)
            + " (bind them with a flag, --gin_bindings or --gin.NAME=VALUE)"
        )


@gin.configurable
@dataclasses.dataclass
class TranscribeConfig:
    """One ``whisper-t5x transcribe`` run. Every field can be bound from gin.

    Attributes:
      model: named model (``base``, ``tiny.en``) or a checkpoint path / hub id.
      task: ``transcribe`` or ``translate`` (to English).
      language: source language code (``en``, ``de``...); ``None`` detects it.
      return_timestamps: segment timestamps (needed for useful srt/vtt/tsv cues;
        without them each file is one cue).
      word_timestamps: word-level timestamps (one cue per word; decodes with
        the sequential long-form algorithm, ``whisper_t5x.longform.sequential``).
      long_form: ``chunked`` (default: batched windows, stitched) or
        ``sequential`` (OpenAI's algorithm, ``whisper_t5x.longform.sequential``).
      batch_size: windows per forward pass (``None``: the pipeline's default).
      dtype: compute dtype, ``float32`` / ``bfloat16`` / ``float16``.
      chunk_length_s, stride_length_s: long-form windowing of the pipeline.
      max_length: decoder token limit per window (``None``: model default).
      generate_kwargs: extra decoding options passed through to ``generate``.
      output_dir: where ``<name>.<fmt>`` files and ``config.gin`` go.
      output_formats: ``"txt"``, ``"srt,vtt"``, ``"all"`` or a list of names.
      overwrite: redo files whose outputs all exist (default: skip them; the
        manifest in ``output_dir`` says which input each output belongs to).
      group_size: at most this many files per pipeline call (bounds memory).
      group_batches: a call also holds at most this many batches of windows
        (``batch_size`` each). 1: every file of a call is decoded in the same
        batch, so each is written as soon as it is done and Ctrl-C loses at
        most the batch in flight; more: fewer calls (less idle device time
        between them) for more work at risk (see ``whisper_t5x.app.file_job``).
      group_max_audio_s: also close a group once it holds this much audio.
      load_workers: threads decoding audio (ffmpeg) ahead of the model.
      partitioner: ``None`` (pipeline default), a partitioner, or a factory
        such as ``@partitioning.PjitPartitioner`` (no parentheses) that is
        called with ``devices=<this process's devices>`` under multi-host.
      pipeline: ``"module:Class"`` (or a callable) building the pipeline.
      warmup: run the first group once, untimed, before the timed run (benchmarks).
      benchmark_file: if set, metrics JSON written there (relative to output_dir).
      progress: passed to the pipeline (``None``: its default).
    """

    model: str = "base"
    task: str = "transcribe"
    language: Optional[str] = None
    return_timestamps: bool = False
    word_timestamps: bool = False
    long_form: str = "chunked"
    batch_size: Optional[int] = None
    dtype: str = "float32"
    chunk_length_s: float = 30.0
    stride_length_s: Optional[float] = None
    max_length: Optional[int] = None
    generate_kwargs: Optional[Dict[str, Any]] = None
    output_dir: str = "."
    output_formats: Any = "txt"
    overwrite: bool = False
    group_size: int = 16
    group_batches: int = 1
    group_max_audio_s: float = 4 * 3600.0
    load_workers: int = 2
    partitioner: Any = None
    pipeline: Any = DEFAULT_PIPELINE
    warmup: bool = False
    benchmark_file: Optional[str] = None
    progress: Optional[bool] = None

    def __post_init__(self):
        _check_required(self)
        if self.task not in TASKS:
            raise ValueError(f"TranscribeConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.long_form not in ("chunked", "sequential"):
            raise ValueError(f"TranscribeConfig.long_form must be 'chunked' or 'sequential', got {self.long_form!r}")
        if str(self.dtype) not in DTYPES:
            raise ValueError(f"TranscribeConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        self.output_formats = outputs_lib.parse_formats(self.output_formats)
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"TranscribeConfig.batch_size must be >= 1, got {self.batch_size}")
        if int(self.group_size) < 1:
            raise ValueError(f"TranscribeConfig.group_size must be >= 1, got {self.group_size}")
        if int(self.group_batches) < 1:
            raise ValueError(f"TranscribeConfig.group_batches must be >= 1, got {self.group_batches}")
        if float(self.chunk_length_s) <= 0:
            raise ValueError(f"TranscribeConfig.chunk_length_s must be > 0, got {self.chunk_length_s}")


@gin.configurable
@dataclasses.dataclass
class ServeConfig:
    """Settings of the transcription endpoint (``configs/runs/serve.gin``).

    Offered to ``whisper_t5x.app.serving``: read it with :func:`parse_gin` then
    :func:`make_serve_config`. Fields mirror :class:`TranscribeConfig` where
    they overlap; ``partitioner`` is a factory or an instance.
    """

    model: str = "base"
    dtype: str = "float32"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_batch_delay_ms: float = 10.0
    max_queue: int = 64
    chunk_length_s: float = 30.0
    max_length: Optional[int] = None
    partitioner: Any = None
    pipeline: Any = DEFAULT_PIPELINE

    def __post_init__(self):
        _check_required(self)
        if str(self.dtype) not in DTYPES:
            raise ValueError(f"ServeConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"ServeConfig.port must be in [0, 65535], got {self.port}")
        if int(self.max_batch_size) < 1:
            raise ValueError(f"ServeConfig.max_batch_size must be >= 1, got {self.max_batch_size}")


# ====================================================================== gin
_GIN_ARG = re.compile(r"^--gin\.([^=]+)(?:=(.*))?$", re.S)


def rewrite_gin_args(argv: Sequence[str]) -> List[str]:
    """``--gin.NAME=VALUE`` -> ``--gin_bindings=NAME = VALUE`` (order kept).

    ``--gin.NAME VALUE`` (value as the next argument) is accepted too.
    """
    out: List[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        m = _GIN_ARG.match(arg)
        if m is None or arg == "--":
            out.append(arg)
            if arg == "--":
                out.extend(argv[i + 1:])
                break
            i += 1
            continue
        name, value = m.group(1), m.group(2)
        if value is None:
            if i + 1 >= len(argv):
                raise GinConfigError(f"{arg} needs a value: --gin.{name}=VALUE")
            value = argv[i + 1]
            i += 1
        out.append(f"--gin_bindings={name} = {value}")
        i += 1
    return out


def default_search_paths() -> List[str]:
    """The working directory, then the source tree holding ``configs/`` (if any)."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.getcwd()]
    for cand in (os.path.dirname(here), here):
        if os.path.isdir(os.path.join(cand, "configs")) and cand not in paths:
            paths.append(cand)
    return paths


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
    """A gin file path: as given, else under each search path (``.gin`` optional,
    ``configs/`` prefix optional, e.g. ``runs/transcribe`` or ``hardware/cpu.gin``)."""
    cands = [name] if name.endswith(".gin") else [name, name + ".gin"]
    if os.path.isabs(name):
        for c in cands:
            if os.path.isfile(c):
                return c
    else:
        for c in cands:
            if os.path.isfile(c):
                return os.path.abspath(c)
        for base in search_paths:
            for c in cands:
                for prefix in ("", "configs"):
                    p = os.path.join(base, prefix, c)
                    if os.path.isfile(p):
                        return p
    raise GinConfigError(
        f"gin file {name!r} not found (searched the working directory and {', '.join(search_paths) or 'nothing'})"
    )


def parse_gin(
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    search_paths: Optional[Sequence[str]] = None,
    extra_bindings: Sequence[str] = (),
) -> List[str]:
    """Clears gin, then parses files, bindings and ``extra_bindings`` in that order.

    Later values override earlier ones. Returns the resolved file paths.
    Raises :class:`GinConfigError` naming the offending file or binding.
    """
    search = list(search_paths) if search_paths else []
    search += [p for p in default_search_paths() if p not in search]
    gin.clear_config()
    for p in search:
        gin.add_config_file_search_path(p)
    files = [resolve_gin_file(f, search) for f in gin_files]
    for f in files:
        try:
            gin.parse_config_file(f)
        except Exception as e:  # noqa: BLE001 - gin raises many kinds
            raise GinConfigError(f"gin file {f}: {_gin_message(e)}") from e
    for b in list(gin_bindings) + list(extra_bindings):
        try:
            gin.parse_config(b)
        except Exception as e:  # noqa: BLE001
            raise GinConfigError(f"gin binding {b.strip()!r}: {_gin_message(e)}") from e
    return files


def _gin_message(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__) + ("" if isinstance(e, ValueError) else f" ({type(e).__name__})")


def flag_binding(param: str, value: Any, configurable: str = "TranscribeConfig") -> str:
    """A gin binding string for an explicit command-line flag value."""
    return f"{configurable}.{param} = {value!r}"


def make_config(**overrides: Any) -> TranscribeConfig:
    """:class:`TranscribeConfig` from the current gin bindings (clear errors on bad values)."""
    try:
        return TranscribeConfig(**overrides)
    except (TypeError, ValueError) as e:
        raise GinConfigError(_gin_message(e)) from e


def make_serve_config(**overrides: Any) -> ServeConfig:
    """:class:`ServeConfig` from the current gin bindings."""
    try:
        return ServeConfig(**overrides)
    except (TypeError, ValueError) as e:
        raise GinConfigError(_gin_message(e)) from e


def write_config(path: str, header: str = "") -> str:
    """The operative gin config (every value used, defaults included) to ``path``."""
    text = gin.operative_config_str()
    if not text.strip():
        text = gin.config_str()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("".join(f"# {line}\n" for line in header.splitlines()))
            f.write("\n")
        f.write(text)
    return path


# ============================================================== distributed
def _tpu_pod_env() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    mode: str = "auto",
    initialization_timeout: Optional[int] = None,
) -> Tuple[int, int]:
    """Calls ``jax.distributed.initialize`` when needed; returns ``(index, count)``.

    ``mode``: ``auto`` initializes with explicit arguments when a coordinator
    is given, or with plain auto-detection on a multi-host TPU slice; ``on``
    always initializes (auto-detection fills in what is not given); ``off``
    never does. Single-process runs return ``(0, 1)`` without touching JAX.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be auto, on or off, got {mode!r}")
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if mode == "off" or (mode == "auto" and not explicit and not _tpu_pod_env()):
        return 0, 1
    import jax

    kwargs: Dict[str, Any] = {}
    if coordinator_address is not None:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes is not None:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None:
        kwargs["process_id"] = int(process_id)
    if initialization_timeout is not None:
        kwargs["initialization_timeout"] = int(initialization_timeout)
    if coordinator_address is not None and _platform_is_cpu():
        # Cross-process CPU computations need a collectives backend (gloo is
        # the default on current JAX; make it explicit for older defaults).
        try:
            if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
                jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except AttributeError:
            pass
    jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()


def _platform_is_cpu() -> bool:
    plats = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", ""))
    return plats.strip().lower().startswith("cpu")


# ================================================================= pipeline
def _resolve_callable(spec: Any) -> Callable:
    if callable(spec):
        return spec
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        if not attr:
            module, _, attr = spec.rpartition(".")
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            raise RuntimeError(f"cannot import pipeline module {module!r} (from {spec!r}): {e}") from e
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise TypeError(f"pipeline must be 'module:Class' or a callable, got {spec!r}")


def _jnp_dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[str(name)]


def build_partitioner(spec: Any, process_count: int = 1):
    """The partitioner from config: ``None``, an instance, or a factory.

    Under multi-host every process transcribes its own files, so the mesh
    must span this process's devices only: factories are called with
    ``devices=jax.local_devices()``, and when none is configured a
    data-parallel one over the local devices is made.
    """
    is_instance = spec is not None and not isinstance(spec, type) and hasattr(spec, "partition")
    if spec is not None and (is_instance or not callable(spec)):
        if process_count > 1:
            logger.warning("a partitioner instance was configured; under multi-host bind a factory "
                           "(@partitioning.PjitPartitioner without parentheses) so it uses local devices")
        return spec
    if process_count <= 1:
        return spec() if spec is not None else None
    import jax

    if spec is None:
        from partitioning import PjitPartitioner, rules_for

        return PjitPartitioner(num_partitions=1, logical_axis_rules=rules_for("dp"), devices=jax.local_devices())
    return spec(devices=jax.local_devices())


def build_pipeline(config: TranscribeConfig, process_count: int = 1):
    factory = _resolve_callable(config.pipeline)
    kwargs: Dict[str, Any] = dict(checkpoint=config.model, batch_size=config.batch_size, max_length=config.max_length)
    kwargs["dtype"] = _jnp_dtype(config.dtype)
    kwargs["partitioner"] = build_partitioner(config.partitioner, process_count)
    return factory(**kwargs)


class PipelineBuildError(RuntimeError):
    """The model / pipeline could not be built (nothing can be transcribed)."""
