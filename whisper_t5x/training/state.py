"""The train state and its sharding, derived from the parameters' logical axes.

``TrainState`` holds the update count, the float32 master parameters, the
optax state and a PRNG key. Its axes follow the parameters': an optimizer-state
array with a parameter's path and shape (Adam ``mu``/``nu``) takes that
parameter's axes; everything else (update counts, scalars) is replicated. Frozen
parameters have no optimizer-state arrays (see ``training.optim``), so there is
nothing to place for them.

A sharded state is born sharded (MaxText's abstract state): ``jax.eval_shape``
gives the shapes, the partitioner's rules give mesh specs, and the state is
created by a function jitted with those output shardings, so no device ever
holds a replicated copy of a sharded array.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.core import frozen_dict
from jax.sharding import PartitionSpec

from whisper_t5x.training.optim import Optimizer, path_name

__all__ = [
    "TrainState",
    "abstract_state",
    "cast_floats",
    "create_train_state",
    "host_params",
    "init_sharded_state",
    "opt_state_axes",
    "params_logical_axes",
    "params_mesh_axes",
    "replicated_axes",
    "shard_state_from_params",
    "state_logical_axes",
    "state_mesh_axes",
    "step_of",
]


@struct.dataclass
class TrainState:
    """``step`` (updates applied, int32), ``params`` (float32 masters), ``opt_state`` (optax), ``rng`` (a
    ``uint32[2]`` PRNG key, split once per step)."""

    step: Any
    params: Any
    opt_state: Any
    rng: Any


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Floating leaves of ``tree`` cast to ``dtype`` (others untouched)."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree_util.tree_map(cast, tree)


def _as_key(rng: Any) -> jax.Array:
    if isinstance(rng, (int, np.integer)):
        return jax.random.PRNGKey(int(rng))
    if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return jnp.asarray(rng, jnp.uint32)


def create_train_state(params: Any, optimizer: Optimizer, rng: Any = 0,
                       param_dtype: Any = jnp.float32) -> TrainState:
    """A fresh state: params cast to ``param_dtype`` (float32 masters), ``optimizer.init``, step 0."""
    params = cast_floats(frozen_dict.unfreeze(params) if isinstance(params, frozen_dict.FrozenDict) else params,
                         param_dtype)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=_as_key(rng))


# ---------------------------------------------------------------------- axes
def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def params_logical_axes(params_axes: Any, params: Any) -> Any:
    """Logical PartitionSpec tree with the structure of ``params``.

    ``params_axes`` is either the flax ``params_axes`` collection (as ``init``
    returns it) or already a tree of PartitionSpecs. A parameter without an
    annotation is an error: training must not replicate a matrix by accident.
    """
    from partitioning import logical_axes_for

    leaves = jax.tree_util.tree_leaves(params_axes, is_leaf=_is_spec)
    if leaves and all(_is_spec(x) for x in leaves):
        specs = params_axes
    else:
        specs, missing = logical_axes_for(params, params_axes)
        if missing:
            raise ValueError(f"parameters without logical axes: {list(missing)[:5]}")
        specs = frozen_dict.unfreeze(specs)
    return _like(params, specs)


def _like(values: Any, specs: Any) -> Any:
    """``specs`` re-keyed into the container types of ``values`` (dict vs FrozenDict)."""
    flat = {path_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs, is_leaf=_is_spec)}

    def pick(path, _):
        name = path_name(path)
        if name not in flat:
            raise ValueError(f"no partition spec for parameter {name}")
        return flat[name]
    return jax.tree_util.tree_map_with_path(pick, values)


def _key_suffixes(path) -> Tuple[str, ...]:
    """'/'-joined names of the trailing run of dict keys of a state leaf's path, longest first."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.insert(0, str(entry.key))
    return tuple("/".join(keys[i:]) for i in range(len(keys)))


def opt_state_axes(optimizer: Optimizer, params: Any, param_specs: Any) -> Any:
    """Spec tree of ``optimizer.init(params)``: a leaf with a parameter's path and shape takes its spec,
    any other leaf (counts, scalars) is replicated (``PartitionSpec()``)."""
    shapes = jax.eval_shape(optimizer.init, params)
    by_name = {}
    for (path, spec), (_, value) in zip(jax.tree_util.tree_leaves_with_path(param_specs, is_leaf=_is_spec),
                                        jax.tree_util.tree_leaves_with_path(params)):
        by_name[path_name(path)] = (spec, tuple(np.shape(value)))

    def one(path, leaf):
        for name in _key_suffixes(path):
            if name in by_name and by_name[name][1] == tuple(leaf.shape):
                return by_name[name][0]
        return PartitionSpec()
    return jax.tree_util.tree_map_with_path(one, shapes)


def _state_axes(optimizer: Optimizer, params: Any, param_specs: Any) -> TrainState:
    return TrainState(step=PartitionSpec(), params=param_specs,
                      opt_state=opt_state_axes(optimizer, params, param_specs), rng=PartitionSpec())


def state_logical_axes(params_axes: Any, optimizer: Optimizer, params: Any) -> TrainState:
    """A ``TrainState`` of logical PartitionSpecs (``params`` may be arrays or shapes)."""
    return _state_axes(optimizer, params, params_logical_axes(params_axes, params))


def params_mesh_axes(partitioner, params_axes: Any, params: Any) -> Any:
    """Mesh PartitionSpecs of ``params`` (arrays or shapes) under ``partitioner``'s rules (e.g. for a
    distillation teacher). A dimension that does not divide its mesh axes (Whisper's odd vocabulary) is
    replicated, as for inference."""
    logical = params_logical_axes(params_axes, params)
    return _like(params, partitioner.fit_to_shapes(partitioner.logical_to_mesh_axes(logical), params))


def state_mesh_axes(partitioner, params_axes: Any, optimizer: Optimizer, params: Any) -> TrainState:
    """A ``TrainState`` of mesh PartitionSpecs under ``partitioner``'s rules; the optimizer state follows
    the parameters' fitted specs."""
    return _state_axes(optimizer, params, params_mesh_axes(partitioner, params_axes, params))


# ------------------------------------------------------------- sharded init
def _shaped(shapes: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                                  shardings)


def abstract_state(partitioner, optimizer: Optimizer, init_params: Callable[[jax.Array], Any], params_axes: Any,
                   rng: Any = 0) -> Tuple[TrainState, TrainState]:
    """``(shapes, mesh_axes)`` of the state ``init_params(rng)`` would give, nothing computed.

    ``shapes`` is a ``TrainState`` of ``jax.ShapeDtypeStruct`` carrying their
    ``NamedSharding`` (for ``lower``, memory analysis and checkpoint restore).
    """
    key = _as_key(rng)
    shapes = jax.eval_shape(lambda k: create_train_state(init_params(k), optimizer, k), key)
    axes = state_mesh_axes(partitioner, params_axes, optimizer, shapes.params)
    return _shaped(shapes, partitioner.to_shardings(axes)), axes


def init_sharded_state(partitioner, optimizer: Optimizer, init_params: Callable[[jax.Array], Any], params_axes: Any,
                       rng: Any = 0) -> Tuple[TrainState, TrainState]:
    """``(state, mesh_axes)``: a random-init state created directly in its shards."""
    _, axes = abstract_state(partitioner, optimizer, init_params, params_axes, rng)
    create = partitioner.partition(lambda k: create_train_state(init_params(k), optimizer, k),
                                   in_axis_resources=PartitionSpec(), out_axis_resources=axes)
    return create(_as_key(rng)), axes


def shard_state_from_params(partitioner, optimizer: Optimizer, params: Any, params_axes: Any,
                            rng: Any = 0, param_dtype: Any = jnp.float32) -> Tuple[TrainState, TrainState]:
    """``(state, mesh_axes)`` for loaded weights: host (numpy) params placed shard by shard, the optimizer
    state created on the devices in its shards."""
    params = frozen_dict.unfreeze(params) if isinstance(params, Mapping) else params
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.dtype(param_dtype)), params)
    axes = state_mesh_axes(partitioner, params_axes, optimizer, shapes)
    placed = partitioner.shard_host_params(params, axes.params, dtype=np.dtype(jnp.dtype(param_dtype)))
    init = partitioner.partition(
        lambda p, k: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p), rng=k),
        in_axis_resources=(axes.params, PartitionSpec()), out_axis_resources=axes)
    return init(placed, _as_key(rng)), axes


def replicated_axes(tree: Any) -> Any:
    """A tree of ``PartitionSpec()`` for every leaf of ``tree`` (e.g. an unsharded teacher)."""
    return jax.tree_util.tree_map(lambda _: PartitionSpec(), tree)


def host_params(state: TrainState) -> Mapping:
    """The parameters gathered to this host as numpy (for export)."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))


def step_of(state: TrainState) -> int:
    return int(jax.device_get(state.step))
