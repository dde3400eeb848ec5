"""Keys of the program cache: where it lives, whether it is on, and what a program's key holds."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import platform
from typing import Any, List, Optional, Tuple

from whisper_t5x import compile_cache

ENV_PROGRAMS = "WHISPER_T5X_PROGRAM_CACHE"
ENV_MAX_MB = "WHISPER_T5X_PROGRAM_CACHE_MB"
FORMAT = 1
_OFF = {"", "0", "off", "false", "no", "none", "disable", "disabled"}
_SOURCE_PACKAGES = ("whisper_t5x", "partitioning")


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
        if getattr(module, "__file__", None) is None:
            continue  # a namespace package of that name shadows ours (e.g. a tests/ folder on sys.path)
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
def environment() -> Tuple[Tuple[str, str], ...]:
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
        ("host_cpu", host_cpu()),
        ("code", code_fingerprint()),
    )


def host_cpu() -> str:
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


def signature(args: Tuple[Any, ...]) -> Tuple[Optional[str], List[Any]]:
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


EXECUTABLES_ON = {"executables", "executable", "all"}


def executables_enabled() -> bool:
    """Compiled executables are kept only on request (``WHISPER_T5X_PROGRAM_CACHE=executables``): their
    gain over the exported programs (0.2-0.6 s CPU per start) was within the noise, and jaxlib 0.10 already
    showed one class of executable that saves but cannot run (handled, yet a risk the default need not take)."""
    return os.environ.get(ENV_PROGRAMS, "").strip().lower() in EXECUTABLES_ON


def on_default_device(args: Tuple[Any, ...]) -> bool:
    """Every array argument on the default device (or on the host): a compiled executable is tied to it."""
    import jax

    default = jax.devices()[0]
    for x in jax.tree_util.tree_leaves(args):
        sharding = getattr(x, "sharding", None)
        if sharding is not None and sharding.device_set != {default}:
            return False
    return True
