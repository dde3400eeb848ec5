"""In-process tests of rules, meshes (with fake devices), state, chunking and the
partitioner on one device. Multi-device behaviour: test_partitioning_devices.py.
"""

import dataclasses
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import freeze, unfreeze
from flax.linen import partitioning as nn_partitioning
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import partitioning as pt  # noqa: E402
import partitioning_toy_model as T  # noqa: E402
from partitioning_test_utils import run_snippet  # noqa: E402

SEED_RULES_DP = (("batch", "data"), ("mlp", None), ("heads", None), ("vocab", None), ("embed", None),
                 ("embed", None), ("joined_kv", None), ("kv", None), ("length", None), ("num_mel", None),
                 ("channels", None))


def one_device_partitioner(**kw):
    return pt.PjitPartitioner(devices=jax.devices()[:1], **kw)


# ------------------------------------------------------------------ rules
@pytest.mark.parametrize("name", ["dp", "mp", "2d", "fsdp"])
def test_named_rule_sets_cover_every_model_name(name):
    rules = pt.rules_for(name)
    pt.check_rules_cover(rules)
    assert pt.unmapped_names(rules, pt.MODEL_AXIS_NAMES) == ()
    assert {a for _, a in rules} <= {"data", "model", None}


@pytest.mark.parametrize("act,par", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_standard_rules_cover_every_model_name(act, par):
    pt.check_rules_cover(pt.standard_logical_axis_rules(act, par))


def test_model_axis_names_match_the_model_vocabulary():
    assert pt.MODEL_AXIS_NAMES == ("batch", "length", "cache_length", "embed", "mlp", "heads", "kv",
                                   "joined_kv", "vocab", "num_mel", "channels", "conv_width", "layers")


def test_first_match_wins_and_mesh_axes_are_not_reused():
    r2d = pt.logical_axis_rules_2d
    assert pt.logical_to_mesh_axes(("embed", "mlp"), r2d) == P("data", "model")
    assert pt.logical_to_mesh_axes(("batch", "length", "embed"), r2d) == P("data", None, "model")
    assert pt.logical_to_mesh_axes(("vocab", "embed"), r2d) == P("model", "data")
    assert pt.logical_to_mesh_axes(("batch", "length", "embed"), pt.logical_axis_rules_fsdp) == P("data", None, None)
    assert pt.logical_to_mesh_axes(("embed", "joined_kv"), pt.logical_axis_rules_mp) == P(None, "model")
    assert pt.logical_to_mesh_axes(("heads", "mlp"), pt.logical_axis_rules_mp) == P(None, "model")  # mlp rule first
    assert pt.logical_to_mesh_axes(None, r2d) is None
    assert pt.logical_to_mesh_axes((None, "embed"), pt.logical_axis_rules_mp) == P(None, None)
    with pytest.raises(ValueError, match="more than once"):
        pt.logical_to_mesh_axes(("embed", "embed"), r2d)


def test_standard_rules_additional_rules_take_precedence():
    rules = pt.standard_logical_axis_rules(additional_rules=[("length", "model")])
    assert pt.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", "model", None)
    with pytest.raises(ValueError):
        pt.standard_logical_axis_rules(activation_partitioning_dims=3)


def test_multi_axis_rule():
    rules = (("batch", ("data", "model")), ("embed", "model"))
    assert pt.logical_to_mesh_axes(("batch", "embed"), rules) == P(("data", "model"), None)


def test_seed_rule_list_accepted_as_is():
    assert pt.normalize_rules(SEED_RULES_DP) == SEED_RULES_DP
    part = one_device_partitioner(logical_axis_rules=SEED_RULES_DP)
    assert part.logical_axis_rules == SEED_RULES_DP
    extra = SEED_RULES_DP + (("relpos_buckets", None), ("abspos_buckets", None))
    one_device_partitioner(logical_axis_rules=extra)  # names unused by the model are fine


def test_bad_rules_rejected():
    with pytest.raises(ValueError, match="pair"):
        pt.normalize_rules([("batch",)])
    with pytest.raises(ValueError, match="mesh axes"):
        one_device_partitioner(logical_axis_rules=[("batch", "replica")])
    with pytest.raises(ValueError, match="unknown rule set"):
        pt.rules_for("tp")


def _state(model):
    return pt.InferenceState.create(T.init_fn(model)())


def test_unmapped_param_name_warns():
    part = one_device_partitioner(logical_axis_rules=SEED_RULES_DP)
    state = _state(T.ToyModel(extra_param_axes=("conv_width", "num_mel", "layers")))
    with pytest.warns(pt.UnmappedAxisWarning) as caught:
        axes = part.get_mesh_axes(state)
    msg = " ".join(str(w.message) for w in caught)
    assert "'conv_width'" in msg and "'layers'" in msg and "extra" in msg
    assert "'num_mel'" not in msg  # mapped (to None) by the seed list
    assert axes.params["extra"] == P(None, None, None)


def test_unmapped_name_is_an_error_when_strict():
    part = one_device_partitioner(logical_axis_rules=SEED_RULES_DP, strict_rules=True)
    state = _state(T.ToyModel(extra_param_axes=("conv_width",)))
    with pytest.raises(ValueError, match="conv_width"):
        part.get_mesh_axes(state)


def test_unmapped_activation_spec_reported():
    part = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_mp)
    with pytest.warns(pt.UnmappedAxisWarning, match="frames"):
        out = part.logical_to_mesh_axes({"x": P("batch", "frames"), "y": ("mlp",), "z": None})
    assert out == {"x": P("data", None), "y": P("model"), "z": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        part.logical_to_mesh_axes({"x": P("batch", "length", "embed")})


def test_expected_axis_names_checked_at_construction():
    with pytest.warns(pt.UnmappedAxisWarning) as caught:
        one_device_partitioner(logical_axis_rules=SEED_RULES_DP, expected_axis_names=pt.MODEL_AXIS_NAMES)
    msg = str(caught[0].message)
    assert "'cache_length'" in msg and "'conv_width'" in msg and "'layers'" in msg and "'embed'" not in msg
    with pytest.raises(ValueError, match="cache_length"):
        one_device_partitioner(logical_axis_rules=SEED_RULES_DP, expected_axis_names=pt.MODEL_AXIS_NAMES,
                               strict_rules=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_fsdp, expected_axis_names=pt.MODEL_AXIS_NAMES)


def test_full_rules_give_no_warning():
    part = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        part.get_mesh_axes(_state(T.ToyModel(extra_param_axes=("conv_width", "num_mel", "layers"))))


# ------------------------------------------------------------------ meshes
@dataclasses.dataclass(frozen=True, eq=False)
class FakeDevice:
    id: int
    platform: str = "cpu"
    process_index: int = 0
    device_kind: str = "cpu"
    coords: tuple = (0, 0, 0)
    core_on_chip: int = 0
    slice_index: int = 0


def hosts(num_procs, per_proc, platform="gpu"):
    return [FakeDevice(p * per_proc + i, platform, p, platform) for p in range(num_procs) for i in range(per_proc)]


def tpu_slice(shape, cores=1, slice_index=0, start_id=0, procs_per_slice=1):
    devs, i = [], start_id
    for z in range(shape[2]):
        for y in range(shape[1]):
            for x in range(shape[0]):
                for c in range(cores):
                    devs.append(FakeDevice(i, "tpu", slice_index * procs_per_slice, "TPU v4", (x, y, z), c, slice_index))
                    i += 1
    return devs


def test_impossible_shape_names_shape_and_devices():
    with pytest.raises(ValueError) as e:
        pt.device_grid(num_partitions=3, devices=hosts(1, 8, "cpu"))
    msg = str(e.value)
    assert "num_partitions=3" in msg and "8 devices" in msg and "('data', 'model')" in msg
    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"num_partitions={n + 1}.*{n} devices"):
        pt.mesh_for(num_partitions=n + 1)
    with pytest.raises(ValueError, match="product of model_parallel_submesh"):
        pt.device_grid(num_partitions=2, model_parallel_submesh=(1, 1, 4), devices=hosts(1, 8))
    with pytest.raises(ValueError, match=r"num_partitions=\d+"):
        pt.PjitPartitioner(num_partitions=n + 1)


def test_real_mesh_axes_and_types():
    mesh = pt.mesh_for(devices=jax.devices())
    assert mesh.axis_names == ("data", "model")
    assert mesh.shape["model"] == 1 and mesh.shape["data"] == len(jax.devices())
    assert all(str(t) == "Auto" or getattr(t, "name", "") == "Auto" for t in mesh.axis_types)


def test_gpu_model_axis_stays_within_a_host():
    grid = pt.device_grid(num_partitions=2, devices=hosts(2, 4))
    assert grid.shape == (4, 2)
    assert all(len({d.process_index for d in row}) == 1 for row in grid)
    grid = pt.device_grid(num_partitions=4, devices=hosts(2, 4))
    assert [{d.process_index for d in row} for row in grid] == [{0}, {1}]
    assert pt.device_grid(num_partitions=8, devices=hosts(2, 4)).shape == (1, 8)  # spans, with a warning
    with pytest.raises(ValueError, match="must divide the 6 devices of one host"):
        pt.device_grid(num_partitions=4, devices=hosts(2, 6))


def test_cpu_single_host_order():
    grid = pt.device_grid(num_partitions=2, devices=list(reversed(hosts(1, 8, "cpu"))))
    assert [[d.id for d in row] for row in grid] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_tpu_submesh_blocks():
    devs = tpu_slice((2, 2, 2))  # e.g. a v4-16: 8 chips, one core each
    grid = pt.device_grid(model_parallel_submesh=(1, 1, 2), devices=devs)
    assert grid.shape == (4, 2)
    for row in grid:  # model axis = the two chips along z at one (x, y)
        assert {d.coords[:2] for d in row} == {row[0].coords[:2]} and {d.coords[2] for d in row} == {0, 1}
    assert pt.device_grid(model_parallel_submesh=(2, 2, 2, 1), devices=devs).shape == (1, 8)
    with pytest.raises(ValueError, match="does not tile"):
        pt.device_grid(model_parallel_submesh=(1, 1, 4), devices=tpu_slice((4, 2, 1)))


def test_tpu_two_cores_per_chip():
    devs = tpu_slice((2, 2, 1), cores=2)  # v2/v3 style
    grid = pt.device_grid(model_parallel_submesh=(1, 1, 1, 2), devices=devs)
    assert grid.shape == (4, 2)
    for row in grid:
        assert row[0].coords == row[1].coords and {row[0].core_on_chip, row[1].core_on_chip} == {0, 1}


def test_tpu_without_submesh_places_all_devices():
    devs = tpu_slice((2, 2, 2))
    grid = pt.device_grid(num_partitions=2, devices=devs)
    assert grid.shape == (4, 2) and sorted(d.id for d in grid.flat) == list(range(8))


def test_tpu_multislice_data_over_dcn():
    devs = tpu_slice((2, 2, 1), slice_index=0) + tpu_slice((2, 2, 1), slice_index=1, start_id=4)
    grid = pt.device_grid(model_parallel_submesh=(2, 1, 1), devices=devs)
    assert grid.shape == (4, 2)
    assert [{d.slice_index for d in row} for row in grid] == [{0}, {0}, {1}, {1}]
    with pytest.raises(ValueError, match="inside one slice"):
        pt.device_grid(num_partitions=8, devices=devs)


# ------------------------------------------------------------------ state
def test_inference_state_create_and_logical_axes():
    variables = T.init_fn()()
    state = pt.InferenceState.create(variables)
    assert int(state.step) == 0 and state.flax_mutables is None
    logical = state.as_logical_axes()
    assert logical.params == nn_partitioning.get_axis_names(variables["params_axes"])
    assert logical.params["wi"] == P("embed", "mlp")
    # a pytree whose leaves are step + params; the annotations are static
    assert len(jax.tree_util.tree_leaves(state)) == 1 + len(variables["params"])
    hash(jax.tree_util.tree_structure(state))
    new = state.replace_params(jax.tree_util.tree_map(lambda x: x * 0, state.params))
    assert float(jnp.abs(new.params["wi"]).max()) == 0.0 and new.params_axes is state.params_axes


def test_inference_state_state_dict_roundtrip():
    state = pt.InferenceState.create(T.init_fn()())
    sd = state.state_dict()
    zeros = state.replace_params(jax.tree_util.tree_map(jnp.zeros_like, state.params))
    restored = zeros.restore_state(sd)
    for k in state.params:
        np.testing.assert_array_equal(restored.params[k], state.params[k])


def test_seed_state_with_unfrozen_axes_and_mutables():
    shapes = jax.eval_shape(T.init_fn())
    state = pt.InferenceState(step=jnp.array(0), params=freeze(shapes["params"]),
                              params_axes=freeze(shapes["params_axes"]), flax_mutables=None,
                              flax_mutables_axes=shapes["params_axes"])
    hash(jax.tree_util.tree_structure(state))
    axes = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_mp).get_mesh_axes(state)
    assert axes.params["wi"] == P(None, "model") and axes.flax_mutables is None and axes.step == P()


def test_create_with_mutable_collection():
    variables = unfreeze(T.init_fn()())
    variables["cache"] = {"k": jnp.zeros((2, 4))}
    variables["cache_axes"] = {"k_axes": nn_partitioning.AxisMetadata(names=("batch", "cache_length"))}
    state = pt.InferenceState.create(variables)
    axes = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_mp).get_mesh_axes(state)
    assert axes.flax_mutables["cache"]["k"] == P("data", None)


def test_parameter_without_annotation_reported():
    variables = unfreeze(T.init_fn()())
    variables["params"]["plain"] = jnp.ones((3,))
    state = pt.InferenceState.create(variables)
    with pytest.warns(pt.UnmappedAxisWarning, match="plain"):
        axes = one_device_partitioner().get_mesh_axes(state)
    assert axes.params["plain"] is None
    with pytest.raises(ValueError, match="plain"):
        one_device_partitioner(strict_rules=True).get_mesh_axes(state)


# --------------------------------------------------------------- chunking
def test_pad_batch_to_multiple():
    batch = {"x": np.ones((5, 3), np.float32), "ids": np.arange(5)}
    padded, n = pt.pad_batch_to_multiple(batch, 4)
    assert n == 5 and padded["x"].shape == (8, 3) and padded["ids"].shape == (8,)
    assert padded["x"][5:].sum() == 0 and list(padded["ids"][:5]) == list(range(5))
    same, n = pt.pad_batch_to_multiple(batch, 5)
    assert same["x"] is batch["x"] and n == 5
    jpad, _ = pt.pad_batch_to_multiple(jnp.ones((3, 2)), 2)
    assert jpad.shape == (4, 2)
    with pytest.raises(ValueError, match="disagree"):
        pt.pad_batch_to_multiple({"a": np.ones(2), "b": np.ones(3)}, 2)


def test_data_layout_slices():
    layout = pt.DataLayout(batch_size=16, shard_id=1, num_shards=4, is_first_host_in_replica_set=True)
    assert layout.per_shard_batch_size == 4 and layout.local_slice == slice(4, 8)
    part = one_device_partitioner()
    n = part.data_mesh_size
    assert part.get_data_layout(2 * n) == pt.DataLayout(2 * n, 0, 1, True)
    if n > 1:
        with pytest.raises(ValueError, match="pad_batch_to_multiple"):
            part.get_data_layout(n + 1)
    assert part.data_partition_spec == P("data")


# ------------------------------------------------------------ partitioner
def test_partition_keywords_static_and_errors():
    part = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_mp)
    f = part.partition(lambda x, k: x * k, in_shardings=(P("data"),), out_shardings=P("data"), static_argnums=(1,))
    np.testing.assert_allclose(f(np.ones((2, 3), np.float32), 3), 3.0)
    assert "stablehlo" in f.lower(np.ones((2, 3), np.float32), 3).as_text()
    with pytest.raises(TypeError):
        part.partition(lambda x: x, in_axis_resources=(None,), in_shardings=(None,))
    with pytest.raises(ValueError, match="not a mesh axis"):
        part.partition(lambda x: x, (P("batch"),), None)
    g = part.partition(lambda x: x + 1, None, None, donate_argnums=(0,))
    np.testing.assert_allclose(g(jnp.zeros(4)), 1.0)


def test_shard_host_params_matches_by_key():
    part = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_mp)
    variables = T.init_fn()()
    axes = part.get_mesh_axes(pt.InferenceState.create(variables))
    host = {k: np.asarray(v) for k, v in variables["params"].items()}
    placed = part.shard_host_params(host, axes.params, dtype=np.float16)  # dict values, FrozenDict specs
    assert isinstance(placed, dict) and placed["wi"].dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(placed["wi"]), host["wi"].astype(np.float16))
    with pytest.raises(ValueError, match="no partition spec"):
        part.shard_host_params({**host, "other": np.ones(2)}, axes.params)


def test_context_applies_rules_eagerly():
    part = one_device_partitioner(logical_axis_rules=pt.logical_axis_rules_mp)
    with part.context():
        assert nn_partitioning.get_axis_rules() == pt.logical_axis_rules_mp


def test_package_imports_without_gin_or_model():
    r = run_snippet(
        "import sys, json, partitioning\n"
        "print('RESULT ' + json.dumps([m for m in ('gin', 'whisper_t5x', 'clu.metric_writers') if m in sys.modules]))",
        num_devices=1, timeout=60,
    )
    assert r == []
