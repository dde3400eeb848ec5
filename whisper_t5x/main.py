"""Entry point of the ``whisper-t5x`` command; see :mod:`whisper_t5x.app.cli`.

``whisper-t5x transcribe PATHS... [flags]`` or ``python -m whisper_t5x.main ...``.
The flags and logic live in ``whisper_t5x.app.cli`` so that they are defined once,
whether this module runs as ``__main__`` or is imported. ``whisper-t5x train`` and
``whisper-t5x distill`` have their own flags (:mod:`whisper_t5x.app.train`).
"""

import sys
from typing import Optional, Sequence

from whisper_t5x.app.cli import FLAGS
from whisper_t5x.app.cli import main as _cli_main

__all__ = ["FLAGS", "main", "run"]

TRAIN_COMMANDS = ("train", "distill")


def main(argv: Optional[Sequence[str]] = None, pipeline=None) -> int:
    """Runs the command line ``argv`` (``sys.argv`` by default); returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] in TRAIN_COMMANDS:
        from whisper_t5x.app.train import main as train_main

        return int(train_main(argv[1], [argv[0]] + argv[2:]) or 0)
    return _cli_main(argv, pipeline)


def run() -> None:
    """Console-script entry point (``whisper-t5x``)."""
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
