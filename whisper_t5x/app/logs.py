"""The commands' log output: one stderr handler on the ``whisper_t5x`` logger, added once."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(level: int = logging.INFO, fmt: str = "%(asctime)s %(levelname).1s %(message)s") -> None:
    """Sets the ``whisper_t5x`` logger's level and gives it a stderr handler (once per process)."""
    log = logging.getLogger("whisper_t5x")
    log.setLevel(level)
    if not any(getattr(h, "_whisper_t5x", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
        h._whisper_t5x = True  # type: ignore[attr-defined]
        log.addHandler(h)
        log.propagate = False
