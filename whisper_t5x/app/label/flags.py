"""``whisper-t5x label`` command line: flags, gin, processes, the run, the summary.

Flags given on the command line win over gin (they become bindings of
``LabelConfig`` or section fields, applied last); ``configs/runs/label.gin`` is parsed before any
``--gin_file``. argparse, not absl: the transcribe command's absl flags
(``--model``, ``--output_dir``...) live in the global absl registry.

Exit status: 0 when the run finished (rows that failed are written with their
error), 1 when the dataset or the model cannot be used, 2 for usage and
configuration errors, an output folder that cannot be written, and one that
another live label run is writing to (:class:`~whisper_t5x.app.label.lock.LabelBusyError`).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
import time
from typing import Any, Optional, Sequence

from whisper_t5x.app import build, distributed, gin_config, logs
from whisper_t5x.app.config import DTYPES
from whisper_t5x.text.tokenizer import TASKS

logger = logging.getLogger("whisper_t5x.app.label")

RUN_GIN = "runs/label.gin"

# flag -> the field it binds (flags whose value is None were not given)
FLAG_FIELDS = {
    **{f: f"LabelConfig.{f}" for f in ("dataset", "dataset_config", "split", "output_dir", "audio_column",
                                        "id_column", "text_column", "streaming", "wer_threshold", "max_rows",
                                        "part_rows")},
    "model": "ModelSection.name",
    "dtype": "ModelSection.dtype",
    "language": "DecodeSection.language",
    "task": "DecodeSection.task",
    "batch_size": "PartitionSection.batch_size",
    "group_size": "GroupingSection.group_size",
}


def build_parser(prog: str = "whisper-t5x label") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Label a Hugging Face dataset: one Parquet row per input row under OUT/data/, "
        "plus OUT/summary*.json and OUT/config.gin. Rerunning skips rows already written.")
    a = p.add_argument
    a("--dataset", help="hub id, local folder (Parquet/Arrow/audiofolder/JSON/CSV) or save_to_disk folder")
    a("--dataset_config", help="dataset configuration name")
    a("--split", help="split name(s) joined by '+' (default train)")
    a("--output_dir", help="where data/*.parquet, summary*.json and config.gin go")
    a("--audio_column", help="audio column (default audio): Audio, {bytes, path} or paths")
    a("--id_column", help="row id column (default id; the audio path if the dataset has none)")
    a("--text_column", help="reference text column: adds reference, wer and keep")
    a("--streaming", action="store_const", const=True, default=None, help="stream the dataset")
    a("--wer_threshold", type=float, help="keep = wer <= this (default 0.1)")
    a("--model", help="model name or checkpoint (default base)")
    a("--language", help="source language (default: detect)")
    a("--task", choices=list(TASKS), help="transcribe or translate")
    a("--batch_size", type=int, help="windows per forward pass")
    a("--dtype", choices=list(DTYPES), help="compute dtype")
    a("--group_size", type=int, help="rows per pipeline call")
    a("--max_rows", type=int, help="label at most this many new rows per process")
    a("--part_rows", type=int, help="rows per Parquet part file")
    a("--gin_file", action="append", default=[], help="gin file(s), in order (after runs/label.gin)")
    a("--gin_bindings", action="append", default=[], help="gin binding(s); also --gin.NAME=VALUE")
    a("--gin_search_paths", action="append", default=[], help="extra gin search directories")
    a("--coordinator_address", help="host:port of process 0 (multi-host)")
    a("--num_processes", type=int, help="number of processes (multi-host)")
    a("--process_id", type=int, help="this process's index (multi-host)")
    a("--distributed", choices=list(distributed.MODES), default="auto", help="jax.distributed.initialize policy")
    a("--initialization_timeout", type=int, help="seconds to wait for every process to join")
    a("--quiet", action="store_true", help="warnings and the summary only")
    return p


def _error(msg: str, code: int = 2) -> int:
    print(f"whisper-t5x label: error: {msg}", file=sys.stderr)
    return code


def _barrier(name: str) -> bool:
    """Waits for every process (``jax.distributed``); False if that failed."""
    try:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return True
    except Exception as e:  # noqa: BLE001 - a lost peer must not cost this process its summary
        logger.warning("could not wait for the other processes (%s: %s); summary.json covers what is on disk",
                       type(e).__name__, e)
        return False


def main(argv: Optional[Sequence[str]] = None, pipeline: Any = None) -> int:
    """``whisper-t5x label`` with ``argv`` = ``[prog, flags...]``; returns the exit status.

    ``pipeline``: a ready pipeline object to use instead of building one (tests).
    """
    from whisper_t5x.app.file_job import OutputDirError
    from whisper_t5x.app.label import config as config_lib, job, lock  # config registers LabelConfig with gin

    argv = list(sys.argv if argv is None else argv)
    original = list(argv)
    try:
        args = build_parser().parse_args(gin_config.rewrite_gin_args(argv[1:]))
    except gin_config.GinConfigError as e:
        return _error(str(e))
    logs.setup_logging(logging.WARNING if args.quiet else logging.INFO)
    explicit = [gin_config.flag_binding(target, getattr(args, f))
                for f, target in FLAG_FIELDS.items() if getattr(args, f) is not None]
    try:
        resolved = gin_config.parse_gin([RUN_GIN] + list(args.gin_file), args.gin_bindings,
                                        args.gin_search_paths, explicit)
        config = config_lib.make_label_config()
    except gin_config.GinConfigError as e:
        return _error(f"invalid configuration: {e}")
    try:
        index, count = distributed.initialize_distributed(args.coordinator_address, args.num_processes,
                                                          args.process_id, args.distributed,
                                                          args.initialization_timeout)
    except Exception as e:  # noqa: BLE001
        return _error(f"jax.distributed.initialize failed: {type(e).__name__}: {e}", 1)
    header = "\n".join([
        "Operative configuration of a whisper-t5x label run.",
        f"command: {shlex.join(original)}",
        f"gin files: {', '.join(resolved)}",
        f"processes: {count}",
        f"written: {datetime.datetime.now().isoformat(timespec='seconds')}",
    ])
    t0 = time.perf_counter()
    try:
        report = job.run_label(config, pipeline=pipeline, process_index=index, process_count=count,
                               config_header=header)
    except (OutputDirError, lock.LabelBusyError) as e:
        return _error(str(e))
    except (job.source.SourceError, build.PipelineBuildError) as e:
        return _error(str(e), 1)
    d = report.as_dict()
    repeated = f", {d['duplicate_ids']} repeated id(s) skipped" if d["duplicate_ids"] else ""
    print(f"[process {index}/{count}] {d['rows']} row(s) labelled ({d['failed']} with an error), "
          f"{d['skipped']} skipped{repeated}, {d['audio_hours']:.4f} h audio in {d['wall_s']:.1f} s", flush=True)
    if count > 1:
        _barrier("whisper_t5x_label_done")
    if index == 0:
        summary = job.write_summary(config.output_dir, count, time.perf_counter() - t0)
        run, out = summary["this_run"], summary["output"]
        rate = run["audio_hours_per_hour"]
        print(f"summary: this run {run['rows']} row(s) on {count} process(es), {run['failed']} with an error, "
              f"{run['audio_hours']:.4f} h audio, {rate:.1f} h/h; " if rate else
              f"summary: this run {run['rows']} row(s) on {count} process(es); ", end="")
        print(f"{config.output_dir} holds {out['rows']} row(s), {out['failed']} with an error"
              + (f", {out['kept']} kept" if "kept" in out else "")
              + (f" ({out['duplicate_rows']} further row(s) repeat a (split, id): counted once)"
                 if out.get("duplicate_rows") else ""), flush=True)
    return 0
