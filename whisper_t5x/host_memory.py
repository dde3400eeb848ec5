"""How a CPU process gives back the memory XLA frees (glibc's malloc only; a no-op elsewhere).

XLA's CPU client takes each program's temporaries and outputs from ``malloc``
and frees them when a call ends: an encoder insert's temporaries, a generate
call's cache slices, a log-mel batch. glibc serves a request above its
``mmap`` threshold from its own mapping, which ``free`` unmaps at once; but the
threshold starts at 128 KiB and *grows* to the size of each large block freed
(up to 32 MiB), so after the first calls XLA's buffers come from the heap, and
freed heap memory stays in the process until the top of the heap is free. A
transcription's resident memory then climbs towards the sum of everything it
ever held, not the most it held at once.

:func:`return_freed_memory` pins both thresholds, so larger blocks are mapped
and unmapped and free memory at the heap's top goes back: the resident set
follows what is live. The threshold stays above what every decoding step
allocates (its logits, ``slots x vocabulary`` floats: :func:`threshold_for`),
or each step would pay for fresh pages. Measured in the README ("Memory"): a
lower peak at the same wall time with 2 MiB for ``base``; 1 MiB, which maps
its 8-slot logits every step, was slower.
A process that already chose (``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in its environment) keeps its choice.
:func:`trim` hands the free memory back now (after a call: a server's resting
memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_THRESHOLD", "return_freed_memory", "threshold_for", "trim"]

DEFAULT_THRESHOLD = 2 << 20  # bytes
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_applied: Optional[int] = None


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl, not macOS)
        return libc
    except (OSError, AttributeError):
        return None


def return_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Pin glibc's mmap and trim thresholds to ``threshold`` bytes for this process; True when applied
    (now or by an earlier call), False without glibc or when the environment already sets them."""
    global _applied
    if _applied is not None:
        return True
    if any(os.environ.get(k) for k in _ENV):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, int(threshold)) == 1
    if ok:
        _applied = int(threshold)
        logger.debug("malloc: mmap and trim thresholds pinned at %d bytes", threshold)
    return ok


def threshold_for(step_bytes: int) -> int:
    """The threshold for a decoder that allocates ``step_bytes`` per step: the next power of two at or
    above it, at least :data:`DEFAULT_THRESHOLD`."""
    threshold = DEFAULT_THRESHOLD
    while threshold < int(step_bytes):
        threshold *= 2
    return threshold


def trim() -> bool:
    """Give the heap's free memory back to the system now (glibc ``malloc_trim``); False without glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
