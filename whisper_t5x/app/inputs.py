"""The file job's inputs: which audio files exist, what their outputs are called, and whose outputs are on disk.

* :func:`discover_audio` walks directories (following symlinks, each real
  directory once, so symlink loops end) and returns sorted absolute paths;
* :func:`assign_output_names` gives every input an output stem that depends on
  the input alone: its sanitised file stem, or, when several inputs share
  that stem, the stem plus a short hash of the input's path
  (``interview_1-3f9a0c2e``). A name recorded in the manifest keeps belonging
  to its input, and is never given to another one;
* :class:`Manifest` -- ``<output_dir>/manifest.jsonl`` (one file per process:
  ``manifest.process<i>.jsonl`` for process ``i > 0``), one JSON line
  ``{"name", "source"}`` per transcribed input, appended *before* its outputs
  are written. Resume skips an input only when its name is recorded for that
  very source and all its outputs exist; outputs nobody recorded (another
  tool, an older version) are redone rather than trusted;
* :func:`shard_for_process` -- the round-robin share of one process.

Every process of a multi-host run computes the same names from the same
sorted file list and manifest; each appends only to its own manifest file.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger("whisper_t5x.app.inputs")

# Extensions picked up when walking directories (files named explicitly are
# always tried, whatever their extension).
AUDIO_EXTENSIONS = frozenset(
    "wav wave flac mp3 m4a m4b aac ogg oga opus webm weba mp4 m4v mkv mka mov avi wma wmv aif aiff aifc "
    "amr au snd caf ac3 eac3 dts spx 3gp 3g2 mpga mpeg mpg ts".split()
)
MANIFEST = "manifest.jsonl"
HASH_CHARS = 8


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str  # as found (absolute)
    name: str  # output stem, unique within the run


# ================================================================ discovery
def discover_audio(paths: Iterable[str], extensions: Iterable[str] = AUDIO_EXTENSIONS) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Audio files under ``paths`` (sorted, de-duplicated) and ``(path, error)`` for missing ones.

    Directories are walked recursively for files with a known audio extension
    (hidden files and directories are skipped); symlinked directories are
    followed, but each real directory is entered once, so a link to ``.`` or
    to a parent adds nothing. Files named explicitly are kept whatever their
    extension; a file reached by several paths is listed once.
    """
    exts = {e.lower().lstrip(".") for e in extensions}
    found: Dict[str, str] = {}
    errors: List[Tuple[str, str]] = []
    visited: set = set()
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            top = os.path.realpath(p)
            if top in visited:
                continue
            visited.add(top)
            for root, dirs, files in os.walk(p, followlinks=True):
                keep = []
                for d in sorted(dirs):
                    real = os.path.realpath(os.path.join(root, d))
                    if d.startswith(".") or real in visited:
                        continue
                    visited.add(real)
                    keep.append(d)
                dirs[:] = keep
                for f in files:
                    if f.startswith("."):
                        continue
                    if os.path.splitext(f)[1].lower().lstrip(".") in exts:
                        full = os.path.abspath(os.path.join(root, f))
                        found.setdefault(os.path.realpath(full), full)
        elif os.path.isfile(p):
            full = os.path.abspath(p)
            found.setdefault(os.path.realpath(full), full)
        else:
            errors.append((p, "no such file or directory"))
    return sorted(found.values()), errors


# ==================================================================== names
def sanitize(name: str) -> str:
    """A file-name-safe stem: runs of anything but word characters, ``.`` and ``-`` become ``_``."""
    name = re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("._")
    return name or "audio"


def path_hash(path: str, chars: int = HASH_CHARS) -> str:
    return hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:chars]


def assign_output_names(files: Sequence[str], claimed: Optional[Mapping[str, str]] = None) -> List[InputFile]:
    """Output stems for ``files`` (returned sorted), unique, each a function of its input alone.

    ``claimed``: ``name -> source`` from the manifest. An input keeps the
    name recorded for it; an unrecorded input gets ``sanitize(stem)`` when no
    other input has the same sanitised stem, else ``<stem>-<hash of its
    path>``, and a name claimed by another source is never reused (a counter
    is appended; only a hash collision or a hand-made name can need it).
    """
    files = sorted(files)
    claimed = dict(claimed or {})
    recorded = {source: name for name, source in claimed.items()}
    bases = [sanitize(os.path.splitext(os.path.basename(f))[0]) for f in files]
    counts = collections.Counter(bases)
    used: set = set()
    out: List[InputFile] = []
    for f, base in zip(files, bases):
        name = recorded.get(f)
        if name is None or name in used:
            first = base if counts[base] == 1 else f"{base}-{path_hash(f)}"
            name, k = first, 1
            while name in used or claimed.get(name, f) != f:
                k += 1
                name = f"{first}-{k}"
        used.add(name)
        out.append(InputFile(f, name))
    return out


def shard_for_process(items: Sequence[Any], process_index: int = 0, process_count: int = 1) -> List[Any]:
    """Round-robin share of ``items`` (already sorted) for one process."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process index {process_index} of {process_count}")
    return list(items[process_index::process_count])


# ================================================================= manifest
def manifest_filename(process_index: int = 0) -> str:
    return MANIFEST if process_index == 0 else f"manifest.process{int(process_index)}.jsonl"


class Manifest:
    """Which input each output stem in ``output_dir`` belongs to (see the module docstring)."""

    def __init__(self, output_dir: str, process_index: int = 0):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, manifest_filename(process_index))
        self.owners: Dict[str, str] = {}  # name -> source
        pattern = os.path.join(glob.escape(output_dir), "manifest*.jsonl")
        for path in sorted(glob.glob(pattern)):
            self._read(path)

    def _read(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError as e:
            logger.warning("cannot read %s (%s): outputs it lists will be redone", path, e)
            return
        for line in lines:
            try:
                rec = json.loads(line)
                name, source = rec["name"], rec["source"]
            except (ValueError, KeyError, TypeError):
                continue  # e.g. the last line of an interrupted run
            if isinstance(name, str) and isinstance(source, str):
                self.owners.pop(name, None)  # the latest record of a name is its owner
                self.owners[name] = source

    def owner(self, name: str) -> Optional[str]:
        return self.owners.get(name)

    def record(self, item: InputFile) -> None:
        """Claims ``item.name`` for ``item.path`` (appended and flushed before its outputs are written)."""
        if self.owners.get(item.name) == item.path:
            return
        with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as f:
            f.write(json.dumps({"name": item.name, "source": item.path}, ensure_ascii=False) + "\n")
        self.owners.pop(item.name, None)
        self.owners[item.name] = item.path
