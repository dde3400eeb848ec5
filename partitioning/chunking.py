"""Which part of a global array each host feeds (multi-host input).

With several processes, every process holds only some devices, so it needs to
load only the slice of the global batch (or of a parameter) that lands on its
devices. :class:`LocalChunker` derives that slice from the mesh and a
PartitionSpec, exactly as ``jax.make_array_from_process_local_data`` expects it.

Batch sizes: a global batch whose size does not divide the ``data`` mesh axis
is an error (a ``ValueError`` suggesting the fix), never padded silently —
padding changes the outputs the caller sees. Callers that accept padding use
:func:`pad_batch_to_multiple`, run, and drop the padded rows with the returned
count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from partitioning.rules import DATA


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """How the global batch is split over hosts.

    Attributes:
      batch_size: the global batch size.
      shard_id: which data shard this host feeds (0 .. num_shards-1).
      num_shards: number of distinct data shards over all hosts.
      is_first_host_in_replica_set: hosts that share a data shard (their
        devices are the same ``data`` rows, split over ``model``) feed the same
        rows; only the first of them should e.g. write outputs.
    """

    batch_size: int
    shard_id: int
    num_shards: int
    is_first_host_in_replica_set: bool

    @property
    def per_shard_batch_size(self) -> int:
        return self.batch_size // self.num_shards

    @property
    def local_slice(self) -> slice:
        """Rows of the global batch this host feeds."""
        n = self.per_shard_batch_size
        return slice(self.shard_id * n, (self.shard_id + 1) * n)


def _norm(s: slice, dim: int) -> Tuple[int, int]:
    start, stop, step = s.indices(dim)
    if step != 1:
        raise ValueError(f"strided shard {s} unsupported")
    return start, stop


def _boxes(mesh: Mesh, global_shape: Sequence[int], spec: PartitionSpec):
    """For each process: (bounding box of its shards, set of shard boxes)."""
    idx = NamedSharding(mesh, spec).devices_indices_map(tuple(global_shape))
    per_proc: dict = {}
    for dev, index in idx.items():
        box = tuple(_norm(s, d) for s, d in zip(index, global_shape))
        per_proc.setdefault(dev.process_index, set()).add(box)
    out = {}
    for proc, shards in per_proc.items():
        bound = tuple((min(b[i][0] for b in shards), max(b[i][1] for b in shards)) for i in range(len(global_shape)))
        vol = lambda b: int(np.prod([hi - lo for lo, hi in b])) if b else 1
        if sum(vol(b) for b in shards) != vol(bound):
            raise ValueError(
                f"process {proc} holds a non-contiguous part of an array of shape {tuple(global_shape)} "
                f"sharded as {spec}: {sorted(shards)}"
            )
        out[proc] = bound
    return out


class LocalChunker:
    """Computes the chunk of global arrays that this process holds.

    Args:
      mesh: the global mesh.
      process_index: defaults to ``jax.process_index()``.
    """

    def __init__(self, mesh: Mesh, process_index: Optional[int] = None):
        self.global_mesh = mesh
        self.process_index = jax.process_index() if process_index is None else process_index

    @property
    def data_axis_size(self) -> int:
        return self.global_mesh.shape[DATA]

    def get_local_chunk_info(
        self, global_shape: Sequence[int], mesh_axes: Optional[Sequence[Any]]
    ) -> Tuple[Tuple[slice, ...], int]:
        """Returns ``(local_slice, replica_id)`` for this process.

        ``local_slice`` indexes the global array to give the (contiguous) part
        held by this process's devices; ``replica_id`` numbers the processes
        holding that same part (0 for the first).
        """
        spec = mesh_axes if isinstance(mesh_axes, PartitionSpec) else PartitionSpec(*(mesh_axes or ()))
        boxes = _boxes(self.global_mesh, global_shape, spec)
        if self.process_index not in boxes:
            raise ValueError(f"process {self.process_index} holds no device of the mesh")
        mine = boxes[self.process_index]
        same = sorted(p for p, b in boxes.items() if b == mine)
        return tuple(slice(lo, hi) for lo, hi in mine), same.index(self.process_index)

    def get_data_layout(self, batch_size: Optional[int] = None) -> DataLayout:
        """The :class:`DataLayout` of a global batch of ``batch_size`` rows.

        Raises ValueError if ``batch_size`` does not divide the data axis.
        """
        n = self.data_axis_size
        if batch_size is None:
            batch_size = n
        if batch_size <= 0 or batch_size % n:
            raise ValueError(
                f"global batch size {batch_size} is not divisible by the 'data' mesh axis of size {n}; "
                f"pad it with partitioning.pad_batch_to_multiple(batch, {n}) or change the batch size"
            )
        boxes = _boxes(self.global_mesh, (batch_size,), PartitionSpec(DATA))
        starts = sorted({b[0] for b in boxes.values()})
        mine = boxes[self.process_index]
        replicas = sorted(p for p, b in boxes.items() if b == mine)
        return DataLayout(
            batch_size=batch_size,
            shard_id=starts.index(mine[0]),
            num_shards=len(starts),
            is_first_host_in_replica_set=replicas[0] == self.process_index,
        )


def pad_batch_to_multiple(batch: Any, multiple: int, axis: int = 0) -> Tuple[Any, int]:
    """Pads every array of ``batch`` along ``axis`` up to a multiple of ``multiple``.

    Padding rows are zeros. Returns ``(padded_batch, num_valid_rows)``; slice
    outputs with ``[:num_valid_rows]`` afterwards.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        return batch, 0
    sizes = {np.shape(x)[axis] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"batch arrays disagree on the size of axis {axis}: {sorted(sizes)}")
    n = sizes.pop()
    pad = (-n) % multiple

    def pad_one(x):
        if pad == 0:
            return x
        widths = [(0, 0)] * np.ndim(x)
        widths[axis] = (0, pad)
        if isinstance(x, np.ndarray) or np.isscalar(x):
            return np.pad(x, widths)
        import jax.numpy as jnp

        return jnp.pad(x, widths)

    return jax.tree_util.tree_map(pad_one, batch), n
