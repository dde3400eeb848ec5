"""Whisper JAX's Table 1, reproduced: this project's pipeline against its peers on long-form audio.

::

    python benchmarks/peers.py                                  # 1 min and 10 min, all systems
    python benchmarks/peers.py --durations 60 --systems ours faster_whisper_batched   # quick
    python benchmarks/peers.py --durations 60 600 3600 --runs 3 1 1

Audio: espeak-ng reading a fixed text (:mod:`benchmarks._speech_corpus`),
16 kHz mono float32, exactly 1 min / 10 min / 1 h, or ``--audio FILE`` (a
file plus its reference text in ``FILE.txt``, if any). Every system is given
the same in-memory array. Weights: the ``base`` checkpoint this project loads
(``whisper_t5x.checkpoints.load_checkpoint("base")``), exported once to a
transformers directory (``save_pretrained``), an openai-whisper ``.pt``
(``export_openai_checkpoint``) and a CTranslate2 directory (the named
model's ``model.bin`` parts joined), under ``~/.cache/whisper_t5x/peers-base``.

Decoding, for every system: greedy (one beam, no sampling), language ``en``,
task ``transcribe``; timestamps and temperature fallback as ``--timestamps``
and :data:`SYSTEMS` describe (the ``decoding`` field of each result says what
each system did).

Method: each system runs in its own worker process (so memory is per system
and libraries do not share thread pools); workers load their model, then the
parent sends them runs one at a time, so only one system computes at a time.
For each duration every system first does one untimed warm-up run (ours: on
that same duration, so every batch shape it needs is compiled; its compile
time is reported as first-call time minus the median steady time; peers: on
the first duration only, their first-call overheads do not depend on the
length), then ``--runs`` timed runs, the systems interleaved (order rotated
each round). Reported: median wall time, real-time factor (audio seconds /
wall seconds), peak resident memory of the worker during its timed runs
(psutil, sampled every 20 ms), model load time, and WER after normalisation
(:func:`benchmarks._speech_corpus.wer`). Outputs are strings in host memory,
so every run is complete when it returns. Afterwards (``--compile_cache``),
our pipeline is started twice more with the same fresh persistent compile
cache to report first-call time with a cold and a warm cache.

Results: ``--out`` (default ``benchmarks/results``): ``table1.json``,
``table1.md`` (also printed) and ``table1.png``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import _speech_corpus as corpus  # noqa: E402

SAMPLE_RATE = 16000
BATCH = 8

# name -> (label, short description of how it decodes)
SYSTEMS = {
    "ours": ("whisper_t5x FlaxWhisperPipeline fp32", "long_form='chunked': batched 30 s windows, 5 s strides, batch 8, stitched"),
    "ours_bf16": ("whisper_t5x FlaxWhisperPipeline bf16", "as ours (chunked), bfloat16 compute and params"),
    "ours_vad": ("whisper_t5x VAD rows fp32", "long_form='vad': Silero VAD (JAX) speech glued into rows of at most "
                 "30 s, no overlap, batch 8"),
    "ours_vad_bf16": ("whisper_t5x VAD rows bf16", "as ours_vad, bfloat16 compute and params"),
    "ours_vad_int8": ("whisper_t5x VAD rows int8", "as ours_vad, int8 weights (W8A8): the encoder's dense kernels, "
                      "the decoder's and the vocabulary projection; convolutions float32"),
    "ours_vad_int8_step": ("whisper_t5x VAD rows int8 step", "as ours_vad, int8 (W8A8) decoder step weights and "
                           "vocabulary projection only, encoder float32 (weights_dtype='int8_step')"),
    "ours_sequential": ("whisper_t5x sequential fp32", "long_form='sequential': OpenAI's seek algorithm, one "
                        "file at a time (several files would share the batch)"),
    "openai_whisper": ("openai-whisper transcribe", "sequential 30 s windows, seek by timestamps"),
    "transformers": ("transformers pipeline", "chunk_length_s=30 (5 s strides), batch_size=8"),
    "faster_whisper": ("faster-whisper fp32", "sequential 30 s windows (WhisperModel.transcribe)"),
    "faster_whisper_batched": ("faster-whisper batched fp32", "BatchedInferencePipeline, batch_size=8, VAD chunks"),
    "faster_whisper_int8": ("faster-whisper int8", "sequential, compute_type=int8"),
    "faster_whisper_batched_int8": ("faster-whisper batched int8", "BatchedInferencePipeline batch 8, int8"),
}
DEFAULT_SYSTEMS = list(SYSTEMS)
MAIN_PEER = "faster_whisper_batched"
MAIN_OURS = "ours_vad"  # the pipeline's default on long audio (long_form="auto")
TARGETS = {"faster_whisper_batched": 1.0, "transformers": 0.1, "openai_whisper": 0.05}  # ours wall <= x * peer


# =========================================================================== model export
def models_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper_t5x", "peers-base")


def export_models(directory: str) -> Dict[str, str]:
    """Export the ``base`` weights for every peer (once; reused while the source files are unchanged)."""
    from whisper_t5x.checkpoints import load_checkpoint, resolve_named_model

    src_dir, bins = resolve_named_model("base")
    stamp = hashlib.sha1(json.dumps([EXPORT_VERSION] + [(b, os.path.getsize(b), int(os.path.getmtime(b)))
                                                        for b in bins]).encode())
    stamp = stamp.hexdigest()[:16]
    paths = {"hf": os.path.join(directory, "hf"), "openai": os.path.join(directory, "openai", "base.pt"),
             "ct2": os.path.join(directory, "ct2"), "source": src_dir}
    marker = os.path.join(directory, "EXPORTED")
    if os.path.exists(marker) and open(marker).read().strip() == stamp:
        return paths
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    ckpt = load_checkpoint("base")
    _export_hf(paths["hf"], ckpt)
    from whisper_t5x.checkpoints import export_openai_checkpoint

    os.makedirs(os.path.dirname(paths["openai"]))
    export_openai_checkpoint(paths["openai"], ckpt.config, ckpt.params)
    os.makedirs(paths["ct2"])
    with open(os.path.join(paths["ct2"], "model.bin"), "wb") as out:
        for b in bins:
            with open(b, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"):
        if os.path.exists(os.path.join(src_dir, name)):
            shutil.copy(os.path.join(src_dir, name), paths["ct2"])
    with open(marker, "w") as f:
        f.write(stamp)
    return paths


EXPORT_VERSION = 2
# transformers' pipeline batches only with a pad token, which tokenizer.json alone does not name.
HF_TOKENIZER_CONFIG = {
    "tokenizer_class": "WhisperTokenizer", "processor_class": "WhisperProcessor", "model_max_length": 1024,
    "pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}
# Generation-config fields transformers 5's Whisper generate reads that this project's
# save_pretrained does not (yet) write; added here (see the report / table1.md notes).
HF_GENERATION_EXTRAS = ("lang_to_id", "task_to_id", "max_initial_timestamp_index")


def _export_hf(directory: str, ckpt: Any) -> None:
    from whisper_t5x.checkpoints import save_pretrained

    save_pretrained(directory, ckpt.config, ckpt.params, tokenizer_file=ckpt.tokenizer_file,
                    generation_config=ckpt.generation_config)
    path = os.path.join(directory, "generation_config.json")
    with open(path) as f:
        gen = json.load(f)
    added = []
    for key in HF_GENERATION_EXTRAS:
        if key not in gen and key in ckpt.generation_config:
            gen[key] = ckpt.generation_config[key]
            added.append(key)
    if added:
        with open(path, "w") as f:
            json.dump(gen, f, indent=2)
    tok_config = os.path.join(directory, "tokenizer_config.json")
    if not os.path.exists(tok_config):
        with open(tok_config, "w") as f:
            json.dump(HF_TOKENIZER_CONFIG, f, indent=2)
        added.append("tokenizer_config.json")
    with open(os.path.join(directory, "EXPORT_NOTES.json"), "w") as f:
        json.dump({"added_by_benchmark": added}, f)


# =========================================================================== systems (in the worker)
class System:
    decoding = ""

    def transcribe(self, audio: np.ndarray) -> str:
        raise NotImplementedError


class Ours(System):
    def __init__(self, paths, dtype: str, timestamps: str):
        import jax.numpy as jnp

        from whisper_t5x import FlaxWhisperPipeline

        with_ts = timestamps == "native"
        self.pipe = FlaxWhisperPipeline("base", dtype=getattr(jnp, dtype), batch_size=BATCH, fallback=False,
                                        decode_with_timestamps=with_ts)
        self.decoding = (f"long_form='chunked', greedy, language en, fallback off, decode_with_timestamps={with_ts}, "
                         f"return_timestamps=False, batch {BATCH}, {dtype}")

    def transcribe(self, audio):
        out = self.pipe(audio, task="transcribe", language="en", return_timestamps=False, batch_size=BATCH,
                        progress=False, long_form="chunked")
        self.last_stats = getattr(self.pipe, "last_stats", None)
        return out["text"]


class OursVad(System):
    """long_form='vad': Silero VAD speech merged into rows of at most 30 s (no overlap), decoded once."""

    def __init__(self, paths, dtype: str = "float32", weights_dtype: str = "float32"):
        import jax.numpy as jnp

        from whisper_t5x import FlaxWhisperPipeline

        self.pipe = FlaxWhisperPipeline("base", dtype=getattr(jnp, dtype), batch_size=BATCH, fallback=False,
                                        weights_dtype=weights_dtype)
        self.decoding = (f"pipeline(long_form='vad'), rows {self.pipe.vad.strategy}, row timestamps "
                         f"{self.pipe.vad.row_timestamps}, greedy, language en, fallback off, batch {BATCH}, {dtype}"
                         + (f", decoder weights {weights_dtype}" if weights_dtype != "float32" else ""))

    def transcribe(self, audio):
        out = self.pipe(audio, task="transcribe", language="en", return_timestamps=False, batch_size=BATCH,
                        progress=False, long_form="vad")
        self.last_stats = getattr(self.pipe, "last_stats", None)
        return out["text"]


class OursSequential(System):
    def __init__(self, paths):
        from whisper_t5x import FlaxWhisperPipeline

        self.pipe = FlaxWhisperPipeline("base", batch_size=BATCH, fallback=False)
        self.decoding = ("pipeline(long_form='sequential', temperature 0 (no fallback), language en, "
                         "condition_on_previous_text=True, timestamps), float32")

    def transcribe(self, audio):
        out = self.pipe(audio, task="transcribe", language="en", long_form="sequential", batch_size=BATCH,
                        generate_kwargs={"temperature": 0.0})
        return out["text"]


class OpenAIWhisper(System):
    def __init__(self, paths, timestamps: str):
        import whisper

        self.model = whisper.load_model(paths["openai"], device="cpu")
        self.without_timestamps = timestamps == "off"
        self.decoding = (f"transcribe(temperature=0.0 (no fallback), beam_size=None (greedy), fp16=False, "
                         f"language en, without_timestamps={self.without_timestamps}, "
                         f"condition_on_previous_text=True (default))")

    def transcribe(self, audio):
        out = self.model.transcribe(audio, language="en", task="transcribe", temperature=0.0, fp16=False,
                                    without_timestamps=self.without_timestamps, verbose=None)
        return out["text"]


class Transformers(System):
    def __init__(self, paths, timestamps: str):
        import torch
        from transformers import pipeline

        self.pipe = pipeline("automatic-speech-recognition", model=paths["hf"], chunk_length_s=30,
                             batch_size=BATCH, device="cpu", dtype=torch.float32)
        self.decoding = ("pipeline(chunk_length_s=30, batch_size=8), generate greedy (num_beams=1, do_sample=False), "
                         "language en, return_timestamps=False, no temperature fallback (transformers' default)")

    def transcribe(self, audio):
        out = self.pipe(audio.copy(), return_timestamps=False,
                        generate_kwargs={"language": "en", "task": "transcribe", "num_beams": 1, "do_sample": False})
        return out["text"]


class FasterWhisper(System):
    def __init__(self, paths, timestamps: str, compute_type: str, batched: bool):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model = WhisperModel(paths["ct2"], device="cpu", compute_type=compute_type)
        self.batched = BatchedInferencePipeline(self.model) if batched else None
        self.without_timestamps = timestamps == "off" or batched
        if batched:
            self.decoding = (f"BatchedInferencePipeline.transcribe(batch_size=8, beam_size=1, temperature=0.0 "
                             f"(no fallback), without_timestamps=True, vad_filter=True (default; needed to cut "
                             f"audio over 30 s)), {compute_type}")
        else:
            self.decoding = (f"WhisperModel.transcribe(beam_size=1, temperature=0.0 (no fallback), "
                             f"without_timestamps={self.without_timestamps}, vad_filter=False, "
                             f"condition_on_previous_text=True (default)), {compute_type}")

    def transcribe(self, audio):
        kw = dict(language="en", task="transcribe", beam_size=1, temperature=0.0)
        if self.batched is not None:
            segments, _ = self.batched.transcribe(audio, batch_size=BATCH, without_timestamps=True, **kw)
        else:
            segments, _ = self.model.transcribe(audio, without_timestamps=self.without_timestamps,
                                                vad_filter=False, **kw)
        return " ".join(s.text.strip() for s in segments)  # the generator decodes as it is consumed


def make_system(name: str, paths: Dict[str, str], timestamps: str) -> System:
    if name == "ours":
        return Ours(paths, "float32", timestamps)
    if name == "ours_bf16":
        return Ours(paths, "bfloat16", timestamps)
    if name == "ours_sequential":
        return OursSequential(paths)
    if name == "ours_vad":
        return OursVad(paths)
    if name == "ours_vad_bf16":
        return OursVad(paths, "bfloat16")
    if name == "ours_vad_int8":
        return OursVad(paths, weights_dtype="int8")
    if name == "ours_vad_int8_step":
        return OursVad(paths, weights_dtype="int8_step")
    if name == "openai_whisper":
        return OpenAIWhisper(paths, timestamps)
    if name == "transformers":
        return Transformers(paths, timestamps)
    if name.startswith("faster_whisper"):
        return FasterWhisper(paths, timestamps, "int8" if name.endswith("int8") else "float32", "batched" in name)
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")


class _PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def worker_main(system: str, timestamps: str) -> None:
    """Serve runs over stdin/stdout: one JSON command per line in, one ``@@ {json}`` line out."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries' prints go to stderr; the protocol owns the original stdout

    def reply(**kw):
        out.write("@@ " + json.dumps(kw) + "\n")

    try:
        paths = export_models(models_dir())
        t0 = time.perf_counter()
        sysobj = make_system(system, paths, timestamps)
        reply(ok=True, load_s=time.perf_counter() - t0, decoding=sysobj.decoding)
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        reply(ok=False, error=f"{type(e).__name__}: {e}")
        return
    audio_cache: Dict[str, np.ndarray] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        try:
            path = cmd["audio"]
            if path not in audio_cache:
                audio_cache.clear()
                audio_cache[path] = np.ascontiguousarray(np.load(path), dtype=np.float32)
            audio = audio_cache[path]
            load = os.getloadavg()[0]
            with _PeakRSS() as mem:
                start = time.perf_counter()
                text = sysobj.transcribe(audio)
                wall = time.perf_counter() - start
            stats = getattr(sysobj, "last_stats", None)
            reply(ok=True, wall_s=wall, text=text, peak_rss_mb=mem.peak / 2 ** 20, loadavg_before=load,
                  stats=stats)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            reply(ok=False, error=f"{type(e).__name__}: {e}")


# =========================================================================== parent
class Worker:
    def __init__(self, system: str, timestamps: str, log_dir: str, env: Optional[dict] = None):
        self.system = system
        self.log_path = os.path.join(log_dir, f"{system}.log")
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_worker", system, "--timestamps", timestamps],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
            env=env or os.environ.copy(), cwd=ROOT,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return {"ok": False, "error": f"worker exited (rc={self.proc.poll()}); see {self.log_path}"}
            if line.startswith("@@ "):
                return json.loads(line[3:])

    def run(self, audio_path: str) -> dict:
        if self.proc.poll() is not None:
            return {"ok": False, "error": f"worker exited (rc={self.proc.returncode}); see {self.log_path}"}
        self.proc.stdin.write(json.dumps({"op": "run", "audio": audio_path}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        self.log.close()


def machine_info() -> Dict[str, Any]:
    import importlib.metadata as md

    import psutil

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "ctranslate2", "faster-whisper",
                "openai-whisper", "onnxruntime"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2 ** 30, 1), "platform": platform.platform(),
        "python": platform.python_version(), "versions": versions, "loadavg_at_start": os.getloadavg(),
        "espeak_ng": subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip(),
    }


def fmt_dur(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def prepare_audio(durations: List[float], audio_file: Optional[str], tmp: str) -> List[dict]:
    clips = []
    if audio_file:
        from whisper_t5x.audio.loading import load_audio

        audio = load_audio(audio_file)
        ref_path = os.path.splitext(audio_file)[0] + ".txt"
        ref = open(ref_path, encoding="utf-8").read() if os.path.exists(ref_path) else None
        items = [(audio.size / SAMPLE_RATE, audio, ref, os.path.basename(audio_file))]
    else:
        items = []
        for d in durations:
            audio, ref = corpus.make_audio(d)
            items.append((d, audio, ref, fmt_dur(d)))
    for d, audio, ref, name in items:
        path = os.path.join(tmp, f"audio_{len(clips)}.npy")
        np.save(path, audio.astype(np.float32))
        clips.append({"name": name, "seconds": d, "path": path, "reference": ref})
    return clips


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, choices=list(SYSTEMS))
    ap.add_argument("--durations", nargs="+", type=float, default=[60, 600],
                    help="audio lengths in seconds (default 60 600; Table 1 also has 3600)")
    ap.add_argument("--runs", nargs="+", type=int, default=None,
                    help="timed runs per duration (one value, or one per duration; default 3 for <= 60 s, else 1)")
    ap.add_argument("--audio", default=None, help="benchmark this file instead (reference text in FILE.txt)")
    ap.add_argument("--timestamps", choices=("off", "native"), default="native",
                    help="off: decode without timestamp tokens where the system allows it; native: each "
                         "system's own long-form default (ours and openai/faster-whisper sequential decode "
                         "timestamps)")
    ap.add_argument("--compile_cache", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure our first call with a cold and a warm persistent compile cache")
    ap.add_argument("--omp_wait_policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for every worker (default PASSIVE: on a shared, oversubscribed CPU "
                         "OpenMP's default spin-waiting makes CTranslate2 and torch several times slower; "
                         "'default' leaves the environment alone)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="table1", help="output file stem")
    ap.add_argument("--no_plot", action="store_true")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(args._worker, args.timestamps)
        return 0

    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="whisper_t5x_peers_")
    log_dir = os.path.join(tmp, "logs")
    os.makedirs(log_dir)
    print(f"exporting base weights for the peers into {models_dir()} ...", flush=True)
    export_models(models_dir())
    clips = prepare_audio(args.durations, args.audio, tmp)
    runs = args.runs or [3 if c["seconds"] <= 60 else 1 for c in clips]
    if len(runs) == 1:
        runs = runs * len(clips)
    if len(runs) != len(clips):
        ap.error("--runs takes one value or one per duration")

    # Our compile cache: a fresh directory, so the main runs measure a cold compile.
    cache_dir = os.path.join(tmp, "jax_cache")
    env = dict(os.environ, WHISPER_T5X_CACHE=cache_dir)
    if args.omp_wait_policy.lower() != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    results: Dict[str, Any] = {
        "machine": machine_info(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), os.path.relpath(__file__, ROOT)] +
                            list(argv if argv is not None else sys.argv[1:])),
        "settings": {"timestamps": args.timestamps, "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY"), "batch_size": BATCH, "runs": runs,
                     "clips": [{k: c[k] for k in ("name", "seconds")} for c in clips],
                     "corpus": {"voice": corpus.VOICE, "speed_wpm": corpus.SPEED, "version": corpus.CORPUS_VERSION}},
        "systems": {},
    }
    workers: Dict[str, Worker] = {}
    try:
        for name in args.systems:  # loaded one at a time
            print(f"[load] {name} ...", flush=True)
            w = Worker(name, args.timestamps, log_dir, env)
            entry = {"label": SYSTEMS[name][0], "method": SYSTEMS[name][1], "durations": {}}
            if w.hello.get("ok"):
                workers[name] = w
                entry.update(load_s=w.hello["load_s"], decoding=w.hello["decoding"])
                print(f"[load] {name}: {w.hello['load_s']:.1f} s", flush=True)
            else:
                entry["error"] = w.hello.get("error")
                print(f"[load] {name} FAILED: {entry['error']}", flush=True)
                w.close()
            results["systems"][name] = entry

        for ci, clip in enumerate(clips):
            for name, w in workers.items():
                if name.startswith("ours") or ci == 0:
                    print(f"[warm-up] {name} on {clip['name']} ...", flush=True)
                    r = w.run(clip["path"])
                    d = results["systems"][name]["durations"].setdefault(clip["name"], {"runs": []})
                    d["first_call_s"] = r.get("wall_s")
                    d["warmup_on"] = clip["name"]
                    if not r.get("ok"):
                        d["error"] = r.get("error")
                        print(f"   FAILED: {r.get('error')}", flush=True)
                    else:
                        print(f"   {r['wall_s']:.2f} s", flush=True)
            order = list(workers)
            for rep in range(runs[ci]):
                k = rep % max(1, len(order))
                for name in order[k:] + order[:k]:
                    w = workers[name]
                    d = results["systems"][name]["durations"].setdefault(clip["name"], {"runs": []})
                    if d.get("error"):
                        continue
                    r = w.run(clip["path"])
                    if not r.get("ok"):
                        d["error"] = r.get("error")
                        print(f"[run {rep + 1}/{runs[ci]}] {name} {clip['name']} FAILED: {r.get('error')}", flush=True)
                        continue
                    err = corpus.wer(clip["reference"], r["text"]) if clip["reference"] else None
                    d["runs"].append({"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "wer": err,
                                      "loadavg_before": r["loadavg_before"], "stats": r.get("stats")})
                    d["text"] = r["text"]
                    print(f"[run {rep + 1}/{runs[ci]}] {name:28s} {clip['name']:>7s}: {r['wall_s']:8.2f} s  "
                          f"RTF {clip['seconds'] / r['wall_s']:7.1f}  WER {100 * err if err is not None else float('nan'):5.2f} %  "
                          f"RSS {r['peak_rss_mb']:.0f} MB  (load {r['loadavg_before']:.1f})", flush=True)
            for name in workers:
                summarize(results["systems"][name]["durations"].get(clip["name"]), clip, name)
    finally:
        for w in workers.values():
            w.close()

    if args.compile_cache and "ours" in args.systems and clips:
        results["compile_cache"] = measure_compile_cache(clips[0], args.timestamps, log_dir, env)

    save_outputs(results, args.out, args.name, make_plot=not args.no_plot)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def summarize(d: Optional[dict], clip: dict, name: str) -> None:
    if not d or not d.get("runs"):
        return
    walls = [r["wall_s"] for r in d["runs"]]
    d["wall_s"] = statistics.median(walls)
    d["rtf"] = clip["seconds"] / d["wall_s"]
    d["peak_rss_mb"] = max(r["peak_rss_mb"] for r in d["runs"])
    wers = [r["wer"] for r in d["runs"] if r["wer"] is not None]
    d["wer"] = statistics.median(wers) if wers else None
    d["audio_s"] = clip["seconds"]
    if d.get("first_call_s") is not None and d.get("warmup_on") == clip["name"]:
        d["compile_s"] = d["first_call_s"] - d["wall_s"]  # negative: the noise exceeds the compile time


def measure_compile_cache(clip: dict, timestamps: str, log_dir: str, base_env: dict) -> dict:
    """Our first call on ``clip`` in two fresh processes sharing a new persistent cache: cold, then warm."""
    cache = tempfile.mkdtemp(prefix="whisper_t5x_cc_")
    env = dict(base_env, WHISPER_T5X_CACHE=cache)
    out = {"clip": clip["name"]}
    for phase in ("cold", "warm"):
        print(f"[compile cache] ours, {phase} cache, first call on {clip['name']} ...", flush=True)
        w = Worker("ours", timestamps, log_dir, env)
        try:
            if not w.hello.get("ok"):
                out[phase] = {"error": w.hello.get("error")}
                continue
            first = w.run(clip["path"])
            second = w.run(clip["path"])
            out[phase] = {"load_s": w.hello["load_s"], "first_call_s": first.get("wall_s"),
                          "second_call_s": second.get("wall_s")}
            print(f"   first {first.get('wall_s', float('nan')):.2f} s, second {second.get('wall_s', float('nan')):.2f} s",
                  flush=True)
        finally:
            w.close()
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(cache) for f in fs)
    out["cache_mb"] = size / 2 ** 20
    shutil.rmtree(cache, ignore_errors=True)
    return out


# =========================================================================== outputs
def markdown(results: dict) -> str:
    clips = [c["name"] for c in results["settings"]["clips"]]
    systems = results["systems"]
    m = results["machine"]
    lines = ["# Table 1: long-form transcription, `base` weights, CPU", "",
             f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gb']} GB RAM, {m['platform']}; "
             f"load average at start {m['loadavg_at_start'][0]:.2f} (shared machine: timings are noisy).  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".  ",
             f"Date: {results['date']}. Command: `{results['command']}`.  ",
             f"Timestamps: `{results['settings']['timestamps']}`; OMP_WAIT_POLICY="
             f"{results['settings'].get('OMP_WAIT_POLICY')}; timed runs per clip: {results['settings']['runs']} "
             "(median reported); warm-up excluded.", ""]
    head = "| system |" + "".join(f" {c} wall s | {c} RTF | {c} WER % |" for c in clips) + " peak RSS MB | load s |"
    lines += [head, "|" + "---|" * (1 + 3 * len(clips) + 2)]
    for name, s in systems.items():
        row = f"| {s['label']} |"
        rss = []
        for c in clips:
            d = s["durations"].get(c, {})
            if d.get("wall_s") is None:
                row += f" {'error' if d.get('error') or s.get('error') else '-'} | | |"
                continue
            w = f"{100 * d['wer']:.2f}" if d.get("wer") is not None else "-"
            row += f" {d['wall_s']:.1f} | {d['rtf']:.1f} | {w} |"
            rss.append(d["peak_rss_mb"])
        row += f" {max(rss):.0f} |" if rss else " - |"
        row += f" {s['load_s']:.1f} |" if s.get("load_s") is not None else " - |"
        lines.append(row)
    lines.append("")
    # The ratios use our default mode: VAD rows (long_form="auto" on these clips) when it ran, else chunked.
    main = MAIN_OURS if MAIN_OURS in systems else "ours"
    ours = systems.get(main, {}).get("durations", {})
    if ours:
        lines += [f"## {systems[main]['label']} relative to the peers (wall-time ratio ours / peer; target in "
                  "brackets)", ""]
        lines += ["| peer |" + "".join(f" {c} |" for c in clips), "|" + "---|" * (1 + len(clips))]
        for name, s in systems.items():
            if name == main:
                continue
            row = f"| {s['label']} |"
            for c in clips:
                a, b = ours.get(c, {}).get("wall_s"), s["durations"].get(c, {}).get("wall_s")
                t = f" (≤ {TARGETS[name]:g})" if name in TARGETS else ""
                row += f" {a / b:.2f}{t} |" if a and b else " - |"
            lines.append(row)
        lines.append("")
        comp = []
        for c in clips:
            d = ours.get(c, {})
            if d.get("compile_s") is not None:
                est = (f"compile ≈ {d['compile_s']:.1f} s" if d["compile_s"] >= 0
                       else "compile not measurable (first call faster than the steady run: noise)")
                comp.append(f"{c}: first call {d['first_call_s']:.1f} s, steady {d['wall_s']:.1f} s, {est}")
        if comp:
            lines += ["Our compile time (first call − steady median, cold persistent cache): " + "; ".join(comp) + ".", ""]
    cc = results.get("compile_cache")
    if cc and "cold" in cc and "warm" in cc and "error" not in cc["cold"] and "error" not in cc["warm"]:
        lines += [f"Persistent compile cache (ours, fresh processes, {cc['clip']}): cold cache first call "
                  f"{cc['cold']['first_call_s']:.1f} s (second {cc['cold']['second_call_s']:.1f} s); warm cache first "
                  f"call {cc['warm']['first_call_s']:.1f} s (second {cc['warm']['second_call_s']:.1f} s); "
                  f"cache {cc['cache_mb']:.0f} MB.", ""]
    lines += ["## How each system decoded", ""]
    for name, s in systems.items():
        lines.append(f"- **{s['label']}** (`{name}`): {s.get('decoding') or s.get('error')}")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = [c["name"] for c in results["settings"]["clips"]]
    systems = results["systems"]
    fig, axes = plt.subplots(1, len(clips), figsize=(6 * len(clips), 4.5), squeeze=False)
    for ax, c in zip(axes[0], clips):
        names = [n for n in systems if systems[n]["durations"].get(c, {}).get("wall_s")]
        walls = [systems[n]["durations"][c]["wall_s"] for n in names]
        colors = ["tab:red" if n.startswith("ours") else "tab:blue" for n in names]
        bars = ax.barh(range(len(names)), walls, color=colors)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([systems[n]["label"] for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("wall time, s (log scale; lower is better)")
        ax.set_title(f"{c} of audio")
        for b, w in zip(bars, walls):
            ax.text(w, b.get_y() + b.get_height() / 2, f" {w:.1f}", va="center", fontsize=7)
    m = results["machine"]
    fig.suptitle(f"Whisper base, CPU ({m['cpu']}, {m['logical_cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_outputs(results: dict, out_dir: str, stem: str, make_plot: bool = True) -> None:
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = markdown(results)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)
    if make_plot:
        plot(results, os.path.join(out_dir, f"{stem}.png"))


if __name__ == "__main__":
    sys.exit(main())
