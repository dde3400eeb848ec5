"""PjitPartitioner: T5X's partitioner surface on top of ``jax.jit``.

A partitioner owns a ("data", "model") mesh and a logical-axis rule table. It

* maps logical annotations (``params_axes`` of an :class:`InferenceState`, or
  any tree of logical PartitionSpecs) to mesh PartitionSpecs, reporting names
  that no rule mentions instead of silently replicating them;
* wraps functions with ``jax.jit(in_shardings=..., out_shardings=...)`` so
  they run SPMD over the mesh. The wrapped function is traced inside the rule
  table (``flax.linen.partitioning.axis_rules``) and called / lowered inside
  ``jax.set_mesh(mesh)``, so the model's ``with_logical_constraint``
  activation annotations become real sharding constraints in the program;
* places host (numpy) parameters onto devices shard by shard and builds global
  batches from per-process slices (multi-host).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import jax
from flax.core import frozen_dict
from flax.linen import partitioning as nn_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from partitioning import rules as rules_lib
from partitioning.chunking import DataLayout, LocalChunker
from partitioning.mesh import mesh_for
from partitioning.state import InferenceState

logger = logging.getLogger(__name__)

_UNSET = object()


class UnmappedAxisWarning(UserWarning):
    """A logical axis name is not mentioned by any rule (it is replicated)."""


class UnevenShardingWarning(UserWarning):
    """A dimension does not divide its mesh axes, so it is replicated."""


def _is_spec_leaf(x) -> bool:
    return x is None or isinstance(x, (PartitionSpec, Sharding))


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _normalize_static(argnums) -> Tuple[int, ...]:
    if argnums is None:
        return ()
    if isinstance(argnums, int):
        return (argnums,)
    return tuple(argnums)


def match_structure(specs: Any, values: Any) -> Any:
    """Re-shapes a spec tree (a pytree prefix) to the container types of ``values``.

    Specs built from an :class:`InferenceState` are FrozenDicts while flax
    now returns plain dicts; jax treats those as different pytrees. Mappings
    are matched by key, sequences by position, other same-typed pytree nodes
    (e.g. InferenceState) child by child. Anything else is returned unchanged
    (and jax reports the mismatch).
    """
    if _is_spec_leaf(specs):
        return specs
    if isinstance(specs, Mapping) and isinstance(values, Mapping):
        if set(specs) != set(values):
            return specs
        out = {k: match_structure(specs[k], values[k]) for k in values}
        if isinstance(values, frozen_dict.FrozenDict):
            return frozen_dict.FrozenDict(out)
        try:
            return type(values)(out)
        except TypeError:
            return out
    if isinstance(specs, (list, tuple)) and isinstance(values, (list, tuple)):
        if len(specs) != len(values):
            return specs
        out = [match_structure(s, v) for s, v in zip(specs, values)]
        if hasattr(values, "_fields"):
            return type(values)(*out)
        return type(values)(out)
    if type(specs) is type(values):
        s_children, _ = jax.tree_util.flatten_one_level(specs)
        v_children, _ = jax.tree_util.flatten_one_level(values)
        if len(s_children) != len(v_children):
            return specs
        treedef = jax.tree_util.tree_structure(values, is_leaf=lambda x: x is not values)
        return treedef.unflatten([match_structure(s, v) for s, v in zip(s_children, v_children)])
    return specs


class PartitionedCallable:
    """A function jitted over a mesh; call it, or ``.lower(...)`` it.

    Calls and lowering run inside ``jax.set_mesh(mesh)``; tracing runs inside
    the partitioner's logical-axis rules, so activation constraints apply.

    Input shardings are matched to the arguments' container types (dict vs
    FrozenDict) per argument structure; output shardings are imposed with a
    ``with_sharding_constraint`` on the traced outputs (matched the same way),
    which fixes the layout of the results.
    """

    def __init__(
        self,
        fn: Callable,
        mesh: Mesh,
        logical_axis_rules: rules_lib.Rules,
        in_shardings: Any = _UNSET,
        out_shardings: Any = _UNSET,
        static_argnums: Sequence[int] = (),
        donate_argnums: Sequence[int] = (),
    ):
        self.fn = fn
        self.mesh = mesh
        self.logical_axis_rules = logical_axis_rules
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.static_argnums = _normalize_static(static_argnums)
        self.donate_argnums = _normalize_static(donate_argnums)
        self._cache: dict = {}

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            with nn_partitioning.axis_rules(logical_axis_rules):
                out = fn(*args, **kwargs)
            if out_shardings is not _UNSET:
                out = jax.lax.with_sharding_constraint(out, match_structure(out_shardings, out))
            return out

        self._traced = traced

    def _dynamic(self, args) -> Tuple[Any, ...]:
        return tuple(a for i, a in enumerate(args) if i not in self.static_argnums)

    def _jitted_for(self, args):
        dyn = self._dynamic(args)
        key = jax.tree_util.tree_structure(dyn)
        jitted = self._cache.get(key)
        if jitted is None:
            jit_kwargs = dict(static_argnums=self.static_argnums, donate_argnums=self.donate_argnums)
            if self.in_shardings is not _UNSET:
                ins = self.in_shardings
                if isinstance(ins, list):
                    ins = tuple(ins)
                if isinstance(ins, tuple) and len(ins) == len(dyn):
                    ins = tuple(match_structure(s, a) for s, a in zip(ins, dyn))
                jit_kwargs["in_shardings"] = ins
            jitted = self._cache[key] = jax.jit(self._traced, **jit_kwargs)
        return jitted

    def __call__(self, *args, **kwargs):
        jitted = self._jitted_for(args)
        with jax.set_mesh(self.mesh):
            try:
                return jitted(*args, **kwargs)
            except ValueError as e:
                if "evenly divide" in str(e):
                    raise ValueError(
                        f"an argument does not divide its mesh axes ({e}); a global batch must be a multiple "
                        f"of the 'data' axis ({self.mesh.shape['data']}): pad it with "
                        "partitioning.pad_batch_to_multiple"
                    ) from e
                # A committed jax.Array laid out differently than asked: move it
                # (as pjit users expect) and retry once.
                if "does not match the sharding" not in str(e) or self.in_shardings is _UNSET:
                    raise
                return jitted(*self._reshard_args(args), **kwargs)

    def lower(self, *args, **kwargs):
        """``jax.stages.Lowered`` for these arguments (``.as_text()``, ``.compile()``)."""
        jitted = self._jitted_for(args)
        with jax.set_mesh(self.mesh):
            return jitted.lower(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        jitted = self._jitted_for(args)
        with jax.set_mesh(self.mesh):
            return jitted.eval_shape(*args, **kwargs)

    def _reshard_args(self, args):
        dyn_pos = [i for i in range(len(args)) if i not in self.static_argnums]
        dyn = tuple(args[i] for i in dyn_pos)
        shardings = self.in_shardings
        if isinstance(shardings, list):
            shardings = tuple(shardings)
        if not isinstance(shardings, tuple):
            shardings = (shardings,) * len(dyn)
        shardings = match_structure(shardings, dyn)
        full = jax.tree.broadcast(shardings, dyn, is_leaf=_is_spec_leaf)

        def move(x, s):
            if isinstance(x, jax.Array) and isinstance(s, Sharding) and not x.sharding.is_equivalent_to(s, x.ndim):
                return jax.device_put(x, s)
            return x

        moved = jax.tree.map(move, dyn, full)
        out = list(args)
        for i, x in zip(dyn_pos, moved):
            out[i] = x
        return tuple(out)


class PjitPartitioner:
    """Partitions functions over a ("data", "model") mesh with logical-axis rules.

    Args:
      num_partitions: size of the model axis (default 1).
      model_parallel_submesh: TPU physical block for the model axis (see
        :func:`partitioning.mesh.device_grid`); exclusive with a differing
        ``num_partitions``.
      logical_axis_rules: ordered ``(logical_name, mesh_axis)`` pairs; default
        :func:`standard_logical_axis_rules`.
      params_on_devices: kept for T5X compatibility; ``True`` means parameters
        are placed on devices (the only mode implemented).
      backend: platform to take devices from (``"cpu"``, ``"gpu"``, ``"tpu"``).
      devices: explicit device list (overrides ``backend``).
      mesh: a ready mesh with axes ("data", "model") (overrides the above).
      strict_rules: raise instead of warn when a logical name has no rule, or
        a parameter has no annotation.
      expected_axis_names: logical names the caller will use (e.g.
        ``MODEL_AXIS_NAMES``, including activation-only names such as
        ``cache_length``); those without a rule are reported at construction.
        Parameters' names are always checked by :meth:`get_mesh_axes`, but
        activation constraints are resolved by flax during tracing, where a
        name without a rule is silently replicated; this closes that gap.
    """

    def __init__(
        self,
        num_partitions: Optional[int] = None,
        model_parallel_submesh: Optional[Tuple[int, ...]] = None,
        logical_axis_rules: Optional[Iterable[Sequence]] = None,
        params_on_devices: bool = True,
        backend: Optional[str] = None,
        devices: Optional[Sequence[Any]] = None,
        mesh: Optional[Mesh] = None,
        strict_rules: bool = False,
        expected_axis_names: Optional[Iterable[str]] = None,
    ):
        if not params_on_devices:
            raise NotImplementedError("params_on_devices=False (host-offloaded parameters) is not supported")
        self.num_partitions = num_partitions
        self.model_parallel_submesh = model_parallel_submesh
        self.params_on_devices = params_on_devices
        self.backend = backend
        self.strict_rules = strict_rules
        self._rules = rules_lib.normalize_rules(logical_axis_rules)
        if mesh is None:
            if devices is None:
                devices = jax.devices(backend) if backend else jax.devices()
            mesh = mesh_for(num_partitions, model_parallel_submesh, devices)
        if tuple(mesh.axis_names) != rules_lib.MESH_AXES:
            raise ValueError(f"mesh axes must be {rules_lib.MESH_AXES}, got {mesh.axis_names}")
        unknown = [a for a in rules_lib.rule_mesh_axes(self._rules) if a not in mesh.axis_names]
        if unknown:
            raise ValueError(f"logical axis rules refer to mesh axes {unknown} not in the mesh {mesh.axis_names}")
        self._mesh = mesh
        if expected_axis_names is not None:
            missing = rules_lib.unmapped_names(self._rules, expected_axis_names)
            self._report("logical axis names not mapped by any rule (replicated)", {n: [] for n in missing})

    # ----------------------------------------------------------------- basics
    @property
    def mesh(self) -> Mesh:
        return self._mesh

    @property
    def logical_axis_rules(self) -> rules_lib.Rules:
        return self._rules

    @property
    def data_partition_spec(self) -> PartitionSpec:
        return PartitionSpec(rules_lib.DATA)

    @property
    def data_mesh_size(self) -> int:
        return self._mesh.shape[rules_lib.DATA]

    @property
    def model_mesh_size(self) -> int:
        return self._mesh.shape[rules_lib.MODEL]

    @contextlib.contextmanager
    def context(self):
        """Mesh + rules for code run outside :meth:`partition` (e.g. eager)."""
        with jax.set_mesh(self._mesh), nn_partitioning.axis_rules(self._rules):
            yield self

    # ------------------------------------------------------------ data layout
    def get_data_layout(self, batch_size: Optional[int] = None, host_index: Optional[int] = None) -> DataLayout:
        return LocalChunker(self._mesh, host_index).get_data_layout(batch_size)

    def get_local_chunk_info(self, global_shape: Sequence[int], mesh_axes: Sequence[Any]) -> Tuple[Tuple[slice, ...], int]:
        return LocalChunker(self._mesh).get_local_chunk_info(global_shape, mesh_axes)

    def make_global_batch(self, local_batch: Any, global_batch_size: Optional[int] = None,
                          spec: Optional[PartitionSpec] = None) -> Any:
        """Global arrays from this process's rows (``local_slice`` of the layout)."""
        sharding = NamedSharding(self._mesh, spec if spec is not None else self.data_partition_spec)

        def one(x):
            x = np.asarray(x)
            shape = None if global_batch_size is None else (global_batch_size,) + x.shape[1:]
            return jax.make_array_from_process_local_data(sharding, x, shape)

        return jax.tree_util.tree_map(one, local_batch)

    # ----------------------------------------------------- logical -> mesh
    def _report(self, what: str, items: Mapping[str, Sequence[str]]) -> None:
        if not items:
            return
        detail = "; ".join(f"{k!r} (e.g. {', '.join(v[:3])})" if v else repr(k) for k, v in sorted(items.items()))
        msg = f"{what}: {detail}"
        if self.strict_rules:
            raise ValueError(msg)
        warnings.warn(msg, UnmappedAxisWarning, stacklevel=3)
        logger.warning(msg)

    def logical_to_mesh_axes(self, logical_tree: Any) -> Any:
        """Maps a tree of logical specs to a tree of mesh PartitionSpecs.

        Leaves may be ``PartitionSpec``s of logical names, tuples of names, or
        None. Names that no rule mentions are reported (warning, or ValueError
        with ``strict_rules=True``) and replicated.
        """
        unmapped: dict = {}

        def one(path, spec):
            if spec is None:
                return None
            names = tuple(spec)
            for n in rules_lib.unmapped_names(self._rules, names):
                unmapped.setdefault(n, []).append(_path_str(path) or "<root>")
            return rules_lib.logical_to_mesh_axes(names, self._rules)

        is_leaf = lambda x: x is None or isinstance(x, PartitionSpec) or (
            isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x))
        out = jax.tree_util.tree_map_with_path(one, logical_tree, is_leaf=is_leaf)
        self._report("logical axis names not mapped by any rule (replicated)", unmapped)
        return out

    def mesh_sharding(self, spec: Any) -> Sharding:
        """NamedSharding on this mesh for a mesh PartitionSpec (None: replicated)."""
        if isinstance(spec, Sharding):
            return spec
        if spec is None:
            spec = PartitionSpec()
        if not isinstance(spec, PartitionSpec):
            spec = PartitionSpec(*spec)
        for entry in spec:
            for a in (entry,) if isinstance(entry, str) else (entry if isinstance(entry, tuple) else ()):
                if a not in self._mesh.axis_names:
                    raise ValueError(
                        f"{spec} names {a!r}, which is not a mesh axis {self._mesh.axis_names}; "
                        "map logical specs first with partitioner.logical_to_mesh_axes"
                    )
        return NamedSharding(self._mesh, spec)

    def to_shardings(self, mesh_axes_tree: Any) -> Any:
        """Tree of mesh PartitionSpecs (or None) -> tree of NamedShardings."""
        return jax.tree_util.tree_map(self.mesh_sharding, mesh_axes_tree, is_leaf=_is_spec_leaf)

    def logical_to_mesh_sharding(self, logical_tree: Any) -> Any:
        """Tree of logical specs -> tree of NamedShardings on this mesh."""
        return self.to_shardings(self.logical_to_mesh_axes(logical_tree))

    def get_logical_axes(self, state: InferenceState) -> InferenceState:
        """Same-shaped state of logical specs; reports unannotated leaves."""
        if isinstance(state, InferenceState):
            logical, missing = state._logical_axes()
            self._report("variables without axis annotations (replicated)", {m: [] for m in missing})
            return logical
        return state.as_logical_axes()

    def get_mesh_axes(self, state: InferenceState) -> InferenceState:
        """Same-shaped state whose leaves are mesh PartitionSpecs.

        A dimension whose size does not divide the mesh axes the rules give it
        (e.g. Whisper's odd vocabulary of 51865 over ``model``) is replicated
        instead, with a warning naming the parameter: arrays passed to
        ``jax.jit`` must divide evenly.
        """
        logical = self.get_logical_axes(state)
        params = self.fit_to_shapes(self.logical_to_mesh_axes(logical.params), state.params)
        mutables = None
        if logical.flax_mutables is not None:
            mutables = self.fit_to_shapes(self.logical_to_mesh_axes(logical.flax_mutables), state.flax_mutables)
        return logical.replace(params=params, flax_mutables=mutables)

    def fit_to_shapes(self, mesh_axes_tree: Any, values: Any) -> Any:
        """Replicates dimensions that don't divide their mesh axes (warns once)."""
        dropped = []

        def fit(path, spec, x):
            shape = getattr(x, "shape", None)
            if spec is None or shape is None:
                return spec
            entries = list(spec) + [None] * (len(shape) - len(spec))
            for i, entry in enumerate(entries[: len(shape)]):
                axes = (entry,) if isinstance(entry, str) else (entry if isinstance(entry, tuple) else ())
                size = int(np.prod([self._mesh.shape[a] for a in axes])) if axes else 1
                if size > 1 and shape[i] % size:
                    dropped.append(f"{path} dim {i} (size {shape[i]}) over {entry} ({size})")
                    entries[i] = None
            return PartitionSpec(*entries[: len(spec)])

        fitted = _map_with_specs(fit, mesh_axes_tree, values)
        if dropped:
            msg = "dimensions not divisible by their mesh axes are replicated: " + "; ".join(dropped)
            warnings.warn(msg, UnevenShardingWarning, stacklevel=3)
            logger.warning(msg)
        return fitted

    # -------------------------------------------------------- partitioning
    def partition(
        self,
        fn: Callable,
        in_axis_resources: Any = _UNSET,
        out_axis_resources: Any = _UNSET,
        static_argnums: Union[int, Sequence[int]] = (),
        donate_argnums: Union[int, Sequence[int]] = (),
        *,
        in_shardings: Any = _UNSET,
        out_shardings: Any = _UNSET,
    ) -> PartitionedCallable:
        """Jits ``fn`` over the mesh (T5X ``partition``).

        ``in_axis_resources`` / ``out_axis_resources`` (alias ``in_shardings`` /
        ``out_shardings``) are pytree prefixes of the (non-static) positional
        arguments / outputs whose leaves are mesh PartitionSpecs, None
        (replicated) or Shardings. Left out, jax chooses.
        """
        if in_shardings is not _UNSET and in_axis_resources is not _UNSET:
            raise TypeError("give in_axis_resources or in_shardings, not both")
        if out_shardings is not _UNSET and out_axis_resources is not _UNSET:
            raise TypeError("give out_axis_resources or out_shardings, not both")
        ins = in_shardings if in_shardings is not _UNSET else in_axis_resources
        outs = out_shardings if out_shardings is not _UNSET else out_axis_resources
        return PartitionedCallable(
            fn,
            self._mesh,
            self._rules,
            in_shardings=_UNSET if ins is _UNSET else self.to_shardings(ins),
            out_shardings=_UNSET if outs is _UNSET else self.to_shardings(outs),
            static_argnums=static_argnums,
            donate_argnums=donate_argnums,
        )

    def compile(self, partitioned_fn: PartitionedCallable, *args, **kwargs):
        """Ahead-of-time compiles; the result is callable with the same arguments."""
        return partitioned_fn.lower(*args, **kwargs).compile()

    # ------------------------------------------------------ host -> device
    def shard_host_params(self, host_params: Any, mesh_axes: Any, dtype: Any = None) -> Any:
        """Places host arrays onto the mesh, one device shard at a time.

        Each device receives only its slice (``jax.make_array_from_callback``),
        so no device ever holds a full copy of a sharded parameter; in a
        multi-process run each process supplies only its addressable shards.
        ``mesh_axes`` is a tree (prefix) of mesh PartitionSpecs matched to
        ``host_params`` by key, so dict / FrozenDict differences don't matter.
        Leaves may be numpy arrays, memory maps or anything sliceable.
        """

        def place(path, spec, x):
            sharding = self.mesh_sharding(spec)
            if isinstance(x, jax.ShapeDtypeStruct):
                raise ValueError(f"{path}: got a shape, not host data")
            if isinstance(x, jax.Array):
                x = x if dtype is None else x.astype(dtype)
                return jax.device_put(x, sharding)
            shape = tuple(np.shape(x))

            def cb(index):
                chunk = np.asarray(x[index] if shape else x)
                return chunk if dtype is None else chunk.astype(dtype)

            return jax.make_array_from_callback(shape, sharding, cb)

        return _map_with_specs(place, mesh_axes, host_params)

    def move_params_to_devices(self, state: InferenceState, state_axes: InferenceState) -> InferenceState:
        """``state`` with host params / mutables placed by :meth:`shard_host_params`."""
        out = state.replace(params=self.shard_host_params(state.params, state_axes.params))
        if state.flax_mutables is not None:
            out = out.replace(flax_mutables=self.shard_host_params(state.flax_mutables, state_axes.flax_mutables))
        return out

    def print_parameter_overview(self, params: Any, mesh_axes: Any = None, log: Callable[[str], Any] = print) -> str:
        """Logs a table of parameters (clu) and, given ``mesh_axes``, their sharding."""
        from clu import parameter_overview  # no TensorFlow needed for this module

        text = parameter_overview.get_parameter_overview(frozen_dict.unfreeze(params), include_stats=False)
        if mesh_axes is not None:
            rows = []

            def row(path, spec, x):
                shape = tuple(np.shape(x))
                shard = self.mesh_sharding(spec).shard_shape(shape) if shape else ()
                rows.append((path, str(shape), str(spec if spec is not None else PartitionSpec()), str(shard)))
                return x

            _map_with_specs(row, mesh_axes, params)
            header = ("Name", "Shape", "Mesh axes", "Per-device shape")
            widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
            fmt = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))
            text += "\n" + "\n".join([fmt(header), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in rows])
        log(text)
        return text


def _map_with_specs(fn: Callable, specs: Any, values: Any, path: Tuple[str, ...] = ()) -> Any:
    """Maps ``fn(path, spec, leaf)`` with ``specs`` a prefix of ``values`` (by key)."""
    if _is_spec_leaf(specs):
        def leaf(p, v):
            return fn("/".join(path + tuple(_path_str([k]) for k in p)), specs, v)

        return jax.tree_util.tree_map_with_path(leaf, values)
    if isinstance(values, Mapping):
        if not isinstance(specs, Mapping):
            raise ValueError(f"{'/'.join(path) or '<root>'}: specs {type(specs).__name__} do not match a mapping")
        missing = [k for k in values if k not in specs]
        if missing:
            raise ValueError(f"{'/'.join(path) or '<root>'}: no partition spec for {missing}")
        out = {k: _map_with_specs(fn, specs[k], v, path + (str(k),)) for k, v in values.items()}
        return frozen_dict.freeze(out) if isinstance(values, frozen_dict.FrozenDict) else out
    if isinstance(values, (list, tuple)) and isinstance(specs, (list, tuple)) and len(values) == len(specs):
        out = [_map_with_specs(fn, s, v, path + (str(i),)) for i, (s, v) in enumerate(zip(specs, values))]
        return type(values)(out) if not hasattr(values, "_fields") else type(values)(*out)
    raise ValueError(f"{'/'.join(path) or '<root>'}: specs {specs!r} do not match values of type {type(values).__name__}")
