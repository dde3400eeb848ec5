"""Checks run in a subprocess with 8 simulated CPU devices; prints RESULT <json>.

Used by test_partitioning_devices.py (see partitioning_test_utils.py for why a
subprocess).
"""

import json
import re
import warnings

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from flax.core import freeze

import partitioning as pt
import partitioning_toy_model as T

# Whisper JAX's published rule list, as-is (duplicate "embed" included).
SEED_RULES_DP = (("batch", "data"), ("mlp", None), ("heads", None), ("vocab", None), ("embed", None),
                 ("embed", None), ("joined_kv", None), ("kv", None), ("length", None), ("num_mel", None),
                 ("channels", None))

LAYOUTS = {
    "dp": (1, pt.logical_axis_rules_dp),
    "mp": (8, pt.logical_axis_rules_mp),
    "2d": (2, pt.logical_axis_rules_2d),
    "fsdp": (1, pt.logical_axis_rules_fsdp),
}


def norm(spec):
    entries = [list(e) if isinstance(e, tuple) else e for e in spec]
    while entries and entries[-1] is None:
        entries.pop()
    return entries


def constraints(text):
    """(mesh spec, tensor type) of every sharding constraint in lowered StableHLO."""
    pairs = re.findall(r"sharding_constraint[^<\n]*<@mesh, (\[[^\n]*?\])>\s*:\s*tensor<([^>]*)>", text)
    return sorted({f"{t} {s}" for s, t in pairs})


def check_layout(name, model, variables, tok, ref):
    num_partitions, rules = LAYOUTS[name]
    part = pt.PjitPartitioner(num_partitions=num_partitions, logical_axis_rules=rules, strict_rules=True)
    axes = part.get_mesh_axes(pt.InferenceState.create(variables))
    host = jax.tree_util.tree_map(np.asarray, variables["params"])
    params = part.shard_host_params(host, axes.params)
    shards_ok = all(
        np.array_equal(np.asarray(s.data), host[k][s.index]) for k, v in params.items() for s in v.addressable_shards
    )
    f = part.partition(lambda p, t: model.apply({"params": p}, t),
                       in_axis_resources=(axes.params, P("data")), out_axis_resources=P("data"))
    lowered = f.lower(params, tok)
    compiled = lowered.compile().as_text()
    out = f(params, tok)
    # A committed argument laid out differently is moved, not rejected.
    replicated = jax.device_put(params, part.mesh_sharding(P()))
    out2 = f(replicated, tok)
    return dict(
        mesh=dict(part.mesh.shape),
        specs={k: norm(v.sharding.spec) for k, v in params.items()},
        axes={k: norm(v) for k, v in axes.params.items()},
        shard_shapes={k: list(v.addressable_shards[0].data.shape) for k, v in params.items()},
        shards_ok=bool(shards_ok),
        constraints=constraints(lowered.as_text()),
        collectives=sorted(set(re.findall(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(", compiled))),
        max_err=float(np.abs(np.asarray(out) - ref).max()),
        max_err_resharded=float(np.abs(np.asarray(out2) - ref).max()),
        out_spec=norm(out.sharding.spec),
    )


def seed_flow(model, tok):
    """The Whisper JAX call sequence, verbatim in shape."""
    init_fn = T.init_fn(model)
    param_axes = jax.eval_shape(init_fn)["params_axes"]
    params_shape_tree = jax.eval_shape(init_fn)["params"]
    state = pt.InferenceState(
        step=jnp.array(0),
        params=freeze(params_shape_tree),
        params_axes=freeze(param_axes),
        flax_mutables=None,
        flax_mutables_axes=param_axes,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        partitioner = pt.PjitPartitioner(num_partitions=1, logical_axis_rules=SEED_RULES_DP)
        mesh_axes = partitioner.get_mesh_axes(state)
    params_spec = mesh_axes.params
    p_shard_params = partitioner.partition(T.to_bf16, (params_spec,), params_spec)

    def generate(params, input_ids):
        return model.apply({"params": params}, input_ids)

    p_generate = partitioner.partition(generate, in_axis_resources=(params_spec, P("data")), out_axis_resources=P("data"))
    host = init_fn()["params"]
    params = p_shard_params(freeze(host))
    out = p_generate(params, tok)
    compiled = partitioner.compile(p_generate, params, tok)
    out_c = compiled(params, tok)
    ref = np.asarray(jax.jit(generate)(T.to_bf16(host), tok))
    res = dict(
        mesh=dict(partitioner.mesh.shape),
        warnings=[str(w.message) for w in caught],
        param_dtypes=sorted({str(v.dtype) for v in jax.tree_util.tree_leaves(params)}),
        param_specs=sorted({str(norm(v.sharding.spec)) for v in jax.tree_util.tree_leaves(params)}),
        out_spec=norm(out.sharding.spec),
        max_err=float(np.abs(np.asarray(out) - ref).max()),
        max_err_compiled=float(np.abs(np.asarray(out_c) - ref).max()),
        step_spec=str(mesh_axes.step),
        flax_mutables=repr(mesh_axes.flax_mutables),
    )
    # A batch that doesn't divide the data axis: a clear error ...
    odd = T.tokens(batch=3, seed=1)
    try:
        p_generate(params, odd)
        res["odd_error"] = None
    except Exception as e:  # noqa: BLE001
        res["odd_error"] = f"{type(e).__name__}: {e}"
    try:
        partitioner.get_data_layout(3)
        res["odd_layout_error"] = None
    except ValueError as e:
        res["odd_layout_error"] = str(e)
    # ... or explicit padding.
    padded, n = pt.pad_batch_to_multiple(odd, partitioner.data_mesh_size)
    out_odd = np.asarray(p_generate(params, padded))[:n]
    ref_odd = np.asarray(jax.jit(generate)(T.to_bf16(host), odd))
    res["padded_shape"] = list(padded.shape)
    res["padded_err"] = float(np.abs(out_odd - ref_odd).max())
    layout = partitioner.get_data_layout(16)
    res["layout"] = [layout.batch_size, layout.shard_id, layout.num_shards, layout.is_first_host_in_replica_set]
    sl, rep = partitioner.get_local_chunk_info((16, 4), ("data", None))
    res["chunk"] = [[s.start, s.stop] for s in sl] + [rep]
    text = partitioner.print_parameter_overview(params, params_spec, log=lambda s: None)
    res["overview_ok"] = "embedding" in text and "Per-device shape" in text
    return res


def uneven(variables):
    """An odd-sized vocabulary (Whisper's 51865) cannot split over "model": replicated, with a warning."""
    from flax.core import unfreeze
    from flax.linen import partitioning as nn_partitioning

    v = unfreeze(variables)
    v["params"]["odd"] = np.ones((51, 16), np.float32)
    v["params_axes"]["odd_axes"] = nn_partitioning.AxisMetadata(names=("vocab", "embed"))
    part = pt.PjitPartitioner(num_partitions=8, logical_axis_rules=pt.logical_axis_rules_mp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        axes = part.get_mesh_axes(pt.InferenceState.create(v))
    placed = part.shard_host_params(jax.tree_util.tree_map(np.asarray, v["params"]), axes.params)
    return dict(
        odd=norm(axes.params["odd"]), wi=norm(axes.params["wi"]), odd_placed=norm(placed["odd"].sharding.spec),
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
    )


def gin_builds():
    import gin
    import partitioning.gin_bindings  # noqa: F401

    out = {}
    for name in ("dp", "mp", "2d", "fsdp"):
        gin.clear_config()
        gin.parse_config_file(f"configs/partitioning/{name}.gin")
        part = gin.get_configurable("partitioning.PjitPartitioner")()
        out[name] = dict(mesh=dict(part.mesh.shape), rules_match=part.logical_axis_rules == pt.RULE_SETS[name])
    gin.clear_config()
    gin.parse_config_files_and_bindings(["configs/partitioning/mp.gin"], ["NUM_PARTITIONS = 4"])
    out["mp_override"] = dict(gin.get_configurable("partitioning.PjitPartitioner")().mesh.shape)
    return out


def main():
    assert jax.device_count() == 8, jax.devices()
    model = T.ToyModel()
    variables = T.init_fn(model)()
    tok = T.tokens()
    ref = np.asarray(jax.jit(model.apply)(variables, tok))
    result = {name: check_layout(name, model, variables, tok, ref) for name in LAYOUTS}
    result["seed"] = seed_flow(model, tok)
    result["gin"] = gin_builds()
    result["uneven"] = uneven(variables)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
