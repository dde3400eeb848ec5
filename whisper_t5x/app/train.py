"""``whisper-t5x train`` and ``whisper-t5x distill``: flags, gin, processes, the run, the summary.

Examples::

  whisper-t5x train --dataset DATA --split train --eval_split validation --model tiny.en \\
      --output_dir OUT --max_steps 2000 --batch_size 16 --learning_rate 1e-5
  whisper-t5x distill --dataset DATA --labels LABELS --teacher base --student_decoder_layers 2 \\
      --output_dir OUT --gin_file hardware/tpu_v5e
  # the same command on each of N hosts (one mesh over every host's devices):
  whisper-t5x train ... --coordinator_address=10.0.0.1:1234 --num_processes=N --process_id=I

``configs/runs/finetune.gin`` (train) or ``configs/runs/distill.gin``
(distill) is parsed first, then ``--gin_file``\\ s, ``--gin_bindings`` /
``--gin.NAME=VALUE``, and last the flags (each the binding of one field of
:class:`~whisper_t5x.app.train_config.TrainConfig` or a section). The run
writes ``OUT/checkpoints/``, ``OUT/export/`` (a Hugging Face directory),
``OUT/metrics.jsonl``, ``OUT/tensorboard/`` and ``OUT/config.gin``; rerunning
the same command resumes from the latest checkpoint. argparse, not absl: the
transcribe command's absl flags (``--model``, ``--output_dir``...) live in the
global absl registry.

Exit status: 0 done, 1 the run failed, 2 usage / configuration / data errors
(reported before any step runs), 130 interrupted (a checkpoint was saved; the
same command resumes).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
from typing import List, Optional, Sequence

from whisper_t5x.app import distributed, gin_config, logs
from whisper_t5x.app.config import DTYPES
from whisper_t5x.text.tokenizer import TASKS

logger = logging.getLogger("whisper_t5x.app.train")

COMMANDS = ("train", "distill")
RUN_GIN = {"train": "runs/finetune.gin", "distill": "runs/distill.gin"}

# flag -> the field it binds (flags left at None were not given)
FLAG_FIELDS = {
    **{f: f"DataSection.{f}" for f in ("dataset", "dataset_config", "split", "eval_split", "audio_column",
                                        "text_column", "id_column", "labels", "language", "task", "seed",
                                        "max_train_rows", "max_eval_rows", "timestamp_probability",
                                        "prompt_probability", "spec_augment")},
    **{f: f"TrainConfig.{f}" for f in ("output_dir", "max_steps", "freeze_encoder", "eval_every", "save_every",
                                        "log_every", "scan_layers")},
    "model": "ModelSection.name",
    "dtype": "ModelSection.dtype",
    "batch_size": "PartitionSection.batch_size",
    "learning_rate": "OptimizerConfig.learning_rate",
    "warmup_steps": "OptimizerConfig.warmup_steps",
    "accumulation_steps": "OptimizerConfig.accumulation_steps",
}
DISTILL_FIELDS = {f: f"DistillSection.{f}" for f in ("teacher", "student_decoder_layers", "kl_weight", "ce_weight",
                                                      "temperature")}


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"whisper-t5x {command}",
        description=("Distil a teacher into a student with fewer decoder layers" if command == "distill" else
                     "Fine-tune a Whisper model") + " on a Hugging Face dataset; rerunning the same command "
        "resumes from OUT/checkpoints.")
    a = p.add_argument
    a("--dataset", help="hub id, local file or folder (Parquet/Arrow/JSON/CSV) or save_to_disk folder")
    a("--dataset_config", help="dataset configuration name")
    a("--split", help="training split (default train)")
    a("--eval_split", help="split evaluated (loss and WER) every --eval_every steps and at the end")
    a("--audio_column", help="audio column (default audio)")
    a("--text_column", help="target text column (default text)")
    a("--id_column", help="row id column, joins rows to --labels (default id)")
    a("--labels", help="a `whisper-t5x label` output directory: its pseudo-labels (keep true) are the targets")
    a("--language", help="the targets' language where rows carry none")
    a("--task", choices=list(TASKS), help="transcribe (default) or translate")
    a("--model", help="model to train (name or checkpoint)" + ("; distill: a ready student instead of "
                                                               "--student_decoder_layers" if command == "distill"
                                                               else ""))
    a("--output_dir", help="checkpoints/, export/, metrics.jsonl, tensorboard/, config.gin")
    a("--max_steps", type=int, help="updates in total")
    a("--batch_size", type=int, help="rows per global batch (a multiple of the data axis)")
    a("--learning_rate", type=float, help="peak learning rate")
    a("--warmup_steps", type=int, help="linear warmup steps")
    a("--accumulation_steps", type=int, help="microbatches per update")
    a("--freeze_encoder", type=_bool, nargs="?", const=True, help="train the decoder only")
    a("--dtype", choices=list(DTYPES), help="compute dtype (parameters stay float32)")
    a("--scan_layers", type=_bool, nargs="?", const=True, help="scan the layers (large models)")
    a("--eval_every", type=int, help="evaluate every N steps")
    a("--save_every", type=int, help="checkpoint every N steps")
    a("--log_every", type=int, help="metrics every N steps")
    a("--seed", type=int, help="data order seed")
    a("--max_train_rows", type=int, help="use at most this many training rows")
    a("--max_eval_rows", type=int, help="evaluate at most this many rows")
    a("--timestamp_probability", type=float, help="chance a row with segment times trains with timestamps")
    a("--prompt_probability", type=float, help="chance a row trains with its previous text as prompt")
    a("--spec_augment", type=_bool, nargs="?", const=True, help="SpecAugment the training features")
    if command == "distill":
        a("--teacher", help="the teacher model (name or checkpoint)")
        a("--student_decoder_layers", type=int, help="decoder layers the student keeps (maximally spaced)")
        a("--kl_weight", type=float, help="weight of T^2 * KL(teacher || student) (default 1.0)")
        a("--ce_weight", type=float, help="weight of the cross-entropy on the labels (default 0.8)")
        a("--temperature", type=float, help="distillation temperature T (default 2.0)")
    a("--export_only", action="store_true", help="write OUT/export from the latest checkpoint and stop")
    a("--gin_file", action="append", default=[], help=f"gin file(s), in order (after {RUN_GIN[command]})")
    a("--gin_bindings", action="append", default=[], help="gin binding(s); also --gin.NAME=VALUE")
    a("--gin_search_paths", action="append", default=[], help="extra gin search directories")
    a("--coordinator_address", help="host:port of process 0 (multi-host)")
    a("--num_processes", type=int, help="number of processes (multi-host)")
    a("--process_id", type=int, help="this process's index (multi-host)")
    a("--distributed", choices=list(distributed.MODES), default="auto", help="jax.distributed.initialize policy")
    a("--initialization_timeout", type=int, help="seconds to wait for every process to join")
    a("--quiet", action="store_true", help="warnings and the summary only")
    return p


def _error(command: str, msg: str, code: int = 2) -> int:
    print(f"whisper-t5x {command}: error: {msg}", file=sys.stderr)
    return code


def _bindings(command: str, args: argparse.Namespace) -> List[str]:
    fields = dict(FLAG_FIELDS, **(DISTILL_FIELDS if command == "distill" else {}))
    out = [gin_config.flag_binding(target, getattr(args, f)) for f, target in fields.items()
           if getattr(args, f, None) is not None]
    if command == "distill" and args.model is not None and args.student_decoder_layers is None:
        out.append(gin_config.flag_binding("DistillSection.student_decoder_layers", None))  # --model is the student
    return out


def main(command: str, argv: Optional[Sequence[str]] = None) -> int:
    """``whisper-t5x <command>`` with ``argv`` = ``[prog, flags...]``; returns the exit status."""
    from whisper_t5x.app import train_config  # registers TrainConfig and its sections with gin

    if command not in COMMANDS:
        return _error("train", f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    argv = list(sys.argv if argv is None else argv)
    original = [argv[0], command] + argv[1:]
    try:
        args = build_parser(command).parse_args(gin_config.rewrite_gin_args(argv[1:]))
    except gin_config.GinConfigError as e:
        return _error(command, str(e))
    logs.setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        resolved = gin_config.parse_gin([RUN_GIN[command]] + list(args.gin_file), args.gin_bindings,
                                        args.gin_search_paths, _bindings(command, args))
        config = train_config.make_train_config()
    except gin_config.GinConfigError as e:
        return _error(command, f"invalid configuration: {e}")
    if command == "distill" and config.distill is None:
        return _error(command, "distill needs a DistillSection (configs/runs/distill.gin binds "
                      "TrainConfig.distill = @DistillSection())")
    try:
        index, count = distributed.initialize_distributed(args.coordinator_address, args.num_processes,
                                                          args.process_id, args.distributed,
                                                          args.initialization_timeout)
    except Exception as e:  # noqa: BLE001
        return _error(command, f"jax.distributed.initialize failed: {type(e).__name__}: {e}", 1)
    header = "\n".join([
        f"Operative configuration of a whisper-t5x {command} run.",
        f"command: {shlex.join(original)}",
        f"gin files: {', '.join(resolved)}",
        f"processes: {count}",
        f"written: {datetime.datetime.now().isoformat(timespec='seconds')}",
    ])
    from whisper_t5x.app import train_job

    try:
        result = train_job.run_training(config, process_index=index, process_count=count, config_header=header,
                                        export_only=args.export_only)
    except train_job.SETUP_ERRORS as e:
        return _error(command, f"{type(e).__name__}: {e}")
    if index == 0:
        if result.interrupted:
            print(f"interrupted at step {result.step}: checkpoint saved in {config.output_dir}/checkpoints; "
                  "run the same command again to resume", flush=True)
            return 130
        parts = [f"step {result.step}"]
        if result.last_train.get("loss") is not None:
            parts.append(f"train loss {result.last_train['loss']:.4f}")
        if result.last_eval.get("wer") is not None:
            parts.append(f"eval WER {100 * result.last_eval['wer']:.2f}%")
        if result.export_dir:
            parts.append(f"exported to {result.export_dir}")
        print(f"{command}: " + ", ".join(parts), flush=True)
    return 130 if result.interrupted else 0
