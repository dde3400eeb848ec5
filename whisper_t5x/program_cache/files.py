"""Program cache files: the format (magic, JSON header with the key, payload), atomic writes, the size
limit, output pytrees (namedtuples) registered for ``jax.export`` serialization, executables."""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import tempfile
import threading
from typing import Any, Dict, List, Optional, Tuple

from whisper_t5x.program_cache.keys import ENV_MAX_MB

logger = logging.getLogger("whisper_t5x.program_cache")

SUFFIX = ".jaxexport"
EXECUTABLE_SUFFIX = ".jaxexec"
DEFAULT_MAX_MB = 2048
_MAGIC = b"WT5XPROG"
_lock = threading.Lock()
_registered_namedtuples: Dict[str, type] = {}


def namedtuple_types(treedef: Any) -> List[type]:
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


def serialized_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_namedtuple(cls: type) -> None:
    import jax

    name = serialized_name(cls)
    with _lock:
        if _registered_namedtuples.get(name) is cls:
            return
        try:
            jax.export.register_namedtuple_serialization(cls, serialized_name=name)
        except ValueError:
            pass  # registered already (by us earlier, or by its owner)
        _registered_namedtuples[name] = cls


def import_namedtuple(name: str) -> type:
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise TypeError(f"{name} is not a namedtuple class")
    return obj


def touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def evict(directory: str, keep: str) -> None:
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


def pack(key_text: str, outputs: List[str], payload: bytes) -> bytes:
    header = json.dumps({"key": key_text, "namedtuples": outputs}, sort_keys=True).encode()
    return _MAGIC + len(header).to_bytes(8, "little") + header + payload


def unpack(blob: bytes, key_text: str) -> Tuple[List[str], bytes]:
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


def write_blob(path: str, blob: bytes) -> None:
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
    evict(os.path.dirname(path), keep=path)


def load_executable(path: str, key_text: Optional[str]) -> Tuple[str, Any]:
    """(stored key text, loaded executable) of ``path``; ``key_text`` None: any key (checked later)."""
    import jax
    from jax.experimental import serialize_executable

    with open(path, "rb") as f:
        blob = f.read()
    stored = stored_key(blob)
    _, payload = unpack(blob, stored if key_text is None else key_text)
    touch(path)
    executable, in_tree, out_tree = pickle.loads(payload)  # trusted, as the compile cache is
    return stored, serialize_executable.deserialize_and_load(executable, in_tree, out_tree,
                                                             execution_devices=[jax.devices()[0]])


def stored_key(blob: bytes) -> str:
    try:
        size = int.from_bytes(blob[len(_MAGIC):len(_MAGIC) + 8], "little")
        return json.loads(blob[len(_MAGIC) + 8:len(_MAGIC) + 8 + size].decode())["key"]
    except Exception as e:  # noqa: BLE001
        raise ProgramFileError(f"unreadable header ({e})") from None
