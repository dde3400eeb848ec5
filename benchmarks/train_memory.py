"""Will it fit? Per-device memory of one partitioned train step, from XLA's own memory analysis.

For each model (random init by ``jax.eval_shape`` only: no weights, nothing run), rule set (dp, fsdp,
mp, 2d) and device count, the state is described abstractly with its shardings (``state.abstract_state``),
the partitioned train step (AdamW, bf16 compute with float32 master weights by default) is lowered and
compiled for simulated CPU devices, and ``compiled.memory_analysis()`` gives the per-device bytes:

* params / optimizer state: the step's state arguments, split by the shard shapes of each array
  (their sum plus the batch equals XLA's argument size, checked);
* gradients: the float32 gradient of every trainable parameter, at its parameter's sharding
  (what the update needs at once; XLA holds them among its temporaries);
* temporaries: XLA's ``temp_size_in_bytes`` (gradients, activations kept for the backward pass,
  workspace); activations ~ temporaries - gradients (an estimate: XLA does not label its buffers);
* peak: arguments + temporaries (the new state aliases the donated old one).

Every row compiles in its own process (the device count is fixed when JAX starts) under a time limit;
rows over it are reported as skipped. The CPU compiler's buffer assignment is close to, not the same
as, a TPU's or a GPU's: treat the numbers as the partitioning's effect (which layout divides what),
within tens of percent of a real device's.

    python benchmarks/train_memory.py                       # the README table (all models, layouts, 8 and 32)
    python benchmarks/train_memory.py --models tiny --devices 8 --layouts fsdp
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MODELS = ["tiny", "base", "small", "medium", "large-v3"]
LAYOUTS = ["dp", "fsdp", "mp", "2d"]
# What a user would run: scanned layers (one compiled layer body) everywhere, and full
# rematerialisation where activations dominate (medium, large).
REMAT = {"tiny": "none", "base": "none", "small": "none", "medium": "full", "large-v3": "full",
         "large-v3-turbo": "full"}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--layouts", nargs="+", default=LAYOUTS)
    ap.add_argument("--devices", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--num_partitions", type=int, default=2,
                    help="model axis for mp and 2d (configs/partitioning default; divides every model's heads)")
    ap.add_argument("--rows_per_device", type=int, default=2, help="global batch = rows_per_device x devices")
    ap.add_argument("--target_length", type=int, default=128, help="decoder positions per row")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters and Adam state stay float32)")
    ap.add_argument("--freeze_encoder", action="store_true")
    ap.add_argument("--timeout_s", type=float, default=900.0, help="per-row compile limit")
    ap.add_argument("--out", default=os.path.join(RESULTS, "train_memory"))
    ap.add_argument("--row", nargs=3, metavar=("MODEL", "DEVICES", "LAYOUT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- one row (subprocess)
def measure_row(args, name, devices, layout):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.join(HERE, ".."))
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np

    import partitioning as pt
    from whisper_t5x.model.config import WhisperConfig
    from whisper_t5x.model.whisper import WhisperModule
    from whisper_t5x.training import optim, state as state_lib, step as step_lib

    warnings.simplefilter("ignore")
    config = WhisperConfig.for_architecture(name, scan_layers=True, remat_policy=REMAT.get(name, "full"))
    module = WhisperModule(config, dtype=jnp.dtype(args.dtype), param_dtype=jnp.float32)
    features = jax.ShapeDtypeStruct((1, config.num_mel_bins, config.num_frames), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), features, ids)

    def init_params(key):
        return module.init(key, jnp.zeros(features.shape), jnp.zeros(ids.shape, jnp.int32))["params"]

    params = shapes["params"]
    trainable = optim.trainable_mask(params, freeze_encoder=args.freeze_encoder)
    optimizer = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-5, warmup_steps=100, total_steps=1000,
                                                           weight_decay=0.01), params, trainable)
    m = args.num_partitions if layout in ("mp", "2d") else 1
    part = pt.PjitPartitioner(num_partitions=m, logical_axis_rules=pt.rules_for(layout))
    state, axes = state_lib.abstract_state(part, optimizer, init_params, shapes["params_axes"])
    batch_size = args.rows_per_device * devices
    data = part.to_shardings(part.data_partition_spec)
    batch = step_lib.TrainBatch(
        jax.ShapeDtypeStruct((batch_size, config.num_mel_bins, config.num_frames), jnp.float32, sharding=data),
        jax.ShapeDtypeStruct((batch_size, args.target_length), jnp.int32, sharding=data),
        jax.ShapeDtypeStruct((batch_size, args.target_length), jnp.int32, sharding=data),
        jax.ShapeDtypeStruct((batch_size, args.target_length), jnp.float32, sharding=data))
    train_step = step_lib.partition_train_step(part, step_lib.make_train_step(module, optimizer), axes)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()

    def shard_bytes(tree):
        return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                       for x in jax.tree_util.tree_leaves(tree)))

    params_b, opt_b = shard_bytes(state.params), shard_bytes(state.opt_state)
    other_b = shard_bytes((state.step, state.rng)) + shard_bytes(batch)
    grads_b = int(sum(np.prod(x.sharding.shard_shape(x.shape)) * 4
                      for x, t in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(trainable))
                      if t))
    temp = int(analysis.temp_size_in_bytes)
    args_b = int(analysis.argument_size_in_bytes)
    total_params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
    return dict(
        model=name, devices=devices, layout=layout, mesh=dict(part.mesh.shape), batch=batch_size,
        target_length=args.target_length, dtype=args.dtype, remat=config.remat_policy, scan_layers=True,
        freeze_encoder=args.freeze_encoder, parameters=total_params,
        params_bytes=params_b, opt_state_bytes=opt_b, grads_bytes=grads_b, temp_bytes=temp,
        activations_bytes_est=max(temp - grads_b, 0), argument_bytes=args_b,
        argument_bytes_accounted=params_b + opt_b + other_b, output_bytes=int(analysis.output_size_in_bytes),
        alias_bytes=int(analysis.alias_size_in_bytes), peak_bytes=args_b + temp, compile_s=round(compile_s, 1))


# --------------------------------------------------------------------------- driver
def _gib(b):
    return f"{b / 2 ** 30:.2f}"


def markdown(rows, skipped, meta):
    lines = [f"Per-device memory of one train step (AdamW, {meta['dtype']} compute, float32 params and Adam "
             f"state), from XLA's memory analysis of the compiled step on simulated CPU devices; "
             f"global batch = {meta['rows_per_device']} rows x devices, {meta['target_length']} target tokens, "
             f"30 s windows; mp and 2d with a model axis of {meta['num_partitions']}. GiB per device.", "",
             "| model | params | devices | layout | mesh | params | Adam state | grads | activations (est.) | "
             "peak | remat | compile s |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.0f} M | {r['devices']} | {r['layout']} | "
            f"{r['mesh']['data']} x {r['mesh']['model']} | {_gib(r['params_bytes'])} | {_gib(r['opt_state_bytes'])} | "
            f"{_gib(r['grads_bytes'])} | {_gib(r['activations_bytes_est'])} | **{_gib(r['peak_bytes'])}** | "
            f"{r['remat']} | {r['compile_s']} |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{s['model']} x {s['devices']} {s['layout']} ({s['why']})"
                                             for s in skipped)]
    lines += ["", f"CPU: {meta['cpu']}. Command: `{meta['command']}`"]
    return "\n".join(lines) + "\n"


from _machine import cpu_name as _cpu  # noqa: E402


def main(argv=None):
    args = parse(argv)
    if args.row:
        name, devices, layout = args.row
        print("ROW " + json.dumps(measure_row(args, name, int(devices), layout)))
        return
    base = [sys.executable, os.path.abspath(__file__), "--num_partitions", str(args.num_partitions),
            "--rows_per_device", str(args.rows_per_device), "--target_length", str(args.target_length),
            "--dtype", args.dtype] + (["--freeze_encoder"] if args.freeze_encoder else [])
    rows, skipped = [], []
    for name in args.models:
        for devices in args.devices:
            for layout in args.layouts:
                try:
                    proc = subprocess.run(base + ["--row", name, str(devices), layout], capture_output=True,
                                          text=True, timeout=args.timeout_s)
                except subprocess.TimeoutExpired:
                    skipped.append(dict(model=name, devices=devices, layout=layout,
                                        why=f"compile over {args.timeout_s:.0f} s on this CPU"))
                    print(f"{name} {devices} {layout}: skipped (timeout)", flush=True)
                    continue
                found = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
                if proc.returncode or not found:
                    skipped.append(dict(model=name, devices=devices, layout=layout,
                                        why=(proc.stderr.strip().splitlines() or ["failed"])[-1][:200]))
                    print(f"{name} {devices} {layout}: failed: {skipped[-1]['why']}", flush=True)
                    continue
                row = json.loads(found[-1][4:])
                rows.append(row)
                print(f"{name} {devices} {layout}: peak {_gib(row['peak_bytes'])} GiB "
                      f"(compile {row['compile_s']} s)", flush=True)
    meta = dict(cpu=_cpu(), command="python benchmarks/train_memory.py " + " ".join(argv or sys.argv[1:]),
                dtype=args.dtype, rows_per_device=args.rows_per_device, target_length=args.target_length,
                num_partitions=args.num_partitions)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows, skipped=skipped), f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(rows, skipped, meta))
    print(markdown(rows, skipped, meta))


if __name__ == "__main__":
    main()
