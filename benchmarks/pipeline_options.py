"""Pipeline windowing options on the same espeak-ng clip: decoded windows, WER and wall time.

    python benchmarks/pipeline_options.py --seconds 600 --model base

Each configuration is a pipeline built with its constructor options and called with its call options;
the first call compiles, the second is timed. Windows and WER do not depend on the machine's load;
wall times do (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _speech_corpus as corpus  # noqa: E402

CONFIGS = {
    "fixed 5 s strides (default)": ({}, {}),
    "fixed 3.5 s strides": ({}, {"stride_length_s": 3.5}),
    "cut at pauses": ({"cut_at_pauses": True}, {}),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from whisper_t5x import FlaxWhisperPipeline

    audio, text = corpus.make_audio(args.seconds)
    rows = []
    for name, (init, call) in CONFIGS.items():
        pipe = FlaxWhisperPipeline(args.model, batch_size=args.batch_size, fallback=False, **init)
        kwargs = dict(language="en", task="transcribe", progress=False, **call)
        pipe(audio, **kwargs)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        out = pipe(audio, **kwargs)
        wall = time.perf_counter() - t
        st = pipe.last_stats
        rows.append(dict(config=name, wall_s=wall, wer=corpus.wer(text, out["text"]), windows=st["windows"],
                         continuations=st.get("continuation_windows", 0), padding_rows=st["padding_rows"],
                         loadavg=load))
    print(f"{args.model}, {args.seconds:.0f} s of espeak-ng speech, batch {args.batch_size}, greedy, no fallback\n")
    print("| config | decoded windows | of which continuations | padding rows | WER % | wall s | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['windows']} | {r['continuations']} | {r['padding_rows']} | {100 * r['wer']:.2f} "
              f"| {r['wall_s']:.1f} | {r['loadavg']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
