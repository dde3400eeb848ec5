"""FlaxWhisperPipeline on long-form speech: wall time, real-time factor and compile time by batch size.

Audio is espeak-ng speech of the requested lengths (``benchmarks/_speech_corpus.py``,
reproducible), preloaded as 16 kHz float32. For each batch size the first call
(compile + decode) and the median of ``--repeats`` steady calls are timed; the
difference is reported as compile time. WER is against the source text.

    python benchmarks/pipeline_batch_sizes.py --model base --minutes 1 10 --batch_sizes 1 4 8 16
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _speech_corpus as corpus  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from whisper_t5x.pipeline import FlaxWhisperPipeline  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base")
    parser.add_argument("--minutes", nargs="+", type=float, default=[1.0, 10.0])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default="benchmarks/results/pipeline_batch_sizes.json")
    args = parser.parse_args()

    pipe = FlaxWhisperPipeline(args.model, dtype=getattr(jnp, args.dtype))
    rows = []
    for minutes in args.minutes:
        audio, text = corpus.make_audio(60.0 * minutes)
        seconds = len(audio) / corpus.SAMPLE_RATE
        for batch in args.batch_sizes:
            kwargs = dict(batch_size=batch, language="en" if pipe.model.config.is_multilingual else None,
                          progress=False)
            start = time.perf_counter()
            pipe(audio, **kwargs)
            first = time.perf_counter() - start
            times, result = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = pipe(audio, **kwargs)
                times.append(time.perf_counter() - start)
            wall = statistics.median(times)
            row = dict(minutes=minutes, audio_s=round(seconds, 1), batch_size=batch, wall_s=round(wall, 2),
                       rtf=round(wall / seconds, 4), x_real_time=round(seconds / wall, 1),
                       compile_s=round(max(first - wall, 0.0), 1), wer=round(corpus.wer(text, result["text"]), 4))
            rows.append(row)
            print(row, file=sys.stderr, flush=True)

    print(f"\nFlaxWhisperPipeline, {args.model}, {args.dtype}, greedy with fallback, jax {jax.__version__}, "
          f"{platform.machine()} {os.cpu_count()} cores (median of {args.repeats} after one compile run)\n")
    print("| audio | batch | wall s | real-time factor | x real time | compile s | WER |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['minutes']:g} min | {r['batch_size']} | {r['wall_s']} | {r['rtf']} | {r['x_real_time']} | "
              f"{r['compile_s']} | {100 * r['wer']:.1f}% |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(model=args.model, dtype=args.dtype, machine=platform.uname()._asdict(), rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
