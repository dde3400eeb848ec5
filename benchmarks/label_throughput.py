"""Throughput of ``whisper-t5x label`` in audio hours per hour, with 1 and 2 processes on this machine.

Builds a local Parquet dataset of espeak-ng clips of varied length (audio as FLAC bytes, ids,
reference text; benchmarks/_speech_corpus.py), then runs the command once per process count into
a fresh output directory (every process of a multi-process run is on this host, over
jax.distributed on 127.0.0.1, each with ``--devices_per_process`` CPU devices). A first untimed
run fills the compilation cache. Reported per run: the wall time of the whole command (model
load included), the audio hours per hour that summary.json reports, and the mean WER.

    python benchmarks/label_throughput.py --clips 24 --model tiny.en
Writes benchmarks/results/label_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _speech_corpus as corpus  # noqa: E402


def build_dataset(root: str, clips: int, min_s: float, max_s: float, seed: int = 0) -> float:
    import datasets
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = {"id": [], "audio": [], "text": []}
    total = 0.0
    for i in range(clips):
        seconds = float(rng.uniform(min_s, max_s))
        audio, text = corpus.make_audio(seconds)
        buf = io.BytesIO()
        sf.write(buf, audio, corpus.SAMPLE_RATE, format="FLAC")
        rows["id"].append(f"clip{i:04d}")
        rows["audio"].append({"bytes": buf.getvalue(), "path": f"clip{i:04d}.flac"})
        rows["text"].append(text)
        total += seconds
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    os.makedirs(root, exist_ok=True)
    ds.to_parquet(os.path.join(root, "train.parquet"))
    return total


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_label(dataset: str, out: str, processes: int, devices: int, model: str, extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    port = _port()
    t0 = time.perf_counter()
    procs = []
    for pid in range(processes):
        cmd = [sys.executable, "-m", "whisper_t5x.main", "label", "--dataset", dataset, "--output_dir", out,
               "--text_column", "text", "--model", model, "--quiet", *extra]
        if processes > 1:
            cmd += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes),
                    "--process_id", str(pid)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError("label failed:\n" + "\n=====\n".join(x[-3000:] for x in logs))
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    import pyarrow.dataset as pads

    rows = pads.dataset(os.path.join(out, "data"), format="parquet").to_table(columns=["wer"]).to_pylist()
    hours = summary["this_run"]["audio_hours"]
    return dict(processes=processes, devices_per_process=devices, rows=summary["this_run"]["rows"],
                audio_hours=hours, command_wall_s=wall, audio_hours_per_hour=hours / (wall / 3600),
                summary_audio_hours_per_hour=summary["this_run"]["audio_hours_per_hour"],
                mean_wer=float(np.mean([r["wer"] for r in rows if r["wer"] is not None])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--min_s", type=float, default=5.0)
    ap.add_argument("--max_s", type=float, default=25.0)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--devices_per_process", type=int, default=1)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "label_throughput"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="label_bench_")
    try:
        dataset = os.path.join(work, "ds")
        audio_s = build_dataset(dataset, args.clips, args.min_s, args.max_s)
        extra = ["--batch_size", str(args.batch_size), "--group_size", str(args.batch_size)]
        run_label(dataset, os.path.join(work, "warmup"), 1, args.devices_per_process, args.model,
                  extra + ["--max_rows", str(args.batch_size)])
        runs = [run_label(dataset, os.path.join(work, f"p{n}"), n, args.devices_per_process, args.model, extra)
                for n in args.processes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = dict(model=args.model, clips=args.clips, audio_s=audio_s, batch_size=args.batch_size,
                  cpu_count=os.cpu_count(), machine=platform.processor() or platform.machine(), runs=runs)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# whisper-t5x label throughput ({args.model}, {args.clips} clips, {audio_s / 60:.1f} min of audio, "
             f"{os.cpu_count()} CPU cores)", "",
             "`python benchmarks/label_throughput.py " + " ".join(sys.argv[1:]) + "`", "",
             "| processes | devices/process | rows | command wall (s) | audio h per h (command) | "
             "audio h per h (summary.json) | mean WER |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['processes']} | {r['devices_per_process']} | {r['rows']} | {r['command_wall_s']:.1f} | "
                     f"{r['audio_hours_per_hour']:.2f} | {r['summary_audio_hours_per_hour']:.2f} | "
                     f"{r['mean_wer']:.3f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
