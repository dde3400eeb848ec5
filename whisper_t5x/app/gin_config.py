"""gin at the edge: parsing files and bindings, search paths, building configs, the operative config.

Every command (``transcribe``, ``benchmark``, ``label``, ``serve``) reads its
configuration the same way: :func:`parse_gin` clears gin and applies gin
files, then ``--gin_bindings`` / ``--gin.NAME=VALUE`` (rewritten by
:func:`rewrite_gin_args`), then the bindings made from explicit flags
(:func:`flag_binding`), each later value overriding earlier ones;
:func:`make` builds a config dataclass from the result, and
:func:`write_config` records what was used. Every failure is a
:class:`GinConfigError` naming the file, binding or field at fault.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, List, Optional, Sequence, Type, TypeVar

import gin

__all__ = [
    "CONFIG_FILENAME", "GinConfigError", "check_required", "default_search_paths", "flag_binding", "make",
    "parse_gin", "resolve_gin_file", "rewrite_gin_args", "write_config",
]

CONFIG_FILENAME = "config.gin"
T = TypeVar("T")


class GinConfigError(ValueError):
    """A gin file or binding could not be parsed, names something unknown, or
    leaves a required value unset."""


def check_required(config: Any) -> None:
    """Raises :class:`GinConfigError` for fields still bound to ``%gin.REQUIRED`` (directly or by a macro)."""
    missing = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) is gin.REQUIRED]
    if missing:
        name = type(config).__name__
        raise GinConfigError(
            "required value(s) not provided: " + ", ".join(f"{name}.{m}" for m in missing)
            + " (bind them with a flag, --gin_bindings or --gin.NAME=VALUE)"
        )


_GIN_ARG = re.compile(r"^--gin\.([^=]+)(?:=(.*))?$", re.S)


def rewrite_gin_args(argv: Sequence[str]) -> List[str]:
    """``--gin.NAME=VALUE`` -> ``--gin_bindings=NAME = VALUE`` (order kept).

    ``--gin.NAME VALUE`` (value as the next argument) is accepted too;
    everything after ``--`` is left alone.
    """
    out: List[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        m = _GIN_ARG.match(arg)
        if m is None:
            out.append(arg)
            i += 1
            continue
        name, value = m.group(1), m.group(2)
        if value is None:
            if i + 1 >= len(argv):
                raise GinConfigError(f"{arg} needs a value: --gin.{name}=VALUE")
            value = argv[i + 1]
            i += 1
        out.append(f"--gin_bindings={name} = {value}")
        i += 1
    return out


def default_search_paths() -> List[str]:
    """The working directory, then the source tree holding ``configs/`` (if any)."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.getcwd()]
    for cand in (os.path.dirname(os.path.dirname(here)), os.path.dirname(here)):
        if os.path.isdir(os.path.join(cand, "configs")) and cand not in paths:
            paths.append(cand)
    return paths


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
    """A gin file path: as given, else under each search path (``.gin`` optional,
    ``configs/`` prefix optional, e.g. ``runs/transcribe`` or ``hardware/cpu.gin``)."""
    cands = [name] if name.endswith(".gin") else [name, name + ".gin"]
    for c in cands:
        if os.path.isfile(c):
            return c if os.path.isabs(c) else os.path.abspath(c)
    if not os.path.isabs(name):
        for base in search_paths:
            for c in cands:
                for prefix in ("", "configs"):
                    p = os.path.join(base, prefix, c)
                    if os.path.isfile(p):
                        return p
    raise GinConfigError(
        f"gin file {name!r} not found (searched the working directory and {', '.join(search_paths) or 'nothing'})"
    )


def parse_gin(
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    search_paths: Optional[Sequence[str]] = None,
    extra_bindings: Sequence[str] = (),
) -> List[str]:
    """Clears gin, then parses files, bindings and ``extra_bindings`` in that order.

    Later values override earlier ones. Returns the resolved file paths.
    Raises :class:`GinConfigError` naming the offending file or binding.
    """
    # The configurables bound here are registered by their modules (whisper_t5x.app.config, the label
    # job's config), which every caller imports first; importing them here would make a cycle.
    import partitioning.gin_bindings  # noqa: F401 - presets bind @partitioning.PjitPartitioner

    search = list(search_paths) if search_paths else []
    search += [p for p in default_search_paths() if p not in search]
    gin.clear_config()
    for p in search:
        gin.add_config_file_search_path(p)
    files = [resolve_gin_file(f, search) for f in gin_files]
    for f in files:
        try:
            gin.parse_config_file(f)
        except Exception as e:  # noqa: BLE001 - gin raises many kinds
            raise GinConfigError(f"gin file {f}: {_message(e)}") from e
    for b in list(gin_bindings) + list(extra_bindings):
        try:
            gin.parse_config(b)
        except Exception as e:  # noqa: BLE001
            raise GinConfigError(f"gin binding {b.strip()!r}: {_message(e)}") from e
    return files


def _message(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__) + ("" if isinstance(e, ValueError) else f" ({type(e).__name__})")


def flag_binding(target: str, value: Any) -> str:
    """The gin binding of an explicit command-line flag: ``target`` is ``Configurable.param``."""
    return f"{target} = {value!r}"


def make(cls: Type[T], **overrides: Any) -> T:
    """``cls(**overrides)`` from the current gin bindings, bad values as :class:`GinConfigError`."""
    try:
        return cls(**overrides)
    except GinConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise GinConfigError(_message(e)) from e


def write_config(path: str, header: str = "") -> str:
    """The operative gin config (every value used, defaults included) to ``path``."""
    text = gin.operative_config_str()
    if not text.strip():
        text = gin.config_str()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("".join(f"# {line}\n" for line in header.splitlines()))
            f.write("\n")
        f.write(text)
    return path
