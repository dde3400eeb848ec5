"""Half-precision and int8 compute on this CPU: raw products, the base encoder, the decoding step, jfk text.

::

    python benchmarks/amx_levers.py --dots                     # GFLOP/s of one (3000x512)x(512x2048) product
    python benchmarks/amx_levers.py --encoder --step           # base encoder ms/window, step ms, per variant
    python benchmarks/amx_levers.py --jfk                      # jfk text and teacher-forced logits vs float32
    python benchmarks/amx_levers.py --dots --encoder --step --jfk --json benchmarks/results/amx_levers.json

Variants (``--variants``): ``float32`` (the default model); ``bfloat16`` (``WhisperModule(dtype=bf16,
param_dtype=bf16)``: bfloat16 weights and activations, products accumulated in float32, which is what
takes the bfloat16 matrix units); ``int8_step`` (float32 compute, the decoder step's weights and the
vocabulary table int8, W8A8); ``int8`` (``int8_step`` plus the encoder's dense kernels and the
cross-attention K/V projections int8); ``bfloat16+int8`` (both: bfloat16 compute, int8 kernels); a
``+f32kv`` suffix (``--step`` only): the self-attention cache and cross K/V kept float32 under bfloat16
compute (the attention products of a step then run in float32).

``--dots``: the product that motivates it, timed for f32, bf16 returning bf16 (what a Dense in bfloat16
did before), bf16 accumulating in f32, int8 accumulating in int32, and the width-3 convolution of the
encoder's front end (XLA's convolution vs three shifted products).

``--encoder``: ``WhisperModule.encode`` of real speech windows (``--encoder_batches``), ms per window.
``--step``: one decoding step of the base decoder (one token per row, self-attention cache ``--spans``,
cross K/V of real windows), ``--steps`` steps per compiled call. Every program is compiled first, then
all are timed round-robin (median of ``--repeats``) so the load of a shared machine falls on each
alike; wall and process CPU time are both reported.

``--jfk``: tiny.en and base on samples/jfk.flac through the pipeline (VAD rows, greedy, no fallback),
text per variant vs float32; and the mean / max teacher-forced logit difference to float32 (relative
to the float32 logits' standard deviation) over the float32 transcript's tokens.

Prints markdown; ``--json`` writes the figures with the CPU name and load average.
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

VARIANTS = ("float32", "bfloat16", "int8_step", "int8", "bfloat16+int8", "bfloat16+f32kv", "bfloat16+int8+f32kv")


def _timed(calls: dict, repeats: int) -> dict:
    """Round-robin timing of compiled, warmed-up ``calls``: name -> (median wall s, median CPU s)."""
    times = {name: ([], []) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            c, t = time.process_time(), time.perf_counter()
            call()
            times[name][0].append(time.perf_counter() - t)
            times[name][1].append(time.process_time() - c)
    return {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}


def dots(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.layers import _conv_as_taps

    m, k, n = 3000, 512, 2048
    rng = np.random.RandomState(0)
    a, b = rng.randn(m, k).astype(np.float32), rng.randn(k, n).astype(np.float32)
    ab, bb = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    qa, qb = jnp.asarray(np.clip(a * 40, -127, 127), jnp.int8), jnp.asarray(np.clip(b * 40, -127, 127), jnp.int8)
    dot = lambda pe=None: jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=pe))  # noqa: E731
    x = rng.randn(2, 1500, 512).astype(np.float32)
    w = (rng.randn(3, 512, 512) * 0.02).astype(np.float32)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    conv = lambda pe=None: jax.jit(lambda u, v: jax.lax.conv_general_dilated(  # noqa: E731
        u, v, (1,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"), preferred_element_type=pe))
    cases = {
        "dot f32 x f32": (dot(), (a, b), 2 * m * k * n),
        "dot bf16 x bf16 -> bf16": (dot(), (ab, bb), 2 * m * k * n),
        "dot bf16 x bf16 -> f32": (dot(jnp.float32), (ab, bb), 2 * m * k * n),
        "dot int8 x int8 -> int32": (dot(jnp.int32), (qa, qb), 2 * m * k * n),
        "conv f32": (conv(), (x, w), 2 * 2 * 1500 * 3 * 512 * 512),
        "conv bf16 -> f32": (conv(jnp.float32), (xb, wb), 2 * 2 * 1500 * 3 * 512 * 512),
        "conv bf16 as 3 products -> f32": (jax.jit(lambda u, v: _conv_as_taps(u, v, 1)), (xb, wb),
                                           2 * 2 * 1500 * 3 * 512 * 512),
    }
    calls = {}
    for name, (fn, args, _) in cases.items():
        jax.block_until_ready(fn(*args))
        calls[name] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
    timed = _timed(calls, repeats)
    return {"rows": [{"case": name, "ms": timed[name][0] * 1e3, "cpu_ms": timed[name][1] * 1e3,
                      "gflops": flops / timed[name][0] / 1e9} for name, (_, _, flops) in cases.items()]}


def _speech_features(batch: int) -> np.ndarray:
    import _speech_corpus as corpus

    from whisper_t5x.audio.features import log_mel_spectrogram_np

    audio, _ = corpus.make_audio(30 * batch)
    return log_mel_spectrogram_np([audio[i * 480000:(i + 1) * 480000] for i in range(batch)])


def _variants(names, checkpoint: str = "base"):
    """name -> (module, params) of ``checkpoint`` for each variant (module: compute dtype)."""
    import jax.numpy as jnp

    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.model.quantize import cast_float_weights, store_weights

    model, params = FlaxWhisperForConditionalGeneration.from_pretrained(checkpoint, _do_init=False)
    out = {}
    for name in names:
        compute, _, weights = name.removesuffix("+f32kv").partition("+")
        if compute != "bfloat16":
            compute, weights = "float32", name
        dtype = jnp.dtype(compute)
        p = store_weights(params, weights or "float32")
        if compute == "bfloat16":
            p = cast_float_weights(p, "bfloat16")
        twin = FlaxWhisperForConditionalGeneration(model.config, dtype=dtype, param_dtype=dtype, _do_init=False,
                                                   tokenizer_file=model.tokenizer_file,
                                                   generation_config=model.generation_config)
        out[name] = (twin, p)
    return model, out


def encoder_times(names, batches, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.whisper import WhisperModule

    _, variants = _variants(names)
    calls = {}
    for batch in batches:
        feats = jnp.asarray(_speech_features(batch))
        for name, (twin, params) in variants.items():
            module = twin.module
            fn = jax.jit(lambda p, x, module=module: module.apply({"params": p}, x, method=WhisperModule.encode))
            jax.block_until_ready(fn(params, feats))
            calls[(name, batch)] = lambda fn=fn, p=params, x=feats: jax.block_until_ready(fn(p, x))
    timed = _timed(calls, repeats)
    return {"rows": [{"variant": n, "batch": b, "ms_per_window": w / b * 1e3, "cpu_ms_per_window": c / b * 1e3}
                     for (n, b), (w, c) in timed.items()]}


def step_times(names, batches, spans, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.whisper import WhisperModule, init_cache

    model, variants = _variants(names)
    cfg = model.config
    calls = {}
    for batch in batches:
        feats = jnp.asarray(_speech_features(batch))
        for name, (twin, params) in variants.items():
            module = twin.module
            hidden = jax.jit(lambda p, x, module=module: module.apply(
                {"params": p}, x, method=WhisperModule.encode))(params, feats)
            kv_dtype = jnp.float32 if name.endswith("+f32kv") else module.dtype
            for span in spans:
                first = jax.jit(lambda p, h, module=module, batch=batch, span=span, kv_dtype=kv_dtype: module.apply(
                    {"params": p}, jnp.full((batch, 1), cfg.special_tokens.sot, jnp.int32),
                    cache=init_cache(cfg, batch, span, kv_dtype), cache_index=0, encoder_hidden=h,
                    method=WhisperModule.decode))
                out = first(params, hidden)
                out = out._replace(cross_kv=jax.tree_util.tree_map(lambda a: a.astype(kv_dtype), out.cross_kv))

                def loop(p, cache, cross_kv, module=module, batch=batch, span=span):
                    def body(i, c):
                        return module.apply({"params": p}, jnp.full((batch, 1), 220, jnp.int32), cache=c,
                                            cache_index=1 + i % (span - 2), cross_kv=cross_kv,
                                            method=WhisperModule.decode).cache
                    return jax.lax.fori_loop(0, steps, body, cache)

                run = jax.jit(loop)
                call = (lambda run=run, p=params, out=out: jax.block_until_ready(run(p, out.cache, out.cross_kv)))
                call()
                calls[(name, batch, span)] = call
    timed = _timed(calls, repeats)
    return {"steps": steps, "rows": [{"variant": n, "batch": b, "span": s, "step_ms": w / steps * 1e3,
                                      "step_cpu_ms": c / steps * 1e3} for (n, b, s), (w, c) in timed.items()]}


def jfk(names, checkpoints) -> dict:
    import jax.numpy as jnp

    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.audio.features import log_mel_spectrogram_np
    from whisper_t5x.audio.loading import load_audio

    audio = load_audio(os.path.join(ROOT, "samples", "jfk.flac"))
    rows = []
    for checkpoint in checkpoints:
        model, variants = _variants(names, checkpoint)
        feats = jnp.asarray(log_mel_spectrogram_np([np.pad(audio, (0, 480000 - len(audio)))]))
        texts, logits, tokens = {}, {}, None
        for name, (twin, params) in variants.items():
            pipe = FlaxWhisperPipeline((twin, params), dtype=twin.dtype, batch_size=2, fallback=False,
                                       compile_cache=False)
            language = "en" if model.config.is_multilingual else None
            texts[name] = pipe(audio, long_form="vad", language=language, task="transcribe")["text"]
            if tokens is None:  # the float32 transcript, teacher-forced through every variant
                prefix = pipe.tokenizer.sot_sequence(language, "transcribe" if language else None)
                tokens = jnp.asarray([prefix + pipe.tokenizer.encode(texts[name].strip())], jnp.int32)
            logits[name] = np.asarray(twin.module.apply({"params": params}, feats, tokens)["logits"], np.float32)
        ref = logits[names[0]]
        for name in names:
            diff = np.abs(logits[name] - ref)
            rows.append({"checkpoint": checkpoint, "variant": name, "text": texts[name],
                         "same_text": texts[name] == texts[names[0]],
                         "logits_mean_rel": float(diff.mean() / ref.std()),
                         "logits_max_rel": float(diff.max() / ref.std()),
                         "argmax_agree": float(np.mean(logits[name].argmax(-1) == ref.argmax(-1)))})
    return {"rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dots", action="store_true")
    ap.add_argument("--encoder", action="store_true")
    ap.add_argument("--step", action="store_true")
    ap.add_argument("--jfk", action="store_true")
    ap.add_argument("--variants", nargs="+", default=["float32", "bfloat16", "int8_step", "int8"],
                    choices=VARIANTS)
    ap.add_argument("--encoder_batches", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 8])
    ap.add_argument("--spans", nargs="+", type=int, default=[160, 448])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoints", nargs="+", default=["tiny.en", "base"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.variants[0] != "float32":
        args.variants = ["float32"] + [v for v in args.variants if v != "float32"]  # the reference first
    from _machine import cpu_name

    results = {"cpu": cpu_name(), "loadavg_before": os.getloadavg(), "argv": sys.argv[1:]}
    head = f"({results['cpu']}, load {results['loadavg_before'][0]:.1f}, median of {args.repeats})"
    if args.dots:
        results["dots"] = dots(args.repeats)
        print(f"\nOne product {head}\n\n| case | ms | CPU ms | GFLOP/s |\n|---|---:|---:|---:|")
        for r in results["dots"]["rows"]:
            print(f"| {r['case']} | {r['ms']:.1f} | {r['cpu_ms']:.1f} | {r['gflops']:.0f} |")
    if args.encoder:
        results["encoder"] = encoder_times(args.variants, args.encoder_batches, args.repeats)
        print(f"\nbase encoder {head}\n\n| variant | batch | ms/window | CPU ms/window |\n|---|---:|---:|---:|")
        for r in results["encoder"]["rows"]:
            print(f"| {r['variant']} | {r['batch']} | {r['ms_per_window']:.0f} | {r['cpu_ms_per_window']:.0f} |")
    if args.step:
        results["step"] = step_times(args.variants, args.batches, args.spans, args.steps, args.repeats)
        print(f"\nbase decoding step, {args.steps} steps per call {head}\n\n"
              "| variant | batch | span | step ms | CPU ms |\n|---|---:|---:|---:|---:|")
        for r in results["step"]["rows"]:
            print(f"| {r['variant']} | {r['batch']} | {r['span']} | {r['step_ms']:.2f} | {r['step_cpu_ms']:.2f} |")
    if args.jfk:
        results["jfk"] = jfk(args.variants, args.checkpoints)
        print("\njfk vs float32\n\n| model | variant | same text | logits mean / max (x std) | argmax agree |\n"
              "|---|---|---|---|---:|")
        for r in results["jfk"]["rows"]:
            print(f"| {r['checkpoint']} | {r['variant']} | {r['same_text']} | {r['logits_mean_rel']:.4f} / "
                  f"{r['logits_max_rel']:.3f} | {r['argmax_agree']:.3f} |")
            if not r["same_text"]:
                print(f"|  |  | {r['text']!r} | | |")
    results["loadavg_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
