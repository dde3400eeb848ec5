"""Launch-time wiring for the ``whisper-t5x`` command: gin, files, processes.

This is the edge of the system, the one place (with ``whisper_t5x.main``)
that imports gin. It holds:

* :class:`TranscribeConfig` -- every knob of a transcription / benchmark run,
  a gin configurable (``TranscribeConfig.batch_size = 16``) whose defaults
  are the command's defaults;
* :func:`parse_gin` -- gin files and bindings composed in order, with search
  paths and clear errors (:class:`GinConfigError`);
* :func:`initialize_distributed` -- ``jax.distributed`` for multi-host runs;
* :func:`discover_audio`, :func:`assign_output_names`, :func:`shard_for_process`
  -- which files exist, what their outputs are called, which process does each;
* :func:`run_transcribe` -- load (and so validate) audio in bounded groups,
  transcribe each group in one pipeline call, write outputs, summarise.

Multi-host model: every process runs the same command, takes every
``process_count``-th file of the sorted list (round-robin) and transcribes it
on its *local* devices with its own mesh, writing only its own outputs; no
cross-host collectives are needed, so one slow or failing host never stalls
the others. Process 0 writes the run's ``config.gin``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib
import json
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import gin

from whisper_t5x.app import writers as outputs_lib

logger = logging.getLogger("whisper_t5x.app.launch")

from whisper_t5x.audio.constants import SAMPLE_RATE  # noqa: F401 (re-exported)

# Extensions picked up when walking directories (files named explicitly are
# always tried, whatever their extension).
AUDIO_EXTENSIONS = frozenset(
    "wav wave flac mp3 m4a m4b aac ogg oga opus webm weba mp4 m4v mkv mka mov avi wma wmv aif aiff aifc "
    "amr au snd caf ac3 eac3 dts spx 3gp 3g2 mpga mpeg mpg ts".split()
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
      overwrite: redo files whose outputs all exist (default: skip them).
      group_size: files loaded and transcribed per pipeline call (bounds memory).
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


# ==================================================================== files
@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str  # as found (absolute)
    name: str  # output stem, unique within the run


def discover_audio(paths: Iterable[str], extensions: Iterable[str] = AUDIO_EXTENSIONS) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Audio files under ``paths`` (sorted, de-duplicated) and ``(path, error)`` for missing ones.

    Directories are walked recursively for files with a known audio extension
    (hidden files and directories are skipped); files named explicitly are
    kept whatever their extension.
    """
    exts = {e.lower().lstrip(".") for e in extensions}
    found: Dict[str, str] = {}
    errors: List[Tuple[str, str]] = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in files:
                    if f.startswith("."):
                        continue
                    if os.path.splitext(f)[1].lower().lstrip(".") in exts:
                        full = os.path.abspath(os.path.join(root, f))
                        found.setdefault(os.path.realpath(full), full)
        elif os.path.isfile(p):
            full = os.path.abspath(p)
            found.setdefault(os.path.realpath(full), full)
        else:
            errors.append((p, "no such file or directory"))
    return sorted(found.values()), errors


def _sanitize(name: str) -> str:
    name = re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("._")
    return name or "audio"


def assign_output_names(files: Sequence[str]) -> List[InputFile]:
    """Unique output stems: ``<stem>`` where unambiguous; colliding stems get
    their parent directories prepended (``a__x``, ``b__x``), then the
    extension, then a counter. Deterministic in the sorted file list, so every
    process computes the same names."""
    files = sorted(files)
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    counts = collections.Counter(stems)
    common = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    names: List[str] = []
    for f, stem in zip(files, stems):
        if counts[stem] == 1:
            names.append(stem)
            continue
        rel = os.path.relpath(os.path.splitext(f)[0], common) if common else os.path.splitext(f)[0]
        parts = [p for p in rel.split(os.sep) if p not in ("", ".", "..")]
        names.append("__".join(parts) if len(parts) > 1 else stem)
    # still colliding (same stem in one directory with different extensions, ...)
    counts = collections.Counter(names)
    names = [n if counts[n] == 1 else f"{n}_{os.path.splitext(f)[1].lstrip('.').lower()}" for n, f in zip(names, files)]
    seen: Dict[str, int] = {}
    final: List[InputFile] = []
    for f, n in zip(files, names):
        n = _sanitize(n)
        base, k = n, seen.get(n, 0)
        while n in seen:
            k += 1
            n = f"{base}-{k}"
        seen[n] = 0
        seen[base] = k
        final.append(InputFile(f, n))
    return final


def shard_for_process(items: Sequence[Any], process_index: int = 0, process_count: int = 1) -> List[Any]:
    """Round-robin share of ``items`` (already sorted) for one process."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process index {process_index} of {process_count}")
    return list(items[process_index::process_count])


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


# ====================================================================== run
@dataclasses.dataclass
class RunReport:
    planned: int = 0  # files assigned to this process
    done: List[str] = dataclasses.field(default_factory=list)
    skipped: List[str] = dataclasses.field(default_factory=list)
    failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    load_model_s: float = 0.0
    transcribe_s: float = 0.0
    warmup_s: float = 0.0
    process_index: int = 0
    process_count: int = 1

    @property
    def rtf(self) -> Optional[float]:
        return self.wall_s / self.audio_s if self.audio_s > 0 else None

    def summary(self) -> str:
        who = f"[process {self.process_index}/{self.process_count}] " if self.process_count > 1 else ""
        rtf = self.rtf
        speed = f"real-time factor {rtf:.3f} ({1 / rtf:.1f}x real time)" if rtf else "real-time factor n/a"
        return (
            f"{who}{len(self.done)} file(s) transcribed, {len(self.skipped)} skipped, {len(self.failed)} failed; "
            f"{self.audio_s / 3600:.4f} h audio in {self.wall_s:.1f} s wall "
            f"(model load {self.load_model_s:.1f} s, transcription {self.transcribe_s:.1f} s); {speed}"
        )

    def as_dict(self) -> Dict[str, Any]:
        return dict(
            files=len(self.done), skipped=len(self.skipped), failed=len(self.failed), audio_s=self.audio_s,
            wall_s=self.wall_s, load_model_s=self.load_model_s, transcribe_s=self.transcribe_s,
            warmup_s=self.warmup_s, rtf=self.rtf,
            transcribe_rtf=(self.transcribe_s / self.audio_s if self.audio_s > 0 else None),
            process_index=self.process_index, process_count=self.process_count,
        )


@dataclasses.dataclass
class _Loaded:
    item: InputFile
    audio: Any  # float32 waveform at 16 kHz
    duration: float


def _load(item: InputFile) -> _Loaded:
    from whisper_t5x.audio.loading import load_audio

    audio = load_audio(item.path, SAMPLE_RATE)
    return _Loaded(item, audio, audio.shape[0] / SAMPLE_RATE)


def _iter_groups(
    items: Sequence[InputFile], config: TranscribeConfig, failed: List[Tuple[str, str]]
) -> Iterator[List[_Loaded]]:
    """Decoded audio in groups of at most ``group_size`` files / ``group_max_audio_s``.

    Decoding runs ``load_workers`` files ahead of the consumer (bounded
    memory); a file that cannot be decoded is recorded in ``failed`` and left
    out, so it never reaches the model.
    """
    workers = max(1, int(config.load_workers))
    lookahead = max(workers, 2)
    group: List[_Loaded] = []
    group_s = 0.0
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(_load, item)))
            if len(pending) >= lookahead:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_load, nxt)))
            try:
                loaded = fut.result()
            except Exception as e:  # noqa: BLE001 - any decode problem skips the file
                msg = str(e).strip().splitlines()
                failed.append((item.path, msg[-1] if msg else type(e).__name__))
                logger.warning("cannot read %s: %s", item.path, failed[-1][1])
                continue
            group.append(loaded)
            group_s += loaded.duration
            if len(group) >= config.group_size or group_s >= config.group_max_audio_s:
                yield group
                group, group_s = [], 0.0
        if group:
            yield group


def _call_pipeline(pipe, loaded: Sequence[_Loaded], config: TranscribeConfig) -> List[Mapping[str, Any]]:
    inputs = [{"array": x.audio, "sampling_rate": SAMPLE_RATE} for x in loaded]
    kwargs: Dict[str, Any] = dict(
        task=config.task,
        language=config.language,
        return_timestamps="word" if config.word_timestamps else bool(config.return_timestamps),
        return_language=True,
        chunk_length_s=float(config.chunk_length_s),
        stride_length_s=config.stride_length_s,
        batch_size=config.batch_size,
        generate_kwargs=dict(config.generate_kwargs) if config.generate_kwargs else None,
    )
    if config.long_form != "chunked":  # custom pipelines need not know the argument
        kwargs["long_form"] = config.long_form
    if config.progress is not None:
        kwargs["progress"] = config.progress
    results = pipe(inputs, **kwargs)
    if isinstance(results, Mapping):
        results = [results]
    results = list(results)
    if len(results) != len(inputs):
        raise RuntimeError(f"pipeline returned {len(results)} results for {len(inputs)} inputs")
    return results


class PipelineBuildError(RuntimeError):
    """The model / pipeline could not be built (nothing can be transcribed)."""


EMPTY_RESULT = {"text": "", "chunks": [], "language": None}


def run_transcribe(
    config: TranscribeConfig,
    paths: Sequence[str],
    *,
    pipeline: Any = None,
    process_index: int = 0,
    process_count: int = 1,
    config_header: Optional[str] = None,
    write_gin_config: bool = True,
) -> RunReport:
    """Transcribes ``paths`` (files and directories) per ``config``.

    ``pipeline``: a ready pipeline object (tests); otherwise built from
    ``config`` on first need, so a run where every file is done or
    unreadable never loads a model.
    """
    t0 = time.perf_counter()
    report = RunReport(process_index=process_index, process_count=process_count)
    files, missing = discover_audio(paths)
    report.failed.extend(missing)
    everything = assign_output_names(files)
    mine = shard_for_process(everything, process_index, process_count)
    report.planned = len(mine)
    formats = list(config.output_formats)
    out_dir = config.output_dir
    os.makedirs(out_dir, exist_ok=True)
    logger.info("%d audio file(s) found, %d for this process", len(everything), len(mine))

    todo: List[InputFile] = []
    for item in mine:
        if not config.overwrite and outputs_lib.outputs_exist(out_dir, item.name, formats):
            report.skipped.append(item.path)
        else:
            todo.append(item)
    if report.skipped:
        logger.info("%d file(s) already have their outputs: skipped (--overwrite redoes them)", len(report.skipped))

    pipe = pipeline
    config_written = False

    def ensure_pipeline():
        nonlocal pipe, config_written
        if pipe is None:
            t = time.perf_counter()
            try:
                pipe = build_pipeline(config, process_count)
            except Exception as e:  # noqa: BLE001 - unknown model, bad partitioner/batch size, ...
                raise PipelineBuildError(f"cannot set up model {config.model!r}: {type(e).__name__}: {e}") from e
            report.load_model_s += time.perf_counter() - t
        if write_gin_config and process_index == 0 and not config_written:
            write_config(os.path.join(out_dir, CONFIG_FILENAME), config_header or "")
            config_written = True
        return pipe

    warmed = not config.warmup
    for group in _iter_groups(todo, config, report.failed):
        empty = [x for x in group if x.audio.shape[0] == 0]
        group = [x for x in group if x.audio.shape[0] > 0]
        for x in empty:  # a valid file holding no samples: empty transcript
            outputs_lib.write_outputs(EMPTY_RESULT, out_dir, x.item.name, formats, 0.0)
            report.done.append(x.item.path)
        if not group:
            continue
        ensure_pipeline()
        if not warmed:
            t = time.perf_counter()
            _transcribe_group(pipe, group, config, RunReport(), write=False)
            report.warmup_s = time.perf_counter() - t
            warmed = True
        t = time.perf_counter()
        _transcribe_group(pipe, group, config, report)
        report.transcribe_s += time.perf_counter() - t
    if write_gin_config and process_index == 0 and not config_written:
        write_config(os.path.join(out_dir, CONFIG_FILENAME), config_header or "")
    report.wall_s = time.perf_counter() - t0 - report.warmup_s
    if config.benchmark_file:
        name = config.benchmark_file
        if process_count > 1:
            stem, ext = os.path.splitext(name)
            name = f"{stem}.process{process_index}{ext or '.json'}"
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(report.as_dict(), f, indent=2)
            f.write("\n")
    return report


def _transcribe_group(pipe, group: Sequence[_Loaded], config: TranscribeConfig, report: RunReport, write: bool = True):
    """One pipeline call for the group; if it fails, each file alone (so one bad
    input costs only itself)."""
    try:
        results = _call_pipeline(pipe, group, config)
        pairs = list(zip(group, results))
    except Exception as e:  # noqa: BLE001
        if len(group) == 1:
            report.failed.append((group[0].item.path, f"transcription failed: {type(e).__name__}: {e}"))
            logger.warning("transcription of %s failed: %s", group[0].item.path, e)
            return
        logger.warning("batched transcription failed (%s: %s); retrying the %d files one by one",
                       type(e).__name__, e, len(group))
        for x in group:
            _transcribe_group(pipe, [x], config, report, write)
        return
    for x, result in pairs:
        if write:
            try:
                outputs_lib.write_outputs(result, config.output_dir, x.item.name, config.output_formats, x.duration)
            except Exception as e:  # noqa: BLE001 - e.g. disk full, odd result
                report.failed.append((x.item.path, f"writing outputs failed: {type(e).__name__}: {e}"))
                continue
        report.done.append(x.item.path)
        report.audio_s += x.duration


def print_failures(report: RunReport, stream=None) -> None:
    stream = stream or sys.stderr
    if not report.failed:
        return
    print(f"{len(report.failed)} file(s) failed:", file=stream)
    for path, why in report.failed:
        print(f"  {path}: {why}", file=stream)
