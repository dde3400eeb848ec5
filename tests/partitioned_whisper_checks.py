"""Partitioned Whisper checks, run in a subprocess with 8 simulated CPU devices.

Prints one line ``RESULT <json>``; tests/test_partitioned_whisper.py asserts on it.
The device count must be fixed before JAX starts, hence the subprocess.
"""

import json
import os
import re
import sys
import warnings

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import partitioning as pt  # noqa: E402
from whisper_t5x.model.config import WhisperConfig  # noqa: E402
from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration  # noqa: E402

# Heads, MLP and joined_kv divide by 8 so model parallelism really splits them.
CONFIG = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=8,
                       decoder_attention_heads=8, encoder_ffn_dim=128, decoder_ffn_dim=128)
LAYOUTS = {"dp": 1, "mp": 8, "2d": 2, "fsdp": 1}
MAX_LENGTH = 16


def spec_list(spec):
    out = [list(e) if isinstance(e, tuple) else e for e in spec]
    while out and out[-1] is None:
        out.pop()
    return out


def main():
    scan = "--scan" in sys.argv
    model = FlaxWhisperForConditionalGeneration(CONFIG.replace(scan_layers=scan), _do_init=False)
    params = jax.tree_util.tree_map(np.asarray, model.init_weights(jax.random.PRNGKey(0)))
    # Large weights make every token choice depend on every layer.
    params = jax.tree_util.tree_map(lambda x: x * 10.0 if x.ndim >= 2 else x, params)
    features = np.random.RandomState(0).randn(8, 80, 3000).astype(np.float32)
    ids = np.random.RandomState(1).randint(0, 50000, (8, 5)).astype(np.int32)
    ref_logits = np.asarray(model(features, ids, params=params).logits)
    ref_tokens = np.asarray(model.generate(features, params=params, language="en", max_length=MAX_LENGTH).sequences)
    state = pt.InferenceState.create({"params": params, "params_axes": model.params_axes})
    results = {}
    for name, num_partitions in LAYOUTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vocab 51865 divides nothing: replicated, with a warning
            part = pt.PjitPartitioner(num_partitions=num_partitions, logical_axis_rules=pt.rules_for(name))
            axes = part.get_mesh_axes(state).params
        sharded = part.shard_host_params(params, axes)

        def forward(p, f, i):
            return model(f, i, params=p).logits

        def generate(p, f):
            return model.generate(f, params=p, language="en", max_length=MAX_LENGTH).sequences

        p_forward = part.partition(forward, in_axis_resources=(axes, P("data"), P("data")), out_axis_resources=P("data"))
        p_generate = part.partition(generate, in_axis_resources=(axes, P("data")), out_axis_resources=P("data"))
        logits = np.asarray(p_forward(sharded, features, ids))
        tokens = np.asarray(p_generate(sharded, features))
        hlo = p_generate.lower(sharded, features).as_text()
        constrained = sorted(set(re.findall(r"sharding_constraint[^\n]*?:\s*\(?tensor<([0-9x]+)x", hlo)))
        layer = "layers" if scan else "layers/0"
        get = lambda path: spec_list(_get(sharded, path).sharding.spec)  # noqa: E731
        results[name] = dict(
            mesh=dict(part.mesh.shape),
            fc1=get(f"decoder/{layer}/fc1/kernel"),
            q_proj=get(f"encoder/{layer}/self_attn/q_proj/kernel"),
            out_proj=get(f"decoder/{layer}/encoder_attn/out_proj/kernel"),
            embed_tokens=get("decoder/embed_tokens/embedding"),
            max_logit_err=float(np.abs(logits - ref_logits).max()),
            tokens_equal=bool(np.array_equal(tokens, ref_tokens)),
            constrained_shapes=constrained,
        )
    results["_logit_scale"] = float(np.abs(ref_logits).max())
    results["_tokens_vary"] = len({tuple(r) for r in ref_tokens[:, 4:].tolist()}) > 1
    print("RESULT " + json.dumps(results))


def _get(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


if __name__ == "__main__":
    main()
