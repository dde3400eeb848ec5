"""``jax.distributed`` for multi-host runs: when to initialize, and with what.

Multi-host model of every job: each process runs the same command, reads its
own share of the inputs (files round-robin, dataset rows by node) and decodes
it on its *local* devices with its own mesh, writing only its own outputs; no
cross-host collectives are needed, so one slow or failing host never stalls
the others. Process 0 writes the run's ``config.gin``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

__all__ = ["MODES", "initialize_distributed"]

MODES = ("auto", "on", "off")


def _tpu_pod_env() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def _platform_is_cpu() -> bool:
    plats = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", ""))
    return plats.strip().lower().startswith("cpu")


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    mode: str = "auto",
    initialization_timeout: Optional[int] = None,
) -> Tuple[int, int]:
    """Calls ``jax.distributed.initialize`` when needed; returns ``(index, count)``.

    ``mode``: ``auto`` initializes with explicit arguments when a coordinator
    is given, or with plain auto-detection on a multi-host TPU slice; ``on``
    always initializes (auto-detection fills in what is not given); ``off``
    never does. Single-process runs return ``(0, 1)`` without touching JAX.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if mode == "off" or (mode == "auto" and not explicit and not _tpu_pod_env()):
        return 0, 1
    import jax

    kwargs: Dict[str, Any] = {}
    if coordinator_address is not None:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes is not None:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None:
        kwargs["process_id"] = int(process_id)
    if initialization_timeout is not None:
        kwargs["initialization_timeout"] = int(initialization_timeout)
    if coordinator_address is not None and _platform_is_cpu():
        # Cross-process CPU computations need a collectives backend (gloo is
        # the default on current JAX; make it explicit for older defaults).
        try:
            if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
                jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except AttributeError:
            pass
    jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()
