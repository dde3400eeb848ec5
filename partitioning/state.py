"""InferenceState: parameters plus their logical-axis annotations.

It is the T5X inference-state shape: a flax struct dataclass whose pytree
leaves are ``step``, ``params`` and ``flax_mutables``; the ``*_axes``
annotations are static metadata (``params_axes`` mirrors ``params`` with keys
suffixed ``_axes`` and ``flax.linen.partitioning.AxisMetadata`` leaves, as
produced by ``param_with_axes``). A partitioner turns it into a same-shaped
tree of PartitionSpecs with ``get_mesh_axes``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import flax
from flax import struct
from flax.core import frozen_dict
from flax.linen import partitioning as nn_partitioning
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import PartitionSpec

AXES_SUFFIX = "_axes"


def _freeze(tree):
    if tree is None or isinstance(tree, frozen_dict.FrozenDict):
        return tree
    if isinstance(tree, Mapping):
        return frozen_dict.freeze(tree)
    return tree


def logical_axes_for(values, axes) -> Tuple[Any, Tuple[str, ...]]:
    """Logical PartitionSpec tree for ``values`` from an ``*_axes`` collection.

    Returns ``(specs, missing)``: ``specs`` has the structure of ``values``
    (a leaf without an annotation gets ``None``, i.e. replicated) and
    ``missing`` lists the '/'-joined paths of such leaves.
    """
    if values is None:
        return None, ()
    names = nn_partitioning.get_axis_names(axes if axes is not None else {})
    flat_names = flatten_dict(frozen_dict.unfreeze(names))
    flat_values = flatten_dict(frozen_dict.unfreeze(values))
    specs, missing = {}, []
    for path in flat_values:
        if path in flat_names:
            specs[path] = flat_names[path]
        else:
            specs[path] = None
            missing.append("/".join(path))
    return frozen_dict.freeze(unflatten_dict(specs)), tuple(missing)


@struct.dataclass
class InferenceState:
    """Inference-time state: a step counter, params and other flax collections.

    Attributes:
      step: a scalar (``jnp.array(0)``) or None.
      params: the ``params`` collection (arrays or ShapeDtypeStructs).
      params_axes: its ``params_axes`` annotations (static).
      flax_mutables: other collections (e.g. a cache) or None.
      flax_mutables_axes: their ``*_axes`` annotations (static) or None.
    """

    step: Optional[Any]
    params: Any
    params_axes: Optional[Any] = struct.field(pytree_node=False, default=None)
    flax_mutables: Optional[Any] = None
    flax_mutables_axes: Optional[Any] = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        # Static fields are part of the treedef: freeze them so it is hashable.
        object.__setattr__(self, "params_axes", _freeze(self.params_axes))
        object.__setattr__(self, "flax_mutables_axes", _freeze(self.flax_mutables_axes))

    @classmethod
    def create(cls, variables: Mapping[str, Any], step: Any = None) -> "InferenceState":
        """From ``module.init(...)`` output: ``{"params", "params_axes", ...}``.

        Collections other than ``params`` and ``*_axes`` go to
        ``flax_mutables``, with their ``<name>_axes`` to ``flax_mutables_axes``.
        """
        variables = frozen_dict.unfreeze(variables)
        if "params" not in variables:
            raise ValueError(f"variables have no 'params' collection (got {sorted(variables)})")
        if "params_axes" not in variables:
            raise ValueError(
                "variables have no 'params_axes' collection: declare parameters with "
                "flax.linen.partitioning.param_with_axes"
            )
        mutables = {k: v for k, v in variables.items() if k != "params" and not k.endswith(AXES_SUFFIX)}
        mutables_axes = {k[: -len(AXES_SUFFIX)]: v for k, v in variables.items()
                         if k.endswith(AXES_SUFFIX) and k != "params_axes"}
        if step is None:
            import jax.numpy as jnp

            step = jnp.array(0, dtype=jnp.int32)
        return cls(
            step=step,
            params=frozen_dict.freeze(variables["params"]),
            params_axes=frozen_dict.freeze(variables["params_axes"]),
            flax_mutables=frozen_dict.freeze(mutables) if mutables else None,
            flax_mutables_axes=frozen_dict.freeze(mutables_axes) if mutables_axes else None,
        )

    def as_logical_axes(self) -> "InferenceState":
        """Same-shaped state whose leaves are logical PartitionSpecs (or None)."""
        return self._logical_axes()[0]

    def _logical_axes(self) -> Tuple["InferenceState", Tuple[str, ...]]:
        params, missing = logical_axes_for(self.params, self.params_axes)
        mutables = None
        if self.flax_mutables is not None:
            specs = {}
            for coll, values in frozen_dict.unfreeze(self.flax_mutables).items():
                axes = (self.flax_mutables_axes or {}).get(coll)
                specs[coll], miss = logical_axes_for(values, axes)
                missing += tuple(f"{coll}/{m}" for m in miss)
            mutables = frozen_dict.freeze(specs)
        state = InferenceState(
            step=None if self.step is None else PartitionSpec(),
            params=params,
            params_axes=self.params_axes,
            flax_mutables=mutables,
            flax_mutables_axes=self.flax_mutables_axes,
        )
        return state, missing

    def replace_params(self, params: Any) -> "InferenceState":
        return self.replace(params=params)

    def state_dict(self) -> dict:
        """A plain nested dict (for checkpointing with flax.serialization)."""
        out = {"state": {"step": self.step}, "target": frozen_dict.unfreeze(self.params)}
        if self.flax_mutables is not None:
            out["flax_mutables"] = frozen_dict.unfreeze(self.flax_mutables)
        return out

    def restore_state(self, state_dict: Mapping[str, Any]) -> "InferenceState":
        """Inverse of :meth:`state_dict`; the annotations are kept."""
        params = flax.serialization.from_state_dict(frozen_dict.unfreeze(self.params), state_dict["target"])
        mutables = self.flax_mutables
        if "flax_mutables" in state_dict:
            base = frozen_dict.unfreeze(self.flax_mutables) if self.flax_mutables is not None else state_dict["flax_mutables"]
            mutables = frozen_dict.freeze(flax.serialization.from_state_dict(base, state_dict["flax_mutables"]))
        step = state_dict.get("state", {}).get("step", self.step)
        return self.replace(step=step, params=frozen_dict.freeze(params), flax_mutables=mutables)
