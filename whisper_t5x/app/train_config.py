"""``TrainConfig``: a ``whisper-t5x train`` / ``distill`` run, composed of the shared sections plus its own.

The model and the devices are the app's :class:`~whisper_t5x.app.config.ModelSection`
and :class:`~whisper_t5x.app.config.PartitionSection`, so a hardware preset
(``configs/hardware/*.gin``: dtype, batch size, partitioner and rule set)
configures training as it configures ``transcribe``. The training sections:

* :class:`DataSection` -- which dataset, split and columns; the label job's
  output as pseudo-labels; targets (language, task, timestamp and prompt
  probabilities); the order's seed;
* ``OptimizerConfig`` -- the training core's own dataclass
  (:mod:`whisper_t5x.training.optim`), registered with gin here, so
  ``OptimizerConfig.learning_rate = 1e-5`` binds it directly;
* ``SpecAugmentConfig`` (:mod:`whisper_t5x.training.specaugment`), used when
  ``DataSection.spec_augment`` is on;
* :class:`DistillSection` -- the teacher, the student's decoder layers and the
  loss weights (``whisper-t5x distill``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin

from whisper_t5x.app import gin_config
from whisper_t5x.app.config import ModelSection, PartitionSection, positive_int
from whisper_t5x.text.tokenizer import TASKS
from whisper_t5x.training.optim import OptimizerConfig
from whisper_t5x.training.specaugment import SpecAugmentConfig

__all__ = ["DataSection", "DistillSection", "TrainConfig", "make_train_config", "optimizer_config",
           "spec_augment_config"]

optimizer_config = gin.external_configurable(OptimizerConfig, name="OptimizerConfig")
spec_augment_config = gin.external_configurable(SpecAugmentConfig, name="SpecAugmentConfig")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataSection:
    """The training data.

    Attributes:
      dataset: hub id, local folder or file (Parquet/Arrow/JSON/CSV) or a
        ``save_to_disk`` folder, opened as ``whisper-t5x label`` opens it.
      dataset_config: the dataset's configuration name.
      split, eval_split: the training split; the split evaluated every
        ``TrainConfig.eval_every`` steps (``None``: no evaluation).
      audio_column, text_column, id_column: the columns (``id_column`` joins
        the rows to ``labels``; without it the audio path is the id).
      labels: a ``whisper-t5x label`` output directory: its ``text`` (the
        pseudo-label), ``language`` and ``segments`` replace the dataset's
        text, and only rows with ``keep`` true (when it has a ``keep``
        column) and no ``error`` are used.
      language: the targets' language where rows carry none (multilingual
        models need one); ``task``: transcribe or translate.
      prompt_column: a column with each row's previous text; ``None``: the
        previous row of the split (consecutive segments of a recording).
      segments_column: a column of ``[{"start", "end", "text"}]`` segment
        times (the label job's layout), used when the dataset has it.
      timestamp_probability, prompt_probability: the chance a row is trained
        with segment timestamps (when it has segment times) / with its
        previous text as prompt.
      spec_augment: mask training features (``SpecAugmentConfig``).
      seed: the order's seed (and every row's random choices).
      pool_batches: batches sorted by target length together.
      max_train_rows, max_eval_rows: use at most this many rows (``None``: all).
      load_workers, prefetch: audio-decoding threads; batches built ahead.
    """

    dataset: Optional[str] = None
    dataset_config: Optional[str] = None
    split: str = "train"
    eval_split: Optional[str] = None
    audio_column: str = "audio"
    text_column: str = "text"
    id_column: str = "id"
    labels: Optional[str] = None
    language: Optional[str] = None
    task: str = "transcribe"
    prompt_column: Optional[str] = None
    segments_column: Optional[str] = "segments"
    timestamp_probability: float = 0.2
    prompt_probability: float = 0.2
    spec_augment: bool = False
    seed: int = 0
    pool_batches: int = 32
    max_train_rows: Optional[int] = None
    max_eval_rows: Optional[int] = 256
    load_workers: int = 2
    prefetch: int = 2

    def __post_init__(self):
        gin_config.check_required(self)
        if self.task not in TASKS:
            raise ValueError(f"DataSection.task must be one of {TASKS}, got {self.task!r}")
        for name in ("timestamp_probability", "prompt_probability"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"DataSection.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("pool_batches", "load_workers", "prefetch"):
            positive_int(getattr(self, name), f"DataSection.{name}")
        for name in ("max_train_rows", "max_eval_rows"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), f"DataSection.{name}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DistillSection:
    """Distillation (``whisper-t5x distill``): ``ce_weight * CE + kl_weight * T^2 * KL(teacher || student)``.

    Attributes:
      teacher: the teacher model (name or checkpoint).
      student_decoder_layers: the student keeps this many of the teacher's
        decoder layers (maximally spaced, first and last kept) and its whole
        encoder; ``None``: the student is ``ModelSection.name`` as it is.
      kl_weight, ce_weight, temperature: the loss (distil-whisper: 1.0, 0.8, 2).
    """

    teacher: Optional[str] = None
    student_decoder_layers: Optional[int] = None
    kl_weight: float = 1.0
    ce_weight: float = 0.8
    temperature: float = 2.0

    def __post_init__(self):
        gin_config.check_required(self)
        if self.student_decoder_layers is not None:
            positive_int(self.student_decoder_layers, "DistillSection.student_decoder_layers")
        if not float(self.temperature) > 0:
            raise ValueError(f"DistillSection.temperature must be > 0, got {self.temperature!r}")
        if float(self.kl_weight) < 0 or float(self.ce_weight) < 0:
            raise ValueError("DistillSection.kl_weight and ce_weight must be >= 0")


def _bound(name: str) -> Any:
    try:
        return gin.query_parameter(name)
    except ValueError:
        return None


@gin.configurable
@dataclasses.dataclass
class TrainConfig:
    """One training run (``configs/runs/finetune.gin``, ``configs/runs/distill.gin``).

    Attributes:
      model, partition: the shared sections (``model.name`` the model trained;
        ``model.dtype`` the compute dtype, parameters stay float32;
        ``partition.batch_size`` the global batch; ``partition.partitioner``
        the mesh and rule set, ``dp`` over every device when unset).
      data: :class:`DataSection`. optimizer: ``OptimizerConfig`` (its
        ``total_steps`` defaults to ``max_steps``). spec_augment: ``SpecAugmentConfig``.
      distill: :class:`DistillSection` for a distillation run, else ``None``.
      output_dir: ``checkpoints/``, ``export/``, ``metrics.jsonl``,
        ``tensorboard/`` and ``config.gin`` go here; rerunning resumes from it.
      max_steps: updates in total (a resumed run continues up to it).
      freeze_encoder: train the decoder only (no encoder gradients or
        optimizer state); distillation then runs the encoder once per batch
        for teacher and student.
      label_smoothing: cross-entropy label smoothing.
      scan_layers: stack layers and scan them (with ``ModelSection``'s
        model, see ``WhisperConfig.remat_policy`` for rematerialisation).
      remat_policy: ``WhisperConfig.remat_policy`` of the trained model.
      log_every, eval_every, save_every: intervals in steps (``eval_every``
        ``None``: evaluate at the start and the end only).
      eval_at_start: evaluate before the first step of a fresh run.
      eval_batch_size: rows per eval batch (default: the training batch).
      eval_sample_len: tokens decoded per eval row at most (``None``: as many as fit).
      keep_checkpoints: checkpoints kept; async_checkpoints: write them in the background.
      export: write ``OUT/export/`` (a ``save_pretrained`` directory) at the end.
      tensorboard, progress: event files; the progress bar.
    """

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    partition: PartitionSection = dataclasses.field(default_factory=PartitionSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optimizer: Optional[OptimizerConfig] = None
    spec_augment: Optional[SpecAugmentConfig] = None
    distill: Optional[DistillSection] = None
    output_dir: Optional[str] = None
    max_steps: int = 1000
    freeze_encoder: bool = False
    label_smoothing: float = 0.0
    scan_layers: bool = False
    remat_policy: Optional[str] = None
    log_every: int = 10
    eval_every: Optional[int] = None
    eval_at_start: bool = True
    eval_batch_size: Optional[int] = None
    eval_sample_len: Optional[int] = None
    save_every: int = 500
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    export: bool = True
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        gin_config.check_required(self)
        if not self.data.dataset:
            raise ValueError("DataSection.dataset is required (--dataset)")
        if not self.output_dir:
            raise ValueError("TrainConfig.output_dir is required (--output_dir)")
        positive_int(self.max_steps, "TrainConfig.max_steps")
        for name in ("log_every", "save_every", "keep_checkpoints"):
            positive_int(getattr(self, name), f"TrainConfig.{name}")
        for name in ("eval_every", "eval_batch_size", "eval_sample_len"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), f"TrainConfig.{name}")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.optimizer is None:
            total = _bound("OptimizerConfig.total_steps")
            self.optimizer = optimizer_config(total_steps=int(total if total is not None else self.max_steps))
        if self.spec_augment is None:
            self.spec_augment = spec_augment_config()
        if self.distill is not None and not self.distill.teacher:
            raise ValueError("DistillSection.teacher is required for distillation (--teacher)")

    @property
    def batch_size(self) -> int:
        return int(self.partition.batch_size or 16)


def make_train_config(**overrides: Any) -> TrainConfig:
    """:class:`TrainConfig` from the current gin bindings (bad values as ``GinConfigError``)."""
    return gin_config.make(TrainConfig, **overrides)
