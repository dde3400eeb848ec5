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
also compiled ahead of time and the executable kept beside it
(``jax.experimental.serialize_executable``, ``.jaxexec``): a later process
loads that and skips the lowering and the compile-cache lookup as well. Its
key adds the host CPU's model and instruction-set flags and ``XLA_FLAGS``
(compiled CPU code is only valid where they match). It is read with pickle:
trusted input, exactly as JAX's compile cache is.

Off. Whenever the compile cache is off (``WHISPER_T5X_CACHE=off``,
``WHISPER_T5X_DISABLE_COMPILE_CACHE=1``, ``compile_cache=False`` of the
pipeline: ``compile_cache_dir()`` is None), and on its own with
``WHISPER_T5X_PROGRAM_CACHE=off``. Then the wrapped function is called as
it is. ``WHISPER_T5X_PROGRAM_CACHE=export`` keeps the exported programs but
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

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import pickle
import platform
import tempfile
import threading
from collections.abc import Mapping
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from whisper_t5x import compile_cache

logger = logging.getLogger(__name__)

__all__ = ["ENV_PROGRAMS", "CachedProgram", "cached_program", "cached_shapes", "prefetch", "program_cache_dir",
           "code_fingerprint"]

ENV_PROGRAMS = "WHISPER_T5X_PROGRAM_CACHE"
ENV_MAX_MB = "WHISPER_T5X_PROGRAM_CACHE_MB"
DEFAULT_MAX_MB = 2048
_OFF = {"", "0", "off", "false", "no", "none", "disable", "disabled"}
FORMAT = 1
SUFFIX = ".jaxexport"
EXECUTABLE_SUFFIX = ".jaxexec"
_MAGIC = b"WT5XPROG"
_SOURCE_PACKAGES = ("whisper_t5x", "partitioning")
_lock = threading.Lock()
_registered_namedtuples: Dict[str, type] = {}


def program_cache_dir() -> Optional[str]:
    """Where exported programs are kept: ``<compile cache dir>/programs``; None when off."""
    if compile_cache.env_disabled() or os.environ.get(ENV_PROGRAMS, "x").strip().lower() in _OFF:
        return None
    base = compile_cache.compile_cache_dir()
    return None if not base else os.path.join(base, "programs")


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """sha256 of the Python sources of ``whisper_t5x`` and ``partitioning`` (path and content of each file)."""
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        root = os.path.dirname(os.path.abspath(module.__file__))
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).encode() + b"\0")
                    with open(path, "rb") as f:
                        digest.update(f.read())
                    digest.update(b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _environment() -> Tuple[Tuple[str, str], ...]:
    import jax
    import jaxlib

    try:
        import flax

        flax_version = flax.__version__
    except ImportError:  # pragma: no cover - flax is a dependency
        flax_version = "none"
    devices = jax.devices()
    return (
        ("format", str(FORMAT)),
        ("jax", jax.__version__),
        ("jaxlib", jaxlib.__version__),
        ("flax", flax_version),
        ("backend", jax.default_backend()),
        ("platform_version", str(getattr(devices[0].client, "platform_version", ""))),
        ("device_kind", devices[0].device_kind),
        ("device_count", str(len(devices))),
        ("x64", str(bool(jax.config.jax_enable_x64))),
        ("xla_flags", os.environ.get("XLA_FLAGS", "")),
        ("host_cpu", _host_cpu()),
        ("code", code_fingerprint()),
    )


def _host_cpu() -> str:
    """The host CPU's model and instruction-set flags (compiled CPU code is only valid where they match)."""
    found = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "flags", "Features", "CPU implementer", "CPU part") and name not in found:
                    found[name] = " ".join(sorted(value.split()))
                if not line.strip() and found:
                    break
    except OSError:
        pass
    text = json.dumps(found, sort_keys=True) if found else f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _signature(args: Tuple[Any, ...]) -> Tuple[Optional[str], List[Any]]:
    """The arguments' leaves, and their pytree structure and avals as text (None when some argument spans
    several devices)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(args)
    parts = [str(treedef)]
    for x in leaves:
        if isinstance(x, jax.core.Tracer):  # called inside another trace: the outer program owns it
            return None, leaves
        sharding = getattr(x, "sharding", None)
        if sharding is not None and len(sharding.device_set) > 1:
            return None, leaves
        aval = jax.typeof(x)
        parts.append(f"{aval.dtype}{list(aval.shape)}{'~' if getattr(aval, 'weak_type', False) else ''}")
    return "|".join(parts), leaves


def _executables_enabled() -> bool:
    return os.environ.get(ENV_PROGRAMS, "").strip().lower() != "export"


def _on_default_device(args: Tuple[Any, ...]) -> bool:
    """Every array argument on the default device (or on the host): a compiled executable is tied to it."""
    import jax

    default = jax.devices()[0]
    for x in jax.tree_util.tree_leaves(args):
        sharding = getattr(x, "sharding", None)
        if sharding is not None and sharding.device_set != {default}:
            return False
    return True


def _namedtuple_types(treedef: Any) -> List[type]:
    """Every namedtuple class among the nodes of ``treedef`` (output trees to register for serialization)."""
    found, stack = [], [treedef]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None:
            cls = data[0]
            if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields") and cls not in found:
                found.append(cls)
        stack.extend(node.children())
    return found


def _serialized_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _register_namedtuple(cls: type) -> None:
    import jax

    name = _serialized_name(cls)
    with _lock:
        if _registered_namedtuples.get(name) is cls:
            return
        try:
            jax.export.register_namedtuple_serialization(cls, serialized_name=name)
        except ValueError:
            pass  # registered already (by us earlier, or by its owner)
        _registered_namedtuples[name] = cls


def _import_namedtuple(name: str) -> type:
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise TypeError(f"{name} is not a namedtuple class")
    return obj


def _touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _evict(directory: str, keep: str) -> None:
    """Delete the least recently used files until the folder is under its size limit (never ``keep``)."""
    try:
        limit = float(os.environ.get(ENV_MAX_MB, DEFAULT_MAX_MB)) * 2**20
    except ValueError:
        limit = DEFAULT_MAX_MB * 2**20
    try:
        entries = []
        with os.scandir(directory) as it:
            for entry in it:
                if entry.is_file() and not entry.name.startswith("."):
                    st = entry.stat()
                    entries.append((st.st_mtime, st.st_size, entry.path))
    except OSError:
        return
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if path == keep:
            continue
        try:
            os.unlink(path)
            total -= size
        except OSError:
            pass


class ProgramFileError(ValueError):
    """A program file that is not ours, is truncated, or holds another key."""


def _pack(key_text: str, outputs: List[str], payload: bytes) -> bytes:
    header = json.dumps({"key": key_text, "namedtuples": outputs}, sort_keys=True).encode()
    return _MAGIC + len(header).to_bytes(8, "little") + header + payload


def _unpack(blob: bytes, key_text: str) -> Tuple[List[str], bytes]:
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 8:
        raise ProgramFileError("not a whisper_t5x program file")
    size = int.from_bytes(blob[len(_MAGIC):len(_MAGIC) + 8], "little")
    start = len(_MAGIC) + 8
    if size <= 0 or start + size > len(blob):
        raise ProgramFileError("truncated header")
    try:
        header = json.loads(blob[start:start + size].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProgramFileError(f"unreadable header ({e})") from None
    if not isinstance(header, dict) or header.get("key") != key_text:
        raise ProgramFileError("written for another program (its key differs)")
    return list(header.get("namedtuples", [])), blob[start + size:]


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
        directory = program_cache_dir()
        if directory is None or self._broken:
            self.stats.bypassed += 1
            return self.fn(*args)
        signature, leaves = _signature(args)
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
                           "environment": dict(_environment())}, sort_keys=True)

    def path_for(self, directory: str, key_text: str) -> str:
        return os.path.join(directory, f"{self.name}-{hashlib.sha256(key_text.encode()).hexdigest()[:32]}{SUFFIX}")

    def _load_or_export(self, directory: str, signature: str, args: Tuple[Any, ...]) -> Optional[Callable]:
        key_text = self.key_for(signature)
        path = self.path_for(directory, key_text)
        executable_path = path[: -len(SUFFIX)] + EXECUTABLE_SUFFIX
        use_executables = _executables_enabled() and _on_default_device(args)
        if use_executables and os.path.exists(executable_path):
            try:
                compiled = _take_prefetched(executable_path, key_text)
                if compiled is not None:
                    self.stats.prefetched += 1
                else:
                    compiled = self._read_executable(executable_path, key_text)
                self.stats.executables += 1
                _note_used(executable_path)
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
            _note_used(executable_path)
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
            outputs = [_serialized_name(c) for c in _namedtuple_types(exported.out_tree)]
            for cls in _namedtuple_types(exported.out_tree):
                _register_namedtuple(cls)
            payload = bytes(exported.serialize())
        except Exception as e:  # noqa: BLE001 - e.g. host callbacks: keep tracing, as without the cache
            self.stats.failures += 1
            self._broken = True
            logger.warning("program %s cannot be exported (%s: %s); it is traced in every process",
                           self.name, type(e).__name__, e)
            return None
        self._write(path, _pack(key_text, outputs, payload))
        self.stats.exported += 1
        # Use the deserialized program, as a later process will: both lower the same module, so the
        # compile cache entry written now is the one a later process finds.
        return jax.export.deserialize(bytearray(payload))

    @staticmethod
    def _read_executable(path: str, key_text: Optional[str]) -> Any:
        return _load_executable(path, key_text)[1]

    def _write_executable(self, path: str, key_text: str, compiled: Any) -> None:
        from jax.experimental import serialize_executable

        try:
            payload = pickle.dumps(serialize_executable.serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - not every backend serializes executables
            logger.debug("program %s: executable not serializable (%s)", self.name, e)
            return
        self._write(path, _pack(key_text, [], payload))

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
        _touch(path)
        outputs, payload = _unpack(blob, key_text)
        for name in outputs:
            _register_namedtuple(_import_namedtuple(name))
        return jax.export.deserialize(bytearray(payload))

    def _write(self, path: str, blob: bytes) -> None:
        self._write_blob(path, blob)

    @staticmethod
    def _write_blob(path: str, blob: bytes) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            logger.warning("cannot write program cache file %s (%s); continuing without it", path, e)
            return
        _evict(os.path.dirname(path), keep=path)


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


# ---------------------------------------------------------------------- prefetch
# A job names itself with a tag (model, dtype, batch); the executables a process with that tag used are
# listed in <programs>/recent.json at exit, and the next process with the tag loads them on a background
# thread while it loads its model. A listed file is used only if its stored key matches the one the
# program computes when it is called: a stale list costs a background load, never a wrong program.
_RECENT = "recent.json"
_MAX_RECENT = 16
_prefetch_lock = threading.Lock()
_prefetched: Dict[str, Any] = {}  # executable path -> Future of (stored key text, Compiled)
_session: Dict[str, Any] = {}  # "tag", "directory", "used" (executable names in the order of first use)


def _load_executable(path: str, key_text: Optional[str]) -> Tuple[str, Any]:
    """(stored key text, loaded executable) of ``path``; ``key_text`` None: any key (checked later)."""
    import jax
    from jax.experimental import serialize_executable

    with open(path, "rb") as f:
        blob = f.read()
    stored = _stored_key(blob)
    _, payload = _unpack(blob, stored if key_text is None else key_text)
    _touch(path)
    executable, in_tree, out_tree = pickle.loads(payload)  # trusted, as the compile cache is
    return stored, serialize_executable.deserialize_and_load(executable, in_tree, out_tree,
                                                             execution_devices=[jax.devices()[0]])


def _stored_key(blob: bytes) -> str:
    try:
        size = int.from_bytes(blob[len(_MAGIC):len(_MAGIC) + 8], "little")
        return json.loads(blob[len(_MAGIC) + 8:len(_MAGIC) + 8 + size].decode())["key"]
    except Exception as e:  # noqa: BLE001
        raise ProgramFileError(f"unreadable header ({e})") from None


def _take_prefetched(path: str, key_text: str) -> Any:
    with _prefetch_lock:
        future = _prefetched.pop(path, None)
    if future is None:
        return None
    try:
        stored, compiled = future.result()
    except Exception as e:  # noqa: BLE001 - read it again in the caller, which reports problems
        logger.debug("prefetch of %s failed: %s", path, e)
        return None
    return compiled if stored == key_text else None


def _note_used(path: str) -> None:
    with _prefetch_lock:
        used = _session.get("used")
        name = os.path.basename(path)
        if used is not None and os.path.dirname(path) == _session.get("directory") and name not in used:
            used.append(name)


def _read_recent(directory: str) -> Dict[str, List[str]]:
    try:
        with open(os.path.join(directory, _RECENT), encoding="utf-8") as f:
            recent = json.load(f)
        return recent if isinstance(recent, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_session() -> None:
    with _prefetch_lock:
        tag, directory, used = _session.get("tag"), _session.get("directory"), list(_session.get("used") or ())
    if not tag or not directory or not used:
        return
    recent = _read_recent(directory)
    if recent.get(tag) == used[:_MAX_RECENT]:
        return
    recent[tag] = used[:_MAX_RECENT]
    CachedProgram._write_blob(os.path.join(directory, _RECENT), json.dumps(recent, indent=1).encode())


def prefetch(tag: str) -> int:
    """Start loading, on a background thread, the executables the last process tagged ``tag`` used, and
    record this process's under ``tag`` at exit. Returns how many are being loaded (0 when the cache is
    off or nothing is known). Call it before the slow part of start-up (loading the model)."""
    import atexit
    import concurrent.futures

    directory = program_cache_dir()
    if directory is None or not _executables_enabled():
        return 0
    with _prefetch_lock:
        first = not _session
        _session.update(tag=str(tag), directory=directory, used=[])
    if first:
        atexit.register(_save_session)
    paths = [os.path.join(directory, n) for n in _read_recent(directory).get(str(tag), [])
             if isinstance(n, str) and os.sep not in n and n.endswith(EXECUTABLE_SUFFIX)]
    paths = [p for p in paths if os.path.exists(p) and p not in _prefetched]
    if not paths:
        return 0
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="program-prefetch")
    with _prefetch_lock:
        for path in paths:
            _prefetched[path] = pool.submit(_load_executable, path, None)
    pool.shutdown(wait=False)
    return len(paths)


def cached_program(fn: Callable, name: str, key: Hashable = (), donate_argnums: Sequence[int] = ()) -> CachedProgram:
    """``fn`` (jitted) wrapped in a :class:`CachedProgram`; see the module docstring."""
    return CachedProgram(fn, name, key, donate_argnums)


# ---------------------------------------------------------------------- abstract shapes
def _shapes_to_json(tree: Any) -> Any:
    import jax

    if isinstance(tree, Mapping):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("only string keys")
        return {k: _shapes_to_json(v) for k, v in tree.items()}
    if isinstance(tree, jax.ShapeDtypeStruct):
        return [list(tree.shape), str(tree.dtype)]
    raise TypeError(f"not a nested dict of ShapeDtypeStruct ({type(tree).__name__})")


def _shapes_from_json(tree: Any) -> Any:
    import jax
    import numpy as np

    if isinstance(tree, dict):
        return {k: _shapes_from_json(v) for k, v in tree.items()}
    shape, dtype = tree
    return jax.ShapeDtypeStruct(tuple(int(d) for d in shape), np.dtype(dtype) if dtype != "bfloat16"
                                else jax.numpy.bfloat16)


def cached_shapes(fn: Callable[[], Any], name: str, key: Hashable) -> Any:
    """``fn()`` -- an ``eval_shape`` returning nested dicts of ``ShapeDtypeStruct`` (a model's parameter
    shapes) -- kept in a small JSON file under the same key rules as programs, so a fresh process does not
    trace the model's ``init`` to learn them. Other results are returned uncached; off like programs."""
    directory = program_cache_dir()
    if directory is None:
        return fn()
    key_text = json.dumps({"name": name, "key": repr(key), "environment": dict(_environment())}, sort_keys=True)
    path = os.path.join(directory, f"{name}-{hashlib.sha256(key_text.encode()).hexdigest()[:32]}.shapes.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            if not isinstance(stored, dict) or stored.get("key") != key_text:
                raise ProgramFileError("written for another key")
            return _shapes_from_json(stored["tree"])
        except Exception as e:  # noqa: BLE001 - a bad file is ignored, never fatal
            logger.warning("ignoring shape cache file %s (%s: %s)", path, type(e).__name__, e)
    result = fn()
    try:
        blob = json.dumps({"key": key_text, "tree": _shapes_to_json(result)}).encode()
    except TypeError:
        return result
    CachedProgram._write_blob(path, blob)
    return result
