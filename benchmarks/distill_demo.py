"""Distillation end to end on CPU: ``whisper-t5x label`` -> ``whisper-t5x distill`` base -> a 2-decoder-layer student.

    python benchmarks/distill_demo.py [--steps 150] [--batch_size 8] [--learning_rate 1e-4] \
        [--work /tmp/whisper_t5x_distill_demo]

1. A local dataset of espeak-ng speech (made here): the 64 sentences of
   ``benchmarks/_speech_corpus.py`` in two voices; 48 sentences train, 16 other
   sentences held out (``validation``).
2. ``whisper-t5x label`` with base writes pseudo-labels (``keep`` = WER <= 0.1
   against the dataset's text).
3. ``whisper-t5x distill --labels ... --teacher base --student_decoder_layers 2``
   (encoder copied and frozen; decoder layers 0 and 5 of 6 kept).
4. Held-out WER against the true text through ``FlaxWhisperPipeline``: the
   teacher, the student as initialised, the distilled student; decode time of
   teacher and student on the same clips (second of two runs, compiled); the
   export loaded by transformers PyTorch (greedy generate, WER) and converted
   by CTranslate2's converter (and decoded with it).

Writes ``benchmarks/results/distill_demo.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _speech_corpus  # noqa: E402
from tests._speech import synthesize  # noqa: E402
from tests._training_io_fixtures import write_split  # noqa: E402
from whisper_t5x.training.evaluate import word_error_rate  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
VOICES = [("en", 160), ("en-us", 150)]


def build_dataset(directory: str) -> Dict[str, list]:
    s = _speech_corpus.sentences()
    splits = {"train": [(t, v, sp) for t in s[:48] for v, sp in VOICES],
              "validation": [(t, v, sp) for t in s[48:] for v, sp in VOICES]}
    os.makedirs(directory, exist_ok=True)
    for name, rows in splits.items():
        write_split(os.path.join(directory, f"{name}.parquet"), [synthesize(t, v, sp) for t, v, sp in rows],
                    [t for t, _, _ in rows], name[0])
    return splits


def _run(cmd: List[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def pipeline_wer(model: str, rows: list, runs: int = 2) -> Dict[str, float]:
    """Held-out WER (%) and the decode wall time of the last of ``runs`` passes (the first compiles)."""
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline(model, batch_size=8)
    clips = [{"array": synthesize(t, v, sp), "sampling_rate": 16000} for t, v, sp in rows]
    for _ in range(runs):
        t0 = time.perf_counter()
        hyps = [r.text for r in pipe.transcribe(clips, language="en", long_form="chunked")]
        wall = time.perf_counter() - t0
    return {"wer": 100 * word_error_rate([t for t, _, _ in rows], hyps), "decode_s": wall,
            "examples": [{"reference": t, "hypothesis": h} for (t, _, _), h in list(zip(rows, hyps))[:4]]}


def initial_student(teacher: str, layers: int, directory: str) -> str:
    """The student before training (the teacher's encoder and ``layers`` decoder layers), saved."""
    from whisper_t5x.checkpoints.export import save_pretrained
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration
    from whisper_t5x.training.student import student_from_teacher

    model, params = FlaxWhisperForConditionalGeneration.from_pretrained(teacher, _do_init=False)
    config, student = student_from_teacher(model.config, params, layers)
    save_pretrained(directory, config, student, tokenizer_file=model.tokenizer_file,
                    generation_config=model.generation_config)
    return directory


def transformers_check(export: str, rows: list) -> Dict[str, object]:
    """The export in transformers PyTorch: greedy generate on the held-out clips, WER against the text."""
    import torch
    import transformers

    from whisper_t5x.audio.features import log_mel_spectrogram_np
    from whisper_t5x.text.tokenizer import WhisperTokenizer

    model = transformers.WhisperForConditionalGeneration.from_pretrained(export).eval()
    tok = WhisperTokenizer.from_pretrained(export)
    feats = log_mel_spectrogram_np([synthesize(t, v, sp) for t, v, sp in rows], n_mels=80)
    hyps = []
    with torch.no_grad():
        for lo in range(0, len(rows), 8):
            out = model.generate(torch.from_numpy(feats[lo:lo + 8]), language="en", task="transcribe",
                                 max_new_tokens=120)
            hyps.extend(tok.decode(seq) for seq in out.numpy())
    return {"loaded": type(model).__name__, "decoder_layers": model.config.decoder_layers,
            "wer": 100 * word_error_rate([t for t, _, _ in rows], hyps), "example": hyps[0]}


def ctranslate2_check(export: str, work: str, rows: list) -> Dict[str, object]:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    from whisper_t5x.audio.features import log_mel_spectrogram_np
    from whisper_t5x.text.tokenizer import WhisperTokenizer

    target = os.path.join(work, "ct2")
    TransformersConverter(export).convert(target, force=True)
    model = ctranslate2.models.Whisper(target, device="cpu")
    tok = WhisperTokenizer.from_pretrained(export)
    feats = log_mel_spectrogram_np([synthesize(t, v, sp) for t, v, sp in rows[:8]], n_mels=80)
    prompt = [tok.sot_sequence("en", "transcribe")] * len(feats)
    out = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), prompt, beam_size=1,
                         max_length=120)
    hyps = [tok.decode(r.sequences_ids[0]) for r in out]
    return {"converted_to": os.path.relpath(target, work), "wer_first_8": 100 * word_error_rate(
        [t for t, _, _ in rows[:8]], hyps), "example": hyps[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/whisper_t5x_distill_demo")
    p.add_argument("--teacher", default="base")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--name", default="distill_demo")
    args = p.parse_args(argv)
    data, labels, out = (os.path.join(args.work, d) for d in ("data", "labels", "run"))
    splits = build_dataset(data)
    py = [sys.executable, "-m", "whisper_t5x.main"]
    label_s = _run(py + ["label", "--dataset", data, "--split", "train+validation", "--output_dir", labels,
                         "--text_column", "text", "--model", args.teacher, "--language", "en", "--quiet"])
    distill_s = _run(py + ["distill", "--dataset", data, "--labels", labels, "--teacher", args.teacher,
                           "--student_decoder_layers", str(args.layers), "--eval_split", "validation",
                           "--output_dir", out, "--max_steps", str(args.steps), "--batch_size",
                           str(args.batch_size), "--learning_rate", str(args.learning_rate), "--warmup_steps", "10",
                           "--language", "en", "--log_every", "5", "--eval_every", str(max(args.steps // 3, 1)),
                           "--save_every", str(args.steps), "--gin.TrainConfig.progress=False"])
    export = os.path.join(out, "export")
    held = splits["validation"]
    teacher = pipeline_wer(args.teacher, held)
    before = pipeline_wer(initial_student(args.teacher, args.layers, os.path.join(args.work, "student0")), held)
    after = pipeline_wer(export, held)
    tf = transformers_check(export, held)
    ct2 = ctranslate2_check(export, args.work, held)
    import training_curves
    from whisper_t5x.training.metrics import read_metrics

    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    png = training_curves.plot({f"{args.layers}-layer student": records}, os.path.join(RESULTS, f"{args.name}.png"),
                               f"distilling {args.teacher} into {args.layers} decoder layers (CPU, espeak-ng)")
    kept = _kept(labels)
    result = dict(teacher=args.teacher, student_decoder_layers=args.layers, steps=args.steps,
                  batch_size=args.batch_size, learning_rate=args.learning_rate, label_wall_s=label_s,
                  distill_wall_s=distill_s, pseudo_labels_kept=kept, heldout_rows=len(held),
                  teacher_eval=teacher, student_before=before, student_after=after, transformers=tf, ctranslate2=ct2,
                  curve=os.path.relpath(png, ROOT), training_summary=training_curves.summary("distill", records),
                  command=" ".join(["python", "benchmarks/distill_demo.py"] + (argv or sys.argv[1:])), cpu=_cpu())
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# Distillation: {args.teacher} -> {args.layers} decoder layers, {args.steps} steps of {args.batch_size}",
             "", f"`{result['command']}` ({result['cpu']}; label {label_s:.0f} s, distill {distill_s:.0f} s; "
             f"pseudo-labels kept: {kept})", "",
             "| model | held-out WER % | decode s (held-out clips) |", "|---|---:|---:|",
             f"| teacher ({args.teacher}) | {teacher['wer']:.2f} | {teacher['decode_s']:.2f} |",
             f"| student as initialised | {before['wer']:.2f} | {before['decode_s']:.2f} |",
             f"| distilled student | {after['wer']:.2f} | {after['decode_s']:.2f} |", "",
             f"Student decode speed-up over the teacher: {teacher['decode_s'] / after['decode_s']:.2f}x.",
             f"transformers `{tf['loaded']}` loads the export ({tf['decoder_layers']} decoder layers), greedy WER "
             f"{tf['wer']:.2f}%; CTranslate2's converter converts it (WER on 8 clips {ct2['wer_first_8']:.2f}%).",
             "", f"Training: {result['training_summary']}."]
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _kept(labels: str) -> str:
    from whisper_t5x.app.label import sink

    rows = sink.read_table(labels).to_pylist()
    return f"{sum(1 for r in rows if r.get('keep'))} of {len(rows)}"


def _cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
