"""The file job behind ``whisper-t5x transcribe``: files in, one set of outputs per file out.

:func:`run_transcribe` finds the inputs and their output names
(:mod:`whisper_t5x.app.inputs`), skips those already done, decodes the rest
a few files ahead of the model, transcribes them in groups, and writes each
file's outputs as soon as its group returns.

A group is what one pipeline call decodes together: short files share
batches, so grouping them keeps the device busy. A group is closed before it
would exceed ``group_batches`` batches of windows (``batch_size`` windows
each; a longer file goes alone), ``group_size`` files or
``group_max_audio_s`` (:class:`~whisper_t5x.app.config.GroupingSection`). With the default ``group_batches = 1`` all files of a
group are decoded in the same batch and so finish together: writing after
the call writes each file as soon as it is done, and an interrupted run
(Ctrl-C) loses at most the batch in flight; rerunning the command resumes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from whisper_t5x.app import build
from whisper_t5x.app import inputs as inputs_lib
from whisper_t5x.app import writers as outputs_lib
from whisper_t5x.app.config import TranscribeConfig
from whisper_t5x.app.gin_config import CONFIG_FILENAME, write_config
from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.results import Transcription

logger = logging.getLogger("whisper_t5x.app.file_job")


class OutputDirError(RuntimeError):
    """The output directory cannot be created or written to."""


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
    interrupted: bool = False

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


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_transcribe`; ``report`` says what was written before it."""

    def __init__(self, report: RunReport):
        super().__init__("interrupted")
        self.report = report


# ================================================================== loading
@dataclasses.dataclass
class _Loaded:
    item: inputs_lib.InputFile
    audio: Any  # float32 waveform at 16 kHz
    duration: float


def _load(item: inputs_lib.InputFile) -> _Loaded:
    from whisper_t5x.audio.loading import load_audio

    audio = load_audio(item.path, SAMPLE_RATE)
    return _Loaded(item, audio, audio.shape[0] / SAMPLE_RATE)


def _iter_loaded(items: Sequence[inputs_lib.InputFile], workers: int,
                 failed: List[Tuple[str, str]]) -> Iterator[_Loaded]:
    """Decoded files in order, ``workers`` decodes (ffmpeg) ahead of the consumer.

    A file that cannot be decoded (or holds no samples) is recorded in
    ``failed`` and left out, so it never reaches the model.
    """
    workers = max(1, int(workers))
    lookahead = max(workers, 2)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
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
            yield loaded
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def window_count(num_samples: int, config: TranscribeConfig) -> int:
    """How many windows the chunked long-form algorithm decodes for ``num_samples`` samples."""
    from whisper_t5x.longform.windows import split_windows, window_params

    chunk, stride = window_params(config.decode.chunk_length_s, config.decode.stride_length_s, SAMPLE_RATE)
    return len(split_windows(num_samples, chunk, stride))


def _iter_groups(loaded: Iterator[_Loaded], config: TranscribeConfig,
                 window_budget: Callable[[], Optional[int]]) -> Iterator[List[_Loaded]]:
    """``loaded`` cut into groups (see the module docstring for the rules).

    ``window_budget()``: windows one pipeline call should hold (the batch
    size), or ``None`` for no window limit; asked when a file arrives.
    """
    limits = config.grouping
    group: List[_Loaded] = []
    group_s, group_windows = 0.0, 0
    for x in loaded:
        windows = window_count(x.audio.shape[0], config)
        budget = window_budget()
        if group and budget is not None and group_windows + windows > budget:
            yield group
            group, group_s, group_windows = [], 0.0, 0
        group.append(x)
        group_s += x.duration
        group_windows += windows
        if (len(group) >= limits.group_size or group_s >= limits.group_max_audio_s
                or (budget is not None and group_windows >= budget)):
            yield group
            group, group_s, group_windows = [], 0.0, 0
    if group:
        yield group


# ================================================================ transcribe
def _call_pipeline(pipe, loaded: Sequence[_Loaded], config: TranscribeConfig) -> List[Transcription]:
    inputs = [{"array": x.audio, "sampling_rate": SAMPLE_RATE} for x in loaded]
    kwargs = config.decode.transcribe_kwargs()
    kwargs["batch_size"] = config.partition.batch_size
    if config.progress is not None:
        kwargs["progress"] = config.progress
    results = pipe.transcribe(inputs, **kwargs)
    if isinstance(results, Transcription):
        results = [results]
    results = list(results)
    if len(results) != len(inputs):
        raise RuntimeError(f"pipeline returned {len(results)} results for {len(inputs)} inputs")
    bad = [type(r).__name__ for r in results if not isinstance(r, Transcription)]
    if bad:
        raise TypeError(f"pipeline.transcribe returned {bad[0]}, not a Transcription")
    return results


def prepare_output_dir(path: str) -> None:
    """Creates ``path`` if needed and checks a file can be created in it (:class:`OutputDirError` if not)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"the output directory {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"cannot create the output directory {path}: {e.strerror or e}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OutputDirError(f"cannot write to the output directory {path}: {e.strerror or e}") from None


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
    unreadable never loads a model. Raises :class:`OutputDirError` for an
    unusable output directory, :class:`RunInterrupted` on Ctrl-C.
    """
    t0 = time.perf_counter()
    report = RunReport(process_index=process_index, process_count=process_count)
    formats = list(config.output_formats)
    out_dir = config.output_dir
    prepare_output_dir(out_dir)
    files, missing = inputs_lib.discover_audio(paths)
    report.failed.extend(missing)
    manifest = inputs_lib.Manifest(out_dir, process_index)
    everything = inputs_lib.assign_output_names(files, manifest.owners)
    mine = inputs_lib.shard_for_process(everything, process_index, process_count)
    report.planned = len(mine)
    logger.info("%d audio file(s) found, %d for this process", len(everything), len(mine))

    todo: List[inputs_lib.InputFile] = []
    for item in mine:
        if (not config.overwrite and manifest.owner(item.name) == item.path
                and outputs_lib.outputs_exist(out_dir, item.name, formats)):
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
            pipe = build.load_pipeline(config, process_count)
            report.load_model_s += time.perf_counter() - t
        if write_gin_config and process_index == 0 and not config_written:
            write_config(os.path.join(out_dir, CONFIG_FILENAME), config_header or "")
            config_written = True
        return pipe

    def window_budget() -> Optional[int]:
        batch = config.partition.batch_size or getattr(ensure_pipeline(), "batch_size", None)
        return None if batch is None else int(batch) * config.grouping.group_batches

    warmed = not config.warmup
    loaded = _iter_loaded(todo, config.grouping.load_workers, report.failed)
    groups = _iter_groups(loaded, config, window_budget)
    try:
        for group in groups:
            ensure_pipeline()
            if not warmed:
                t = time.perf_counter()
                _transcribe_group(pipe, group, config, RunReport(), None)
                report.warmup_s = time.perf_counter() - t
                warmed = True
            t = time.perf_counter()
            _transcribe_group(pipe, group, config, report, manifest)
            report.transcribe_s += time.perf_counter() - t
    except KeyboardInterrupt as e:
        report.interrupted = True
        report.wall_s = time.perf_counter() - t0 - report.warmup_s
        raise RunInterrupted(report) from e
    finally:
        groups.close()
        loaded.close()
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


def _transcribe_group(pipe, group: Sequence[_Loaded], config: TranscribeConfig, report: RunReport,
                      manifest: Optional[inputs_lib.Manifest]) -> None:
    """One pipeline call for the group, then each file's outputs (``manifest=None``: warm-up, nothing
    written). If the call fails, each file alone, so one bad input costs only itself."""
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
            _transcribe_group(pipe, [x], config, report, manifest)
        return
    for x, result in pairs:
        if manifest is not None:
            try:
                manifest.record(x.item)  # claim the name first: outputs never exist without an owner
                outputs_lib.write_outputs(result, config.output_dir, x.item.name, config.output_formats)
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
