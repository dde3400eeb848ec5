"""Segment boundaries against the speech's true start and end, per long-form mode.

    python benchmarks/segment_times.py --model base [--seconds 240] [--modes auto chunked sequential vad_ts]

Built audio: utterances of one to three espeak-ng sentences (:mod:`_speech_corpus`) separated by silences of
0.4 to 15 s (seeded), optionally under white noise (``--noise 0.01``), plus the gap case of issue 19 (20 s
silence + jfk + 15 s silence + jfk + 10 s silence). True speech extents come from the clean synthesized
audio (the first and last 10 ms frame whose RMS exceeds 2 % of the utterance's peak).

Per mode: the boundary error of each utterance (|first segment start - true start|, |last segment end - true
end|; a segment belongs to the utterance its middle falls in) as mean / p90 / max, the number of segments that
span a silence of at least 1 s between utterances, and the WER against the sentences read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _speech_corpus as corpus  # noqa: E402

SR = 16000
GAPS_S = (0.4, 1.0, 2.0, 4.0, 8.0, 15.0)
MODES = {
    "auto": dict(long_form="auto"),  # the default: VAD rows, times from the word alignment
    "chunked": dict(long_form="chunked"),  # 30 s windows with timestamp tokens, stitched
    "sequential": dict(long_form="sequential"),
    "vad_ts": dict(long_form="vad", row_timestamps=True),  # VAD rows decoded with timestamp tokens
}


def speech_extent(audio: np.ndarray, frame: int = 160, level: float = 0.02) -> Tuple[int, int]:
    """(first, one past last) sample of the frames louder than ``level`` x the clip's peak RMS."""
    n = audio.size // frame
    rms = np.sqrt((audio[: n * frame].reshape(n, frame) ** 2).mean(1))
    loud = np.flatnonzero(rms > level * rms.max())
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


def build(seconds: float, seed: int, noise: float) -> Tuple[np.ndarray, str, List[Tuple[float, float]]]:
    """(audio, reference text, true (start, end) seconds of each utterance)."""
    rng = np.random.default_rng(seed)
    sentences = corpus.sentences()
    directory = corpus.cache_dir()
    os.makedirs(directory, exist_ok=True)
    parts, truth, texts, pos, k = [np.zeros(int(1.5 * SR), np.float32)], [], [], int(1.5 * SR), 0
    while True:
        count = int(rng.integers(1, 4))
        chosen = [sentences[(k + j) % len(sentences)] for j in range(count)]
        k += count
        speech = np.concatenate([corpus._synth_sentence(s, directory) for s in chosen])
        gap = np.zeros(int(float(rng.choice(GAPS_S)) * SR), np.float32)
        if (pos + speech.size + gap.size) / SR > seconds and truth:
            break
        lo, hi = speech_extent(speech)
        truth.append(((pos + lo) / SR, (pos + hi) / SR))
        texts.extend(chosen)
        parts += [speech, gap]
        pos += speech.size + gap.size
    audio = np.concatenate(parts)
    if noise:
        audio = audio + (rng.standard_normal(audio.size) * noise).astype(np.float32)
    return audio.astype(np.float32), " ".join(texts), truth


def jfk_gap() -> Tuple[np.ndarray, str, List[Tuple[float, float]]]:
    from whisper_t5x.audio.loading import load_audio

    jfk = load_audio(os.path.join(os.path.dirname(HERE), "samples", "jfk.flac"))
    text = open(os.path.join(os.path.dirname(HERE), "samples", "jfk.txt"), encoding="utf-8").read().strip()
    z = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    audio = np.concatenate([z(20), jfk, z(15), jfk, z(10)])
    second = 20 + jfk.size / SR + 15
    # jfk.flac's speech: from 0.32 s (20 ms RMS > 0.02) to the end of "country" at 10.3 s (the crowd follows).
    return audio, text + " " + text, [(20.32, 30.3), (second + 0.32, second + 10.3)]


def score(segments, truth: List[Tuple[float, float]]) -> Dict[str, float]:
    starts, ends, spanning = [], [], 0
    owner = []
    for s in segments:
        middle = (s.start + s.end) / 2
        k = min(range(len(truth)), key=lambda i: 0 if truth[i][0] <= middle <= truth[i][1]
                else min(abs(middle - truth[i][0]), abs(middle - truth[i][1])))
        owner.append(k)
        gaps = [(truth[i][1], truth[i + 1][0]) for i in range(len(truth) - 1)]
        spanning += any(s.start < a and s.end > b and b - a >= 1.0 for a, b in gaps)
    for k, (lo, hi) in enumerate(truth):
        mine = [s for s, o in zip(segments, owner) if o == k]
        if mine:
            starts.append(abs(mine[0].start - lo))
            ends.append(abs(mine[-1].end - hi))
        else:
            starts.append(np.nan)
            ends.append(np.nan)
    err = np.array(starts + ends, np.float64)
    missed = int(np.isnan(err).sum() // 2)
    err = err[~np.isnan(err)]
    return dict(boundary_mean_s=round(float(err.mean()), 3) if err.size else None,
                boundary_p90_s=round(float(np.percentile(err, 90)), 3) if err.size else None,
                boundary_max_s=round(float(err.max()), 3) if err.size else None,
                spanning_silence=int(spanning), utterances_without_segment=missed, segments=len(segments))


from _machine import cpu_name  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.0, help="white-noise RMS added to the built clip")
    ap.add_argument("--modes", nargs="*", default=list(MODES))
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "segment_times.json"))
    args = ap.parse_args(argv)
    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.longform.vad import VadSettings

    clips = {"built": build(args.seconds, args.seed, args.noise), "jfk gap": jfk_gap()}
    rows = []
    for mode in args.modes:
        cfg = dict(MODES[mode])
        long_form = cfg.pop("long_form")
        pipe = FlaxWhisperPipeline(args.model, batch_size=args.batch_size, vad=VadSettings(**cfg))
        for name, (audio, text, truth) in clips.items():
            kwargs = dict(language="en", return_timestamps=True, long_form=long_form, progress=False)
            pipe.transcribe(audio[: 40 * SR], **kwargs)  # compiles
            t = time.perf_counter()
            out = pipe.transcribe(audio, **kwargs)
            wall = time.perf_counter() - t
            row = dict(clip=name, mode=mode, seconds=round(audio.size / SR, 1), utterances=len(truth),
                       wer=round(corpus.wer(text, out.text), 4), wall_s=round(wall, 2), **score(out.segments, truth))
            if name == "jfk gap":
                row["segment_list"] = [(s.start, s.end, s.text.strip()) for s in out.segments]
            rows.append(row)
            print({k: v for k, v in row.items() if k != "segment_list"}, flush=True)
    cpu = cpu_name()
    print(f"\n{args.model}, return_timestamps=True, language en, noise {args.noise}, CPU: {cpu}\n")
    print("| clip | mode | utterances | segments | boundary error mean / p90 / max (s) | spanning a silence "
          "| WER % | wall s |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clip']} | {r['mode']} | {r['utterances']} | {r['segments']} | {r['boundary_mean_s']} / "
              f"{r['boundary_p90_s']} / {r['boundary_max_s']} | {r['spanning_silence']} | {100 * r['wer']:.2f} "
              f"| {r['wall_s']:.1f} |")
    for r in rows:
        if "segment_list" in r:
            print(f"\njfk gap, {r['mode']}:")
            for s, e, t in r["segment_list"]:
                print(f"  [{s:.2f}-{e:.2f}] {t}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(model=args.model, cpu=cpu, noise=args.noise, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
