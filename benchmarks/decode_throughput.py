"""Decode throughput of the compiled generate loop: tokens per second by model and batch size.

Each configuration is compiled and warmed up first (compile time reported
separately), then timed over ``--repeats`` runs with results blocked until
ready; the median is reported. The encoder's share is timed on its own
(``model.encode`` on the same batch) and subtracted, so tokens/s is the
decoding loop's throughput; the full generate time is reported too. Features are real speech (jfk.flac tiled to
fill the batch) so the number of decoded tokens is realistic. Writes a
markdown table to stdout and JSON to ``--out``.

    python benchmarks/decode_throughput.py --models tiny.en base --batch_sizes 1 4 8 16
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from whisper_t5x.audio.loading import load_audio  # noqa: E402
from whisper_t5x.audio.features import log_mel_spectrogram_np  # noqa: E402
from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "samples", "jfk.flac")


def measure(model, params, features, repeats, **generate_kwargs):
    fn = lambda: model.generate(features, params=params, **generate_kwargs)  # noqa: E731
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    encode_times = []
    jax.block_until_ready(model.encode(features, params=params))
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(model.encode(features, params=params))
        encode_times.append(time.perf_counter() - start)
    tokens = int(np.asarray(out.num_tokens).sum()) + features.shape[0]  # + end-of-text per row
    median = statistics.median(times)
    encode = statistics.median(encode_times)
    decode = median - encode
    if decode <= 0.05 * median:  # the machine's load changed between the two timings: no honest figure
        return dict(compile_and_first_s=first, median_s=median, encode_s=encode, decode_s=None, tokens=tokens,
                    tokens_per_s=float("nan"), steps_per_s=float("nan"))
    return dict(compile_and_first_s=first, median_s=median, encode_s=encode, decode_s=decode, tokens=tokens,
                tokens_per_s=tokens / decode, steps_per_s=(tokens / features.shape[0]) / decode)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default="benchmarks/results/decode_throughput.json")
    args = parser.parse_args()

    audio = load_audio(SAMPLE)
    rows = []
    for name in args.models:
        model, params = FlaxWhisperForConditionalGeneration.from_pretrained(name, dtype=getattr(jnp, args.dtype), _do_init=False)
        if args.dtype == "bfloat16":
            params = model.to_bf16(params)
        one = log_mel_spectrogram_np([audio], n_mels=model.config.num_mel_bins).astype(np.float32)
        for batch in args.batch_sizes:
            features = np.repeat(one, batch, axis=0)
            kwargs = dict(language="en", task="transcribe") if model.config.is_multilingual else {}
            result = measure(model, params, features, args.repeats, **kwargs)
            result.update(model=name, batch_size=batch, dtype=args.dtype)
            rows.append(result)
            print(f"{name} b={batch}: {result['tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)

    print(f"\nDecode throughput ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, {args.dtype}, jfk.flac, greedy, median of {args.repeats})\n")
    print("| model | batch | decode tokens/s | decode steps/s | encoder s | generate s (total) | compile + first run s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch_size']} | {r['tokens_per_s']:.0f} | {r['steps_per_s']:.1f} | "
              f"{r['encode_s']:.2f} | {r['median_s']:.2f} | {r['compile_and_first_s']:.1f} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(machine=platform.uname()._asdict(), cpu_count=os.cpu_count(), rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
