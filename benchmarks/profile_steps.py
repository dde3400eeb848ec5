"""Where the time of a batch goes: encoder per window and one decoding step, ours vs CTranslate2.

The pipeline's cost is (encoder time per window) x windows + (step time) x steps per batch, so these
two numbers, measured on the same random log-mel batch for both engines, explain the long-form results
of ``peers.py``. Our step is timed at several self-attention cache lengths (the staged loop of
``whisper_t5x.decoding.generate`` runs at 160 positions until a row needs more, then at the full 448).

    python benchmarks/profile_steps.py --model base --batch 8 --cache_lengths 448 160 --ct2

Prints one markdown table; with ``--json FILE`` also writes the figures.
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


def _median_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours(model_name: str, batch: int, cache_lengths, steps: int, repeats: int, dtype: str, variants=("float32",)):
    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.model.whisper import WhisperModule, init_cache

    dt = getattr(jnp, dtype)
    model, params = FlaxWhisperForConditionalGeneration.from_pretrained(model_name, dtype=dt, param_dtype=dt,
                                                                        _do_init=False)
    module, cfg = model.module, model.config
    params = jax.device_put(params)
    feats = jnp.asarray(np.random.RandomState(0).randn(batch, cfg.num_mel_bins, 3000).astype(np.float32) * 0.5,
                        dtype=dt)
    encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method=WhisperModule.encode))
    hidden = encode(params, feats)
    rows = {"encoder_s_per_window": _median_time(lambda: encode(params, feats).block_until_ready(), repeats) / batch}
    sot = cfg.special_tokens.sot
    # Every (cache length, variant) is compiled first, then all are timed round-robin, so that the
    # load of a shared machine falls on all of them alike; the median per variant is reported.
    runs = {}
    for length in cache_lengths:
        first = jax.jit(lambda p, h, n=length: module.apply(
            {"params": p}, jnp.full((batch, 1), sot, jnp.int32), cache=init_cache(cfg, batch, n, module.dtype),
            cache_index=0, encoder_hidden=h, method=WhisperModule.decode))
        out = first(params, hidden)
        for variant in variants:
            # variant: dtype of the vocabulary projection (the compute dtype: the parameter as it is)
            vocab = None if variant == dtype else jnp.dtype(variant)

            def loop(p, cache, cross_kv, vocab=vocab):
                table = None if vocab is None else p["decoder"]["embed_tokens"]["embedding"].astype(vocab)
                extra = {} if table is None else {"output_embedding": table}

                def body(i, c):
                    o = module.apply({"params": p}, jnp.full((batch, 1), 220, jnp.int32), cache=c, cache_index=i + 1,
                                     cross_kv=cross_kv, method=WhisperModule.decode, **extra)
                    return o.cache
                return jax.lax.fori_loop(0, steps, body, cache)

            run = jax.jit(loop)
            call = (lambda run=run, out=out: jax.block_until_ready(run(params, out.cache, out.cross_kv)))
            call()
            suffix = "" if vocab is None else f"_vocab_{variant}"
            runs[f"step_ms_cache_{length}{suffix}"] = (call, [])
    for _ in range(repeats):
        for call, times in runs.values():
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    for name, (_, times) in runs.items():
        rows[name] = statistics.median(times) / steps * 1000
    return rows


def compile_times(model_name: str, batch: int, spans_options) -> dict:
    """Cold compile seconds of the whole generate program (persistent cache off) per decoding configuration.

    ``spans_options``: cache stages to try (``()``: one stage over the full cache; the default ``(160,)``).
    """
    import jax
    import jax.numpy as jnp

    from whisper_t5x.decoding import generate as decoding
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    jax.config.update("jax_enable_compilation_cache", False)
    model, params = FlaxWhisperForConditionalGeneration.from_pretrained(model_name, _do_init=False)
    feats = jax.ShapeDtypeStruct((batch, model.config.num_mel_bins, 3000), jnp.float32)
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    configs = {
        "greedy": dict(language="en", task="transcribe"),
        "greedy_timestamps": dict(language="en", task="transcribe", return_timestamps=True),
        "sampling": dict(language="en", task="transcribe", sample=True),
        "beam5": dict(language="en", task="transcribe", num_beams=5),
    }
    rows = {}
    original = decoding.CACHE_SPANS
    try:
        for spans in spans_options:
            decoding.CACHE_SPANS = tuple(spans)
            for name, kw in configs.items():
                if name == "beam5" and tuple(spans) != tuple(original):
                    continue  # beam search runs on the full cache: no stages
                options = model.decode_options(**kw)
                fn = jax.jit(lambda p, f, options=options: decoding.generate(model.module, p, f, options))
                t = time.perf_counter()
                lowered = fn.lower(shapes, feats)
                t_lower = time.perf_counter() - t
                t = time.perf_counter()
                lowered.compile()
                label = f"{name}_spans_{'-'.join(map(str, spans)) or 'none'}"
                text = lowered.as_text()
                rows[label] = {"trace_lower_s": t_lower, "compile_s": time.perf_counter() - t,
                               "while_loops": text.count("stablehlo.while"),
                               "host_callbacks": text.count("callback")}  # per-step host work: none expected
    finally:
        decoding.CACHE_SPANS = original
    from whisper_t5x.model.whisper import WhisperModule

    encode = jax.jit(lambda p, f: model.module.apply({"params": p}, f, method=WhisperModule.encode))
    t = time.perf_counter()
    lowered = encode.lower(shapes, feats)
    t_lower = time.perf_counter() - t
    t = time.perf_counter()
    lowered.compile()
    rows["encoder_only"] = {"trace_lower_s": t_lower, "compile_s": time.perf_counter() - t,
                            "while_loops": lowered.as_text().count("stablehlo.while")}
    return rows


def micro(repeats: int, steps: int = 20) -> dict:
    """The two largest reads of a ``base`` batch-8 step in isolation, f32 vs bf16 (ms per step).

    Cross-attention of one token over six layers of (8, 8, 1500, 64) keys/values, and the
    (8, 512) x (51865, 512) vocabulary projection.
    """
    import jax
    import jax.numpy as jnp

    b, h, s, d, layers = 8, 8, 1500, 64, 6
    rs = np.random.RandomState(0)
    q = jnp.asarray(rs.randn(b, 1, h, d).astype(np.float32))
    ks = [jnp.asarray(rs.randn(b, h, s, d).astype(np.float32)) for _ in range(layers)]
    vs = [jnp.asarray(rs.randn(b, h, s, d).astype(np.float32)) for _ in range(layers)]

    def cross(q, k, v):
        sc = jnp.einsum("bthd,bhsd->bhts", q.astype(k.dtype), k, preferred_element_type=jnp.float32)
        p = jax.nn.softmax(sc, -1)
        return jnp.einsum("bhts,bhsd->bthd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)

    def time_cross(ks, vs):
        def body(i, x):
            for k, v in zip(ks, vs):
                x = x + cross(x, k, v) * 1e-3
            return x
        f = jax.jit(lambda q, ks, vs: jax.lax.fori_loop(0, steps, body, q))
        return _median_time(lambda: f(q, ks, vs).block_until_ready(), repeats) / steps * 1000

    table = jnp.asarray(rs.randn(51865, 512).astype(np.float32))
    x = jnp.asarray(rs.randn(b, 512).astype(np.float32))

    def time_vocab(e):
        def body(i, c):
            y = x + c[:, :512] * 1e-6
            return c + jnp.einsum("bd,vd->bv", y.astype(e.dtype), e, preferred_element_type=jnp.float32) * 1e-6
        f = jax.jit(lambda e: jax.lax.fori_loop(0, steps, body, jnp.zeros((b, 51865), jnp.float32)))
        return _median_time(lambda: f(e).block_until_ready(), repeats) / steps * 1000

    bf = jnp.bfloat16
    return {"cross_attention_f32_ms": time_cross(ks, vs),
            "cross_attention_bf16_kv_ms": time_cross([k.astype(bf) for k in ks], [v.astype(bf) for v in vs]),
            "vocab_projection_f32_ms": time_vocab(table), "vocab_projection_bf16_ms": time_vocab(table.astype(bf))}


def ctranslate2_engine(batch: int, steps: int, repeats: int):
    import ctranslate2

    sys.path.insert(0, HERE)
    from peers import export_models, models_dir

    path = export_models(models_dir())["ct2"]
    model = ctranslate2.models.Whisper(path, device="cpu", compute_type="float32", intra_threads=os.cpu_count() or 1)
    feats = ctranslate2.StorageView.from_array(np.random.RandomState(0).randn(batch, 80, 3000).astype(np.float32) * 0.5)
    rows = {"encoder_s_per_window": _median_time(lambda: model.encode(feats, to_cpu=True), repeats) / batch}
    encoded = model.encode(feats, to_cpu=False)
    prompt = [[50258, 50259, 50359, 50363]] * batch  # sot, en, transcribe, notimestamps
    kw = dict(beam_size=1, suppress_blank=False, suppress_tokens=[50257], max_initial_timestamp_index=0)  # no early end

    def generate(n):
        return model.generate(encoded, prompt, max_length=n, **kw)

    short, long = 4, 4 + steps
    t_short = _median_time(lambda: generate(short), repeats)
    t_long = _median_time(lambda: generate(long), repeats)
    made = min(len(r.sequences_ids[0]) for r in generate(long))
    rows["step_ms_growing_cache"] = (t_long - t_short) / max(1, made - 1) * 1000
    rows["steps_measured"] = made
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cache_lengths", type=int, nargs="+", default=[448, 160])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--ct2", action="store_true", help="also time CTranslate2 on the same batch (base only)")
    ap.add_argument("--vocab_dtypes", nargs="+", default=["float32", "bfloat16"],
                    help="vocabulary-projection dtypes to time the step with")
    ap.add_argument("--compile", action="store_true",
                    help="also time cold compiles of generate (persistent cache off), with and without stages")
    ap.add_argument("--only_compile", action="store_true")
    ap.add_argument("--micro", action="store_true", help="only the isolated cross-attention / vocabulary timings")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "loadavg_before": os.getloadavg()[0]}
    if args.micro:
        print(json.dumps(micro(args.repeats), indent=1))
        return 0
    if not args.only_compile:
        results["ours"] = ours(args.model, args.batch, args.cache_lengths, args.steps, args.repeats, args.dtype,
                               args.vocab_dtypes)
    if args.ct2 and not args.only_compile:
        results["ctranslate2"] = ctranslate2_engine(args.batch, args.steps, args.repeats)
    if args.compile or args.only_compile:
        results["compile"] = compile_times(args.model, args.batch, [(160,), ()])
    results["loadavg_after"] = os.getloadavg()[0]
    print(f"{args.model}, batch {args.batch}, {args.dtype}, load {results['loadavg_before']:.1f} -> "
          f"{results['loadavg_after']:.1f}\n")
    print("| engine | measure | value |\n|---|---|---:|")
    for engine in ("ours", "ctranslate2"):
        for k, v in results.get(engine, {}).items():
            print(f"| {engine} | {k} | {v:.3f} |")
    for k, v in results.get("compile", {}).items():
        print(f"| compile | {k} | {v['compile_s']:.2f} s (trace+lower {v['trace_lower_s']:.2f} s, "
              f"{v['while_loops']} while loops) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
