"""Traced programs kept on disk (``jax.export``), so a fresh process skips tracing.

JAX's persistent compilation cache (:mod:`whisper_t5x.compile_cache`) saves
the XLA compile, but a fresh process still traces the Python function to a
jaxpr and lowers it to StableHLO before it can look the compiled program up:
for Whisper's decode loop that is the larger part of a warm start. A
:class:`CachedProgram` wraps a jitted function; the first call with a given
argument signature exports it (``jax.export.export``) and writes the
serialized StableHLO to a file; a later process deserializes that file and
calls ``jax.jit(exported.call)``, which lowers in a fraction of the time and
hits the compile cache (the module it lowers is the same in every process,
so the compile cache entry written by the first process is found).

Keys. A file is used only when everything that could change the program
matches: the caller's ``key`` (for a model program: the model config, the
compute dtype and the static decode options), the argument signature (pytree
structure, shapes, dtypes, weak types), the jax / jaxlib / flax versions, the
backend, its platform version, device kind and count, ``jax_enable_x64``, and
a fingerprint of the source code of ``whisper_t5x`` and ``partitioning`` (an
edited model file never reuses an old program). The key text is stored in
the file and compared on load, so a file copied under another name is not
used either.

Executables. Where the arguments live on the default device, the program is
also, on request (``WHISPER_T5X_PROGRAM_CACHE=executables``), compiled ahead of time and the executable kept beside it
(``jax.experimental.serialize_executable``, ``.jaxexec``): a later process
loads that and skips the lowering and the compile-cache lookup as well. Its
key adds the host CPU's model and instruction-set flags and ``XLA_FLAGS``
(compiled CPU code is only valid where they match). It is read with pickle:
trusted input, exactly as JAX's compile cache is.

Off. Whenever the compile cache is off (``WHISPER_T5X_CACHE=off``,
``WHISPER_T5X_DISABLE_COMPILE_CACHE=1``, ``compile_cache=False`` of the
pipeline: ``compile_cache_dir()`` is None), and on its own with
``WHISPER_T5X_PROGRAM_CACHE=off``. Then the wrapped function is called as
it is. By default (or ``WHISPER_T5X_PROGRAM_CACHE=export``) the exported programs are kept but
no executables.

Left alone: calls from inside another trace, arguments placed on more than
one device (sharded programs go through the partitioner's own ``jit``), and
any function that export cannot handle (host callbacks, unregistered pytree
outputs, ...): a warning, then the traced function for the rest of the
process. A file that cannot be read, is corrupt, or holds another key is
ignored with a warning and rewritten.

The files live in ``<compile cache dir>/programs``; like the compile cache
they are trusted input: do not point them at a directory others can write.
Every edit of the sources keys new files, so the folder is kept under
``WHISPER_T5X_PROGRAM_CACHE_MB`` (default 2048): after a write, the least
recently used files go first (a read refreshes a file's time).
"""

from whisper_t5x.program_cache.files import EXECUTABLE_SUFFIX, SUFFIX, ProgramFileError
from whisper_t5x.program_cache.keys import ENV_MAX_MB, ENV_PROGRAMS, code_fingerprint, program_cache_dir
from whisper_t5x.program_cache.programs import CachedProgram, cached_program
from whisper_t5x.program_cache.recent import prefetch
from whisper_t5x.program_cache.shapes import cached_shapes

__all__ = ["ENV_MAX_MB", "ENV_PROGRAMS", "EXECUTABLE_SUFFIX", "SUFFIX", "CachedProgram", "ProgramFileError",
           "cached_program", "cached_shapes", "code_fingerprint", "prefetch", "program_cache_dir"]
