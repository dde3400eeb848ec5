"""The slot engine on a data-parallel mesh (Engine.shard, slot_generate's blocked fronts, the pipeline's routing).

Fast, in this process (one CPU device): the host-to-device slot order; the blocked front of
``generate_slots(shards=...)`` steps the same rows as the plain front; the engine's mesh programs (explicit
shardings, ``jax.set_mesh``) on a one-device partitioner give the plain engine's tokens; uneven slot counts
are named errors; the pipeline routes a partitioner to the engine.
Slow, in a subprocess with 4 simulated CPU devices (tests/engine_mesh_checks.py): rows through the sharded
engine equal the one-device engine's (greedy, timestamps, prompts; inserts split over the data axis or
replicated; a data 2 x model 2 mesh), the state is sharded over ``data`` (and its heads over ``model``), the
program count is bounded, the generate program moves no slot between devices; tiny.en VAD rows and chunked
windows through a pipeline with a data-parallel partitioner, and VAD rows with a model-parallel one.
"""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_engine import FakeEngine, _Tokenizer
from whisper_t5x.decoding import slot_generate
from whisper_t5x.longform import fallback as fb
from whisper_t5x.longform.decoder import DecodeRequest
from whisper_t5x.longform.engine import Engine, EngineMeshError, slot_order

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_LENGTH = 40


def test_slot_order_puts_the_hosts_front_on_every_device():
    order = slot_order(8, 4)
    assert sorted(order) == list(range(8))  # a permutation
    assert order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    for width in (4, 8):  # the host's first ``width`` slots: the first width // 4 of each device's block of 2
        block, local = order[:width] // 2, order[:width] % 2
        assert sorted(block.tolist()) == sorted([0, 1, 2, 3] * (width // 4))
        assert local.max() < width // 4
    assert slot_order(4, 1).tolist() == [0, 1, 2, 3]  # one device: the identity


def test_mesh_refusals_are_named_errors():
    eng = FakeEngine({}, slots=6)
    with pytest.raises(EngineMeshError, match="multiple of the data axis"):
        eng.shard(types.SimpleNamespace(data_mesh_size=4, model_mesh_size=1))
    assert eng.partitioner is None and eng.data_size == 1  # refused: still one device
    with pytest.raises(EngineMeshError):
        Engine._move_fn(types.SimpleNamespace(data_size=2), None, 4)  # no slot moves across devices


@pytest.fixture(scope="module")
def eot_model():
    """multilingual-80 with the end-of-text row scaled up: rows end at different lengths (as in test_engine)."""
    from tests import _hf_models as H

    model, params = H.eot_twin("multilingual-80")
    feats = np.stack([H.random_features(1, 80, seed=s)[0] * (0.5 + 0.2 * s) for s in range(4)])
    return model, params, feats


def test_blocked_front_steps_the_same_rows_as_the_plain_front(eot_model):
    """4 rows in slots 0-3 stepped as the front of 8 slots, against the same rows in slots 0, 1, 4, 5 stepped as
    the front of two blocks of 4 (``shards=2``: what each device of a 2-device mesh holds), with a short cache
    span: same tokens, and the slots outside the front are left as they were."""
    model, params, feats = eot_model
    module = model.module
    options = model.decode_options(task="transcribe", language="en", return_timestamps=False, max_length=MAX_LENGTH)
    rows = len(feats)

    def run(slot_ids, shards):
        def go(state):
            zeros = jnp.zeros((rows,), jnp.float32)
            keys = jnp.zeros((rows, 2), jnp.uint32)
            state = slot_generate.insert(module, params, state, jnp.asarray(feats), jnp.asarray(slot_ids, jnp.int32),
                                         zeros, keys, options)
            before = state
            state, report = slot_generate.generate_slots(module, params, state, options, 12, span=24, width=4,
                                                         shards=shards)
            return before, state, report

        return jax.jit(go)(slot_generate.empty(module, options, 8))

    _, _, plain = run([0, 1, 2, 3], 1)
    before, after, blocked = run([0, 1, 4, 5], 2)
    np.testing.assert_array_equal(np.asarray(blocked.seq)[[0, 1, 4, 5]], np.asarray(plain.seq)[:4])
    np.testing.assert_array_equal(np.asarray(blocked.index)[[0, 1, 4, 5]], np.asarray(plain.index)[:4])
    np.testing.assert_allclose(np.asarray(blocked.sum_logprob)[[0, 1, 4, 5]], np.asarray(plain.sum_logprob)[:4],
                               atol=1e-5)
    assert int(plain.stats.steps) >= 5 and len(set(np.asarray(plain.index)[:4].tolist())) >= 2  # rows moved apart
    rest = [2, 3, 6, 7]
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        axis = 1 if model.config.scan_layers and a.ndim >= 4 else 0
        np.testing.assert_array_equal(np.take(np.asarray(a), rest, axis=axis), np.take(np.asarray(b), rest, axis=axis))


def test_engine_on_a_one_device_partitioner_equals_the_plain_engine(eot_model):
    """The mesh programs (explicit NamedShardings, traced under the rules, called under jax.set_mesh) on the one
    CPU device: the plain engine's tokens; the state carries the mesh's sharding."""
    import warnings

    import partitioning as pt

    model, params, feats = eot_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part = pt.PjitPartitioner(num_partitions=1, logical_axis_rules=pt.rules_for("dp"), devices=jax.devices()[:1])
        state = pt.InferenceState.create({"params": params, "params_axes": model.params_axes})
        axes = part.get_mesh_axes(state).params
    request = DecodeRequest(task="transcribe", language="en", timestamps=False, max_length=MAX_LENGTH,
                            fallback=fb.FallbackConfig(temperatures=(0.0,)))
    rows = list(enumerate(feats))
    one = Engine(model, slots=2, encode_batch=2, steps_per_call=8, tokenizer=_Tokenizer())
    want = one.decode(params, rows, request)
    eng = Engine(model, slots=2, encode_batch=2, steps_per_call=8, tokenizer=_Tokenizer())
    eng.shard(part, axes)
    eng.keep_slots = True
    got = eng.decode(part.shard_host_params(params, axes), rows, request)
    assert {k: r.tokens for k, r in got.items()} == {k: r.tokens for k, r in want.items()}
    assert len({len(r.tokens) for r in want.values()}) >= 2
    leaf = jax.tree_util.tree_leaves(eng._state[1].loop.cache)[0]
    assert leaf.sharding.mesh.shape == part.mesh.shape and "data" in str(leaf.sharding.spec)


def test_pipeline_routes_a_data_parallel_partitioner_to_the_engine():
    import warnings

    import partitioning as pt
    from whisper_t5x import FlaxWhisperPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part = pt.PjitPartitioner(num_partitions=1, logical_axis_rules=pt.rules_for("dp"), devices=jax.devices()[:1])
        pipe = FlaxWhisperPipeline("tiny.en", batch_size=2, decode_slots=3, partitioner=part, compile_cache=False)
    assert pipe.active_engine is pipe.engine and pipe.engine.partitioner is part
    assert pipe.engine.slots == 3  # a multiple of the data axis (1)
    pipe.params = pipe._host_params  # new (unsharded) parameters: one device again, the engine unsharded
    assert pipe.partitioner is None and pipe.engine.partitioner is None and pipe.active_engine is pipe.engine


# ---------------------------------------------------------------------- 4 simulated devices (subprocess)
def _run(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "engine_mesh_checks.py"), *args],
                          capture_output=True, text=True, timeout=1800, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def mesh_report():
    return _run()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["split", "replicated", "timestamps", "prompt"])
def test_sharded_engine_gives_the_one_device_tokens(mesh_report, case):
    assert mesh_report["devices"] == 4 and mesh_report["mesh"] == {"data": 4, "model": 1}
    r = mesh_report[case]
    assert len(r["lengths"]) >= 4  # rows end at different lengths: refills happen
    assert r["got"].keys() == r["want"].keys() and len(r["got"]) == 8
    for k, (tokens, avg, language) in r["want"].items():
        got_tokens, got_avg, got_language = r["got"][k]
        assert got_tokens == tokens and got_language == language, (case, k)
        assert got_avg == pytest.approx(avg, abs=1e-4)
    assert r["again_equal"] and r["programs_after"] == r["programs"]  # a second call compiles nothing


@pytest.mark.slow
@pytest.mark.parametrize("case", ["split", "replicated", "timestamps", "prompt"])
def test_state_is_sharded_over_the_data_axis(mesh_report, case):
    r = mesh_report[case]
    assert r["cache_spec"] in (["data"], [None, "data"]) and r["seq_spec"] == ["data"]
    assert "data" in r["cross_spec"]
    axis = r["cache_spec"].index("data")
    assert r["cache_shard"][axis] * 4 == r["cache_shape"][axis]  # a quarter of the slots on each device
    assert all(w % 4 == 0 for w in r["widths"])  # generate widths are whole blocks of every device
    # allocate + one insert per (bucket, prompt length) + one generate per (cache span, width)
    assert r["programs"] <= 1 + 2 + 3 * 2


@pytest.mark.slow
def test_inserts_split_or_replicate_their_rows(mesh_report):
    assert mesh_report["split"]["padding_rows"] == 0 and mesh_report["split"]["inserts"] < 8  # 4-row inserts
    assert mesh_report["replicated"]["inserts"] >= 4  # 1-2 row inserts, replicated on every device


@pytest.mark.slow
def test_generate_moves_no_slot_between_devices(mesh_report):
    for width, hlo in mesh_report["generate_collectives"].items():
        assert hlo["all_to_all"] == 0 and hlo["permute"] == 0, width
        for dtype, dims in hlo["all_gather"]:  # only the scatters' per-slot int32 write positions
            assert dtype == "s32" and int(np.prod(dims)) <= 8 * 2, (width, dtype, dims)


@pytest.mark.slow
def test_model_parallel_mesh_gives_the_one_device_tokens(mesh_report):
    r = mesh_report["mp"]
    assert r["mesh"] == {"data": 2, "model": 2} and r["got"] == r["want"]
    # slots over data, heads over model (the "mp" rules split the model's heads)
    assert r["cache_spec"] in (["data", "model"], [None, "data", "model"]) and "model" in r["cross_spec"]
    axis = r["cache_spec"].index("data")
    assert r["cache_shard"][axis] * 2 == r["cache_shape"][axis]
    assert r["cache_shard"][axis + 1] * 2 == r["cache_shape"][axis + 1]
    assert mesh_report["uneven"].startswith("EngineMeshError")  # 6 slots over 4 devices


@pytest.mark.slow
def test_pipeline_with_a_data_parallel_partitioner_decodes_on_the_engine():
    r = _run("--pipeline")["pipeline"]
    assert r["active"] and r["engine_calls"] >= 1
    assert r["vad_equal"] and "ask not what your country" in r["vad_text"].lower()
    assert r["chunked_equal"]
    assert r["mp_active"] and r["mp_engine_calls"] >= 1 and r["mp_equal"]  # data 2 x model 2: the engine too
