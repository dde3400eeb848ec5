"""Entry point of the ``whisper-t5x`` command; see :mod:`whisper_t5x.app.cli`.

``whisper-t5x transcribe PATHS... [flags]`` or ``python -m whisper_t5x.main ...``.
The flags and logic live in ``whisper_t5x.app.cli`` so that they are defined once,
whether this module runs as ``__main__`` or is imported.
"""

from whisper_t5x.app.cli import FLAGS, main, run

__all__ = ["FLAGS", "main", "run"]

if __name__ == "__main__":
    run()
