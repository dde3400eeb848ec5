"""A domain fine-tune that helps: invented product names tiny.en misspells, learned in a short CPU run.

    python benchmarks/finetune_domain.py [--steps 60] [--batch_size 8] [--learning_rate 3e-5] \
        [--work /tmp/whisper_t5x_finetune_domain]

1. Builds a local dataset (made here with espeak-ng, never shipped as audio):
   8 invented product names, each in 10 of 20 carrier sentences, plus the
   name-free text of ``benchmarks/_speech_corpus.py`` read on in clips of up
   to 28 s (windows as long-form decoding sees them), every row with segment
   times (trained with timestamps at ``--timestamp_probability``); the
   same names in 4 *other* carrier sentences for the held-out split; three
   espeak-ng voices.
2. Measures tiny.en's WER through ``FlaxWhisperPipeline`` (its defaults) on the
   held-out sentences, on ``samples/jfk.flac`` (real speech), on jfk read six
   times (66 s of real speech, greedy) and on a 2.5 min espeak-ng long-form
   passage (``tests/_speech.LONG_TEXT``).
3. Fine-tunes with ``whisper-t5x train`` (decoder only, ``--freeze_encoder``)
   and measures the exported model the same way.

Target: held-out WER at least halved; jfk's and the long-form WERs move by
under 1 point. Writes ``benchmarks/results/finetune_domain.{json,md}`` and the
loss / WER curves ``benchmarks/results/finetune_domain.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _speech_corpus  # noqa: E402
from tests._speech import LONG_TEXT, synthesize  # noqa: E402
from tests._training_io_fixtures import write_split  # noqa: E402
from whisper_t5x.training.evaluate import word_error_rate  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
JFK = os.path.join(ROOT, "samples", "jfk.flac")
JFK_TEXT = "And so my fellow Americans ask not what your country can do for you ask what you can do for your country"

PRODUCTS = ["Zentrixa", "Quorvane", "Brixolan", "Veltamyr", "Skorrin", "Draxvell", "Omnivara", "Tavrilon"]
TRAIN_TEMPLATES = [
    "Please order two boxes of {p} for the lab.", "The new {p} update ships next week.",
    "Our customers love the {p} dashboard.", "Did you restart the {p} server this morning?",
    "The {p} team will present at noon.", "I compared {p} with the old system.",
    "Send the {p} invoice to finance.", "We moved all the files into {p} yesterday.",
    "Can {p} export the report as a spreadsheet?", "The sales numbers for {p} look strong.",
    "Nobody on the night shift knew how to reset {p}.", "Is {p} cheaper than the version we bought last year?",
    "He spent the whole afternoon reading the {p} manual.", "The printer stopped working after the {p} upgrade.",
    "We need a second licence for {p} in the Berlin office.", "Her favourite feature of {p} is the calendar.",
    "They are hiring engineers who have used {p} before.", "Turn off {p} before you unplug the cable.",
    "The {p} logo is printed on every box.", "Last winter {p} saved us a lot of time.",
]
HELDOUT_TEMPLATES = [
    "My manager asked me to install {p} on every laptop.", "Without {p} the warehouse would stop working.",
    "She wrote a short guide about {p} for new staff.", "Tomorrow we will test {p} with real users.",
]
VOICES = [("en", 150), ("en-us", 165), ("en+f3", 155)]
# training sentences per product name (of the 20 carriers, a different 10 for each): with 60 steps, the
# run in benchmarks/results/finetune_domain.* (108 training rows)
USES_PER_PRODUCT = 10
GENERAL_PASSES = 2  # the name-free corpus read in two voices, in clips of up to 28 s (long-form windows)
PAUSE_S = 0.3


def training_sentences() -> List[tuple]:
    """``(text, voice, speed)`` rows; a text of several sentences (a tuple) is read as one clip."""
    rng = np.random.default_rng(0)
    out = []
    for j, p in enumerate(PRODUCTS):
        for i in rng.choice(len(TRAIN_TEMPLATES), USES_PER_PRODUCT, replace=False):
            voice, speed = VOICES[(int(i) + j) % len(VOICES)]
            out.append((TRAIN_TEMPLATES[int(i)].format(p=p), voice, speed))
    for voice, speed in VOICES[:GENERAL_PASSES]:  # the corpus read on, in clips of up to 28 s
        chunk: List[str] = []
        seconds = 0.0
        for t in _speech_corpus.sentences():
            d = len(synthesize(t, voice, speed)) / 16000 + PAUSE_S
            if chunk and seconds + d > 28.0:
                out.append((tuple(chunk), voice, speed))
                chunk, seconds = [], 0.0
            chunk.append(t)
            seconds += d
        if chunk:
            out.append((tuple(chunk), voice, speed))
    return out


def sentences(templates: List[str]) -> List[tuple]:
    """Every product in every template, voices cycling."""
    out = []
    for i, t in enumerate(templates):
        for j, p in enumerate(PRODUCTS):
            voice, speed = VOICES[(i + j) % len(VOICES)]
            out.append((t.format(p=p), voice, speed))
    return out


def speak(text, voice: str, speed: int):
    """``(audio, segments)``: one sentence, or several (a tuple) read one after another with pauses; one
    segment (start, end, text) per sentence."""
    parts = [text] if isinstance(text, str) else list(text)
    pause = np.zeros(int(PAUSE_S * 16000), np.float32)
    audio, segments, t = [], [], 0.0
    for sentence in parts:
        x = synthesize(sentence, voice, speed)
        segments.append({"start": round(t, 2), "end": round(t + len(x) / 16000, 2), "text": sentence})
        audio += [x, pause]
        t += (len(x) + len(pause)) / 16000
    return np.concatenate(audio), segments


def joined(text) -> str:
    return text if isinstance(text, str) else " ".join(text)


def build_dataset(directory: str) -> Dict[str, list]:
    os.makedirs(directory, exist_ok=True)
    splits = {"train": training_sentences(), "validation": sentences(HELDOUT_TEMPLATES)}
    for name, rows in splits.items():
        spoken = [speak(t, v, s) for t, v, s in rows]
        write_split(os.path.join(directory, f"{name}.parquet"), [a for a, _ in spoken], [joined(t) for t, _, _ in rows],
                    name[0], extra={"segments": [seg for _, seg in spoken]})
    return splits


def jfk_long(repeats: int = 6) -> np.ndarray:
    """Real speech, long-form: samples/jfk.flac read ``repeats`` times with 1 s pauses (66 s)."""
    from whisper_t5x.audio.loading import load_audio

    jfk = load_audio(JFK)
    pause = np.zeros(16000, np.float32)
    return np.concatenate([x for _ in range(repeats) for x in (jfk, pause)])


def measure(model: str, heldout: list, known: Dict[str, object] = None) -> Dict[str, object]:
    """WERs (%) of ``model`` through the pipeline: held-out sentences, jfk, jfk x6 (real long-form), the
    espeak-ng long-form passage. Figures in ``known`` are kept, not measured again."""
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    out = dict(known or {})
    pipe = FlaxWhisperPipeline(model, batch_size=8)
    t0 = time.perf_counter()
    if "heldout_wer" not in out:
        clips = [{"array": synthesize(t, v, s), "sampling_rate": 16000} for t, v, s in heldout]
        hyps = [r.text for r in pipe.transcribe(clips)]
        out["heldout_wer"] = 100 * word_error_rate([t for t, _, _ in heldout], hyps)
        out["examples"] = [{"reference": t, "hypothesis": h} for (t, _, _), h in zip(heldout, hyps)]
    if "jfk_wer" not in out:
        out["jfk_wer"] = 100 * word_error_rate([JFK_TEXT], [pipe.transcribe(JFK).text])
    if "jfk_x6_greedy_wer" not in out:
        # greedy: the same sentence six times makes a 30 s window's text compress 2.5x, past the fallback's
        # 2.4, so with fallback each window is re-sampled whatever the model (a test of the policy, not of it)
        hyp = pipe.transcribe({"array": jfk_long(), "sampling_rate": 16000},
                              generate_kwargs={"temperature": 0.0}).text
        out["jfk_x6_greedy_wer"] = 100 * word_error_rate([" ".join([JFK_TEXT] * 6)], [hyp])
    if "longform_wer" not in out:
        long_hyp = pipe.transcribe({"array": synthesize(LONG_TEXT), "sampling_rate": 16000}).text
        out["longform_wer"] = 100 * word_error_rate([LONG_TEXT], [long_hyp])
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/whisper_t5x_finetune_domain")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-5)
    p.add_argument("--label_smoothing", type=float, default=0.1)
    p.add_argument("--timestamp_probability", type=float, default=0.5)
    p.add_argument("--skip_before", action="store_true", help="reuse the 'before' figures of an earlier run")
    p.add_argument("--skip_train", action="store_true", help="measure the existing run's export again")
    p.add_argument("--name", default="finetune_domain")
    args = p.parse_args(argv)
    data = os.path.join(args.work, "data")
    out = os.path.join(args.work, "run")
    splits = build_dataset(data)
    cached = os.path.join(args.work, "before.json")
    known = None
    if args.skip_before and os.path.isfile(cached):
        with open(cached) as f:
            known = json.load(f)
    before = measure(args.model, splits["validation"], known)
    with open(cached, "w") as f:
        json.dump(before, f)
    print("before:", {k: v for k, v in before.items() if k != "examples"}, flush=True)
    cmd = [sys.executable, "-m", "whisper_t5x.main", "train", "--dataset", data, "--eval_split", "validation",
           "--model", args.model, "--output_dir", out, "--max_steps", str(args.steps), "--batch_size",
           str(args.batch_size), "--learning_rate", str(args.learning_rate), "--warmup_steps", "5",
           "--freeze_encoder", "--log_every", "5", "--eval_every", str(max(args.steps // 3, 1)),
           "--save_every", str(args.steps), "--gin.TrainConfig.progress=False",
           "--timestamp_probability", str(args.timestamp_probability),
           f"--gin.TrainConfig.label_smoothing={args.label_smoothing}"]
    print("$", " ".join(cmd), flush=True)
    train_s = None
    if not (args.skip_train and os.path.isdir(os.path.join(out, "export"))):
        shutil.rmtree(out, ignore_errors=True)  # a fresh run (the same directory would resume)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        train_s = time.perf_counter() - t0
    elif os.path.isfile(os.path.join(RESULTS, f"{args.name}.json")):
        with open(os.path.join(RESULTS, f"{args.name}.json")) as f:
            train_s = json.load(f).get("train_wall_s")
    after = measure(os.path.join(out, "export"), splits["validation"])
    print("after:", {k: v for k, v in after.items() if k != "examples"}, flush=True)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import training_curves
    from whisper_t5x.training.metrics import read_metrics

    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    png = training_curves.plot({"tiny.en fine-tune": records}, os.path.join(RESULTS, f"{args.name}.png"),
                               "tiny.en on invented product names (espeak-ng), decoder only")
    result = dict(model=args.model, steps=args.steps, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, label_smoothing=args.label_smoothing,
                  timestamp_probability=args.timestamp_probability, train_rows=len(splits["train"]),
                  heldout_rows=len(splits["validation"]), train_wall_s=train_s, before=before, after=after,
                  curve=os.path.relpath(png, ROOT), command=" ".join(["python", "benchmarks/finetune_domain.py"] + [
                      a for a in (argv or sys.argv[1:]) if not a.startswith("--skip_")]),
                  cpu=_cpu(), training_summary=training_curves.summary("run", records))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    rows = [("held-out sentences (invented names)", "heldout_wer"), ("samples/jfk.flac", "jfk_wer"),
            ("jfk.flac x6 with 1 s pauses (66 s, real speech, greedy)", "jfk_x6_greedy_wer"),
            ("2.5 min espeak-ng long-form (the training voice)", "longform_wer")]
    lines = [f"# Domain fine-tune: {args.model}, {args.steps} steps of {args.batch_size}, lr {args.learning_rate}, "
             "encoder frozen", "", f"`{result['command']}` ({result['cpu']}; training {train_s or 0:.0f} s)", "",
             "| WER % | before | after | change |", "|---|---:|---:|---:|"]
    for label, key in rows:
        lines.append(f"| {label} | {before[key]:.2f} | {after[key]:.2f} | {after[key] - before[key]:+.2f} |")
    lines += ["", "Held-out examples after the fine-tune:", ""]
    lines += [f"- {e['reference']!r} -> {e['hypothesis']!r}" for e in after["examples"][::4][:8]]
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = after["heldout_wer"] <= before["heldout_wer"] / 2 and abs(after["jfk_wer"] - before["jfk_wer"]) < 1 \
        and abs(after["jfk_x6_greedy_wer"] - before["jfk_x6_greedy_wer"]) < 1 \
        and abs(after["longform_wer"] - before["longform_wer"]) < 1
    print("targets met (held-out halved; jfk, jfk x6 and the long-form passage within 1 point)" if ok
          else "targets NOT met (held-out halved; jfk, jfk x6 and the long-form passage within 1 point)")
    return 0


from _machine import cpu_name as _cpu  # noqa: E402


if __name__ == "__main__":
    sys.exit(main())
