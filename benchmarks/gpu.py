"""GPU decode benchmark: real-time factor, decode steps/s and encoder windows/s per model and batch.

    bash benchmarks/gpu_run.sh                      # on the GPU machine: installs carried wheels, runs this
    python benchmarks/gpu.py --out DIR              # the same without the wheel install
    python benchmarks/gpu.py --smoke --out DIR      # CPU check of the whole path: 2-layer model, batch 2, 5 steps
    python benchmarks/gpu.py --measure_decode_length    # CPU, real `base`: tokens per 30 s window of speech
    python benchmarks/gpu.py --render benchmarks/results/gpu.json   # gpu.md from gpu.json

What one row measures: a batch of random log-mel windows (batch x 30 s of audio) through the one
compiled ``whisper_t5x.decoding.generate`` program (encoder, cross K/V, forced prefix, greedy loop),
bf16 compute and bf16 weights, the encoder's self-attention through
``jax.nn.dot_product_attention(implementation="cudnn")`` on GPU (``WhisperConfig.attention_impl``).
Weights are random-init with each model's exact configuration: the real ``base`` checkpoint is 142 MB
and the working tree that travels to the GPU machine is capped at 64 MiB. Random weights would stop
greedy decoding at random points, so end-of-text is suppressed and every row decodes exactly
``DECODE_TOKENS`` tokens plus the end-of-text step: the tokens per 30 s window that real ``base``
produces on speech (``--measure_decode_length``, results/gpu_decode_length.json).

Every (model, XLA flags) job runs in its own process, because XLA_FLAGS are read when JAX starts:
each configuration runs with XLA's defaults and with ``COMMAND_BUFFER_FLAG`` (the decode loop's
``while`` and ``cond`` captured as CUDA graphs). Timings exclude compilation and one warm-up call
and are medians of a few repeats; the parent process never touches the GPU. Jobs run in priority
order under a global time budget (the rest are listed as skipped) and the report is rewritten after
every job, so a run cut short still returns data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# Sampled tokens per 30 s window of speech from real `base` (greedy, no timestamps); see
# results/gpu_decode_length.json and `python benchmarks/gpu.py --measure_decode_length`.
DECODE_TOKENS = 102  # median of 14 full windows: 101.5 (73 to 128)
COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
WINDOW_S = 30.0
NO_GPU_EXIT = 2  # a worker's exit status when JAX has no GPU (the parent then stops)
HBM_BYTES_PER_S = 4.3e12  # H200 device-to-device copy measured on this workplace's machine (KINDS.md)


@dataclasses.dataclass(frozen=True)
class Job:
    """One worker process: one model under one set of XLA flags, several batch sizes (ascending)."""

    model: str
    command_buffers: bool
    batches: Tuple[int, ...]
    encoder: bool = True  # also time the encoder alone (the flags do not touch it: done once per model)


# Most important first: base 32/64 with and without command buffers, large-v3 32, turbo 64.
PLAN = (
    Job("base", False, (32, 64)),
    Job("base", True, (32, 64), encoder=False),
    Job("large-v3", False, (32,)),
    Job("large-v3", True, (32,), encoder=False),
    Job("large-v3-turbo", False, (64,)),
    Job("large-v3-turbo", True, (64,), encoder=False),
    Job("base", False, (8, 128)),
    Job("base", True, (8, 128), encoder=False),
    Job("large-v3-turbo", False, (32, 128)),
    Job("large-v3-turbo", True, (32, 128), encoder=False),
    Job("large-v3", False, (8, 64)),
    Job("large-v3", True, (8, 64), encoder=False),
)
# Least budget worth starting a job / a batch with (compiles of the unrolled 32-layer models are long).
MIN_JOB_S = {"base": 30.0, "large-v3-turbo": 50.0, "large-v3": 80.0}
SMOKE_PLAN = (Job("smoke", False, (2,)), Job("smoke", True, (2,), encoder=False))


# ---------------------------------------------------------------------------------------- worker
def model_config(name: str):
    """The exact published configuration (``smoke``: a 2-layer model with base's vocabulary)."""
    from whisper_t5x.model.config import WhisperConfig

    if name == "smoke":
        return WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=2, decoder_layers=2,
                             decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128)
    return WhisperConfig.for_architecture(name)


def random_params(config, dtype, seed: int = 0):
    """Random-init parameters in ``dtype``: N(0, 0.02) except layer-norm scales (ones).

    Each leaf is drawn by a small program compiled once per distinct shape (a few dozen for any
    Whisper): one program slicing a 1.5 B-value vector into every leaf compiled for minutes on an
    H200 (XLA's "very slow compile" alarm on ``jit_fill``), and a per-leaf ``init`` would compile the
    whole model.
    """
    import functools

    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.whisper import WhisperModule

    module = WhisperModule(config.replace(attention_impl=None), dtype=dtype, param_dtype=dtype)
    feats = jax.ShapeDtypeStruct((1, config.num_mel_bins, config.num_frames), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), feats, ids)["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [math.prod(leaf.shape) for _, leaf in leaves]

    @functools.lru_cache(maxsize=None)
    def draw(shape, leaf_dtype):
        return jax.jit(lambda key: (jax.random.normal(key, shape, jnp.float32) * 0.02).astype(leaf_dtype))

    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = []
    for k, (path, leaf) in enumerate(leaves):
        if getattr(path[-1], "key", None) == "scale":
            out.append(jnp.ones(leaf.shape, leaf.dtype))
        else:
            out.append(draw(tuple(leaf.shape), jnp.dtype(leaf.dtype))(keys[k]))
    params = jax.block_until_ready(jax.tree_util.tree_unflatten(treedef, out))
    return params, sum(sizes)


def fixed_length_options(config, decode_tokens: int):
    """Greedy, English, no timestamps, end-of-text suppressed: exactly ``decode_tokens + 1`` loop steps."""
    from whisper_t5x.decoding.generate import DecodeOptions, forced_prefix

    special = config.special_tokens
    base = DecodeOptions(task="transcribe", language_token=special.first_language, return_timestamps=False)
    prefix = forced_prefix(base, special, config.is_multilingual)
    steps = decode_tokens + 1  # the tokens, then the step whose output would be end-of-text
    suppress = {special.eot, special.sot, special.translate, special.transcribe, special.sot_prev,
                special.sot_lm, special.no_speech}
    options = dataclasses.replace(base, max_length=1 + len(prefix) + steps,
                                  suppress_tokens=tuple(sorted(suppress)), begin_suppress_tokens=(220,))
    return options, steps


def step_bytes(config, batch: int, cache_length: int, dtype_bytes: int = 2) -> int:
    """Bytes one decoding step must read at least: decoder weights, cross K/V, self-attention cache."""
    d, layers = config.d_model, config.decoder_layers
    per_layer_weights = 4 * d * d + 2 * d * config.decoder_ffn_dim + 4 * d * d  # self + cross attn, mlp
    weights = layers * per_layer_weights + config.vocab_size * d
    cross_kv = layers * 2 * batch * config.max_source_positions * d
    cache = layers * 2 * batch * cache_length * d
    return (weights + cross_kv + cache) * dtype_bytes


def _median_times(fn, inputs, repeats: int, cap_s: float) -> List[float]:
    """Wall times of ``fn(x)`` over rotating inputs (the caller has warmed up); stops early past ``cap_s``."""
    import jax

    times: List[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(inputs[i % len(inputs)]))
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > cap_s and len(times) >= 2:
            break
    return times


def _memory_stats() -> Dict[str, Optional[int]]:
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - some backends have none
        stats = {}
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def _program_bytes(compiled) -> Optional[Dict[str, int]]:
    try:
        m = compiled.memory_analysis()
        return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                "temp_size_in_bytes", "generated_code_size_in_bytes")}
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _compile(jitted, *args):
    t = time.perf_counter()
    lowered = jitted.lower(*args)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lower_s, time.perf_counter() - t


def attention_check(impl: str) -> Dict[str, Any]:
    """``impl`` attention on encoder-sized bf16 inputs against the model's own attention in float32."""
    import numpy as np
    import jax
    import jax.numpy as jnp

    from whisper_t5x.model.layers import _attend_all, attend_fused

    kq, kk, kv = jax.random.split(jax.random.PRNGKey(7), 3)
    q = jax.random.normal(kq, (2, 1500, 8, 64), jnp.float32) * 64 ** -0.5
    k, v = jax.random.normal(kk, (2, 8, 1500, 64), jnp.float32), jax.random.normal(kv, (2, 8, 1500, 64), jnp.float32)
    try:
        ref = np.asarray(jax.jit(lambda q, k, v: _attend_all(q, [(k, v, None)]))(q, k, v), np.float64)
        bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
        out = jax.jit(lambda q, k, v: attend_fused(q, k, v, impl))(bf(q), bf(k), bf(v))
        out = np.asarray(out.astype(jnp.float32), np.float64)
        err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        return dict(attention_check_rel_err=err, attention_check_ok=bool(np.isfinite(err) and err < 1e-2))
    except Exception as e:  # noqa: BLE001 - reported; the benchmark then falls back to xla itself
        return dict(attention_check_error=f"{type(e).__name__}: {str(e)[:300]}")


def worker(spec: Dict[str, Any]) -> int:
    """Run one :class:`Job` and append one JSON line per batch to ``spec['jsonl']``."""
    import numpy as np
    import jax
    import jax.numpy as jnp

    from whisper_t5x.decoding.generate import generate
    from whisper_t5x.model.whisper import WhisperModule

    job = Job(spec["model"], spec["command_buffers"], tuple(spec["batches"]), spec["encoder"])
    deadline = spec["deadline"]
    dtype = jnp.dtype(spec["dtype"])
    backend = jax.default_backend()
    device = jax.local_devices()[0]
    impl = spec["attention"]
    if impl == "auto":
        impl = "cudnn" if backend == "gpu" else "xla"
    common = dict(model=job.model, command_buffers=job.command_buffers, backend=backend,
                  device=getattr(device, "device_kind", str(device)), jax=jax.__version__,
                  xla_flags=os.environ.get("XLA_FLAGS", ""), dtype=dtype.name, weights="random-init")

    def emit(row):
        row = {**common, **row}
        with open(spec["jsonl"], "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print("RESULT " + json.dumps(row), flush=True)

    if backend != "gpu" and not spec["smoke"]:
        emit(dict(batch=job.batches[0], error=f"JAX backend is {backend}, not gpu: {jax.devices()}"))
        return NO_GPU_EXIT
    config = model_config(job.model)
    t = time.perf_counter()
    params, num_params = random_params(config, dtype)
    init_s = time.perf_counter() - t
    options, steps = fixed_length_options(config, spec["decode_tokens"])
    print(f"[gpu.py] {job.model}: {num_params / 1e6:.1f}M params, init {init_s:.1f} s, backend {backend}, "
          f"{common['device']}, XLA_FLAGS={common['xla_flags']!r}", flush=True)

    def build(impl, sample):
        """Compile generate (and the encoder alone) with this attention, and run each once (warm-up)."""
        module = WhisperModule(config.replace(attention_impl=impl), dtype=dtype, param_dtype=dtype)
        gen = jax.jit(lambda p, f: generate(module, p, f, options))
        enc = jax.jit(lambda p, f: module.apply({"params": p}, f, method=WhisperModule.encode))
        built = dict(gen=_compile(gen, params, sample), enc=_compile(enc, params, sample) if job.encoder else None)
        built["first"] = jax.block_until_ready(built["gen"][0](params, sample))
        if built["enc"]:
            jax.block_until_ready(built["enc"][0](params, sample))
        return built

    attention_error, checks = None, {}
    if impl != "xla" and job.encoder:
        checks = attention_check(impl)
        print(f"[gpu.py] {impl} attention vs f32 reference: {checks}", flush=True)
        if "attention_check_error" in checks:  # not usable here: spare every batch a failing compile
            attention_error = f"{impl}: {checks['attention_check_error']}"
            impl = "xla"
    for batch in job.batches:
        left = deadline - time.time()
        if left < spec["min_batch_s"]:
            emit(dict(batch=batch, skipped=f"time budget: {left:.0f} s left"))
            continue
        rng = np.random.default_rng(batch)
        inputs = [jax.device_put(rng.standard_normal((batch, config.num_mel_bins, config.num_frames),
                                                     dtype=np.float32)) for _ in range(2)]
        row: Dict[str, Any] = dict(batch=batch, audio_s=batch * WINDOW_S, decode_tokens=spec["decode_tokens"],
                                   loop_steps=steps, num_params=num_params, init_s=round(init_s, 2), **checks)
        try:
            while True:
                try:
                    built = build(impl, inputs[0])
                    break
                except Exception as e:  # noqa: BLE001 - e.g. cuDNN attention unsupported for these shapes
                    if impl == "xla" or "RESOURCE_EXHAUSTED" in str(e):
                        raise
                    attention_error = f"{impl}: {type(e).__name__}: {str(e)[:300]}"
                    print(f"[gpu.py] attention_impl={impl} failed ({attention_error}); using xla", flush=True)
                    impl = "xla"
            gen_c, gen_lower, gen_compile = built["gen"]
            row.update(attention_impl=impl, attention_fallback=attention_error,
                       generate_lower_s=round(gen_lower, 2), generate_compile_s=round(gen_compile, 2),
                       generate_program_bytes=_program_bytes(gen_c))
            call = lambda f: gen_c(params, f)  # noqa: E731
            first = built.pop("first")
            num_tokens = np.asarray(first.num_tokens)
            row["fixed_length_ok"] = bool((num_tokens == steps).all())
            row["finite_logprob"] = bool(np.isfinite(np.asarray(first.sum_logprob)).all())
            del first
            times = _median_times(call, inputs, spec["repeats"], spec["repeat_cap_s"])
            gen_s = statistics.median(times)
            row.update(generate_s=round(gen_s, 5), generate_times=[round(x, 5) for x in times],
                       rtf=round(batch * WINDOW_S / gen_s, 1), windows_per_s=round(batch / gen_s, 2))
            if job.encoder:
                enc_c, enc_lower, enc_compile = built["enc"]
                row.update(encoder_lower_s=round(enc_lower, 2), encoder_compile_s=round(enc_compile, 2))
                call_enc = lambda f: enc_c(params, f)  # noqa: E731
                enc_times = _median_times(call_enc, inputs, spec["repeats"] + 2, spec["repeat_cap_s"])
                row.update(encoder_s=round(statistics.median(enc_times), 5),
                           encoder_times=[round(x, 5) for x in enc_times])
            floor = step_bytes(config, batch, options.max_length) / HBM_BYTES_PER_S
            row.update(step_bytes=step_bytes(config, batch, options.max_length),
                       hbm_floor_step_ms=round(floor * 1e3, 4), **_memory_stats())
        except Exception as e:  # noqa: BLE001 - one failing batch (e.g. out of memory) must not end the job
            row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        emit(row)
        del inputs
        built = None
    return 0


# ---------------------------------------------------------------------------------------- parent
def derive(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Fill decode figures: decode time is the generate call minus the encoder (of the same model and
    batch, from the job without command buffers when this job did not time it)."""
    encoder = {(r["model"], r["batch"]): r["encoder_s"] for r in rows if r.get("encoder_s")}
    out = []
    for r in rows:
        r = dict(r)
        enc_s = r.get("encoder_s") or encoder.get((r["model"], r["batch"]))
        if r.get("generate_s") and enc_s:
            decode_s = r["generate_s"] - enc_s
            r["encoder_s_used"] = enc_s
            r["encoder_windows_per_s"] = round(r["batch"] / enc_s, 1)
            if decode_s > 0:
                r["decode_s"] = round(decode_s, 5)
                r["decode_steps_per_s"] = round(r["loop_steps"] / decode_s, 1)
                r["decode_tokens_per_s"] = round(r["batch"] * r["loop_steps"] / decode_s, 0)
                r["step_ms"] = round(decode_s / r["loop_steps"] * 1e3, 3)
        out.append(r)
    return out


def _gib(x) -> str:
    return "" if x is None else f"{x / 2 ** 30:.1f}"


def render(report: Dict[str, Any]) -> str:
    rows = derive(report.get("rows", []))
    meta = report.get("meta", {})
    done = [r for r in rows if r.get("generate_s")]
    first = done[0] if done else (rows[0] if rows else {})
    lines = [
        "# Whisper decoding on one GPU (benchmarks/gpu.py)",
        "",
        f"Device: {first.get('device', '?')} (backend {first.get('backend', '?')}), jax {first.get('jax', '?')}, "
        f"compute and weights {first.get('dtype', '?')}, weights random-init with each model's exact config.",
        f"Command: `{meta.get('command', '')}`",
        f"Decode length fixed: {meta.get('decode_tokens', '?')} tokens + end-of-text step per window "
        f"(real `base` on speech, results/gpu_decode_length.json); end-of-text suppressed so no row stops early.",
        f"Command buffers: `XLA_FLAGS={COMMAND_BUFFER_FLAG}` on (yes) vs XLA defaults (no); "
        f"base XLA_FLAGS `{meta.get('base_xla_flags', '')}`.",
        "RTF = batch x 30 s / wall time of the whole generate call (encoder, prefix, loop); decode = that minus "
        "the encoder alone; medians of repeats after compile and one warm-up.",
        "",
        "| model | batch | cmd buffers | attention | RTF (x real time) | windows/s | encoder windows/s | "
        "decode steps/s | step ms (HBM floor) | tokens/s | compile s (generate / encoder) | peak GiB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cb = "yes" if r.get("command_buffers") else "no"
        if r.get("skipped") or r.get("error"):
            why = f"skipped: {r['skipped']}" if r.get("skipped") else f"error: {r['error'][:120]}"
            why = why.replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['model']} | {r['batch']} | {cb} | | {why} | | | | | | | |")
            continue
        g = lambda key: r.get(key, "")  # noqa: E731
        enc_c = "" if r.get("encoder_compile_s") is None else r["encoder_compile_s"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {cb} | {g('attention_impl')} | {g('rtf')} | {g('windows_per_s')} | "
            f"{g('encoder_windows_per_s')} | {g('decode_steps_per_s')} | {g('step_ms')} ({g('hbm_floor_step_ms')}) | "
            f"{g('decode_tokens_per_s')} | {g('generate_compile_s')} / {enc_c} | {_gib(r.get('peak_bytes_in_use'))} |")
    for s in report.get("skipped", []):
        lines.append(f"| {s['model']} | {','.join(map(str, s['batches']))} | "
                     f"{'yes' if s['command_buffers'] else 'no'} | | skipped: {s['reason']} | | | | | | | |")
    notes = list(report.get("notes", []))
    fallbacks = sorted({r["attention_fallback"] for r in rows if r.get("attention_fallback")})
    notes += [f"cuDNN attention fell back to xla: {f}" for f in fallbacks]
    checks = sorted({(r.get("attention_check_rel_err"), r.get("attention_check_error")) for r in rows
                     if "attention_check_rel_err" in r or "attention_check_error" in r}, key=str)
    notes += [f"encoder attention check (bf16 fused vs float32 reference, 2x1500x8x64): "
              f"{'rel err %.2e' % e if e is not None else 'failed: ' + str(err)}" for e, err in checks]
    bad = [f"{r['model']} b{r['batch']}" for r in rows if r.get("generate_s") and not r.get("fixed_length_ok")]
    if bad:
        notes.append("rows that did not decode the fixed length: " + ", ".join(bad))
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    lines += ["", "Peak GiB: the process's peak device memory after that batch (batches of one job run in "
              "ascending order). HBM floor: bytes one step must read (decoder weights, cross K/V, cache) at "
              f"{HBM_BYTES_PER_S / 1e12:.1f} TB/s."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, meta: Dict[str, Any], skipped, notes) -> Dict[str, Any]:
    rows = []
    path = os.path.join(out_dir, "gpu.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    report = dict(meta=meta, rows=derive(rows), skipped=list(skipped), notes=list(notes))
    with open(os.path.join(out_dir, "gpu.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "gpu.md"), "w", encoding="utf-8") as f:
        f.write(render(report))
    return report


def run_plan(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    jsonl = os.path.join(args.out, "gpu.jsonl")
    if os.path.exists(jsonl):
        os.remove(jsonl)
    start = time.time()
    deadline = start + args.budget_s
    plan = SMOKE_PLAN if args.smoke else PLAN
    if args.models:
        plan = tuple(j for j in plan if j.model in args.models)
    meta = dict(command=" ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]), budget_s=args.budget_s,
                decode_tokens=args.decode_tokens, base_xla_flags=os.environ.get("XLA_FLAGS", ""),
                command_buffer_flag=COMMAND_BUFFER_FLAG, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    skipped, notes = [], []
    for job in plan:
        left = deadline - time.time()
        if left < max(args.min_job_s, MIN_JOB_S.get(job.model, 0.0)):
            skipped.append(dict(**dataclasses.asdict(job), reason=f"time budget ({left:.0f} s left)"))
            write_report(args.out, meta, skipped, notes)
            continue
        spec = dict(**dataclasses.asdict(job), deadline=deadline, jsonl=jsonl, dtype=args.dtype, smoke=args.smoke,
                    attention=args.attention, decode_tokens=args.decode_tokens, repeats=args.repeats,
                    repeat_cap_s=args.repeat_cap_s,
                    min_batch_s=max(args.min_batch_s, 0.7 * MIN_JOB_S.get(job.model, 0.0)))
        env = dict(os.environ)
        if job.command_buffers:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + COMMAND_BUFFER_FLAG).strip()
        if args.smoke:
            env["JAX_PLATFORMS"] = "cpu"
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        print(f"[gpu.py] job {job} ({left:.0f} s of budget left)", flush=True)
        t = time.time()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)], env=env)
        try:
            rc = proc.wait(timeout=max(1.0, left))
            if rc == NO_GPU_EXIT:
                notes.append("JAX sees no GPU: nothing run (check jax's CUDA plugin on this machine)")
                write_report(args.out, meta, skipped, notes)
                break
            if rc:
                notes.append(f"{job.model} command_buffers={job.command_buffers}: worker exited {rc}")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            notes.append(f"{job.model} command_buffers={job.command_buffers}: stopped at the time budget")
        print(f"[gpu.py] job done in {time.time() - t:.0f} s", flush=True)
        write_report(args.out, meta, skipped, notes)
    meta["wall_s"] = round(time.time() - start, 1)
    report = write_report(args.out, meta, skipped, notes)
    print(render(report), flush=True)
    ok = [r for r in report["rows"] if r.get("generate_s")]
    return 0 if ok else 1


# ------------------------------------------------------------------------------ decode length
def measure_decode_length(json_path: str) -> Dict[str, Any]:
    """Tokens real `base` emits per 30 s window (greedy, English), on CPU, without and with timestamps.

    Windows: jfk.flac (11 s, scaled to 30 s), and full 30 s windows of the benchmark corpus
    (espeak-ng at 160 words/min with pauses, as peers.py) and of denser speech (tests' long text at
    175 words/min, no pauses: what the VAD mode's glued rows look like). Windows that stop within
    10 tokens (a window cut mid-sentence can end after one word without timestamps; the pipeline's
    fallback re-decodes those) are listed but left out of the median.
    """
    import numpy as np
    import jax

    sys.path.insert(0, HERE)
    import _speech_corpus as corpus
    from tests._speech import LONG_TEXT, synthesize
    from whisper_t5x import FlaxWhisperForConditionalGeneration
    from whisper_t5x.audio.features import log_mel_spectrogram_np
    from whisper_t5x.audio.loading import load_audio

    model = FlaxWhisperForConditionalGeneration.from_pretrained("base")
    n = int(WINDOW_S * 16000)
    dense = synthesize(LONG_TEXT, speed=175)
    sources = {
        "jfk.flac": [load_audio(os.path.join(ROOT, "samples", "jfk.flac"))],
        "corpus_160wpm": list(corpus.make_audio(150)[0].reshape(-1, n)),
        "long_text_175wpm": [dense[i:i + n] for i in range(0, dense.size - n + 1, n)],
    }
    result: Dict[str, Any] = dict(model="base (real weights)", jax=jax.__version__, windows={})
    full: List[int] = []
    for name, windows in sources.items():
        feats = log_mel_spectrogram_np(windows, n_mels=model.config.num_mel_bins)
        seconds = [round(w.size / 16000, 2) for w in windows]
        for timestamps in (False, True):
            out = model.generate(feats, language="en", task="transcribe", return_timestamps=timestamps)
            tokens = [int(t) for t in np.asarray(out.num_tokens)]
            key = f"{name}{' timestamps' if timestamps else ''}"
            result["windows"][key] = dict(seconds=seconds, tokens=tokens, tokens_per_30s=[
                round(t * WINDOW_S / s, 1) for t, s in zip(tokens, seconds)])
            full += [t for t, s in zip(tokens, seconds) if s == WINDOW_S and t > 10]
            print(key, result["windows"][key], flush=True)
    result["full_windows_counted"] = sorted(full)
    result["full_windows_median"] = statistics.median(full)
    result["suggested_decode_tokens"] = int(math.floor(result["full_windows_median"] + 0.5))
    result["command"] = "python benchmarks/gpu.py --measure_decode_length"
    result["chosen_decode_tokens"] = DECODE_TOKENS
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for gpu.json, gpu.md, gpu.jsonl")
    ap.add_argument("--smoke", action="store_true", help="CPU: 2-layer random model, batch 2, 5 decode tokens")
    ap.add_argument("--models", nargs="*", default=None, help="only these models of the plan")
    ap.add_argument("--budget_s", type=float, default=360.0, help="global time budget, compiles included")
    ap.add_argument("--min_job_s", type=float, default=10.0,
                    help="do not start a job with less budget left (MIN_JOB_S per model if larger)")
    ap.add_argument("--min_batch_s", type=float, default=15.0, help="do not start a batch with less budget left")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeat_cap_s", type=float, default=8.0, help="stop repeating a call after this long")
    ap.add_argument("--decode_tokens", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--attention", default="auto", choices=("auto", "cudnn", "xla"),
                    help="encoder attention implementation (auto: cudnn on GPU, xla elsewhere)")
    ap.add_argument("--measure_decode_length", action="store_true")
    ap.add_argument("--render", default=None, metavar="GPU_JSON", help="write gpu.md beside a gpu.json and exit")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return worker(json.loads(args._worker))
    if args.render:
        with open(args.render, encoding="utf-8") as f:
            report = json.load(f)
        with open(os.path.join(os.path.dirname(args.render), "gpu.md"), "w", encoding="utf-8") as f:
            f.write(render(report))
        return 0
    if args.measure_decode_length:
        measure_decode_length(os.path.join(HERE, "results", "gpu_decode_length.json"))
        return 0
    if args.decode_tokens is None:
        args.decode_tokens = 5 if args.smoke else DECODE_TOKENS
    return run_plan(args)


if __name__ == "__main__":
    sys.exit(main())
