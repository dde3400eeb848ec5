"""Long-form modes on the same clips: chunked windows vs VAD rows (glue / span, with or without timestamps).

    python benchmarks/vad_options.py --seconds 600 --model base [--noisy]

The speech corpus (:mod:`_speech_corpus`, espeak-ng reading continuously) and, with ``--noisy``, the
pause/noise/silence corpus (:mod:`noisy_corpus`: varied gaps, white/pink noise, tones, long silences).
Each configuration is warmed up on the clip's first 90 s (compiles), then timed on the whole clip.
Rows decoded and WER do not depend on the machine's load; wall times do (the load average is printed).
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
    "chunked (5 s strides)": dict(long_form="chunked"),
    "vad glue, no row timestamps": dict(long_form="vad", strategy="glue", row_timestamps=False),
    "vad span, no row timestamps": dict(long_form="vad", strategy="span", row_timestamps=False),
    "vad glue, row timestamps": dict(long_form="vad", strategy="glue", row_timestamps=True),
    # The default with segment timestamps asked: the same rows, times from the word alignment.
    "default (auto), return_timestamps=True": dict(long_form="auto", return_timestamps=True),
}


def clip(kind: str, seconds: float):
    if kind == "noisy":
        import noisy_corpus
        from whisper_t5x.audio.loading import load_audio

        path, text = noisy_corpus.build(seconds, seed=0)
        return load_audio(path), text
    return corpus.make_audio(seconds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--noisy", action="store_true", help="also the pause/noise/silence corpus")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "vad_options.json"))
    args = ap.parse_args(argv)
    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.longform.vad import VadSettings

    rows = []
    for kind in ["speech"] + (["noisy"] if args.noisy else []):
        audio, text = clip(kind, args.seconds)
        for name in args.configs:
            cfg = dict(CONFIGS[name])
            mode = cfg.pop("long_form")
            timestamps = cfg.pop("return_timestamps", False)
            pipe = FlaxWhisperPipeline(args.model, batch_size=args.batch_size, fallback=False,
                                       vad=VadSettings(**cfg) if cfg else VadSettings())
            kwargs = dict(language="en", task="transcribe", progress=False, long_form=mode,
                          return_timestamps=timestamps)
            pipe(audio[:90 * 16000], **kwargs)
            load = os.getloadavg()[0]
            t = time.perf_counter()
            out = pipe(audio, **kwargs)
            wall = time.perf_counter() - t
            st = pipe.last_stats
            rows.append(dict(corpus=kind, config=name, wall_s=round(wall, 2), wer=corpus.wer(text, out["text"]),
                             rows=st.get("windows", st.get("rows")), speech_s=st.get("speech_seconds"),
                             loadavg=round(load, 1)))
            print(rows[-1], flush=True)
    print(f"\n{args.model}, {args.seconds:.0f} s clips, batch {args.batch_size}, greedy, no fallback, language en\n")
    print("| corpus | config | rows decoded | WER % | wall s | load |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['corpus']} | {r['config']} | {r['rows']} | {100 * r['wer']:.2f} | {r['wall_s']:.1f} "
              f"| {r['loadavg']:.1f} |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
