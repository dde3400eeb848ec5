"""JAX's persistent compilation cache, on by default for the pipeline.

Compiling Whisper's generate loop takes seconds to minutes (more for large
checkpoints and on TPU); with the persistent cache a second process reuses
the compiled programs from disk.

Where: ``$WHISPER_T5X_CACHE`` if set, else ``$XDG_CACHE_HOME/whisper_t5x/jax``
(``~/.cache/whisper_t5x/jax``). Off: ``WHISPER_T5X_CACHE=off`` (or ``0`` /
``false`` / ``none`` / empty), ``WHISPER_T5X_DISABLE_COMPILE_CACHE=1``, or
``enable_compile_cache(enabled=False)`` / ``FlaxWhisperPipeline(...,
compile_cache=False)``. A cache directory the user already configured through
``jax.config`` (``jax_compilation_cache_dir``) is kept unless a directory is
passed explicitly.

The traced programs themselves are kept beside it (``<dir>/programs``, see
:mod:`whisper_t5x.program_cache`), so a fresh process skips Python tracing
too; the same switches turn them off (or ``WHISPER_T5X_PROGRAM_CACHE=off``
alone).

The cache is trusted code: do not point it at a directory others can write.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional, Union

logger = logging.getLogger(__name__)

ENV_DIR = "WHISPER_T5X_CACHE"
ENV_DISABLE = "WHISPER_T5X_DISABLE_COMPILE_CACHE"
_OFF = {"", "0", "off", "false", "no", "none", "disable", "disabled"}

__all__ = ["ENV_DIR", "ENV_DISABLE", "default_cache_dir", "enable_compile_cache", "compile_cache_dir", "env_disabled",
           "Timer"]


def env_disabled() -> bool:
    """True when the environment turns the caches off (``WHISPER_T5X_CACHE=off`` or
    ``WHISPER_T5X_DISABLE_COMPILE_CACHE=1``)."""
    if os.environ.get(ENV_DISABLE, "").strip().lower() not in _OFF:
        return True
    return ENV_DIR in os.environ and os.environ[ENV_DIR].strip().lower() in _OFF


def default_cache_dir() -> str:
    """``$WHISPER_T5X_CACHE`` or ``$XDG_CACHE_HOME/whisper_t5x/jax`` (``~/.cache/whisper_t5x/jax``)."""
    env = os.environ.get(ENV_DIR, "").strip()
    if env and env.lower() not in _OFF:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper_t5x", "jax")


def compile_cache_dir() -> Optional[str]:
    """The directory JAX's persistent cache currently uses (None: off)."""
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def enable_compile_cache(
    directory: Union[None, str, os.PathLike] = None,
    enabled: Optional[bool] = None,
    min_compile_time_secs: float = 0.1,
) -> Optional[str]:
    """Turn on JAX's persistent compilation cache; returns its directory, or None when off.

    ``enabled=None`` follows the environment (on unless disabled there);
    ``enabled=True`` overrides an environment opt-out; ``False`` changes
    nothing. Programs that compile faster than ``min_compile_time_secs`` are
    not written (0.1 s: a fresh process loads the small programs too, e.g. the
    engine's slot allocation, instead of compiling them again; only eager
    one-op programs are left out). Failures (e.g. an unwritable directory) log a warning and
    leave the cache off: the cache is an optimisation, never an error.
    """
    import jax

    if enabled is False or (enabled is None and env_disabled()):
        logger.debug("persistent compilation cache disabled")
        return None
    current = jax.config.jax_compilation_cache_dir
    if directory is None and current:
        return current  # configured by the user: theirs wins
    path = os.path.abspath(os.path.expanduser(os.fspath(directory))) if directory is not None else default_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logger.warning("cannot create compilation cache directory %s (%s); compiling without it", path, e)
        return None
    try:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
        if current and current != path:
            # The cache object is created once per process; make it pick up the new directory.
            from jax.experimental.compilation_cache import compilation_cache

            compilation_cache.reset_cache()
    except Exception as e:  # noqa: BLE001 - never fail a transcription over the cache
        logger.warning("could not enable the JAX compilation cache at %s: %s", path, e)
        return None
    logger.info("JAX persistent compilation cache: %s", path)
    return path


class Timer:
    """``with Timer() as t: ...; t.seconds`` (wall clock)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
