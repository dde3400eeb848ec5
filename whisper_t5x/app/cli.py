"""The ``whisper-t5x`` command (also ``python -m whisper_t5x.main``): flags and dispatch.

``whisper_t5x.main`` re-exports :func:`main` and :func:`run` from here, so the
absl flags are defined once even when ``whisper_t5x.main`` runs as
``__main__`` and is also imported.

Commands::

  whisper-t5x transcribe PATHS... [flags]   # files and/or directories
  whisper-t5x benchmark PATHS... [flags]    # transcribe with configs/runs/benchmark.gin first
  whisper-t5x serve [serving flags]         # handed to whisper_t5x.app.serving.main(argv)
  whisper-t5x label [label flags]           # a dataset to Parquet (whisper_t5x.app.label)
  whisper-t5x languages                     # the language codes and names --language takes

Every transcription setting is a field of ``TranscribeConfig`` or of one of
the sections it composes (``ModelSection``, ``PartitionSection``,
``DecodeSection``, ``GroupingSection``: ``whisper_t5x/app/config.py``) and can
come from gin files (``--gin_file``, applied in order), gin bindings
(``--gin_bindings='PartitionSection.batch_size = 8'`` or
``--gin.PartitionSection.batch_size=8``, applied after the files in command
line order) and the convenience flags below (applied last, each the binding
of one section field). The operative configuration is written to
``<output_dir>/config.gin``.

Examples::

  whisper-t5x transcribe samples/ --model tiny.en --output_format all --timestamps
  whisper-t5x transcribe talks/ --gin_file runs/transcribe --gin_file hardware/gpu \\
      --gin.PartitionSection.batch_size=32 --output_dir out
  # the same command on each of N hosts:
  whisper-t5x transcribe /data --coordinator_address=10.0.0.1:1234 --num_processes=N --process_id=I

Exit status: 0 when every file was transcribed or skipped, 1 when some failed
(listed at the end), 2 for usage / configuration errors (an unusable output
directory included), 130 when interrupted (Ctrl-C; what was written stays,
and the same command resumes).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import logging
import shlex
import sys
from typing import List, Optional, Sequence

from absl import flags

from whisper_t5x.app import build, distributed, file_job, gin_config, logs
from whisper_t5x.app.config import DTYPES, TranscribeConfig
from whisper_t5x.text.tokenizer import TASKS

FLAGS = flags.FLAGS
COMMANDS = ("transcribe", "benchmark", "serve")
SERVE_MODULES = ("fastapi", "uvicorn", "gradio")  # what the [serve] extra installs
SERVE_HINT = "pip install 'whisper_t5x[serve]' (or pip install -e '.[serve]' in a checkout)"

# Convenience flags -> section / TranscribeConfig fields (None: not given, gin decides).
flags.DEFINE_string("model", None, "Model name (base, tiny.en) or checkpoint path. Default: base.")
flags.DEFINE_enum("task", None, list(TASKS), "transcribe, or translate to English. Default: transcribe.")
flags.DEFINE_string("language", None, "Source language code (en, de, ...). Default: detected.")
flags.DEFINE_bool("timestamps", None, "Segment timestamps (srt/vtt/tsv cues). Default: off.")
flags.DEFINE_bool("word_timestamps", None, "Word-level timestamps (one cue per word; from the "
                  "cross-attention alignment). Default: off.")
flags.DEFINE_string("long_form", None, "A mode of the pipeline's LONG_FORM_MODES, e.g. chunked (batched "
                    "windows, stitched), sequential (OpenAI's algorithm, each window conditioned on the "
                    "previous text), vad (speech rows). Default: the pipeline's (auto: VAD rows; --timestamps "
                    "cut segments from the word alignment).")
flags.DEFINE_integer("batch_size", None, "Windows per forward pass. Default: the pipeline's.", lower_bound=1)
flags.DEFINE_enum("dtype", None, list(DTYPES), "Compute dtype. Default: float32.")
flags.DEFINE_enum("weights_dtype", None, ["float32", "int8", "int8_step", "bfloat16"], "Storage of the dense "
                  "kernels. int8: encoder, decoder and vocabulary projection W8A8 (faster on a CPU; int8_step: the "
                  "decoder step and vocabulary only); bfloat16: the decoder step and vocabulary. Default: float32.")
flags.DEFINE_float("chunk_length_s", None, "Long-form window length in seconds. Default: 30.")
flags.DEFINE_string("output_dir", None, "Output directory. Default: the working directory.")
flags.DEFINE_string("output_format", None, "txt, srt, vtt, json, tsv, a comma list, or all. Default: txt.")
flags.DEFINE_bool("overwrite", None, "Redo files whose outputs exist (default: skip them).")
flags.DEFINE_integer("group_size", None, "Files per pipeline call (bounds memory). Default: 16.", lower_bound=1)
# gin
flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order (search paths apply; "
                          "'.gin' and 'configs/' may be left out, e.g. hardware/cpu).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin binding(s), applied after the files. "
                          "Also --gin.NAME=VALUE.")
flags.DEFINE_list("gin_search_paths", [], "Extra directories searched for gin files and includes.")
# multi-host
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")
flags.DEFINE_enum("distributed", "auto", list(distributed.MODES),
                  "jax.distributed.initialize: auto (when a coordinator is given or on a multi-host "
                  "TPU slice), on (always; auto-detects what is not given), off.")
flags.DEFINE_integer("initialization_timeout", None, "Seconds to wait for all processes to join.")
flags.DEFINE_bool("quiet", False, "Only warnings and the summary.")

_FLAG_TO_FIELD = {
    "model": "ModelSection.name",
    "task": "DecodeSection.task",
    "language": "DecodeSection.language",
    "timestamps": "DecodeSection.timestamps",
    "word_timestamps": "DecodeSection.word_timestamps",
    "long_form": "DecodeSection.long_form",
    "batch_size": "PartitionSection.batch_size",
    "dtype": "ModelSection.dtype",
    "weights_dtype": "ModelSection.weights_dtype",
    "chunk_length_s": "DecodeSection.chunk_length_s",
    "output_dir": "TranscribeConfig.output_dir",
    "output_format": "TranscribeConfig.output_formats",
    "overwrite": "TranscribeConfig.overwrite",
    "group_size": "GroupingSection.group_size",
}

USAGE = """usage: whisper-t5x {transcribe,benchmark} PATHS... [flags]
       whisper-t5x serve [serving flags]
       whisper-t5x label [label flags]
       whisper-t5x languages

Transcribe audio files and directories with Whisper (JAX), writing
<output_dir>/<name>.<fmt> per file and format, and <output_dir>/config.gin.
"""


def _error(msg: str, code: int = 2) -> int:
    print(f"whisper-t5x: error: {msg}", file=sys.stderr)
    return code


def _help() -> str:
    ours = []
    for name in list(_FLAG_TO_FIELD) + ["gin_file", "gin_bindings", "gin_search_paths", "coordinator_address",
                                         "num_processes", "process_id", "distributed", "initialization_timeout",
                                         "quiet"]:
        f = FLAGS[name]
        ours.append(f"  --{name}: {f.help}")
    return USAGE + "\nflags:\n" + "\n".join(ours) + "\n"


def _missing_serve_module() -> Optional[str]:
    for name in SERVE_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def _serve(argv: Sequence[str]) -> int:
    """``whisper-t5x serve ...`` -> ``whisper_t5x.app.serving.main([prog, ...])``.

    Without the ``[serve]`` extra: a one-line hint instead of an import traceback.
    """
    missing = _missing_serve_module()
    if missing is not None:
        return _error(f"the 'serve' command needs the [serve] extra (module {missing!r} is not installed): {SERVE_HINT}")
    try:
        serving = importlib.import_module("whisper_t5x.app.serving")
        entry = getattr(serving, "main", None)
        if entry is None:
            return _error("whisper_t5x.app.serving has no main(argv) entry point")
        rc = entry([argv[0]] + list(argv[2:]))
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "whisper_t5x":
            raise
        return _error(f"the 'serve' command needs module {e.name!r}, which is not installed: {SERVE_HINT}")
    return int(rc or 0)


def languages_table() -> str:
    """``whisper-t5x languages``: one ``code  name`` line per language, in token order."""
    from whisper_t5x.text.languages import ALIASES, LANGUAGES

    lines = [f"{code:<4} {name}" for code, name in LANGUAGES.items()]
    aliases = ", ".join(f"{a} ({c})" for a, c in ALIASES.items())
    return ("\n".join(lines) + f"\n\n--language takes a code, an English name (any case) or a <|code|> token; "
            f"also: {aliases}.\n")


def _explicit_bindings() -> List[str]:
    out = []
    for flag, field in _FLAG_TO_FIELD.items():
        if FLAGS[flag].present and FLAGS[flag].value is not None:
            out.append(gin_config.flag_binding(field, FLAGS[flag].value))
    return out


def main(argv: Optional[Sequence[str]] = None, pipeline=None) -> int:
    """Runs the command line ``argv`` (``sys.argv`` by default); returns the exit status.

    ``pipeline``: a ready pipeline object to use instead of building one (tests).
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "serve":
        return _serve(argv)
    if len(argv) > 1 and argv[1] == "label":
        from whisper_t5x.app.label import main as label_main  # the dataset job has its own flags

        return int(label_main([argv[0]] + list(argv[2:])) or 0)
    if len(argv) > 1 and argv[1] == "languages":
        print(languages_table(), end="")
        return 0
    original = list(argv)
    if len(argv) < 2 or argv[1] == "help" or any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(_help(), end="")
        return 0 if len(argv) >= 2 else 2
    try:
        argv = gin_config.rewrite_gin_args(argv)
        FLAGS.unparse_flags()
        rest = FLAGS(argv)
    except (flags.Error, gin_config.GinConfigError) as e:
        return _error(f"{e}\n(see whisper-t5x --help)")
    command, paths = (rest[1], rest[2:]) if len(rest) > 1 else (None, [])
    if command not in COMMANDS:
        return _error(f"unknown command {command!r}; choose from {', '.join(COMMANDS + ('label', 'languages'))}")
    if not paths:
        return _error(f"'{command}' needs at least one audio file or directory")
    logs.setup_logging(logging.WARNING if FLAGS.quiet else logging.INFO)

    gin_files = list(FLAGS.gin_file)
    if command == "benchmark":
        gin_files.insert(0, "runs/benchmark.gin")
    try:
        resolved = gin_config.parse_gin(gin_files, FLAGS.gin_bindings, FLAGS.gin_search_paths,
                                        _explicit_bindings())
    except gin_config.GinConfigError as e:
        return _error(f"invalid gin configuration: {e}")

    try:
        index, count = distributed.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed,
            FLAGS.initialization_timeout,
        )
    except Exception as e:  # noqa: BLE001
        return _error(f"jax.distributed.initialize failed: {type(e).__name__}: {e}", 1)

    try:
        config = gin_config.make(TranscribeConfig)
    except gin_config.GinConfigError as e:
        return _error(f"invalid configuration: {e}")

    header = "\n".join([
        "Operative configuration of a whisper-t5x run.",
        f"command: {shlex.join(original)}",
        f"gin files: {', '.join(resolved) or '(none)'}",
        f"processes: {count}",
        f"written: {datetime.datetime.now().isoformat(timespec='seconds')}",
    ])
    try:
        report = file_job.run_transcribe(config, paths, pipeline=pipeline, process_index=index,
                                         process_count=count, config_header=header)
    except gin_config.GinConfigError as e:
        return _error(f"invalid configuration: {e}")
    except file_job.OutputDirError as e:
        return _error(str(e))
    except file_job.RunInterrupted as e:
        print(e.report.summary(), flush=True)
        file_job.print_failures(e.report)
        return _error("interrupted: the outputs written so far are kept; run the same command again to resume", 130)
    except (RuntimeError, build.PipelineBuildError) as e:
        return _error(str(e), 1)
    if report.planned == 0 and not report.failed and index == 0 and count == 1:
        return _error("no audio files found in " + ", ".join(paths))
    print(report.summary(), flush=True)
    if report.failed:
        file_job.print_failures(report)
        return 1
    return 0


def run() -> None:
    """Console-script entry point (``whisper-t5x``)."""
    sys.exit(main(sys.argv))
