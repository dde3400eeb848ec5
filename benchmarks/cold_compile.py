"""Compile and start-up cost of the pipeline: cold compile on a long clip, and a fresh process on jfk.

    python benchmarks/cold_compile.py --seconds 600 --model base --modes vad chunked
    python benchmarks/cold_compile.py --startup --runs 3        # jfk: CLI and pipeline vs faster-whisper

``--modes``: each mode runs in its own process with the persistent compile cache off, so every program is
compiled in the first call; the second call is the same work without compiling. Also reports how many
decode programs the Decoder built and the rows decoded (``results/cold_compile.json``).

``--startup``: ``whisper-t5x transcribe samples/jfk.flac`` (in-process ``cli.main``, timed from the
child's first line, plus the console script itself timed from outside) and ``FlaxWhisperPipeline("base")``
+ ``transcribe`` in fresh processes, in three states:

* cold: an empty cache directory (every program traced, compiled, and written);
* warm cache: a fresh process with the persistent compile cache and the exported programs present;
* warm process: the second call in the same process;

each with the program cache off (``WHISPER_T5X_PROGRAM_CACHE=off``: the compile cache alone), exported
programs only (``=export``: no tracing) and on (the default: exported programs and compiled executables,
no tracing, lowering or compile-cache lookup), next to faster-whisper's fresh process on the same clip (``WhisperModel(dir,
device="cpu")`` with its defaults: compute type ``default`` (float16 weights run as float32 on a CPU
without fast float16), beam 5, language detection, temperature fallback; also int8). Warm runs are
repeated ``--runs`` times, interleaved, and the minimum wall and CPU time are kept: the machine is shared.
The breakdown (import, model load, VAD, features, tracing, lowering, XLA compile or cache load, run) comes
from jax's monitoring events inside the child. Results: ``results/cold_compile_startup.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

T0 = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
JFK = os.path.join(ROOT, "samples", "jfk.flac")


def _worker(mode: str, seconds: float, model: str, batch: int) -> dict:
    import _speech_corpus as corpus
    from whisper_t5x import FlaxWhisperPipeline

    audio, _ = corpus.make_audio(seconds)
    pipe = FlaxWhisperPipeline(model, batch_size=batch, fallback=False, compile_cache=False)
    kwargs = dict(language="en", task="transcribe", progress=False, long_form=mode)
    t = time.perf_counter()
    pipe(audio, **kwargs)
    first = time.perf_counter() - t
    t = time.perf_counter()
    pipe(audio, **kwargs)
    second = time.perf_counter() - t
    return dict(mode=mode, first_call_s=round(first, 2), second_call_s=round(second, 2),
                compile_s=round(first - second, 2), decode_programs=pipe.decoder.num_programs,
                engine_programs=0 if pipe.engine is None else pipe.engine.num_programs,
                rows=pipe.last_stats.get("rows", pipe.last_stats.get("windows")), loadavg=os.getloadavg()[0])


# ====================================================================== start-up children
class _Probe:
    """Phase marks and jax's compile events inside one child process."""

    EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
              "/jax/core/compile/backend_compile_duration": "compile_or_load_s",
              "/jax/compilation_cache/cache_retrieval_time_sec": "cache_load_s"}

    def __init__(self):
        self.marks = {}
        self.sums = collections.defaultdict(float)
        self.counts = collections.Counter()
        self.programs = []

    def install(self):
        import jax
        from jax import monitoring

        self.marks["import_jax_s"] = time.perf_counter() - T0

        def duration(event, secs, **_):
            if event in self.EVENTS:
                self.sums[self.EVENTS[event]] += secs

        def event(name, **_):
            self.counts[name.rsplit("/", 1)[-1]] += 1

        monitoring.register_event_duration_secs_listener(duration)
        monitoring.register_event_listener(event)
        from whisper_t5x import program_cache

        init = program_cache.CachedProgram.__init__
        probe = self

        def tracked(obj, *a, **k):
            init(obj, *a, **k)
            probe.programs.append(obj)

        program_cache.CachedProgram.__init__ = tracked
        self._timed("whisper_t5x.program_cache", "CachedProgram", "_load_or_export", "program_cache_s")
        self._timed("whisper_t5x.audio.vad", "SileroVad", "batch_probabilities", "vad_s")
        self._timed("whisper_t5x.audio.features", None, "log_mel_spectrogram_np", "features_s")
        self._timed("whisper_t5x.model.pretrained", "FlaxWhisperForConditionalGeneration", "from_pretrained",
                    "model_load_s")
        del jax

    def _timed(self, module, cls, name, key):
        import importlib

        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        raw = owner.__dict__[name]
        fn = raw.__func__ if isinstance(raw, classmethod) else raw
        sums = self.sums

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sums[key] += time.perf_counter() - t

        setattr(owner, name, classmethod(wrapper) if isinstance(raw, classmethod) else wrapper)
        if not cls:  # also where it was imported by name
            for other in list(sys.modules.values()):
                if other is not None and getattr(other, name, None) is fn:
                    setattr(other, name, wrapper)

    def result(self, **extra) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        stats = collections.Counter()
        for p in self.programs:
            for k, v in vars(p.stats).items():
                stats[k] += v
        out = dict(self.marks, **{k: round(v, 3) for k, v in self.sums.items()}, events=dict(self.counts),
                   programs=dict(stats), cpu_s=round(ru.ru_utime + ru.ru_stime, 2), fresh_end_epoch=time.time(),
                   peak_rss_mb=round(ru.ru_maxrss / 1024), total_s=round(time.perf_counter() - T0, 3))
        out.update(extra)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def _child_cli(out_dir: str) -> dict:
    probe = _Probe()
    probe.install()
    from whisper_t5x.app import cli

    probe.marks["import_cli_s"] = time.perf_counter() - T0
    out_dir = tempfile.mkdtemp(prefix="jfk-", dir=out_dir)  # a fresh folder: no earlier output is read
    argv = ["whisper-t5x", "transcribe", JFK, "--output_dir", out_dir, "--overwrite", "--quiet"]
    written = os.path.join(out_dir, "jfk.txt")
    t = time.perf_counter()
    rc = cli.main(argv)
    first = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"whisper-t5x exited with {rc}")
    text = open(written, encoding="utf-8").read().strip()
    result = probe.result(rc=rc, main_s=round(first, 3), text=text)
    # warm process: the same command again with the pipeline kept (as a second file of one run would be)
    from whisper_t5x import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline("base")
    cli.main(argv, pipeline=pipe)
    t = time.perf_counter()
    cli.main(argv, pipeline=pipe)
    result["warm_process_s"] = round(time.perf_counter() - t, 3)
    return result


def _child_pipeline() -> dict:
    probe = _Probe()
    probe.install()
    from whisper_t5x import FlaxWhisperPipeline

    t = time.perf_counter()
    pipe = FlaxWhisperPipeline("base")
    init = time.perf_counter() - t
    t = time.perf_counter()
    text = pipe.transcribe(JFK).text
    first = time.perf_counter() - t
    result = probe.result(init_s=round(init, 3), first_call_s=round(first, 3), text=text.strip())
    t = time.perf_counter()
    pipe.transcribe(JFK)
    result["warm_process_s"] = round(time.perf_counter() - t, 3)
    return result


def _child_faster_whisper(model_dir: str, compute_type: str) -> dict:
    from faster_whisper import WhisperModel

    t_import = time.perf_counter() - T0
    t = time.perf_counter()
    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type)
    load = time.perf_counter() - t
    t = time.perf_counter()
    segments, _ = model.transcribe(JFK)
    text = " ".join(s.text.strip() for s in segments)
    first = time.perf_counter() - t
    end, ru = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    segments, _ = model.transcribe(JFK)
    list(segments)
    return dict(import_s=round(t_import, 3), model_load_s=round(load, 3), first_call_s=round(first, 3),
                warm_process_s=round(time.perf_counter() - t, 3), compute_type=model.model.compute_type,
                cpu_s=round(ru.ru_utime + ru.ru_stime, 2), fresh_end_epoch=end,
                peak_rss_mb=round(ru.ru_maxrss / 1024), text=text)


# ====================================================================== start-up parent
def _faster_whisper_dir() -> str:
    """A CTranslate2 directory of the installed ``base`` (its pieces joined into one model.bin, once)."""
    from whisper_t5x.checkpoints import resolve_named_model

    src, bins = resolve_named_model("base")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out = os.path.join(base, "whisper_t5x", "startup-ct2-base")
    stamp = json.dumps([(b, os.path.getsize(b)) for b in bins])
    marker = os.path.join(out, "SOURCE")
    if os.path.exists(marker) and open(marker).read() == stamp:
        return out
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.bin"), "wb") as f:
        for b in bins:
            with open(b, "rb") as piece:
                shutil.copyfileobj(piece, f, 1 << 24)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), out)
    with open(marker, "w") as f:
        f.write(stamp)
    return out


def _spawn(args, env) -> dict:
    """Run a child. Wall: from the spawn to the end of its fresh (first) call, which the child stamps
    (``fresh_end_epoch``), else to its exit; CPU: the child's own at that point (``cpu_s``), else its rusage."""
    started = time.time()
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{err[-3000:]}")
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    process_cpu = ru.ru_utime + ru.ru_stime
    end = result.pop("fresh_end_epoch", None)
    result.update(wall_s=round(end - started if end else wall, 3), process_wall_s=round(wall, 3),
                  fresh_cpu_s=result.get("cpu_s", round(process_cpu, 2)), process_cpu_s=round(process_cpu, 2),
                  loadavg=round(os.getloadavg()[0], 2))
    return result


def _startup(args) -> dict:
    me = os.path.abspath(__file__)
    py = sys.executable
    script = os.path.join(os.path.dirname(py), "whisper-t5x")
    out_dir = tempfile.mkdtemp(prefix="startup-out-")
    fw_dir = _faster_whisper_dir()
    caches = {}
    variants = {"compile cache only": "off", "compile cache + exported programs": "export",
                "compile cache + exported programs + executables": "on"}
    for label in variants:
        caches[label] = tempfile.mkdtemp(prefix="startup-cache-")

    def env_for(label):
        return dict(os.environ, WHISPER_T5X_CACHE=caches[label], WHISPER_T5X_PROGRAM_CACHE=variants[label],
                    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    runs = collections.defaultdict(list)
    for label in variants:  # cold: empty caches (written on the way)
        runs[("cli", label, "cold")].append(_spawn([py, me, "--_child", "cli", "--out", out_dir], env_for(label)))
        print("cold cli", label, runs[("cli", label, "cold")][-1]["wall_s"], flush=True)
    for label in variants:
        shutil.rmtree(caches[label])
        os.makedirs(caches[label])
        runs[("pipeline", label, "cold")].append(_spawn([py, me, "--_child", "pipeline"], env_for(label)))
        print("cold pipeline", label, runs[("pipeline", label, "cold")][-1]["wall_s"], flush=True)
    console = [script, "transcribe", JFK, "--output_dir", out_dir, "--overwrite", "--quiet"]
    for r in range(args.runs):  # warm caches, interleaved
        for label in variants:
            runs[("cli", label, "warm cache")].append(
                _spawn([py, me, "--_child", "cli", "--out", out_dir], env_for(label)))
            runs[("console", label, "warm cache")].append(_spawn(console, env_for(label)))
            runs[("pipeline", label, "warm cache")].append(_spawn([py, me, "--_child", "pipeline"], env_for(label)))
        for ct in ("default", "int8"):
            runs[("faster_whisper", ct, "fresh")].append(
                _spawn([py, me, "--_child", "faster_whisper", "--fw_dir", fw_dir, "--compute_type", ct],
                       dict(os.environ)))
        print(f"run {r + 1}/{args.runs}:", {" / ".join(k): v[-1]["wall_s"] for k, v in runs.items()}, flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    for path in caches.values():
        shutil.rmtree(path, ignore_errors=True)
    return {" | ".join(k): v for k, v in runs.items()}


def _best(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return min(values) if values else None


from _machine import cpu_name as _cpu_name  # noqa: E402


def _short(label: str) -> str:
    return {"compile cache only": "off", "compile cache + exported programs": "export",
            "compile cache + exported programs + executables": "on (default)"}.get(label, label)


def _startup_markdown(runs: dict, meta: dict) -> str:
    def pick(name):
        return runs.get(name, [])

    fw = pick("faster_whisper | default | fresh")
    fw_wall, fw_cpu = _best(fw, "wall_s"), _best(fw, "fresh_cpu_s")
    lines = [f"# Start-up on jfk (11 s): fresh processes, `base` fp32\n",
             f"CPU: {meta['cpu']} ({meta['cores']} cores, shared); load average during the run "
             f"{meta['load_min']:.1f}-{meta['load_max']:.1f}; jax {meta['jax']}; {meta['runs']} warm runs "
             f"interleaved, the minimum kept (cold: one run each).\n",
             f"Command: `{meta['command']}`\n",
             (meta.get("note") or "") + "\n",
             "| what | program cache | state | wall s (min) | CPU s (min) | x faster-whisper wall | x its CPU |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name, rows in runs.items():
        kind, label, state = name.split(" | ")
        if kind == "faster_whisper":
            continue
        wall, cpu = _best(rows, "wall_s"), _best(rows, "fresh_cpu_s")
        what = {"cli": "CLI (`cli.main`, in-process)", "console": "CLI (`whisper-t5x` script)",
                "pipeline": "pipeline (`FlaxWhisperPipeline` + `transcribe`)"}[kind]
        lines.append(f"| {what} | {_short(label)} | {state} | {wall:.2f} | {cpu:.2f} | "
                     f"{wall / fw_wall:.2f} | {cpu / fw_cpu:.2f} |")
        warm = _best(rows, "warm_process_s")
        if warm is not None and state == "warm cache":
            lines.append(f"| {what} | {_short(label)} | warm process (2nd call) | "
                         f"{warm:.2f} | | | |")
    for ct in ("default", "int8"):
        rows = pick(f"faster_whisper | {ct} | fresh")
        if rows:
            lines.append(f"| faster-whisper `WhisperModel` ({rows[0]['compute_type']}, beam 5) | | fresh process | "
                         f"{_best(rows, 'wall_s'):.2f} | {_best(rows, 'fresh_cpu_s'):.2f} | | |")
            lines.append(f"| faster-whisper ({rows[0]['compute_type']}) | | warm process (2nd call) | "
                         f"{_best(rows, 'warm_process_s'):.2f} | | | |")
    lines += ["", "Breakdown of the fastest in-process CLI run of each state (seconds, from the child's first line; "
              "trace/lower/compile summed over every program, eager ops included; `compile or load` includes the "
              "compile cache's executable load; `program cache`: time inside the program cache (cold: trace, "
              "export and compile; export: reading the exported program; on: loading the executable); the run "
              "itself is the rest of `cli.main`):", "",
              "| program cache | state | import jax | model load | VAD | features | trace | lower | compile or load "
              "| of which cache load | program cache (export / read) | cli.main | total in child "
              "| programs exported / read / executables read |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, rows in runs.items():
        kind, label, state = name.split(" | ")
        if kind != "cli":
            continue
        r = min(rows, key=lambda x: x["wall_s"])
        p = r.get("programs", {})
        lines.append(f"| {_short(label)} | {state} | {r['import_jax_s']:.2f} | "
                     f"{r.get('model_load_s', 0):.2f} | {r.get('vad_s', 0):.2f} | {r.get('features_s', 0):.2f} | "
                     f"{r.get('trace_s', 0):.2f} | {r.get('lower_s', 0):.2f} | {r.get('compile_or_load_s', 0):.2f} | "
                     f"{r.get('cache_load_s', 0):.2f} | {r.get('program_cache_s', 0):.2f} | {r['main_s']:.2f} | "
                     f"{r['total_s']:.2f} | {p.get('exported', 0)} / {p.get('loaded', 0)} / "
                     f"{p.get('executables', 0)} ({p.get('prefetched', 0)} prefetched) |")
    lines += ["", "Texts: ours " + repr(pick("cli | compile cache + exported programs + executables | warm cache")[0]
                                       .get("text", ""))
              + "; faster-whisper " + repr(fw[0].get("text", "") if fw else "")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--modes", nargs="+", default=["vad", "chunked"])
    ap.add_argument("--json", default=os.path.join(HERE, "results", "cold_compile.json"))
    ap.add_argument("--startup", action="store_true", help="the jfk start-up benchmark instead of --modes")
    ap.add_argument("--runs", type=int, default=3, help="warm runs of each start-up case (minimum kept)")
    ap.add_argument("--note", default="", help="a line for the results (e.g. which tree was measured)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fw_dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compute_type", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        result = {"cli": lambda: _child_cli(args.out), "pipeline": _child_pipeline,
                  "faster_whisper": lambda: _child_faster_whisper(args.fw_dir, args.compute_type)}[args._child]()
        print(json.dumps(result))
        return 0
    if args._worker:
        print(json.dumps(_worker(args._worker, args.seconds, args.model, args.batch_size)))
        return 0
    if args.startup:
        import jax

        runs = _startup(args)
        loads = [r["loadavg"] for rows in runs.values() for r in rows]
        meta = dict(cpu=_cpu_name(), cores=os.cpu_count(), jax=jax.__version__, runs=args.runs,
                    load_min=min(loads), load_max=max(loads),
                    command="python benchmarks/cold_compile.py --startup --runs " + str(args.runs), note=args.note)
        md = _startup_markdown(runs, meta)
        print(md)
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "cold_compile_startup.json"), "w") as f:
            json.dump(dict(meta=meta, runs=runs), f, indent=1)
        with open(os.path.join(HERE, "results", "cold_compile_startup.md"), "w") as f:
            f.write(md)
        return 0
    rows = []
    for mode in args.modes:
        env = dict(os.environ, WHISPER_T5X_CACHE="off")
        out = subprocess.run([sys.executable, __file__, "--_worker", mode, "--seconds", str(args.seconds),
                              "--model", args.model, "--batch_size", str(args.batch_size)],
                             capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\n{args.model}, {args.seconds:.0f} s, batch {args.batch_size}, persistent cache off\n")
    print("| long_form | first call s | second call s | compile s | decode programs | rows | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['first_call_s']} | {r['second_call_s']} | {r['compile_s']} | "
              f"{r['decode_programs']} | {r['rows']} | {r['loadavg']:.1f} |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
