"""The decoding step's levers on this CPU: weight storage, batch, steps per call; and where memory goes.

::

    python benchmarks/step_levers.py --step                   # ms per decoding step, f32 / bf16 / int8 weights
    python benchmarks/step_levers.py --memory                 # XLA buffers of the engine's programs
    python benchmarks/step_levers.py --e2e --weights float32 int8   # VAD rows, 1 and 10 min: wall, CPU, WER, RSS
    python benchmarks/step_levers.py --e2e --weights float32 bfloat16:float32 encoder_bfloat16:int8_step
    python benchmarks/step_levers.py --step --memory --e2e --json benchmarks/results/step_levers.json

``--step``: the ``base`` decoder step (one token, self-attention cache ``--span`` positions, cross
K/V of a real 30 s window) run ``--steps`` times in one compiled loop, for every weight storage of
:mod:`whisper_t5x.model.quantize` and every ``--batches``; all variants are compiled first and then
timed round-robin, so the load of a shared machine falls on them alike (median of ``--repeats``). Wall
and process CPU time per step are reported, with the bytes of decoder weights a step reads.

``--memory``: ``compiled.memory_analysis()`` of the engine's insert and generate programs (arguments,
outputs, aliased, temporaries) at a few slot counts and buckets, per weight storage.

``--e2e``: the pipeline's VAD rows (``long_form="vad"``, batch 8, greedy, no fallback, English, as
``peers.py``'s ``ours_vad``) on the 1 and 10 minute corpus clips, one fresh process per weight storage:
one untimed warm-up per clip, then ``--e2e_runs`` timed runs; median wall and CPU seconds, WER, and the
peak RSS of the process during the timed runs (psutil, every 20 ms), with the model built as
``FlaxWhisperPipeline((model, store_weights(params, w)))``.

Prints markdown; ``--json`` writes the figures (with the CPU and load average).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

MB = 2 ** 20


def _speech_features(batch: int) -> np.ndarray:
    """Log-mel of ``batch`` consecutive 30 s windows of the benchmark corpus (real speech)."""
    import _speech_corpus as corpus

    from whisper_t5x.audio.features import log_mel_spectrogram_np

    audio, _ = corpus.make_audio(30 * batch)
    return log_mel_spectrogram_np([audio[i * 480000:(i + 1) * 480000] for i in range(batch)])


def _load(weights: str):
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.model.quantize import store_weights

    model, params = FlaxWhisperForConditionalGeneration.from_pretrained("base", _do_init=False)
    return model, params, {w: store_weights(params, w) for w in weights}


def step_times(weights, batches, span: int, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.quantize import stored_bytes
    from whisper_t5x.model.whisper import WhisperModule, init_cache

    model, _, stored = _load(sorted({w.partition("+kv")[0] for w in weights}))
    module, cfg = model.module, model.config
    encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method=WhisperModule.encode))
    runs = {}
    for batch in batches:
        hidden = encode(stored["float32"] if "float32" in stored else next(iter(stored.values())),
                        jnp.asarray(_speech_features(batch)))
        for variant in weights:
            w, _, kv = variant.partition("+kv")
            p = stored[w]
            first = jax.jit(lambda p, h, batch=batch: module.apply(
                {"params": p}, jnp.full((batch, 1), cfg.special_tokens.sot, jnp.int32),
                cache=init_cache(cfg, batch, span, module.dtype), cache_index=0, encoder_hidden=h,
                method=WhisperModule.decode))
            out = first(p, hidden)
            if kv:  # cross K/V kept in a narrower dtype ("+kvbfloat16")
                out = out._replace(cross_kv=jax.tree_util.tree_map(lambda a: a.astype(kv), out.cross_kv))

            def loop(p, cache, cross_kv, batch=batch):
                def body(i, c):
                    o = module.apply({"params": p}, jnp.full((batch, 1), 220, jnp.int32), cache=c,
                                     cache_index=1 + i % (span - 2), cross_kv=cross_kv, method=WhisperModule.decode)
                    return o.cache
                return jax.lax.fori_loop(0, steps, body, cache)

            run = jax.jit(loop)
            call = (lambda run=run, p=p, out=out: jax.block_until_ready(run(p, out.cache, out.cross_kv)))
            call()
            runs[(variant, batch)] = (call, [], [])
    for _ in range(repeats):
        for call, walls, cpus in runs.values():
            c, t = time.process_time(), time.perf_counter()
            call()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    rows = []
    for (w, batch), (_, walls, cpus) in runs.items():
        rows.append({"weights": w, "batch": batch, "span": span,
                     "step_ms": statistics.median(walls) / steps * 1000,
                     "step_cpu_ms": statistics.median(cpus) / steps * 1000,
                     "step_weight_mb": stored_bytes(stored[w.partition("+kv")[0]]) / MB})
    return {"rows": rows}


def program_memory(weights, slots_list) -> dict:
    """XLA's buffer sizes of the engine's insert / generate programs (no run)."""
    import jax
    import jax.numpy as jnp

    from whisper_t5x.decoding import slot_generate
    from whisper_t5x.longform.decoder import DecodeRequest
    from whisper_t5x.longform.engine import Engine

    weights = sorted({w.partition("+kv")[0] for w in weights})  # the programs' buffers: per weight storage
    model, _, stored = _load(weights)
    engine = Engine(model, slots=max(slots_list), encode_batch=max(slots_list))
    options = engine.options(DecodeRequest(task="transcribe", language="en", timestamps=False))
    module = model.module
    rows = []

    def record(**kw):
        m = kw.pop("lowered").compile().memory_analysis()
        rows.append(dict(kw, arguments_mb=m.argument_size_in_bytes / MB, outputs_mb=m.output_size_in_bytes / MB,
                         aliased_mb=m.alias_size_in_bytes / MB, temporaries_mb=m.temp_size_in_bytes / MB))

    for w in weights:
        params = stored[w]
        for slots in slots_list:
            state = jax.eval_shape(lambda s=slots: slot_generate.empty(module, options, s))
            for bucket in sorted({1, 2, slots}):
                if bucket > slots:
                    continue
                fn = jax.jit(lambda p, s, f, ids, t, k: slot_generate.insert(module, p, s, f, ids, t, k, options),
                             donate_argnums=(1,))
                lowered = fn.lower(params, state, jax.ShapeDtypeStruct((bucket, 80, 3000), jnp.float32),
                                   jax.ShapeDtypeStruct((bucket,), jnp.int32),
                                   jax.ShapeDtypeStruct((bucket,), jnp.float32),
                                   jax.random.split(jax.random.PRNGKey(0), bucket))
                record(weights=w, program="insert", slots=slots, rows=bucket, lowered=lowered)
            for span in (160, options.max_length):
                fn = jax.jit(lambda p, s, span=span: slot_generate.generate_slots(
                    module, p, s, options, jnp.int32(64), jnp.int32(0), span, slots), donate_argnums=(1,))
                record(weights=w, program="generate", slots=slots, span=span, lowered=fn.lower(params, state))
        rows.append({"weights": w, "program": "state", "slots": max(slots_list),
                     "state_mb": sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(
                         jax.eval_shape(lambda: slot_generate.empty(module, options, max(slots_list))))) / MB})
    return {"rows": rows}


def _e2e_worker(variant: str, durations, runs: int) -> dict:
    """``variant``: a weight storage, optionally ``@N`` for an engine encoder batch of N rows (8 slots),
    optionally after a compute prefix: ``bfloat16:`` (bfloat16 compute and float parameters) or
    ``encoder_bfloat16:`` (the encoder alone in bfloat16, ``WhisperModule.encoder_dtype``)."""
    import threading

    import psutil

    import _speech_corpus as corpus

    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.model.quantize import store_weights

    compute, _, storage = variant.rpartition(":")
    weights, _, encode = storage.partition("@")
    encode_batch = int(encode) if encode else 8
    proc = psutil.Process()
    model, params = FlaxWhisperForConditionalGeneration.from_pretrained("base", _do_init=False)
    params = store_weights(params, weights)
    if compute:
        import jax.numpy as jnp

        from whisper_t5x.model.quantize import cast_float_weights

        if compute not in ("bfloat16", "encoder_bfloat16"):
            raise ValueError(f"unknown compute prefix {compute!r}")
        whole = compute == "bfloat16"
        params = cast_float_weights(params, "bfloat16") if whole else dict(
            params, encoder=cast_float_weights(params["encoder"], "bfloat16"))
        model = FlaxWhisperForConditionalGeneration(
            model.config, dtype=jnp.bfloat16 if whole else jnp.float32, _do_init=False,
            encoder_dtype=None if whole else jnp.bfloat16, tokenizer_file=model.tokenizer_file,
            generation_config=model.generation_config)
    pipe = FlaxWhisperPipeline((model, params), batch_size=8, fallback=False, decode_slots=8)
    del params
    out = {"weights": variant, "encode_batch": encode_batch, "rss_after_load_mb": proc.memory_info().rss / MB, "clips": []}
    for seconds in durations:
        audio, reference = corpus.make_audio(seconds)

        def run():
            # the call's batch_size is the engine's encoder batch (at most its 8 slots)
            return pipe(audio, task="transcribe", language="en", return_timestamps=False,
                        batch_size=encode_batch, progress=False, long_form="vad")["text"]

        run()  # warm-up: compiles every program this length needs
        walls, cpus, peak = [], [], [proc.memory_info().rss]
        stop = threading.Event()

        def poll():
            while not stop.wait(0.02):
                peak[0] = max(peak[0], proc.memory_info().rss)

        sampler = threading.Thread(target=poll, daemon=True)
        sampler.start()
        for _ in range(runs):
            c, t = time.process_time(), time.perf_counter()
            text = run()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        stop.set()
        sampler.join()
        out["clips"].append({"seconds": seconds, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
                             "wer": corpus.wer(reference, text), "peak_rss_mb": max(peak[0], proc.memory_info().rss) / MB,
                             "loadavg": os.getloadavg()[0]})
    return out


def e2e(weights, durations, runs: int) -> dict:
    """One fresh process per weight storage (memory per variant, no shared compiled programs)."""
    import subprocess

    rows = []
    for w in weights:
        cmd = [sys.executable, os.path.abspath(__file__), "--_e2e_worker", w, "--e2e_runs", str(runs),
               "--durations", *map(str, durations)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in done.stdout.splitlines() if l.startswith("@@ ")]
        if done.returncode or not lines:
            rows.append({"weights": w, "error": done.stderr[-2000:]})
            continue
        rows.append(json.loads(lines[-1][3:]))
    return {"rows": rows, "durations": list(durations), "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--weights", nargs="+", default=["float32", "bfloat16", "int8"])
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 8])
    ap.add_argument("--span", type=int, default=160)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slots", nargs="+", type=int, default=[2, 8])
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--durations", nargs="+", type=float, default=[60, 600])
    ap.add_argument("--e2e_runs", type=int, default=1)
    ap.add_argument("--_e2e_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args._e2e_worker:
        print("@@ " + json.dumps(_e2e_worker(args._e2e_worker, args.durations, args.e2e_runs)), flush=True)
        return 0
    from _machine import cpu_name

    results = {"cpu": cpu_name(), "loadavg_before": os.getloadavg(), "argv": sys.argv[1:]}
    if args.step:
        results["step"] = step_times(args.weights, args.batches, args.span, args.steps, args.repeats)
        print(f"\nDecoding step, base, cache span {args.span}, {args.steps} steps per call, median of "
              f"{args.repeats} ({results['cpu']}, load {results['loadavg_before'][0]:.1f})\n")
        print("| weights | batch | step ms (wall) | step ms (CPU) | decoder weights read MB |\n|---|---:|---:|---:|---:|")
        for r in results["step"]["rows"]:
            print(f"| {r['weights']} | {r['batch']} | {r['step_ms']:.2f} | {r['step_cpu_ms']:.2f} | "
                  f"{r['step_weight_mb']:.0f} |")
    if args.memory:
        results["memory"] = program_memory(args.weights, args.slots)
        print("\nEngine programs, XLA buffers (MB)\n")
        print("| weights | program | slots | rows/span | arguments | outputs | aliased | temporaries |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|")
        for r in results["memory"]["rows"]:
            if r["program"] == "state":
                print(f"| {r['weights']} | slot state | {r['slots']} | | {r['state_mb']:.0f} | | | |")
                continue
            print(f"| {r['weights']} | {r['program']} | {r['slots']} | {r.get('rows', r.get('span'))} | "
                  f"{r['arguments_mb']:.0f} | {r['outputs_mb']:.0f} | {r['aliased_mb']:.0f} | "
                  f"{r['temporaries_mb']:.0f} |")
    if args.e2e:
        results["e2e"] = e2e(args.weights, args.durations, args.e2e_runs)
        print(f"\nVAD rows end to end, base, batch 8 ({results['cpu']}; median of {args.e2e_runs})\n")
        print("| weights | audio | wall s | CPU s | WER % | peak RSS MB | load |\n|---|---:|---:|---:|---:|---:|---:|")
        for r in results["e2e"]["rows"]:
            if "error" in r:
                print(f"| {r['weights']} | failed: {r['error'][-200:]!r} |")
                continue
            for c in r["clips"]:
                print(f"| {r['weights']} | {c['seconds']:g} s | {c['wall_s']:.1f} | {c['cpu_s']:.1f} | "
                      f"{100 * c['wer']:.2f} | {c['peak_rss_mb']:.0f} | {c['loadavg']:.1f} |")
    results["loadavg_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
