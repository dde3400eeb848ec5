"""Whisper under each partitioning layout (dp / mp / 2d / fsdp): forward and decoding.

For every layout that the visible devices allow, the parameters are placed with
``PjitPartitioner.shard_host_params`` and the forward pass (encoder + decoder
over ``--tokens`` positions) is compiled with ``partition``; compile time, the
median step time over ``--repeats`` runs and the parameter bytes held by one
device are reported as a markdown table (and JSON with ``--out``). The compiled
generate loop (greedy, ``--decode_tokens`` forced by suppressing end-of-text)
is partitioned the same way; its throughput (generated tokens per second of
the whole generate call, encoder included) is reported.

On a CPU-only machine, ``--cpu_devices N`` simulates N devices (set before JAX
starts); numbers then measure partitioning overhead, not speed-up.

    python benchmarks/partitioning_layouts.py --model tiny --batch 8 --cpu_devices 8
"""

import argparse
import json
import os
import statistics
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="architecture name (random weights)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num_partitions", type=int, default=2, help="model axis size for mp / 2d")
    ap.add_argument("--layouts", nargs="+", default=["dp", "mp", "2d", "fsdp"])
    ap.add_argument("--cpu_devices", type=int, default=0, help="simulate N CPU devices")
    ap.add_argument("--decode_tokens", type=int, default=32, help="tokens generated per row for decode throughput")
    ap.add_argument("--out", default=None)
    return ap.parse_args()


def main():
    args = parse()
    if args.cpu_devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import warnings

    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    import partitioning as pt
    from whisper_t5x.model.config import WhisperConfig
    from whisper_t5x.model.whisper import WhisperModule
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    warnings.simplefilter("ignore", pt.UnevenShardingWarning)
    cfg = WhisperConfig.for_architecture(args.model)
    model = WhisperModule(cfg)
    rng = np.random.RandomState(0)
    feats = rng.randn(args.batch, cfg.num_mel_bins, cfg.num_frames).astype(np.float32)
    ids = rng.randint(0, 1000, (args.batch, args.tokens)).astype(np.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), feats[:1], ids[:1])
    host = jax.tree_util.tree_map(np.asarray, variables["params"])
    state = pt.InferenceState.create(variables)
    n = jax.device_count()
    rows = []
    for layout in args.layouts:
        m = args.num_partitions if layout in ("mp", "2d") else 1
        if n % m or args.batch % (n // m):
            print(f"skip {layout}: {n} devices, model axis {m}, batch {args.batch}", file=sys.stderr)
            continue
        part = pt.PjitPartitioner(num_partitions=m, logical_axis_rules=pt.rules_for(layout))
        axes = part.get_mesh_axes(state)
        params = part.shard_host_params(host, axes.params)
        fwd = part.partition(lambda p, x, i: model.apply({"params": p}, x, i)["logits"],
                             (axes.params, P("data"), P("data")), P("data"))
        t0 = time.perf_counter()
        compiled = part.compile(fwd, params, feats, ids)
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(params, feats, ids))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, feats, ids))
            times.append(time.perf_counter() - t0)
        # Decoding: every row generates exactly decode_tokens (end-of-text suppressed).
        wrapper = FlaxWhisperForConditionalGeneration(cfg, _do_init=False)
        max_length = 4 + args.decode_tokens
        suppress = wrapper.default_suppress_tokens() + (cfg.eos_token_id,)
        gen = part.partition(
            lambda p, x: wrapper.generate(x, params=p, language="en", max_length=max_length,
                                          suppress_tokens=suppress).sequences,
            (axes.params, P("data")), P("data"))
        jax.block_until_ready(gen(params, feats))
        gen_times = []
        for _ in range(max(1, args.repeats // 2)):
            t0 = time.perf_counter()
            jax.block_until_ready(gen(params, feats))
            gen_times.append(time.perf_counter() - t0)
        fwd_s = statistics.median(times)
        gen_s = statistics.median(gen_times)
        dev0 = jax.devices()[0]
        per_dev = sum(s.data.nbytes for v in jax.tree_util.tree_leaves(params) for s in v.addressable_shards
                      if s.device == dev0)
        rows.append(dict(layout=layout, mesh=dict(part.mesh.shape), compile_s=round(compile_s, 2),
                         step_ms=round(1000 * fwd_s, 2), param_mb_per_device=round(per_dev / 2**20, 1),
                         generate_s=round(gen_s, 2),
                         generated_tokens_per_s=round(args.batch * args.decode_tokens / gen_s, 1)))
    print(f"model={args.model} batch={args.batch} tokens={args.tokens} devices={n} ({jax.devices()[0].platform})\n")
    print("| layout | mesh (data x model) | params MiB / device | forward compile s | forward ms | generate s | generated tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layout']} | {r['mesh']['data']} x {r['mesh']['model']} | {r['param_mb_per_device']} | "
              f"{r['compile_s']} | {r['step_ms']} | {r['generate_s']} | {r['generated_tokens_per_s']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
