"""``CachedProgram``: a jitted function through exported programs and compiled executables on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import threading
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from whisper_t5x.program_cache import files, keys, recent

logger = logging.getLogger("whisper_t5x.program_cache")


@dataclasses.dataclass
class _Stats:
    exported: int = 0  # programs traced and written this process
    loaded: int = 0  # programs read from files (exported StableHLO, then lowered and compiled or found in the
    # compile cache)
    executables: int = 0  # programs read as compiled executables (no lowering, no compile-cache lookup)
    prefetched: int = 0  # of which loaded ahead by prefetch()
    bypassed: int = 0  # calls that went to the traced function (off, sharded, failed)
    failures: int = 0  # export / load problems (each logged)


class CachedProgram:
    """``fn`` (a ``jax.jit``-wrapped function of positional array pytrees) through exported programs.

    ``name`` names the files (``<name>-<hash>.jaxexport``); ``key`` is anything with a stable ``repr``
    that identifies what ``fn`` computes besides its arguments' shapes (model config, dtype, static
    options). Calls with the same argument signature reuse one program. ``donate_argnums``: the
    positional arguments ``fn`` donates (as given to its ``jax.jit``); the exported program donates
    the same buffers.
    """

    def __init__(self, fn: Callable, name: str, key: Hashable = (), donate_argnums: Sequence[int] = ()):
        self.fn = fn
        self.donate_argnums = tuple(int(i) for i in donate_argnums)
        self.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "program"
        self.key_text = repr(key)
        self._programs: Dict[Tuple[str, str], Callable] = {}
        self._broken = False
        self._lock = threading.Lock()  # one export / read per signature when threads share the program
        self.stats = _Stats()

    def __call__(self, *args: Any) -> Any:
        directory = keys.program_cache_dir()
        if directory is None or self._broken:
            self.stats.bypassed += 1
            return self.fn(*args)
        signature, leaves = keys.signature(args)
        if signature is None:
            self.stats.bypassed += 1
            return self.fn(*args)
        program = self._programs.get((directory, signature))
        if program is None:
            with self._lock:
                program = self._programs.get((directory, signature))
                if program is None and not self._broken:
                    program = self._load_or_export(directory, signature, args)
                    if program is not None:
                        self._programs[(directory, signature)] = program
            if program is None:
                self.stats.bypassed += 1
                return self.fn(*args)
        return program(*leaves)

    def key_for(self, signature: str) -> str:
        return json.dumps({"name": self.name, "key": self.key_text, "signature": signature,
                           "environment": dict(keys.environment())}, sort_keys=True)

    def path_for(self, directory: str, key_text: str) -> str:
        return os.path.join(directory, f"{self.name}-{hashlib.sha256(key_text.encode()).hexdigest()[:32]}{files.SUFFIX}")

    def _load_or_export(self, directory: str, signature: str, args: Tuple[Any, ...]) -> Optional[Callable]:
        key_text = self.key_for(signature)
        path = self.path_for(directory, key_text)
        executable_path = path[: -len(files.SUFFIX)] + files.EXECUTABLE_SUFFIX
        use_executables = keys.executables_enabled() and keys.on_default_device(args)
        if use_executables and os.path.exists(executable_path):
            try:
                compiled = recent.take_prefetched(executable_path, key_text)
                if compiled is not None:
                    self.stats.prefetched += 1
                else:
                    compiled = self._read_executable(executable_path, key_text)
                self.stats.executables += 1
                recent.note_used(executable_path)
                return _FirstCallGuard(compiled, lambda: self._fallback(path, key_text, args), executable_path)
            except Exception as e:  # noqa: BLE001 - a bad file is ignored, never fatal
                self.stats.failures += 1
                logger.warning("ignoring program cache file %s (%s: %s)", executable_path, type(e).__name__, e)
        exported = self._exported(path, key_text, args)
        if exported is None:
            return None
        jitted = self._jit(exported, args)
        if not use_executables:
            return jitted
        import jax

        hits = _compile_cache_hits()
        try:
            with _aot_lock:
                before = hits[0]
                compiled = jitted.lower(*jax.tree_util.tree_leaves(args)).compile()
                from_disk = hits[0] != before
        except Exception as e:  # noqa: BLE001 - the jitted call will report any real problem
            logger.debug("program %s: no ahead-of-time compile (%s)", self.name, e)
            return jitted
        if from_disk:
            # An executable read from JAX's compile cache serializes without its kernels (jaxlib 0.10:
            # "Function ... not found" when the copy runs), so only freshly compiled ones are kept.
            logger.debug("program %s came from the compile cache; its executable is not kept", self.name)
        else:
            self._write_executable(executable_path, key_text, compiled)
            recent.note_used(executable_path)
        return compiled

    def _fallback(self, path: str, key_text: str, args: Tuple[Any, ...]) -> Callable:
        """The exported program, jitted: what replaces an executable that fails its first call."""
        self.stats.failures += 1
        exported = self._exported(path, key_text, args)
        return self.fn if exported is None else self._jit(exported, args)

    def _exported(self, path: str, key_text: str, args: Tuple[Any, ...]) -> Any:
        """The program's ``Exported``: read from ``path``, or traced, exported and written there."""
        import jax

        if os.path.exists(path):
            try:
                exported = self._read(path, key_text)
                self.stats.loaded += 1
                logger.debug("program %s from %s", self.name, path)
                return exported
            except Exception as e:  # noqa: BLE001 - a bad file is ignored, never fatal
                self.stats.failures += 1
                logger.warning("ignoring program cache file %s (%s: %s); tracing again", path, type(e).__name__, e)
        try:
            # Exported over the flat leaves: the input structure (custom pytree nodes included) is part
            # of the key and never needs serializing; outputs keep theirs (namedtuples registered).
            leaves, in_tree = jax.tree_util.tree_flatten(args)
            fn = self.fn
            flat = jax.jit(lambda *xs: fn(*jax.tree_util.tree_unflatten(in_tree, xs)))
            exported = jax.export.export(flat)(*leaves)
            outputs = [files.serialized_name(c) for c in files.namedtuple_types(exported.out_tree)]
            for cls in files.namedtuple_types(exported.out_tree):
                files.register_namedtuple(cls)
            payload = bytes(exported.serialize())
        except Exception as e:  # noqa: BLE001 - e.g. host callbacks: keep tracing, as without the cache
            self.stats.failures += 1
            self._broken = True
            logger.warning("program %s cannot be exported (%s: %s); it is traced in every process",
                           self.name, type(e).__name__, e)
            return None
        self._write(path, files.pack(key_text, outputs, payload))
        self.stats.exported += 1
        # Use the deserialized program, as a later process will: both lower the same module, so the
        # compile cache entry written now is the one a later process finds.
        return jax.export.deserialize(bytearray(payload))

    @staticmethod
    def _read_executable(path: str, key_text: Optional[str]) -> Any:
        return files.load_executable(path, key_text)[1]

    def _write_executable(self, path: str, key_text: str, compiled: Any) -> None:
        from jax.experimental import serialize_executable

        try:
            payload = pickle.dumps(serialize_executable.serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - not every backend serializes executables
            logger.debug("program %s: executable not serializable (%s)", self.name, e)
            return
        self._write(path, files.pack(key_text, [], payload))

    def _jit(self, exported: Any, args: Tuple[Any, ...]) -> Callable:
        import jax

        if not self.donate_argnums:
            return jax.jit(exported.call)
        donated, start = [], 0
        for position, arg in enumerate(args):
            count = len(jax.tree_util.tree_leaves(arg))
            if position in self.donate_argnums:
                donated.extend(range(start, start + count))
            start += count
        return jax.jit(exported.call, donate_argnums=tuple(donated))

    @staticmethod
    def _read(path: str, key_text: str) -> Any:
        import jax

        with open(path, "rb") as f:
            blob = f.read()
        files.touch(path)
        outputs, payload = files.unpack(blob, key_text)
        for name in outputs:
            files.register_namedtuple(files.import_namedtuple(name))
        return jax.export.deserialize(bytearray(payload))

    def _write(self, path: str, blob: bytes) -> None:
        files.write_blob(path, blob)


class _FirstCallGuard:
    """A loaded executable whose first call, if it fails, deletes its file and runs ``fallback()`` (the
    program compiled the ordinary way) instead: an executable that loads but cannot run (one missing a
    kernel) costs one retry, never a failed transcription. The first call waits for its outputs."""

    def __init__(self, compiled: Any, fallback: Callable[[], Callable], path: str):
        self._compiled, self._fallback, self._path = compiled, fallback, path
        self._checked = False

    def __call__(self, *leaves: Any) -> Any:
        if self._checked:
            return self._compiled(*leaves)
        import jax

        try:
            out = jax.block_until_ready(self._compiled(*leaves))
        except Exception as e:  # noqa: BLE001 - any failure of a cached executable: compile the program instead
            logger.warning("program cache file %s failed to run (%s: %s); removed, compiling the program",
                           self._path, type(e).__name__, e)
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._compiled = self._fallback()
            out = self._compiled(*leaves)
        self._checked, self._fallback = True, None  # the fallback holds the first call's arguments
        return out


_aot_lock = threading.Lock()
_hits: List[int] = []


def _compile_cache_hits() -> List[int]:
    """A one-element list counting JAX's persistent compile cache hits in this process."""
    if not _hits:
        from jax import monitoring

        _hits.append(0)

        def count(event: str, **_: Any) -> None:
            if event == "/jax/compilation_cache/cache_hits":
                _hits[0] += 1

        monitoring.register_event_listener(count)
    return _hits


def cached_program(fn: Callable, name: str, key: Hashable = (), donate_argnums: Sequence[int] = ()) -> CachedProgram:
    """``fn`` (jitted) wrapped in a :class:`CachedProgram`; see the module docstring."""
    return CachedProgram(fn, name, key, donate_argnums)
