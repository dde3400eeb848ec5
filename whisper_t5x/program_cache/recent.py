"""Prefetch: the compiled programs a job used last time, loaded on a background thread while it starts.

A job names itself with a tag (model, dtype, batch); the executables a process with that tag used are
listed in <programs>/recent.json at exit, and the next process with the tag loads them on a background
thread while it loads its model. A listed file is used only if its stored key matches the one the
program computes when it is called: a stale list costs a background load, never a wrong program.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Dict, List

from whisper_t5x.program_cache import files, keys

logger = logging.getLogger("whisper_t5x.program_cache")

_RECENT = "recent.json"
_MAX_RECENT = 16
_prefetch_lock = threading.Lock()
_prefetched: Dict[str, Any] = {}  # executable path -> Future of (stored key text, Compiled)
_session: Dict[str, Any] = {}  # "tag", "directory", "used" (executable names in the order of first use)


def take_prefetched(path: str, key_text: str) -> Any:
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


def note_used(path: str) -> None:
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


def save_session() -> None:
    with _prefetch_lock:
        tag, directory, used = _session.get("tag"), _session.get("directory"), list(_session.get("used") or ())
    if not tag or not directory or not used:
        return
    recent = _read_recent(directory)
    if recent.get(tag) == used[:_MAX_RECENT]:
        return
    recent[tag] = used[:_MAX_RECENT]
    files.write_blob(os.path.join(directory, _RECENT), json.dumps(recent, indent=1).encode())


def prefetch(tag: str) -> int:
    """Start loading, on a background thread, the executables the last process tagged ``tag`` used, and
    record this process's under ``tag`` at exit. Returns how many are being loaded (0 when the cache is
    off or nothing is known). Call it before the slow part of start-up (loading the model)."""
    import atexit
    import concurrent.futures

    directory = keys.program_cache_dir()
    if directory is None or not keys.executables_enabled():
        return 0
    with _prefetch_lock:
        first = not _session
        _session.update(tag=str(tag), directory=directory, used=[])
    if first:
        atexit.register(save_session)
    paths = [os.path.join(directory, n) for n in _read_recent(directory).get(str(tag), [])
             if isinstance(n, str) and os.sep not in n and n.endswith(files.EXECUTABLE_SUFFIX)]
    paths = [p for p in paths if os.path.exists(p) and p not in _prefetched]
    if not paths:
        return 0
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="program-prefetch")
    with _prefetch_lock:
        for path in paths:
            _prefetched[path] = pool.submit(files.load_executable, path, None)
    pool.shutdown(wait=False)
    return len(paths)
