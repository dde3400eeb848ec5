"""T5X-style partitioning for whisper_t5x on current JAX (jax.jit + NamedSharding).

Independent of the model package and of gin (gin bindings live in
``partitioning.gin_bindings`` and are registered only when that is imported).

Main entry points:

* :class:`PjitPartitioner` -- mesh + rules; ``partition``, ``get_mesh_axes``,
  ``shard_host_params``, ``get_data_layout``.
* :class:`InferenceState` -- params with their ``params_axes`` annotations.
* rule tables: :func:`standard_logical_axis_rules`, ``logical_axis_rules_dp``
  / ``_mp`` / ``_2d`` / ``_fsdp``.
* :func:`mesh_for` -- ("data", "model") meshes for CPU / GPU / TPU.
* :class:`LocalChunker`, :class:`DataLayout`, :func:`pad_batch_to_multiple`.
"""

from partitioning.chunking import DataLayout, LocalChunker, pad_batch_to_multiple
from partitioning.mesh import device_grid, mesh_for
from partitioning.partitioner import (
    PartitionedCallable,
    PjitPartitioner,
    UnevenShardingWarning,
    UnmappedAxisWarning,
    match_structure,
)
from partitioning.rules import (
    DATA,
    MESH_AXES,
    MODEL,
    MODEL_AXIS_NAMES,
    RULE_SETS,
    check_rules_cover,
    logical_axis_rules_2d,
    logical_axis_rules_dp,
    logical_axis_rules_fsdp,
    logical_axis_rules_mp,
    logical_to_mesh_axes,
    normalize_rules,
    rules_for,
    standard_logical_axis_rules,
    unmapped_names,
)
from partitioning.state import InferenceState, logical_axes_for

__all__ = [
    "DATA",
    "MESH_AXES",
    "MODEL",
    "MODEL_AXIS_NAMES",
    "RULE_SETS",
    "DataLayout",
    "InferenceState",
    "LocalChunker",
    "PartitionedCallable",
    "PjitPartitioner",
    "UnevenShardingWarning",
    "UnmappedAxisWarning",
    "check_rules_cover",
    "device_grid",
    "logical_axes_for",
    "logical_axis_rules_2d",
    "logical_axis_rules_dp",
    "logical_axis_rules_fsdp",
    "logical_axis_rules_mp",
    "logical_to_mesh_axes",
    "match_structure",
    "mesh_for",
    "normalize_rules",
    "pad_batch_to_multiple",
    "rules_for",
    "standard_logical_axis_rules",
    "unmapped_names",
]
