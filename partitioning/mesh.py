"""Building the 2-D ("data", "model") device mesh for CPU, GPU and TPU.

The model axis carries the chatty collectives of tensor parallelism, so it is
laid out on the fastest links: within one host for CPU/GPU (NVLink), inside a
physical sub-block of the chip torus for TPU (ICI), and never across TPU slices
(DCN); the data axis spans hosts and slices.

:func:`device_grid` is pure placement logic returning a ``(data, model)`` numpy
array of devices (it works on any objects with the usual device attributes,
which keeps it testable without the hardware); :func:`mesh_for` wraps it in a
``jax.sharding.Mesh`` whose axes are of type ``Auto`` so that sharding
constraints are hints to the SPMD partitioner, as in T5X.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import jax
from jax.sharding import AxisType, Mesh

from partitioning.rules import MESH_AXES

logger = logging.getLogger(__name__)

Submesh = Tuple[int, ...]


def _describe(devices: Sequence[Any]) -> str:
    kinds = collections.Counter(f"{getattr(d, 'platform', '?')}:{getattr(d, 'device_kind', '?')}" for d in devices)
    procs = collections.Counter(getattr(d, "process_index", 0) for d in devices)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    per_proc = sorted(set(procs.values()))
    kind_s = ", ".join(f"{n} x {k}" for k, n in kinds.items())
    return (
        f"{len(devices)} devices ({kind_s}) in {len(procs)} process(es) with "
        f"{per_proc if len(per_proc) > 1 else per_proc[0]} device(s) each"
        + (f", {len(slices)} slices" if len(slices) > 1 else "")
    )


def _shape_error(why: str, num_partitions, submesh, devices) -> ValueError:
    return ValueError(
        f"cannot build a {MESH_AXES} mesh for num_partitions={num_partitions}, "
        f"model_parallel_submesh={submesh}: {why}. Devices present: {_describe(devices)}."
    )


def _num_model(num_partitions: Optional[int], submesh: Optional[Submesh], devices) -> int:
    if submesh is not None:
        submesh = tuple(int(s) for s in submesh)
        if any(s < 1 for s in submesh):
            raise _shape_error("submesh sizes must be positive", num_partitions, submesh, devices)
        m = math.prod(submesh)
        if num_partitions is not None and num_partitions != m:
            raise _shape_error(
                f"num_partitions must equal the product of model_parallel_submesh ({m})",
                num_partitions, submesh, devices,
            )
        return m
    m = 1 if num_partitions is None else int(num_partitions)
    if m < 1:
        raise _shape_error("num_partitions must be >= 1", num_partitions, submesh, devices)
    return m


def _by_host(devices: Sequence[Any]) -> list:
    return sorted(devices, key=lambda d: (getattr(d, "process_index", 0), d.id))


def _host_local_grid(devices, m: int, num_partitions, submesh) -> np.ndarray:
    """CPU/GPU: consecutive devices of one host form a model-axis row."""
    ordered = _by_host(devices)
    per_proc = collections.Counter(getattr(d, "process_index", 0) for d in ordered)
    local = min(per_proc.values())
    if len(set(per_proc.values())) != 1:
        raise _shape_error("processes hold different numbers of devices", num_partitions, submesh, devices)
    if len(per_proc) > 1:
        if m > local and m % local:
            raise _shape_error(
                f"a model axis of {m} must divide the {local} devices of one host, or be a multiple of it",
                num_partitions, submesh, devices,
            )
        if m <= local and local % m:
            raise _shape_error(
                f"a model axis of {m} must divide the {local} devices of one host "
                "(the model axis is kept within a host's fast interconnect)",
                num_partitions, submesh, devices,
            )
        if m > local:
            logger.warning("model axis of %d spans %d hosts: model-parallel collectives cross the network", m, m // local)
    return np.array(ordered, dtype=object).reshape(len(ordered) // m, m)


def _tpu_physical(devices) -> np.ndarray:
    """Devices of one slice placed at their (x, y, z, core) torus coordinates."""
    coords = [tuple(d.coords) + (0,) * (3 - len(d.coords)) for d in devices]
    cores = [getattr(d, "core_on_chip", 0) for d in devices]
    shape = tuple(max(c[i] for c in coords) + 1 for i in range(3)) + (max(cores) + 1,)
    phys = np.empty(shape, dtype=object)
    for d, c, k in zip(devices, coords, cores):
        phys[c + (k,)] = d
    if any(x is None for x in phys.flat):
        raise ValueError(f"devices do not fill a {shape} torus block")
    return phys


def _tpu_submesh_grid(devices, submesh: Submesh, num_partitions) -> np.ndarray:
    """Tiles one slice's torus into ``submesh`` blocks: model within, data across."""
    sub = tuple(int(s) for s in submesh)
    if len(sub) == 3:
        sub = sub + (1,)
    if len(sub) != 4:
        raise _shape_error("model_parallel_submesh must be (x, y, z) or (x, y, z, core)", num_partitions, submesh, devices)
    phys = _tpu_physical(devices)
    if any(p % s for p, s in zip(phys.shape, sub)):
        raise _shape_error(
            f"submesh {sub} does not tile the physical (x, y, z, core) mesh {phys.shape}",
            num_partitions, submesh, devices,
        )
    blocks = [p // s for p, s in zip(phys.shape, sub)]
    # (X, Y, Z, C) -> (X/x, x, Y/y, y, Z/z, z, C/c, c) -> blocks first, then in-block.
    t = phys.reshape(blocks[0], sub[0], blocks[1], sub[1], blocks[2], sub[2], blocks[3], sub[3])
    t = t.transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return t.reshape(math.prod(blocks), math.prod(sub))


def _tpu_slice_grid(devices, m: int, num_partitions, submesh) -> np.ndarray:
    n = len(devices)
    if n % m:
        raise _shape_error(f"{m} model partitions do not divide {n} devices per slice", num_partitions, submesh, devices)
    if submesh is not None:
        return _tpu_submesh_grid(devices, submesh, num_partitions)
    from jax.experimental import mesh_utils  # real TPU devices only

    for split in (False, True):
        try:
            return np.asarray(
                mesh_utils.create_device_mesh((n // m, m), list(devices), allow_split_physical_axes=split)
            )
        except Exception as e:  # unknown topology / shape: try the next strategy
            last = e
    logger.warning("mesh_utils could not place a (%d, %d) mesh (%s); using torus order", n // m, m, last)
    ordered = sorted(devices, key=lambda d: (tuple(reversed(tuple(d.coords))), getattr(d, "core_on_chip", 0)))
    return np.array(ordered, dtype=object).reshape(n // m, m)


def device_grid(
    num_partitions: Optional[int] = None,
    model_parallel_submesh: Optional[Submesh] = None,
    devices: Optional[Sequence[Any]] = None,
) -> np.ndarray:
    """Returns the ``(data, model)`` array of devices for the given parallelism.

    Args:
      num_partitions: size of the model axis (default 1: pure data parallel).
      model_parallel_submesh: TPU only: the physical ``(x, y, z[, core])``
        block forming the model axis (as in T5X); its product is the model axis
        size. On other platforms only its product is used.
      devices: defaults to ``jax.devices()`` (all processes).

    Raises:
      ValueError naming the shape asked and the devices present when it
      cannot be built.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices")
    m = _num_model(num_partitions, model_parallel_submesh, devices)
    n = len(devices)
    if m > n or n % m:
        raise _shape_error(f"{m} model partitions do not divide {n} devices", num_partitions, model_parallel_submesh, devices)
    platforms = {getattr(d, "platform", "cpu") for d in devices}
    if len(platforms) != 1:
        raise _shape_error(f"mixed platforms {sorted(platforms)}", num_partitions, model_parallel_submesh, devices)
    if platforms.pop() != "tpu":
        return _host_local_grid(devices, m, num_partitions, model_parallel_submesh)
    slices = collections.defaultdict(list)
    for d in devices:
        slices[getattr(d, "slice_index", 0)].append(d)
    sizes = {len(v) for v in slices.values()}
    if len(sizes) != 1:
        raise _shape_error("slices hold different numbers of devices", num_partitions, model_parallel_submesh, devices)
    per_slice = sizes.pop()
    if len(slices) > 1 and (m > per_slice or per_slice % m):
        raise _shape_error(
            f"the model axis ({m}) must fit inside one slice of {per_slice} devices (DCN is too slow for it)",
            num_partitions, model_parallel_submesh, devices,
        )
    grids = [_tpu_slice_grid(slices[k], m, num_partitions, model_parallel_submesh) for k in sorted(slices)]
    return np.concatenate(grids, axis=0)


def mesh_for(
    num_partitions: Optional[int] = None,
    model_parallel_submesh: Optional[Submesh] = None,
    devices: Optional[Sequence[Any]] = None,
) -> Mesh:
    """A ``Mesh(("data", "model"))`` of ``Auto`` axes; see :func:`device_grid`."""
    grid = device_grid(num_partitions, model_parallel_submesh, devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
