"""Partitioned toy model on 8 simulated CPU devices: DP 8x1, MP 1x8, 2-D 4x2, FSDP 8x1.

All checks run once in one subprocess (partitioning_device_checks.py) and the
tests below assert on its JSON report.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partitioning_test_utils import run_snippet  # noqa: E402

EMBED_ACT = "8x6x16xf32"  # (batch, length, embed)
HEADS_ACT = "8x6x8x4xf32"  # (batch, length, heads, kv)
MLP_ACT = "8x6x64xf32"  # (batch, length, mlp)
LOGITS = "8x6x48xf32"  # (batch, length, vocab)

EXPECTED_SPECS = {
    "dp": {k: [] for k in ("embedding", "q", "k", "v", "out", "wi", "wo", "scale")},
    "mp": {"embedding": ["model"], "q": [None, "model"], "k": [None, "model"], "v": [None, "model"],
           "out": ["model"], "wi": [None, "model"], "wo": ["model"], "scale": []},
    "2d": {"embedding": ["model", "data"], "q": ["data", "model"], "k": ["data", "model"], "v": ["data", "model"],
           "out": ["model", "data"], "wi": ["data", "model"], "wo": ["model", "data"], "scale": ["model"]},
    "fsdp": {"embedding": ["model", "data"], "q": ["data", "model"], "k": ["data", "model"], "v": ["data", "model"],
             "out": ["model", "data"], "wi": ["data", "model"], "wo": ["model", "data"], "scale": ["data"]},
}
EXPECTED_MESH = {"dp": {"data": 8, "model": 1}, "mp": {"data": 1, "model": 8},
                 "2d": {"data": 4, "model": 2}, "fsdp": {"data": 8, "model": 1}}
# Activation constraints (from the model's with_logical_constraint calls) that
# must appear in the lowered program.
EXPECTED_ACTIVATIONS = {
    "dp": [f'{EMBED_ACT} [{{"data"}}, {{}}, {{}}]', f'{MLP_ACT} [{{"data"}}, {{}}, {{}}]',
           f'{HEADS_ACT} [{{"data"}}, {{}}, {{}}, {{}}]', f'{LOGITS} [{{"data"}}, {{}}, {{}}]'],
    "mp": [f'{EMBED_ACT} [{{"data"}}, {{}}, {{}}]', f'{MLP_ACT} [{{"data"}}, {{}}, {{"model"}}]',
           f'{HEADS_ACT} [{{"data"}}, {{}}, {{"model"}}, {{}}]', f'{LOGITS} [{{"data"}}, {{}}, {{"model"}}]'],
    "2d": [f'{EMBED_ACT} [{{"data"}}, {{}}, {{"model"}}]', f'{MLP_ACT} [{{"data"}}, {{}}, {{"model"}}]',
           f'{HEADS_ACT} [{{"data"}}, {{}}, {{"model"}}, {{}}]'],
    "fsdp": [f'{EMBED_ACT} [{{"data"}}, {{}}, {{}}]', f'{MLP_ACT} [{{"data"}}, {{}}, {{"model"}}]'],
}


@pytest.fixture(scope="module")
def report():
    return run_snippet("import partitioning_device_checks as m; m.main()", num_devices=8, timeout=240)


@pytest.mark.parametrize("layout", ["dp", "mp", "2d", "fsdp"])
def test_parameters_sharded_as_rules_say(report, layout):
    r = report[layout]
    assert r["mesh"] == EXPECTED_MESH[layout]
    assert r["specs"] == EXPECTED_SPECS[layout]  # actual .sharding.spec of device arrays
    assert r["axes"] == EXPECTED_SPECS[layout]  # get_mesh_axes(state).params
    assert r["shards_ok"], "a device shard differs from the host slice"


def test_shard_shapes(report):
    assert report["dp"]["shard_shapes"]["wi"] == [16, 64]
    assert report["mp"]["shard_shapes"]["wi"] == [16, 8]
    assert report["2d"]["shard_shapes"]["wi"] == [4, 32]
    assert report["fsdp"]["shard_shapes"]["wi"] == [2, 64]
    assert report["fsdp"]["shard_shapes"]["embedding"] == [48, 2]


@pytest.mark.parametrize("layout", ["dp", "mp", "2d", "fsdp"])
def test_activation_constraints_in_program(report, layout):
    constraints = report[layout]["constraints"]
    for c in EXPECTED_ACTIVATIONS[layout]:
        assert c in constraints, (c, constraints)


def test_collectives_follow_layout(report):
    assert report["dp"]["collectives"] == []  # replicated params: no communication in a forward
    assert "all-reduce" in report["mp"]["collectives"]  # row-parallel matmuls
    assert "all-gather" in report["fsdp"]["collectives"]  # params gathered at use


@pytest.mark.parametrize("layout", ["dp", "mp", "2d", "fsdp"])
def test_outputs_equal_unpartitioned(report, layout):
    r = report[layout]
    assert r["max_err"] < 1e-5
    assert r["max_err_resharded"] < 1e-5
    # A size-1 data axis may be dropped from the reported spec.
    assert r["out_spec"] == ["data"] or (r["out_spec"] == [] and r["mesh"]["data"] == 1)


def test_seed_flow(report):
    s = report["seed"]
    assert s["mesh"] == {"data": 8, "model": 1}
    assert s["param_dtypes"] == ["bfloat16"]
    assert s["param_specs"] == ["[]"]
    assert s["out_spec"] == ["data"]
    assert s["max_err"] < 1e-3 and s["max_err_compiled"] < 1e-3
    assert s["step_spec"] == "P()"
    assert s["flax_mutables"] == "None"
    assert s["warnings"] == []  # the seed list covers every name the toy model uses
    assert s["overview_ok"]


def test_batch_not_dividing_data_axis(report):
    s = report["seed"]
    assert s["odd_error"].startswith("ValueError") and "pad_batch_to_multiple" in s["odd_error"]
    assert "not divisible by the 'data' mesh axis of size 8" in s["odd_layout_error"]
    assert s["padded_shape"] == [8, 6]
    assert s["padded_err"] < 1e-3


def test_single_process_layout(report):
    assert report["seed"]["layout"] == [16, 0, 1, True]
    assert report["seed"]["chunk"] == [[0, 16], [0, 4], 0]


def test_gin_files_build_partitioners(report):
    g = report["gin"]
    assert g["dp"] == {"mesh": {"data": 8, "model": 1}, "rules_match": True}
    assert g["fsdp"] == {"mesh": {"data": 8, "model": 1}, "rules_match": True}
    assert g["mp"] == {"mesh": {"data": 4, "model": 2}, "rules_match": True}
    assert g["2d"] == {"mesh": {"data": 4, "model": 2}, "rules_match": True}
    assert g["mp_override"] == {"data": 2, "model": 4}


def test_indivisible_parameter_dims_are_replicated_with_warning(report):
    u = report["uneven"]
    assert u["odd"] == [] and u["odd_placed"] == []
    assert u["wi"] == [None, "model"]
    assert len(u["warnings"]) == 1
    assert u["warnings"][0].startswith("UnevenShardingWarning") and "odd dim 0 (size 51)" in u["warnings"][0]
