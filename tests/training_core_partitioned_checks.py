"""One train step under the partitioner on 8 simulated CPU devices (dp, fsdp, mp, 2d) against the
unpartitioned step. Run in a subprocess (the device count is fixed before JAX starts); prints one
line ``RESULT <json>`` that tests/test_training_core_partitioned.py asserts on.
"""

import json
import os
import sys
import warnings

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import partitioning as pt  # noqa: E402
from whisper_t5x.model.config import WhisperConfig  # noqa: E402
from whisper_t5x.model.whisper import WhisperModule  # noqa: E402
from whisper_t5x.training import optim, state as state_lib, step as step_lib  # noqa: E402

# Heads, MLP and joined_kv divide by 8 so model parallelism really splits them; scanned layers with
# full rematerialisation, as a large model is trained.
# 4 s windows (200 frames) keep it fast.
CONFIG = WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=2, encoder_attention_heads=8,
                       decoder_attention_heads=8, encoder_ffn_dim=128, decoder_ffn_dim=128, scan_layers=True,
                       remat_policy="full", max_source_positions=100)
LAYOUTS = {"dp": 1, "fsdp": 1, "mp": 8, "2d": 2}
BATCH, LENGTH, ACCUMULATION = 16, 8, 2
BIG = ("decoder", "layers", "fc1", "kernel")  # (layers, embed, mlp)
TABLE = ("decoder", "embed_tokens", "embedding")  # (vocab, embed)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _spec(array):
    out = [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec]
    while out and out[-1] is None:
        out.pop()
    return out


def _batch():
    rs = np.random.RandomState(0)
    ids = rs.randint(0, 50000, (BATCH, LENGTH + 1)).astype(np.int32)
    mask = np.ones((BATCH, LENGTH), np.float32)
    mask[:, :3] = 0.0
    mask[::3, 6:] = 0.0
    return step_lib.TrainBatch(rs.randn(BATCH, 80, CONFIG.num_frames).astype(np.float32), ids[:, :-1], ids[:, 1:], mask)


def _adam_leaves(opt_state, path):
    """mu and nu of one parameter in the optimizer state."""
    found = []
    for p, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        keys = tuple(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey))
        if keys[-len(path):] == path:
            found.append(leaf)
    return found


def main():
    module = WhisperModule(CONFIG)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 80, CONFIG.num_frames)), jnp.zeros((1, 4), jnp.int32))
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params_axes = variables["params_axes"]
    config = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=10, weight_decay=0.1)
    optimizer = optim.make_optimizer(config, params, optim.trainable_mask(params))
    batch = _batch()

    # Reference: one device, the whole batch at once, two steps (the second with a non-zero learning rate).
    ref_step = jax.jit(step_lib.make_train_step(module, optimizer))
    ref = state_lib.create_train_state(params, optimizer, 0)
    ref_losses, ref_norms = [], []
    for _ in range(2):
        ref, metrics = ref_step(ref, batch)
        ref_losses.append(float(metrics["loss"]))
        ref_norms.append(float(metrics["grad_norm"]))
    ref_params = jax.tree_util.tree_map(np.asarray, ref.params)
    scale = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(ref_params),
                                                              jax.tree_util.tree_leaves(params)))

    results = {"_losses": ref_losses, "_grad_norms": ref_norms, "_update_scale": scale}
    for name, num_partitions in LAYOUTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the vocabulary (51865) divides no mesh axis: replicated
            part = pt.PjitPartitioner(num_partitions=num_partitions, logical_axis_rules=pt.rules_for(name))
            state, axes = state_lib.shard_state_from_params(part, optimizer, params, params_axes, rng=0)
        born = {"param": _spec(_get(state.params, BIG)),
                "mu_nu": [_spec(x) for x in _adam_leaves(state.opt_state, BIG)]}
        train_step = step_lib.partition_train_step(
            part, step_lib.make_train_step(module, optimizer, accumulation_steps=ACCUMULATION), axes)
        global_batch = part.make_global_batch(batch)
        losses, norms = [], []
        for _ in range(2):
            state, metrics = train_step(state, global_batch)
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
        got = jax.tree_util.tree_map(np.asarray, state.params)
        err = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(got),
                                                              jax.tree_util.tree_leaves(ref_params)))
        mu_nu = _adam_leaves(state.opt_state, BIG)
        table_mu_nu = _adam_leaves(state.opt_state, TABLE)
        results[name] = dict(
            mesh=dict(part.mesh.shape),
            losses=losses,
            grad_norms=norms,
            max_param_err=err,
            born=born,
            param_spec=_spec(_get(state.params, BIG)),
            mu_nu_specs=[_spec(x) for x in mu_nu],
            mu_nu_replicated=[bool(x.sharding.is_fully_replicated) for x in mu_nu],
            mu_nu_shard_bytes=[int(np.prod(x.sharding.shard_shape(x.shape))) * 4 for x in mu_nu],
            table_mu_nu_specs=[_spec(x) for x in table_mu_nu],
            step_spec=_spec(state.step),
        )
    results["_full_bytes"] = int(np.prod(_get(params, BIG).shape)) * 4
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
