"""Train-step throughput: our partitioned step against transformers PyTorch's on the same batch.

One step is forward + backward + gradient clipping + AdamW, float32 by default (``--dtype bfloat16``
gives bf16 compute with float32 master weights for ours). Both peers hold the same weights (ours
exported with ``save_pretrained`` and loaded by ``from_pretrained``), see the same features, decoder
inputs and masked labels, and freeze the same parameter (the encoder's positional table, as
transformers does). Steps alternate between the peers (ours, torch, ours, ...) so that a change in the
machine's load hits both; the median of ``--repeats`` timed steps is reported, after ``--warmup`` steps
(the first of which compiles ours; its time is reported apart).

Reported per model: seconds per step, the ratio ours / torch (target <= 0.8 on CPU), target tokens per
second, audio hours per hour (30 s windows per step / step time), and the model FLOPs per step
(analytic, 3 x the forward's matrix products) with XLA's own count. ``--peak_flops`` gives MFU = model
FLOPs per step / (step time x peak FLOP/s); the default is the dense bf16 peak of an H100/H200.

On a GPU (``--device gpu``) the script needs no torch (``--no_torch``); named models that are not
installed are initialised at random from their architecture (``--random_init`` forces it):

    python benchmarks/train_throughput.py                                    # CPU: tiny.en and base vs torch
    python benchmarks/train_throughput.py --variants loop scan no_donate     # the levers, measured
    python benchmarks/train_throughput.py --device gpu --no_torch --dtype bfloat16 --random_init \\
        --models large-v3 large-v3-turbo --batch 32 --variants scan_remat_cudnn scan_dots_cudnn

Variants (``--variants``): ``loop`` (unscanned layers, donated state: the default), ``scan`` (scanned
layers), ``scan_remat`` (scanned, full rematerialisation), ``no_donate`` (loop, state not donated),
``xla_attention`` (loop, the encoder's attention through ``jax.nn.dot_product_attention``'s XLA
implementation instead of the per-head CPU loop), ``loop_dots`` (loop, matrix products saved and the
elementwise work recomputed in the backward pass);
on a GPU ``scan_remat_cudnn`` and ``scan_dots_cudnn`` (the encoder's attention in cuDNN's fused kernel,
with full rematerialisation or with every matrix product saved). A variant that fails (out of memory,
a kernel the device lacks) is reported as such and the others still run.
XLA flags are a process setting: pass ``--xla_flags`` to measure them (a new run).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
VARIANTS = {
    "loop": dict(scan_layers=False, remat_policy="none", donate=True),
    "scan": dict(scan_layers=True, remat_policy="none", donate=True),
    "scan_remat": dict(scan_layers=True, remat_policy="full", donate=True),
    "no_donate": dict(scan_layers=False, remat_policy="none", donate=False),
    # CPU lever: the encoder's attention through jax.nn.dot_product_attention's XLA implementation
    # (one fused softmax(QK^T)V per layer, autodiff gradient) instead of the per-head loop with its
    # hand-written flash-style gradient.
    "xla_attention": dict(scan_layers=False, remat_policy="none", donate=True, attention_impl="xla"),
    # CPU lever: keep the matrix products' outputs, recompute the elementwise work in the backward pass
    # (less memory traffic per step, more arithmetic).
    "loop_dots": dict(scan_layers=False, remat_policy="dots", donate=True),
    # GPU levers: the encoder's attention through cuDNN's fused kernel (WhisperConfig.attention_impl),
    # with full rematerialisation or saving every matrix product (no recompute of them).
    "scan_remat_cudnn": dict(scan_layers=True, remat_policy="full", donate=True, attention_impl="cudnn"),
    "scan_dots_cudnn": dict(scan_layers=True, remat_policy="dots", donate=True, attention_impl="cudnn"),
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    ap.add_argument("--device", choices=["cpu", "gpu", "tpu"], default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--target_tokens", type=int, default=50, help="target tokens per row (plus a 4-token prefix)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="our compute dtype")
    ap.add_argument("--variants", nargs="+", default=["loop"], choices=sorted(VARIANTS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no_torch", action="store_true", help="skip the transformers PyTorch peer")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for both peers (0: all cores). On a machine shared with other jobs, 1 thread "
                         "each compares the work done: spinning worker threads of a peer that lost its core to "
                         "another job inflate its times")
    ap.add_argument("--random_init", action="store_true", help="random weights from the architecture name")
    ap.add_argument("--peak_flops", type=float, default=None,
                    help="peak FLOP/s for MFU (default on a GPU: 989e12, H100/H200 bf16 dense; none on a CPU)")
    ap.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for this run (recorded)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "train_throughput"))
    return ap.parse_args(argv)


def model_flops(config, batch: int, length: int) -> float:
    """Training FLOPs of one step: 3 x the forward's matrix products (convolutions, projections,
    attention scores and values, the vocabulary projection) for ``batch`` rows of ``length`` tokens."""
    d, frames, mels = config.d_model, config.max_source_positions, config.num_mel_bins
    fe, fd, vocab = config.encoder_ffn_dim, config.decoder_ffn_dim, config.vocab_size
    conv = 2 * config.num_frames * 3 * mels * d + 2 * frames * 3 * d * d
    enc_layer = 4 * 2 * frames * d * d + 2 * 2 * frames * d * fe + 2 * 2 * frames * frames * d
    dec_layer = (4 * 2 * length * d * d + 2 * 2 * length * length * d  # self-attention
                 + 2 * 2 * length * d * d + 2 * 2 * frames * d * d + 2 * 2 * length * frames * d  # cross
                 + 2 * 2 * length * d * fd)
    forward = conv + config.encoder_layers * enc_layer + config.decoder_layers * dec_layer + 2 * length * vocab * d
    return 3.0 * batch * forward


from _machine import cpu_name as _cpu_name  # noqa: E402


# ------------------------------------------------------------------------------ inputs
def load_model(name, random_init):
    """(config, host float32 params, tokenizer or None)."""
    import jax
    import numpy as np

    from whisper_t5x.model.config import WhisperConfig

    if not random_init:
        try:
            from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

            model, params = FlaxWhisperForConditionalGeneration.from_pretrained(name, _do_init=False)
            return model.config, jax.tree_util.tree_map(np.asarray, params), "pretrained"
        except Exception as e:  # not installed here (e.g. on a GPU machine): random weights
            print(f"{name}: no weights here ({type(e).__name__}); random init", file=sys.stderr)
    config = WhisperConfig.for_architecture(name)
    return config, None, "random"


def random_params(config, seed=0):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from whisper_t5x.model.whisper import WhisperModule

    module = WhisperModule(config)
    variables = jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, config.num_mel_bins, config.num_frames)),
                                     jnp.zeros((1, 4), jnp.int32))
    return jax.tree_util.tree_map(np.asarray, variables["params"])


def make_batch(config, batch, target_tokens, seed=0):
    import numpy as np

    from whisper_t5x.training.step import TrainBatch

    rs = np.random.RandomState(seed)
    special = config.special_tokens
    prefix = [special.sot, special.first_language, special.transcribe, special.no_timestamps] \
        if config.is_multilingual else [special.sot, special.no_timestamps]
    length = len(prefix) + target_tokens  # decoder positions: prefix, targets (the last label is eot)
    ids = np.empty((batch, length + 1), np.int32)
    for b in range(batch):
        ids[b] = prefix + list(rs.randint(0, special.eot, target_tokens)) + [special.eot]
    mask = np.zeros((batch, length), np.float32)
    mask[:, len(prefix) - 1:] = 1.0
    features = rs.randn(batch, config.num_mel_bins, config.num_frames).astype(np.float32)
    return TrainBatch(features, ids[:, :-1], ids[:, 1:], mask)


# ------------------------------------------------------------------------------ ours
class Ours:
    """Our partitioned train step on the local devices (dp rules), state born sharded."""

    def __init__(self, config, params, batch, dtype, variant, device):
        import jax
        import jax.numpy as jnp
        import numpy as np

        import partitioning as pt
        from whisper_t5x.checkpoints import layout
        from whisper_t5x.model.whisper import WhisperModule
        from whisper_t5x.training import optim, state as state_lib, step as step_lib

        opts = VARIANTS[variant]
        config = config.replace(scan_layers=opts["scan_layers"], remat_policy=opts["remat_policy"],
                                attention_impl=opts.get("attention_impl"))
        self.module = WhisperModule(config, dtype=jnp.dtype(dtype), param_dtype=jnp.float32)
        part = pt.PjitPartitioner(num_partitions=1, logical_axis_rules=pt.rules_for("dp"), backend=device)
        features = jnp.zeros((1, config.num_mel_bins, config.num_frames))
        shapes = jax.eval_shape(self.module.init, jax.random.PRNGKey(0), features, jnp.zeros((1, 4), jnp.int32))
        trainable = optim.trainable_mask(shapes["params"])
        opt = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-5, decay="constant", weight_decay=0.0,
                                                         max_grad_norm=1.0), shapes["params"], trainable)
        if params is None:
            init = lambda k: self.module.init(k, features, jnp.zeros((1, 4), jnp.int32))["params"]  # noqa: E731
            self.state, axes = state_lib.init_sharded_state(part, opt, init, shapes["params_axes"])
        else:
            host = layout.to_scan_layout(params) if config.scan_layers else layout.to_loop_layout(params)
            self.state, axes = state_lib.shard_state_from_params(part, opt, host, shapes["params_axes"])
        step = step_lib.make_train_step(self.module, opt)
        if opts["donate"]:
            self.step = step_lib.partition_train_step(part, step, axes)
        else:
            self.step = part.partition(step, in_axis_resources=(axes, part.data_partition_spec),
                                       out_axis_resources=(axes, None))
        self.batch = part.make_global_batch(batch)
        self.tokens = float(np.sum(batch.loss_mask))
        start = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        try:
            self.xla_flops = float(self.compiled.cost_analysis()["flops"])
        except Exception:  # some backends give no cost analysis
            self.xla_flops = None
        self.config = config

    def __call__(self):
        self.state, metrics = self.compiled(self.state, self.batch)
        return float(metrics["loss"])

    def close(self):
        """Frees the device state (the next variant may need the memory)."""
        import jax

        if self.state is not None:
            jax.tree_util.tree_map(lambda x: x.delete(), self.state)
        self.state = self.compiled = self.batch = None


# ------------------------------------------------------------------------------ torch
class Torch:
    """transformers' WhisperForConditionalGeneration with torch.optim.AdamW, same weights and batch."""

    def __init__(self, config, params, batch, threads):
        import numpy as np
        import torch
        import transformers

        from whisper_t5x.checkpoints import save_pretrained

        if threads:
            torch.set_num_threads(threads)
        directory = tempfile.mkdtemp(prefix="train-throughput-")
        save_pretrained(directory, config, params)
        self.model = transformers.WhisperForConditionalGeneration.from_pretrained(directory).train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.params = trainable
        self.opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
        self.features = torch.tensor(batch.input_features)
        self.ids = torch.tensor(batch.decoder_input_ids).long()
        self.labels = torch.tensor(np.where(batch.loss_mask > 0, batch.labels, -100)).long()
        self.threads = torch.get_num_threads()

    def __call__(self):
        import torch

        self.opt.zero_grad(set_to_none=True)
        out = self.model(input_features=self.features, decoder_input_ids=self.ids, labels=self.labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return float(out.loss.detach())


# ------------------------------------------------------------------------------ driver
def _timed(fn):
    """(wall seconds, CPU seconds of this process, loss) of one step."""
    start, cpu = time.perf_counter(), time.process_time()
    loss = fn()
    return time.perf_counter() - start, time.process_time() - cpu, loss


def _run_peers(peers, args, name, failed):
    """Warm up, then time ``args.repeats`` steps of every peer in turn: {key: (first, times, cpu, losses)}."""
    first = {}
    for key, peer in list(peers.items()):
        try:
            first[key] = _timed(peer)[0]
            for _ in range(args.warmup - 1):
                peer()
        except Exception as e:  # out of memory at run time
            failed.append(dict(model=name, peer=key, error=f"{type(e).__name__}: {str(e)[:300]}"))
            print(f"{name} {key}: failed: {failed[-1]['error']}", file=sys.stderr, flush=True)
            peers.pop(key)
    out = {key: (first[key], [], [], []) for key in peers}
    for _ in range(args.repeats):
        for key, peer in peers.items():
            seconds, cpu_seconds, loss = _timed(peer)
            out[key][1].append(seconds)
            out[key][2].append(cpu_seconds)
            out[key][3].append(loss)
    return out


def measure(name, args):
    """Rows for one model: every variant of ours and, unless ``--no_torch``, torch's step.

    On a CPU the peers are built first and their steps interleaved (the machine's load changes); on an
    accelerator each variant runs alone and frees its state before the next (memory)."""
    import jax

    config, params, weights = load_model(name, args.random_init)
    batch = make_batch(config, args.batch, args.target_tokens)
    if params is None and not args.no_torch:  # random weights shared with the torch peer
        params = random_params(config)
    failed, results, built = [], {}, {}

    def build(variant):
        try:
            return Ours(config, params, batch, args.dtype, variant, args.device)
        except Exception as e:  # out of memory, a kernel this device lacks: report, go on
            failed.append(dict(model=name, peer=f"ours_{variant}", error=f"{type(e).__name__}: {str(e)[:300]}"))
            print(f"{name} ours_{variant}: failed: {failed[-1]['error']}", file=sys.stderr, flush=True)
            return None

    interleave = args.device == "cpu"
    for variant in args.variants:
        peer = build(variant)
        if peer is None:
            continue
        if interleave:
            built[f"ours_{variant}"] = peer
            continue
        results.update(_run_peers({f"ours_{variant}": peer}, args, name, failed))
        built[f"ours_{variant}"] = peer
        peer.close()
    if not args.no_torch:
        built["torch"] = Torch(config, params, batch, args.threads)
    if interleave:
        results.update(_run_peers(dict(built), args, name, failed))
    elif "torch" in built:
        results.update(_run_peers({"torch": built["torch"]}, args, name, failed))
    flops = model_flops(config, args.batch, batch.decoder_input_ids.shape[1])
    tokens = float(batch.loss_mask.sum())
    rows = []
    for key, (first, times, cpu, losses) in results.items():
        peer = built[key]
        median = statistics.median(times)
        row = dict(model=name, weights=weights, peer=key, device=args.device,
                   dtype=args.dtype if key != "torch" else "float32", batch=args.batch,
                   decoder_positions=int(batch.decoder_input_ids.shape[1]), target_tokens=tokens,
                   step_s=median, step_s_all=times, cpu_s=statistics.median(cpu), cpu_s_all=cpu,
                   first_step_s=first, losses=losses, tokens_per_s=tokens / median,
                   audio_hours_per_hour=args.batch * 30.0 / median, model_flops=flops,
                   mfu=flops / (median * args.peak_flops) if args.peak_flops else None)
        if key.startswith("ours"):
            row.update(compile_s=peer.compile_s, xla_flops=peer.xla_flops, scan_layers=peer.config.scan_layers,
                       remat=peer.config.remat_policy, attention_impl=peer.config.attention_impl,
                       devices=[str(d) for d in jax.local_devices()])
            if interleave:
                peer.close()
        else:
            row.update(torch_threads=peer.threads)
        rows.append(row)
    if "torch" in results:
        torch_wall, torch_cpu = statistics.median(results["torch"][1]), statistics.median(results["torch"][2])
        for row in rows:
            row["ratio_to_torch"] = row["step_s"] / torch_wall
            row["cpu_ratio_to_torch"] = row["cpu_s"] / torch_cpu
    return rows, failed


def markdown(rows, meta):
    lines = [f"Train step (forward + backward + clip + AdamW), batch {meta['batch']} x 30 s, "
             f"{meta['target_tokens']} target tokens per row; device {meta['device']} ({meta['hardware']}, "
             f"{meta.get('threads')} threads per peer); "
             f"median of {meta['repeats']} steps, peers interleaved. CPU s: the process's CPU time per step "
             f"(all its threads), steadier than wall time on a shared machine.", "",
             "| model | peer | compute | s / step | ratio to torch | CPU s / step (ratio) | tokens/s | audio h / h "
             "| MFU | first step s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio_to_torch']:.2f}x" if "ratio_to_torch" in r else "-"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        cpu = f"{r['cpu_s']:.2f}" + (f" ({r['cpu_ratio_to_torch']:.2f}x)" if "cpu_ratio_to_torch" in r else "")
        lines.append(f"| {r['model']} | {r['peer']} | {r['dtype']} | {r['step_s']:.3f} | {ratio} | {cpu} | "
                     f"{r['tokens_per_s']:.0f} | {r['audio_hours_per_hour']:.1f} | {mfu} | {r['first_step_s']:.1f} |")
    peak = f"MFU against {meta['peak_flops']:.3g} FLOP/s. " if meta["peak_flops"] else ""
    lines += ["", f"{peak}Command: `{meta['command']}`"
              + (f" with XLA_FLAGS={meta['xla_flags']}" if meta["xla_flags"] else "")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse(argv)
    if args.threads == 1:  # XLA's CPU thread pool can only be turned off, not sized
        args.xla_flags = (args.xla_flags + " --xla_cpu_multi_thread_eigen=false "
                          "intra_op_parallelism_threads=1").strip()
    elif args.threads > 1:
        raise SystemExit("--threads takes 0 (all cores) or 1")
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.join(HERE, ".."))
    import warnings

    warnings.simplefilter("ignore")
    import jax

    if args.peak_flops is None and args.device == "gpu":
        args.peak_flops = 989e12
    hardware = _cpu_name() if args.device == "cpu" else str(jax.devices(args.device)[0].device_kind)
    rows, failures = [], []
    meta = dict(device=args.device, hardware=hardware, cpu=_cpu_name(), batch=args.batch,
                target_tokens=args.target_tokens, repeats=args.repeats, peak_flops=args.peak_flops,
                xla_flags=args.xla_flags, threads=args.threads or os.cpu_count(), jax=jax.__version__,
                command="python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for name in args.models:
        measured, failed = measure(name, args)
        failures += failed
        for row in measured:
            rows.append(row)
            ratio = f" ({row['ratio_to_torch']:.2f}x torch)" if "ratio_to_torch" in row else ""
            mfu = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f}%"
            print(f"{name} {row['peer']}: {row['step_s']:.3f} s/step{ratio}{mfu}", flush=True)
        write(args.out, rows, failures, meta)  # after every model: a later one may run out of memory
    print(open(args.out + ".md").read())


def write(out, rows, failures, meta):
    with open(out + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows, failed=failures), f, indent=1)
    text = markdown(rows, meta) + "".join(f"\nFailed: {f['model']} {f['peer']}: {f['error']}\n" for f in failures)
    with open(out + ".md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
