"""Cold compile time of the pipeline on one clip: first call minus the second, in a fresh process.

    python benchmarks/cold_compile.py --seconds 600 --model base --modes vad chunked

Each mode runs in its own process with the persistent compile cache off, so every program is compiled
in the first call; the second call is the same work without compiling. Also reports how many decode
programs the Decoder built and the rows decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


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
                rows=pipe.last_stats.get("rows", pipe.last_stats.get("windows")), loadavg=os.getloadavg()[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--modes", nargs="+", default=["vad", "chunked"])
    ap.add_argument("--json", default=os.path.join(HERE, "results", "cold_compile.json"))
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        print(json.dumps(_worker(args._worker, args.seconds, args.model, args.batch_size)))
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
