"""The labelling loop of one process, and the run's summaries.

:func:`run_label` reads this process's rows (:mod:`.source`), decodes their
audio ahead of the model and groups rows of similar duration
(:mod:`.batching`), transcribes each group in one pipeline call, and appends
one output row per input row to Parquet parts (:mod:`.sink`). A row whose
audio cannot be decoded, or whose transcription fails alone, is written with
its ``error``. :func:`transcript_fields` is the one place that reads the
pipeline's typed result. Each process holds a claim on the output folder while
it labels (:mod:`.lock`), so a second run on the same folder is refused
instead of writing the same rows again. Process 0 writes ``config.gin`` and,
once every process is done, ``summary.json``; each process writes
``summary.process<I>.json``. Summaries count distinct ``(split, id)`` rows.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

from whisper_t5x.app import build
from whisper_t5x.app.gin_config import CONFIG_FILENAME, write_config
from whisper_t5x.app.file_job import prepare_output_dir
from whisper_t5x.app.label import batching, lock, sink, source
from whisper_t5x.app.label.config import LabelConfig
from whisper_t5x.audio.constants import SAMPLE_RATE
from whisper_t5x.results import Segment, Transcription
from whisper_t5x.text.normalize import word_error_rate

logger = logging.getLogger("whisper_t5x.app.label")


# ================================================================== adapter
@dataclasses.dataclass
class TranscriptFields:
    """What an output row takes from one transcription."""

    text: str
    language: Optional[str]
    segments: List[Dict[str, Any]]  # {"start", "end", "text"}
    avg_logprob: Optional[float]
    no_speech_prob: Optional[float]


def _weighted(segments: Sequence[Segment], key: str) -> Optional[float]:
    """Mean of a segment statistic weighted by segment duration (``None`` when no segment has it)."""
    vals = [(float(getattr(s, key)), max(s.end - s.start, 1e-3)) for s in segments if getattr(s, key) is not None]
    total = sum(w for _, w in vals)
    return sum(v * w for v, w in vals) / total if vals and total > 0 else None


def transcript_fields(result: Transcription) -> TranscriptFields:
    """A :class:`~whisper_t5x.results.Transcription` as output fields.

    Segments without text are left out; the row's ``avg_logprob`` /
    ``no_speech_prob`` are its segments' weighted by segment duration.
    """
    segments = [s for s in result.segments if s.text.strip()]
    return TranscriptFields(
        text=result.text.strip(),
        language=result.language,
        segments=[{"start": float(s.start), "end": float(s.end), "text": s.text.strip()} for s in segments],
        avg_logprob=_weighted(segments, "avg_logprob"),
        no_speech_prob=_weighted(segments, "no_speech_prob"),
    )


# ================================================================== report
@dataclasses.dataclass
class SplitStats:
    rows: int = 0
    failed: int = 0
    audio_s: float = 0.0
    kept: int = 0

    def add(self, other: "SplitStats") -> None:
        self.rows += other.rows
        self.failed += other.failed
        self.audio_s += other.audio_s
        self.kept += other.kept


@dataclasses.dataclass
class LabelReport:
    """What one process did in this run."""

    process_index: int = 0
    process_count: int = 1
    skips: source.Skips = dataclasses.field(default_factory=source.Skips)  # already written, repeated ids
    wall_s: float = 0.0
    load_model_s: float = 0.0
    splits: Dict[str, SplitStats] = dataclasses.field(default_factory=dict)

    def total(self) -> SplitStats:
        out = SplitStats()
        for s in self.splits.values():
            out.add(s)
        return out

    def as_dict(self) -> Dict[str, Any]:
        t = self.total()
        return dict(
            process_index=self.process_index, process_count=self.process_count, rows=t.rows, failed=t.failed,
            kept=t.kept, skipped=self.skips.done, duplicate_ids=self.skips.duplicates,
            duplicate_examples=list(self.skips.examples), audio_hours=t.audio_s / 3600, wall_s=self.wall_s,
            load_model_s=self.load_model_s, audio_hours_per_hour=_rate(t.audio_s, self.wall_s),
            splits={k: dict(rows=v.rows, failed=v.failed, kept=v.kept, audio_hours=v.audio_s / 3600)
                    for k, v in self.splits.items()},
        )


def _rate(audio_s: float, wall_s: float) -> Optional[float]:
    return audio_s / wall_s if wall_s > 0 else None


class _Progress:
    """A per-host progress line every ``every_s`` seconds."""

    def __init__(self, report: LabelReport, every_s: float, t0: float):
        self.report, self.every_s, self.t0, self.last = report, float(every_s), t0, t0

    def maybe_log(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        t = self.report.total()
        rate = _rate(t.audio_s, now - self.t0)
        logger.info("[process %d/%d] %d rows (%d failed, %d skipped), %.4f h audio, %s h/h",
                    self.report.process_index, self.report.process_count, t.rows, t.failed,
                    self.report.skips.done, t.audio_s / 3600, f"{rate:.1f}" if rate else "n/a")


# ==================================================================== loop
def _source_rows(config: LabelConfig, index: int, count: int, report: LabelReport) -> Iterator[source.SourceRow]:
    done = sink.read_done_keys(config.output_dir)
    if done:
        logger.info("%d row(s) already written under %s: skipped", len(done), config.output_dir)

    budget = None if config.max_rows is None else int(config.max_rows)
    for name in config.splits:
        src = source.load_split(config.dataset, name, config_name=config.dataset_config,
                                streaming=config.streaming, audio_column=config.audio_column,
                                id_column=config.id_column, text_column=config.text_column)
        for row in source.process_rows(src, index, count, done, report.skips):
            if budget is not None:
                if budget <= 0:
                    return
                budget -= 1
            yield row


def _call(pipe, rows: Sequence[batching.DecodedRow], config: LabelConfig) -> List[Transcription]:
    inputs = [{"array": r.audio, "sampling_rate": SAMPLE_RATE} for r in rows]
    kwargs = config.decode.transcribe_kwargs(timestamps=True)  # the segments column is timed
    results = pipe.transcribe(inputs, batch_size=config.partition.batch_size, progress=config.progress, **kwargs)
    results = [results] if isinstance(results, Transcription) else list(results)
    if len(results) != len(rows):
        raise RuntimeError(f"pipeline returned {len(results)} results for {len(rows)} inputs")
    return results


def _transcribe(pipe, rows: Sequence[batching.DecodedRow], config: LabelConfig) -> List[Any]:
    """A Transcription or an error message per row; a failed group is retried row by row."""
    try:
        return list(_call(pipe, rows, config))
    except Exception as e:  # noqa: BLE001
        if len(rows) == 1:
            logger.warning("transcription of %s/%s failed: %s", rows[0].row.split, rows[0].row.id, e)
            return [f"transcription failed: {type(e).__name__}: {e}"]
        logger.warning("batched transcription failed (%s: %s); retrying %d rows one by one",
                       type(e).__name__, e, len(rows))
        return [out for r in rows for out in _transcribe(pipe, [r], config)]


def output_row(row: batching.DecodedRow, result: Any, config: LabelConfig) -> Dict[str, Any]:
    """One Parquet row: ``result`` is a Transcription, an error message, or ``None`` (empty audio)."""
    src = row.row
    duration = row.duration
    out: Dict[str, Any] = dict(split=src.split, id=src.id, text=None, language=None, duration=duration,
                               segments=None, avg_logprob=None, no_speech_prob=None, error=row.error)
    if row.error is None and isinstance(result, str):
        out["error"] = result
    elif row.error is None:
        fields = transcript_fields(result or Transcription("", (), None, duration or 0.0))
        out.update(text=fields.text, language=fields.language, segments=fields.segments,
                   avg_logprob=fields.avg_logprob, no_speech_prob=fields.no_speech_prob)
    if config.text_column:
        wer = None
        if out["error"] is None and src.reference is not None:
            wer = word_error_rate(src.reference, out["text"], out["language"] or config.decode.language or "en")
        out.update(reference=src.reference, wer=wer,
                   keep=wer is not None and wer <= float(config.wer_threshold))
    return out


def run_label(config: LabelConfig, *, pipeline: Any = None, process_index: int = 0, process_count: int = 1,
              config_header: str = "") -> LabelReport:
    """Labels this process's rows of ``config.dataset`` into ``config.output_dir``.

    Raises :class:`~whisper_t5x.app.file_job.OutputDirError` if the folder
    cannot be written, :class:`~whisper_t5x.app.label.lock.LabelBusyError` if
    another live run writes to it (:func:`.lock.acquire`); neither loads a model.
    """
    prepare_output_dir(config.output_dir)
    with lock.acquire(config.output_dir, process_index, process_count):
        return _run_locked(config, pipeline, process_index, process_count, config_header)


def _run_locked(config: LabelConfig, pipeline: Any, process_index: int, process_count: int,
                config_header: str) -> LabelReport:
    t0 = time.perf_counter()
    out_dir = config.output_dir
    report = LabelReport(process_index=process_index, process_count=process_count)
    writer = sink.PartWriter(out_dir, sink.row_schema(bool(config.text_column)), process_index,
                             config.part_rows, config.part_max_s)
    progress = _Progress(report, config.progress_every_s, t0)
    pipe = pipeline

    def ensure_pipeline():
        nonlocal pipe
        if pipe is None:
            t = time.perf_counter()
            pipe = build.load_pipeline(config, process_count)
            report.load_model_s += time.perf_counter() - t
            if process_index == 0:
                write_config(os.path.join(out_dir, CONFIG_FILENAME), config_header)
        return pipe

    if process_index == 0:
        write_config(os.path.join(out_dir, CONFIG_FILENAME), config_header)
    rows = batching.decode_rows(_source_rows(config, process_index, process_count, report),
                                config.grouping.load_workers)
    try:
        for group in batching.duration_groups(rows, config.grouping.group_size, config.buffer_size):
            audible = [r for r in group if r.error is None and r.audio.shape[0] > 0]
            results = dict(zip(map(id, audible), _transcribe(ensure_pipeline(), audible, config))) if audible else {}
            for r in group:
                out = output_row(r, results.get(id(r)), config)
                writer.add(out)
                stats = report.splits.setdefault(r.row.split, SplitStats())
                stats.rows += 1
                stats.failed += out["error"] is not None
                stats.audio_s += r.duration or 0.0
                stats.kept += bool(out.get("keep"))
            progress.maybe_log()
    finally:
        writer.close()
    report.wall_s = time.perf_counter() - t0
    progress.maybe_log(force=True)
    if report.skips.duplicates:
        logger.warning("%d input row(s) repeat the (split, id) of an earlier row (e.g. %s): each id is labelled "
                       "once, from its first row", report.skips.duplicates, ", ".join(report.skips.examples))
    _write_json(os.path.join(out_dir, f"summary.process{process_index}.json"), report.as_dict())
    return report


# ================================================================= summary
def _write_json(path: str, obj: Any) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _distinct_rows(cols: Dict[str, List[Any]]) -> List[int]:
    """One row index per ``(split, id)``: the first without an error, else the first."""
    chosen: Dict[Any, int] = {}
    for i, key in enumerate(zip(cols["split"], cols["id"])):
        j = chosen.get(key)
        if j is None or (cols["error"][j] is not None and cols["error"][i] is None):
            chosen[key] = i
    return sorted(chosen.values())


def dataset_totals(out_dir: str) -> Dict[str, Any]:
    """Rows, failures, kept rows and audio hours of everything under ``out_dir``, per split.

    Rows are distinct ``(split, id)`` pairs; ``duplicate_rows`` counts further
    rows of a pair already counted (written by versions without the run lock).
    """
    t = sink.read_table(out_dir)
    if t.num_rows == 0:
        return dict(rows=0, failed=0, audio_hours=0.0, duplicate_rows=0, splits={})
    cols = t.to_pydict()
    distinct = _distinct_rows(cols)
    splits: Dict[str, SplitStats] = {}
    keep = cols.get("keep")
    for i in distinct:
        s = splits.setdefault(cols["split"][i], SplitStats())
        s.rows += 1
        s.failed += cols["error"][i] is not None
        s.audio_s += cols["duration"][i] or 0.0
        s.kept += bool(keep[i]) if keep is not None else 0
    total = SplitStats()
    for s in splits.values():
        total.add(s)
    out = dict(rows=total.rows, failed=total.failed, audio_hours=total.audio_s / 3600,
               duplicate_rows=t.num_rows - len(distinct), splits={k: dict(rows=v.rows, failed=v.failed, audio_hours=v.audio_s / 3600,
                               **({"kept": v.kept} if keep is not None else {})) for k, v in splits.items()})
    if keep is not None:
        out["kept"] = total.kept
    return out


def write_summary(out_dir: str, process_count: int, wall_s: float) -> Dict[str, Any]:
    """``summary.json`` (process 0, after every process finished): this run and the whole output."""
    per = []
    for i in range(process_count):
        p = os.path.join(out_dir, f"summary.process{i}.json")
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                per.append(json.load(f))
    run: Dict[str, Any] = dict(processes=process_count, reported=len(per), wall_s=wall_s)
    for key in ("rows", "failed", "kept", "skipped", "duplicate_ids", "audio_hours"):
        run[key] = sum(p.get(key, 0) for p in per)
    run["duplicate_examples"] = [x for p in per for x in p.get("duplicate_examples", [])][:source.EXAMPLES]
    run["audio_hours_per_hour"] = run["audio_hours"] / (wall_s / 3600) if wall_s > 0 else None
    splits: Dict[str, Dict[str, float]] = {}
    for p in per:
        for name, s in p.get("splits", {}).items():
            acc = splits.setdefault(name, dict(rows=0, failed=0, kept=0, audio_hours=0.0))
            for k in acc:
                acc[k] += s.get(k, 0)
    run["splits"] = splits
    summary = dict(this_run=run, output=dataset_totals(out_dir))
    _write_json(os.path.join(out_dir, "summary.json"), _finite(summary))
    return summary


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def stale_process_summaries(out_dir: str, process_count: int) -> List[str]:
    """``summary.process<I>.json`` files of an earlier run with more processes."""
    out = []
    for p in glob.glob(os.path.join(out_dir, "summary.process*.json")):
        stem = os.path.basename(p)[len("summary.process"):-len(".json")]
        if stem.isdigit() and int(stem) >= process_count:
            out.append(p)
    return out
