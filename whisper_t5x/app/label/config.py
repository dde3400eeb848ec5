"""``LabelConfig``: every knob of a ``whisper-t5x label`` run, bound from gin.

Fields that mirror :class:`whisper_t5x.app.launch.TranscribeConfig` (model,
task, language, dtype, batch_size, chunk_length_s, stride_length_s,
max_length, generate_kwargs, group_size, load_workers, partitioner, pipeline,
progress) keep its names, so the later move to shared config sections is
mechanical. Until then the hardware presets (``configs/hardware/*.gin``), which
bind ``TranscribeConfig``, apply here too: :func:`make_label_config` takes a
``TranscribeConfig`` binding for a hardware field that ``LabelConfig`` leaves
unbound (see :data:`HARDWARE_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import gin

from whisper_t5x.app import launch

# Fields a configs/hardware/*.gin preset sets on TranscribeConfig that mean the
# same for a labelling run.
HARDWARE_FIELDS = ("dtype", "batch_size", "group_size", "partitioner")


@gin.configurable
@dataclasses.dataclass
class LabelConfig:
    """One ``whisper-t5x label`` run (``configs/runs/label.gin``).

    Attributes:
      dataset: what ``datasets.load_dataset`` takes (hub id, local folder) or a
        ``save_to_disk`` folder.
      dataset_config: the dataset's configuration name (``load_dataset(name=)``).
      split: split names joined by ``+`` (``"train+validation"``).
      output_dir: where ``data/*.parquet``, ``summary*.json`` and ``config.gin`` go.
      audio_column: a ``datasets.Audio`` column, a ``{"bytes", "path"}`` struct
        or a column of paths.
      id_column: unique row id (resume key with the split); if the dataset has
        no such column the audio path is used.
      text_column: reference transcript; gives the ``wer`` / ``keep`` columns.
      streaming: read through ``IterableDataset`` (nothing downloaded ahead).
      wer_threshold: ``keep = wer <= wer_threshold`` (needs ``text_column``).
      model ... progress: as in ``TranscribeConfig``. ``group_size`` is rows
        per pipeline call (the pipeline packs their windows into batches).
      buffer_size: decoded rows held and sorted by duration before grouping
        (bounds memory in streaming mode; larger groups lengths better).
      part_rows: rows per Parquet part file (a SIGKILL loses at most one part).
      part_max_s: also close a part after this many seconds.
      progress_every_s: seconds between per-host progress lines.
      max_rows: label at most this many new rows per process (tests, trials).
    """

    dataset: Optional[str] = None
    dataset_config: Optional[str] = None
    split: str = "train"
    output_dir: Optional[str] = None
    audio_column: str = "audio"
    id_column: str = "id"
    text_column: Optional[str] = None
    streaming: bool = False
    wer_threshold: float = 0.1
    # --- mirrors TranscribeConfig
    model: str = "base"
    task: str = "transcribe"
    language: Optional[str] = None
    dtype: str = "float32"
    batch_size: Optional[int] = None
    chunk_length_s: float = 30.0
    stride_length_s: Optional[float] = None
    max_length: Optional[int] = None
    generate_kwargs: Optional[Dict[str, Any]] = None
    group_size: int = 16
    load_workers: int = 2
    partitioner: Any = None
    pipeline: Any = launch.DEFAULT_PIPELINE
    progress: Optional[bool] = False
    # --- labelling only
    buffer_size: int = 256
    part_rows: int = 256
    part_max_s: float = 300.0
    progress_every_s: float = 30.0
    max_rows: Optional[int] = None

    def __post_init__(self):
        missing = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is gin.REQUIRED]
        if missing:
            raise ValueError("required value(s) not provided: " + ", ".join(f"LabelConfig.{m}" for m in missing))
        if not self.dataset:
            raise ValueError("LabelConfig.dataset is required (--dataset)")
        if not self.output_dir:
            raise ValueError("LabelConfig.output_dir is required (--output_dir)")
        if not self.splits:
            raise ValueError(f"LabelConfig.split names no split: {self.split!r}")
        if self.task not in launch.TASKS:
            raise ValueError(f"LabelConfig.task must be one of {launch.TASKS}, got {self.task!r}")
        if str(self.dtype) not in launch.DTYPES:
            raise ValueError(f"LabelConfig.dtype must be one of {launch.DTYPES}, got {self.dtype!r}")
        for name in ("group_size", "buffer_size", "part_rows", "load_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LabelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"LabelConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.wer_threshold is not None and float(self.wer_threshold) < 0:
            raise ValueError(f"LabelConfig.wer_threshold must be >= 0, got {self.wer_threshold}")
        if self.max_rows is not None and int(self.max_rows) < 0:
            raise ValueError(f"LabelConfig.max_rows must be >= 0, got {self.max_rows}")
        self.buffer_size = max(int(self.buffer_size), int(self.group_size))

    @property
    def splits(self) -> List[str]:
        """The ``+``-joined split names, in order, without duplicates."""
        out: List[str] = []
        for s in str(self.split).split("+"):
            s = s.strip()
            if s and s not in out:
                out.append(s)
        return out


def _bound(name: str) -> bool:
    try:
        gin.query_parameter(name)
        return True
    except ValueError:
        return False


def hardware_overrides() -> Dict[str, Any]:
    """``TranscribeConfig`` hardware bindings (from a preset) that ``LabelConfig`` does not bind."""
    wanted = [f for f in HARDWARE_FIELDS if not _bound(f"LabelConfig.{f}") and _bound(f"TranscribeConfig.{f}")]
    if not wanted:
        return {}
    transcribe = launch.make_config()
    return {f: getattr(transcribe, f) for f in wanted}


def make_label_config(**overrides: Any) -> LabelConfig:
    """:class:`LabelConfig` from the current gin bindings (with the hardware
    preset's ``TranscribeConfig`` values where ``LabelConfig`` has none)."""
    try:
        kwargs = dict(hardware_overrides())
        kwargs.update(overrides)
        return LabelConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise launch.GinConfigError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
