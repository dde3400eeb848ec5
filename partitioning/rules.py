"""Logical-axis rule tables and the logical -> mesh axis mapping.

A rule table is an ordered sequence of ``(logical_name, mesh_axis)`` pairs,
where ``mesh_axis`` is a mesh axis name (``"data"`` / ``"model"``), a tuple of
mesh axis names, or ``None`` (replicate). For one array, dimensions are
assigned in rule order: the first rule that names a dimension and whose mesh
axis is still unused in that array wins; a dimension with no usable rule is
replicated. This is the same resolution flax's ``logical_to_mesh_axes`` uses for
activations, so parameters and activations follow one rule table.

The names used by the Whisper model are listed in :data:`MODEL_AXIS_NAMES`
(a copy of ``whisper_t5x.model.axes.ALL_NAMES``; this package never imports the
model). Every named rule set below maps each of them explicitly, so nothing is
replicated by accident. A name that no rule mentions is reported by the
partitioner (see :func:`unmapped_names`).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

from jax.sharding import PartitionSpec

MeshAxis = Union[None, str, Tuple[str, ...]]
Rule = Tuple[str, MeshAxis]
Rules = Tuple[Rule, ...]

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

#: The logical axis vocabulary of the Whisper model (``whisper_t5x/model/axes.py``).
MODEL_AXIS_NAMES: Tuple[str, ...] = (
    "batch",
    "length",
    "cache_length",
    "embed",
    "mlp",
    "heads",
    "kv",
    "joined_kv",
    "vocab",
    "num_mel",
    "channels",
    "conv_width",
    "layers",
)

# Names that are never sharded by any standard table: sequence positions are
# kept whole (attention needs them), conv/mel/scan axes are tiny or structural.
_ALWAYS_REPLICATED: Rules = (
    ("length", None),
    ("cache_length", None),
    ("kv", None),
    ("num_mel", None),
    ("channels", None),
    ("conv_width", None),
    ("layers", None),
)


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Optional[Iterable[Rule]] = None,
) -> Rules:
    """T5X-style default rules for a ("data", "model") mesh.

    ``activation_partitioning_dims=2`` additionally shards the ``embed``
    dimension of activations over ``model`` (batch stays on ``data``).
    ``parameter_partitioning_dims=2`` additionally shards the ``embed``
    dimension of parameters over ``data`` (FSDP-like: XLA gathers them at use).

    ``additional_rules`` are placed first, so they take precedence.
    """
    if activation_partitioning_dims not in (1, 2):
        raise ValueError(f"activation_partitioning_dims must be 1 or 2, got {activation_partitioning_dims}")
    if parameter_partitioning_dims not in (1, 2):
        raise ValueError(f"parameter_partitioning_dims must be 1 or 2, got {parameter_partitioning_dims}")
    rules = [
        ("batch", DATA),
        ("vocab", MODEL),
        ("mlp", MODEL),
        ("heads", MODEL),
        ("joined_kv", MODEL),
    ]
    # Order matters: in a kernel (embed, mlp) the "mlp" rule has already taken
    # "model", so ("embed", "model") falls through to ("embed", "data") or None.
    # In an activation (batch, length, embed) "batch" already took "data", so
    # ("embed", "data") falls through to None.
    if activation_partitioning_dims == 2:
        rules.append(("embed", MODEL))
    if parameter_partitioning_dims == 2:
        rules.append(("embed", DATA))
    rules.append(("embed", None))
    rules.extend(_ALWAYS_REPLICATED)
    head = tuple(tuple(r) for r in (additional_rules or ()))
    return head + tuple(rules)


#: Pure data parallelism: batch over "data", every parameter replicated.
logical_axis_rules_dp: Rules = (("batch", DATA),) + tuple(
    (name, None) for name in MODEL_AXIS_NAMES if name != "batch"
)
#: Megatron-style model parallelism: heads / mlp / vocab over "model".
logical_axis_rules_mp: Rules = standard_logical_axis_rules(1, 1)
#: 2-D: activations' embed over "model", parameters' embed over "data".
logical_axis_rules_2d: Rules = standard_logical_axis_rules(2, 2)
#: Fully sharded parameters: parameters' embed over "data" (gathered at use),
#: activations sharded by batch only; heads / mlp / vocab still over "model".
logical_axis_rules_fsdp: Rules = standard_logical_axis_rules(1, 2)

RULE_SETS = {
    "dp": logical_axis_rules_dp,
    "mp": logical_axis_rules_mp,
    "2d": logical_axis_rules_2d,
    "fsdp": logical_axis_rules_fsdp,
}


def rules_for(name: str) -> Rules:
    """Returns a named rule set: one of ``dp``, ``mp``, ``2d``, ``fsdp``."""
    try:
        return RULE_SETS[name]
    except KeyError:
        raise ValueError(f"unknown rule set {name!r}; known: {sorted(RULE_SETS)}") from None


def normalize_rules(rules: Optional[Iterable[Sequence]]) -> Rules:
    """Validates a rule table and returns it as a tuple of pairs.

    Duplicate rules (as in Whisper JAX's published list) are kept: they are
    harmless since the first match wins.
    """
    if rules is None:
        return standard_logical_axis_rules()
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise ValueError(f"rule #{i} must be a (logical_name, mesh_axis) pair, got {rule!r}")
        name, axis = rule
        if not isinstance(name, str):
            raise ValueError(f"rule #{i}: logical name must be a str, got {name!r}")
        if isinstance(axis, list):
            axis = tuple(axis)
        if not (axis is None or isinstance(axis, str) or (isinstance(axis, tuple) and all(isinstance(a, str) for a in axis))):
            raise ValueError(f"rule #{i} ({name!r}): mesh axis must be None, a str or a tuple of str, got {axis!r}")
        out.append((name, axis))
    return tuple(out)


def rule_mesh_axes(rules: Rules) -> Tuple[str, ...]:
    """All mesh axis names a rule table refers to."""
    seen = []
    for _, axis in rules:
        for a in (axis,) if isinstance(axis, str) else (axis or ()):
            if a not in seen:
                seen.append(a)
    return tuple(seen)


def mapped_names(rules: Rules) -> frozenset:
    """Logical names mentioned by at least one rule (even as ``None``)."""
    return frozenset(name for name, _ in rules)


def unmapped_names(rules: Rules, names: Iterable[Optional[str]]) -> Tuple[str, ...]:
    """The names in ``names`` that no rule mentions, sorted, without repeats."""
    known = mapped_names(rules)
    return tuple(sorted({n for n in names if isinstance(n, str) and n not in known}))


def _as_axes(axis: MeshAxis) -> Tuple[str, ...]:
    if axis is None:
        return ()
    return (axis,) if isinstance(axis, str) else tuple(axis)


def logical_to_mesh_axes(logical: Optional[Sequence[Optional[str]]], rules: Rules) -> Optional[PartitionSpec]:
    """Maps one logical spec (e.g. ``("embed", "mlp")``) to a mesh PartitionSpec.

    ``None`` stays ``None`` (a leaf without annotation). Dimensions that are
    ``None`` in the logical spec or that no usable rule assigns are replicated.
    A logical name appearing twice in one spec is an error.
    """
    if logical is None:
        return None
    dims = tuple(logical)
    named = [d for d in dims if isinstance(d, str)]
    dups = sorted({d for d in named if named.count(d) > 1})
    if dups:
        raise ValueError(f"logical axis names {dups} occur more than once in {dims}")
    assigned: list = [None] * len(dims)
    done = [not isinstance(d, str) for d in dims]
    used: set = set()
    for name, axis in rules:
        if name not in dims:
            continue
        pos = dims.index(name)
        if done[pos]:
            continue
        axes = _as_axes(axis)
        if any(a in used for a in axes):
            continue  # mesh axis already taken in this array: fall through
        assigned[pos] = axis
        done[pos] = True
        used.update(axes)
    # Keep PartitionSpec.UNCONSTRAINED etc. as given for non-str entries.
    out = [assigned[i] if isinstance(d, str) else d for i, d in enumerate(dims)]
    return PartitionSpec(*out)


def check_rules_cover(rules: Rules, names: Iterable[str] = MODEL_AXIS_NAMES) -> None:
    """Raises ValueError if some of ``names`` are not mentioned by ``rules``."""
    missing = unmapped_names(rules, names)
    if missing:
        raise ValueError(f"logical axis rules do not map {list(missing)}")
