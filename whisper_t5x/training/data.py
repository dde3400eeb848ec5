"""Training batches on the host: a deterministic, resumable order; audio and log-mel ahead of the device.

* :class:`RowSet` is one split as the trainer sees it: every row's
  :class:`~whisper_t5x.training.targets.Example` (text, language, segment
  times, previous text) known up front, its audio fetched on demand. Opening a
  dataset (Hugging Face ``datasets``, the label job's Parquet) is the app's
  job (:mod:`whisper_t5x.app.train_data`); this module never imports ``datasets``.
* :func:`epoch_batches` is the order: a permutation of the rows drawn from
  ``(seed, epoch)``, cut into pools of ``pool_batches`` batches, each pool
  sorted by target length and cut into batches (rows of similar length pad
  little), the batches shuffled. Every process computes the same global
  batches and takes its own slice of each, so ``P`` processes with ``B / P``
  rows each see exactly the rows one process with ``B`` rows would.
* :class:`DataPosition` (epoch, batches consumed) is all a checkpoint needs to
  resume exactly where the run stopped: the order is a pure function of the
  seed, and every random choice of a row (timestamps, prompt, SpecAugment) is
  drawn from a generator seeded by ``(seed, epoch, row)``.
* :class:`BatchLoader` builds the batches in a background thread (audio
  decoded by a small thread pool, log-mel in numpy), so the host's work
  overlaps the device's. A row whose audio cannot be decoded or is longer than
  one window is kept in the batch with its loss mask zeroed (shapes stay
  static, the order stays exact) and counted.

Bad input is a named :class:`DataError` raised before any step runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import CHUNK_LENGTH, HOP_LENGTH, SAMPLE_RATE
from whisper_t5x.audio.features import log_mel_spectrogram_np
from whisper_t5x.audio.loading import AudioError, load_audio
from whisper_t5x.training.specaugment import SpecAugmentConfig, spec_augment
from whisper_t5x.training.targets import (
    LENGTH_BUCKETS, Example, TargetBuilder, TargetError, TokenRow, collate, padded_length,
)

logger = logging.getLogger("whisper_t5x.training.data")

__all__ = [
    "BATCH_FIELDS", "BatchLoader", "BatchSizeError", "DataConfig", "DataError", "DataPosition", "EmptySplitError",
    "HostBatch", "MissingTextColumnError", "RowSet", "epoch_batches", "eval_batches", "prepare_rows",
]

# The fields of a batch, named as the train step's TrainBatch names them.
BATCH_FIELDS = ("input_features", "decoder_input_ids", "labels", "loss_mask")


class DataError(ValueError):
    """The training data cannot be used as configured."""


class MissingTextColumnError(DataError):
    """The dataset has no column with the target text."""


class EmptySplitError(DataError):
    """A split has no usable rows (or fewer than one batch)."""


class BatchSizeError(DataError):
    """The batch size does not divide over the processes or the mesh's data axis."""


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the data stream is: ``index`` batches of epoch ``epoch`` have been consumed."""

    epoch: int = 0
    index: int = 0

    def as_dict(self) -> Dict[str, int]:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    @classmethod
    def from_dict(cls, value: Dict[str, Any]) -> "DataPosition":
        return cls(int(value.get("epoch", 0)), int(value.get("index", 0)))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How batches are made.

    Attributes:
      batch_size: rows per global batch (over every process).
      seed: the order's and the rows' random choices' seed.
      pool_batches: batches sorted by target length together (1: no grouping).
      length_buckets: padded label lengths (each compiles one step program).
      prefetch: batches built ahead of the device.
      load_workers: threads decoding audio.
      spec_augment: masks applied to training features (``None``: none).
    """

    batch_size: int
    seed: int = 0
    pool_batches: int = 32
    length_buckets: Tuple[int, ...] = LENGTH_BUCKETS
    prefetch: int = 2
    load_workers: int = 2
    spec_augment: Optional[SpecAugmentConfig] = None

    def __post_init__(self):
        for name in ("batch_size", "pool_batches", "prefetch", "load_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"DataConfig.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass
class RowSet:
    """One split: every row's example up front, audio on demand.

    ``fetch_audio(indices)`` returns, for each row index, what
    :func:`whisper_t5x.audio.loading.load_audio` takes (a path, ``{"bytes"}``,
    ``{"array", "sampling_rate"}``) or an exception instance for a row that
    cannot be read.
    """

    name: str
    examples: Sequence[Example]
    fetch_audio: Callable[[Sequence[int]], List[Any]]

    def __len__(self) -> int:
        return len(self.examples)


@dataclasses.dataclass
class HostBatch:
    """This process's share of one global batch, and what it holds."""

    fields: Dict[str, np.ndarray]  # BATCH_FIELDS, this process's rows
    position: DataPosition  # the position after this batch
    tokens: int  # learned target tokens of the global batch
    audio_seconds: float  # audio of this process's rows
    bad_rows: int  # rows of this process whose audio could not be used (loss masked out)
    rows: np.ndarray  # dataset row indices of this process's rows


def check_batch_size(batch_size: int, process_count: int = 1, data_size: int = 1) -> None:
    """A global batch is split evenly over processes and over the mesh's data axis."""
    if batch_size % max(1, process_count):
        raise BatchSizeError(f"batch size {batch_size} does not divide over {process_count} processes")
    if batch_size % max(1, data_size):
        raise BatchSizeError(f"batch size {batch_size} is not a multiple of the mesh's data axis ({data_size} "
                             "devices); pick a multiple, or more model partitions")


def prepare_rows(rows: RowSet, builder: TargetBuilder, batch_size: Optional[int] = None) -> np.ndarray:
    """Every row's length key; named errors for an empty split or a row that cannot become targets."""
    if len(rows) == 0:
        raise EmptySplitError(f"split {rows.name!r} has no rows to train on")
    if batch_size is not None and len(rows) < batch_size:
        raise EmptySplitError(f"split {rows.name!r} has {len(rows)} row(s), fewer than one batch of {batch_size}")
    lengths = np.zeros(len(rows), np.int32)
    for i, example in enumerate(rows.examples):
        try:
            lengths[i] = builder.check(example)
        except TargetError as e:
            raise type(e)(f"split {rows.name!r} row {i}: {e}") from e
    return lengths


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  pool_batches: int = 32) -> List[np.ndarray]:
    """The global batches of one epoch (row indices), a pure function of its arguments.

    The rows past the last full batch are left out (a different few each epoch).
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    n = len(lengths)
    order = rng.permutation(n)[: (n // batch_size) * batch_size]
    pool = batch_size * max(1, int(pool_batches))
    batches: List[np.ndarray] = []
    for lo in range(0, len(order), pool):
        chunk = order[lo:lo + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
    return [batches[k] for k in rng.permutation(len(batches))]


def row_rng(seed: int, epoch: int, row: int, stream: int) -> np.random.Generator:
    """The generator of one row's random choices (``stream`` 0: targets, 1: SpecAugment)."""
    return np.random.default_rng([int(seed), int(epoch), int(row), int(stream)])


def _load(source: Any) -> Any:
    """A row's waveform, or the exception that stopped it (a row never stops the run)."""
    if isinstance(source, BaseException):
        return source
    try:
        return load_audio(source, SAMPLE_RATE, max_duration_s=CHUNK_LENGTH + 0.01)
    except (AudioError, OSError, ValueError) as e:
        return e


class BatchLoader:
    """This process's batches from ``start`` on, built in a background thread; iterate, then :meth:`close`.

    Epochs follow one another without end; the caller stops after its last step.
    """

    def __init__(self, rows: RowSet, builder: TargetBuilder, config: DataConfig, n_mels: int,
                 start: DataPosition = DataPosition(), process_index: int = 0, process_count: int = 1,
                 lengths: Optional[np.ndarray] = None, background: bool = True):
        check_batch_size(config.batch_size, process_count)
        self.rows, self.builder, self.config, self.n_mels = rows, builder, config, int(n_mels)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch = config.batch_size // self.process_count
        self.lengths = prepare_rows(rows, builder, config.batch_size) if lengths is None else lengths
        self.position = start
        self._plans: Dict[int, List[np.ndarray]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(config.load_workers, thread_name_prefix="train-audio")
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=config.prefetch)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._produce, name="train-batches", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ order
    def plan(self, epoch: int) -> List[np.ndarray]:
        """The global batches of ``epoch`` (cached: the last two epochs)."""
        if epoch not in self._plans:
            for old in [e for e in self._plans if e < epoch - 1]:
                del self._plans[old]
            self._plans[epoch] = epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch,
                                               self.config.pool_batches)
        return self._plans[epoch]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.rows) // self.config.batch_size

    def _next_position(self, position: DataPosition) -> DataPosition:
        if position.index + 1 >= self.batches_per_epoch:
            return DataPosition(position.epoch + 1, 0)
        return DataPosition(position.epoch, position.index + 1)

    # ------------------------------------------------------------------ one batch
    def token_rows(self, indices: Sequence[int], epoch: int) -> List[TokenRow]:
        return [self.builder.build(self.rows.examples[i], row_rng(self.config.seed, epoch, i, 0)) for i in indices]

    def build(self, position: DataPosition) -> HostBatch:
        """The batch at ``position`` (a pure function of it)."""
        batch = self.plan(position.epoch)[position.index]
        token_rows = self.token_rows(batch, position.epoch)
        length = padded_length(max(r.length for r in token_rows), self.config.length_buckets)
        lo = self.process_index * self.local_batch
        local = batch[lo:lo + self.local_batch]
        ids, labels, mask = collate(token_rows[lo:lo + self.local_batch], length, self.builder.tokenizer.eot)
        tokens = int(sum(float(r.arrays()[2].sum()) for r in token_rows))
        audio = list(self._pool.map(_load, self.rows.fetch_audio([int(i) for i in local])))
        bad = 0
        waves = []
        for k, (row, wave) in enumerate(zip(local, audio)):
            if isinstance(wave, BaseException):
                logger.warning("split %s row %d is masked out of its batch: %s: %s", self.rows.name, int(row),
                               type(wave).__name__, wave)
                mask[k] = 0.0
                bad += 1
                wave = np.zeros(0, np.float32)
            waves.append(wave)
        features = log_mel_spectrogram_np(waves, n_mels=self.n_mels)
        if self.config.spec_augment is not None:
            for k, (row, wave) in enumerate(zip(local, waves)):
                features[k] = spec_augment(features[k], row_rng(self.config.seed, position.epoch, int(row), 1),
                                           self.config.spec_augment, valid_frames=len(wave) // HOP_LENGTH)
        fields = dict(input_features=features, decoder_input_ids=ids, labels=labels, loss_mask=mask)
        seconds = float(sum(len(w) for w in waves)) / SAMPLE_RATE
        return HostBatch(fields, self._next_position(position), tokens, seconds, bad, np.asarray(local))

    # ------------------------------------------------------------------ stream
    def _produce(self) -> None:
        position = self.position
        try:
            while not self._stop.is_set():
                item = self.build(position)
                position = item.position
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._queue.put(e)

    def __iter__(self) -> Iterator[HostBatch]:
        return self

    def __next__(self) -> HostBatch:
        if self._thread is None:
            item = self.build(self.position)
        else:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
        self.position = item.position
        return item

    def close(self) -> None:
        """Stops the background thread and the audio threads."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def eval_batches(rows: RowSet, builder: TargetBuilder, batch_size: int, n_mels: int, max_rows: Optional[int] = None,
                 process_index: int = 0, process_count: int = 1) -> Tuple[List[HostBatch], List[int]]:
    """The eval split as full global batches in row order (no prompts, no timestamps, no SpecAugment).

    The last batch is filled by repeating its last row with the loss masked
    out. Returns the batches (this process's rows) and, for each batch, how
    many of this process's rows are real (the rest are repeats).
    """
    check_batch_size(batch_size, process_count)
    n = len(rows) if max_rows is None else min(len(rows), int(max_rows))
    if n == 0:
        raise EmptySplitError(f"eval split {rows.name!r} has no rows")
    prepare_rows(RowSet(rows.name, rows.examples[:n], rows.fetch_audio), builder)
    local_batch = batch_size // process_count
    out: List[HostBatch] = []
    real: List[int] = []
    for lo in range(0, n, batch_size):
        batch = np.arange(lo, min(lo + batch_size, n))
        padded = np.concatenate([batch, np.full(batch_size - len(batch), batch[-1])])
        token_rows = [builder.build(rows.examples[int(i)], None) for i in padded]
        length = padded_length(max(r.length for r in token_rows))
        p0 = process_index * local_batch
        local = padded[p0:p0 + local_batch]
        ids, labels, mask = collate(token_rows[p0:p0 + local_batch], length, builder.tokenizer.eot)
        positions = np.arange(p0, p0 + local_batch)
        mask[positions >= len(batch)] = 0.0
        waves = []
        bad = 0
        for k, wave in enumerate(map(_load, rows.fetch_audio([int(i) for i in local]))):
            if isinstance(wave, BaseException):
                mask[k] = 0.0
                bad += 1
                wave = np.zeros(0, np.float32)
            waves.append(wave)
        features = log_mel_spectrogram_np(waves, n_mels=n_mels)
        fields = dict(input_features=features, decoder_input_ids=ids, labels=labels, loss_mask=mask)
        out.append(HostBatch(fields, DataPosition(), int(mask.sum()), float(sum(map(len, waves))) / SAMPLE_RATE,
                             bad, local))
        real.append(int(np.sum(positions < len(batch))))
    return out, real
