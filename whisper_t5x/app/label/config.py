"""``LabelConfig``: a ``whisper-t5x label`` run, composed of the shared sections plus the dataset job's own fields.

The model, partitioning, decoding and grouping settings are the sections of
:mod:`whisper_t5x.app.config`, so a ``configs/hardware/*.gin`` preset
(``ModelSection.dtype``, ``PartitionSection.batch_size``,
``GroupingSection.group_size``, ``PartitionSection.partitioner``) configures a
labelling run exactly as it configures ``transcribe`` and ``serve``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

import gin

from whisper_t5x.app import gin_config
from whisper_t5x.app.config import (
    DecodeSection, GroupingSection, ModelSection, PartitionSection, positive_int,
)


@gin.configurable
@dataclasses.dataclass
class LabelConfig:
    """One ``whisper-t5x label`` run (``configs/runs/label.gin``).

    Attributes:
      model, partition, decode, grouping: the shared sections. Rows are always
        decoded with segment timestamps (the ``segments`` column);
        ``grouping.group_size`` is rows per pipeline call (the pipeline packs
        their windows into batches); ``grouping.group_batches`` and
        ``group_max_audio_s`` do not apply (groups are rows of similar duration).
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
      progress: the pipeline's progress bar (off: per-host log lines instead).
      buffer_size: decoded rows held and sorted by duration before grouping
        (bounds memory in streaming mode; larger groups lengths better).
      part_rows: rows per Parquet part file (a SIGKILL loses at most one part).
      part_max_s: also close a part after this many seconds.
      progress_every_s: seconds between per-host progress lines.
      max_rows: label at most this many new rows per process (tests, trials).
    """

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    partition: PartitionSection = dataclasses.field(default_factory=PartitionSection)
    decode: DecodeSection = dataclasses.field(default_factory=DecodeSection)
    grouping: GroupingSection = dataclasses.field(default_factory=GroupingSection)
    dataset: Optional[str] = None
    dataset_config: Optional[str] = None
    split: str = "train"
    output_dir: Optional[str] = None
    audio_column: str = "audio"
    id_column: str = "id"
    text_column: Optional[str] = None
    streaming: bool = False
    wer_threshold: float = 0.1
    progress: Optional[bool] = False
    buffer_size: int = 256
    part_rows: int = 256
    part_max_s: float = 300.0
    progress_every_s: float = 30.0
    max_rows: Optional[int] = None

    def __post_init__(self):
        gin_config.check_required(self)
        if not self.dataset:
            raise ValueError("LabelConfig.dataset is required (--dataset)")
        if not self.output_dir:
            raise ValueError("LabelConfig.output_dir is required (--output_dir)")
        if not self.splits:
            raise ValueError(f"LabelConfig.split names no split: {self.split!r}")
        for name in ("buffer_size", "part_rows"):
            positive_int(getattr(self, name), f"LabelConfig.{name}")
        if self.wer_threshold is not None and float(self.wer_threshold) < 0:
            raise ValueError(f"LabelConfig.wer_threshold must be >= 0, got {self.wer_threshold}")
        if self.max_rows is not None and int(self.max_rows) < 0:
            raise ValueError(f"LabelConfig.max_rows must be >= 0, got {self.max_rows}")
        self.buffer_size = max(int(self.buffer_size), self.grouping.group_size)

    @property
    def splits(self) -> List[str]:
        """The ``+``-joined split names, in order, without duplicates."""
        out: List[str] = []
        for s in str(self.split).split("+"):
            s = s.strip()
            if s and s not in out:
                out.append(s)
        return out


def make_label_config(**overrides: Any) -> LabelConfig:
    """:class:`LabelConfig` from the current gin bindings (bad values as ``GinConfigError``)."""
    return gin_config.make(LabelConfig, **overrides)
