"""Distillation end to end on CPU: ``whisper-t5x label`` -> ``whisper-t5x distill`` base -> a 2-decoder-layer student.

    python benchmarks/distill_demo.py [--steps 60] [--batch_size 4] [--learning_rate 3e-4] \
        [--work /tmp/whisper_t5x_distill_demo]

1. A local dataset of espeak-ng speech (made here): the 64 sentences of
   ``benchmarks/_speech_corpus.py`` in two voices; 48 sentences train, 16 other
   sentences held out (``validation``).
2. ``whisper-t5x label`` with base writes pseudo-labels (``keep`` = WER <= 0.1
   against the dataset's text); a later run with the same ``--work`` reuses them.
3. ``whisper-t5x distill --labels ... --teacher base --student_decoder_layers 2``
   (encoder copied and frozen; decoder layers 0 and 5 of 6 kept).
4. Held-out WER against the true text through ``FlaxWhisperPipeline`` (greedy,
   no fallback, at most 96 tokens): the teacher, the student as initialised,
   the distilled student; decode time of teacher and student on the same clips
   (second of two passes, compiled), as decoded and at equal work (end-of-text
   suppressed, ``--fixed_tokens`` per clip); the export loaded by transformers
   PyTorch (greedy generate on 8 clips, WER) and converted by CTranslate2's
   converter (and decoded with it). ``--measure_only`` repeats step 4 on the
   finished run in ``--work``.

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
MAX_NEW_TOKENS = 96  # the longest held-out sentence is about 30 tokens: a student that babbles stops here
# greedy, one temperature (no fallback re-decodes): teacher and student do the same work per clip
GREEDY = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS}


def build_dataset(directory: str) -> Dict[str, list]:
    """The two splits as ``(text, voice, speed)`` rows, written as Parquet unless already there."""
    s = _speech_corpus.sentences()
    splits = {"train": [(t, v, sp) for t in s[:48] for v, sp in VOICES],
              "validation": [(t, v, sp) for t in s[48:] for v, sp in VOICES]}
    os.makedirs(directory, exist_ok=True)
    for name, rows in splits.items():
        path = os.path.join(directory, f"{name}.parquet")
        if not os.path.exists(path):
            write_split(path, [synthesize(t, v, sp) for t, v, sp in rows], [t for t, _, _ in rows], name[0])
    return splits


def label_summary(labels: str) -> Dict[str, object]:
    """The label run that wrote ``labels``: its rows, kept rows, wall time and audio hours per hour."""
    with open(os.path.join(labels, "summary.json")) as f:
        run = json.load(f)["this_run"]
    return {k: run.get(k) for k in ("rows", "kept", "wall_s", "audio_hours", "audio_hours_per_hour")}


def _run(cmd: List[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def pipeline_wer(model: str, rows: list, runs: int = 2, fixed_tokens: int = 0) -> Dict[str, object]:
    """Held-out WER (%) and the decode wall time of the last of ``runs`` passes (the first compiles).

    With ``fixed_tokens`` also the time of the same work for any model: end-of-text suppressed, every
    clip decodes exactly ``fixed_tokens`` tokens (last of two passes).
    """
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    pipe = FlaxWhisperPipeline(model, batch_size=8)
    clips = [{"array": synthesize(t, v, sp), "sampling_rate": 16000} for t, v, sp in rows]

    def timed(kwargs):
        t0 = time.perf_counter()
        out = [r.text for r in pipe.transcribe(clips, language="en", long_form="chunked", generate_kwargs=kwargs)]
        return out, time.perf_counter() - t0

    for _ in range(runs):
        hyps, wall = timed(GREEDY)
    result = {"wer": 100 * word_error_rate([t for t, _, _ in rows], hyps), "decode_s": wall,
              "decoder_layers": pipe.config.decoder_layers,
              "examples": [{"reference": t, "hypothesis": h} for (t, _, _), h in list(zip(rows, hyps))[:4]]}
    if fixed_tokens:
        never_end = tuple(pipe.model.default_suppress_tokens()) + (pipe.config.special_tokens.eot,)
        kwargs = dict(GREEDY, max_new_tokens=fixed_tokens, suppress_tokens=never_end)
        for _ in range(2):
            _, result["fixed_decode_s"] = timed(kwargs)
        result["fixed_tokens"] = fixed_tokens
    return result


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
    """The export in transformers PyTorch: greedy generate on the first 8 held-out clips, WER against the text."""
    import torch
    import transformers

    from whisper_t5x.audio.features import log_mel_spectrogram_np
    from whisper_t5x.text.tokenizer import WhisperTokenizer

    model = transformers.WhisperForConditionalGeneration.from_pretrained(export).eval()
    tok = WhisperTokenizer.from_pretrained(export)
    rows = rows[:8]
    feats = log_mel_spectrogram_np([synthesize(t, v, sp) for t, v, sp in rows], n_mels=80)
    hyps = []
    with torch.no_grad():
        for lo in range(0, len(rows), 8):
            out = model.generate(torch.from_numpy(feats[lo:lo + 8]), language="en", task="transcribe",
                                 max_new_tokens=MAX_NEW_TOKENS)
            hyps.extend(tok.decode(seq) for seq in out.numpy())
    return {"loaded": type(model).__name__, "decoder_layers": model.config.decoder_layers,
            "wer_first_8": 100 * word_error_rate([t for t, _, _ in rows], hyps), "example": hyps[0]}


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
                         max_length=MAX_NEW_TOKENS)
    hyps = [tok.decode(r.sequences_ids[0]) for r in out]
    return {"converted_to": os.path.relpath(target, work), "wer_first_8": 100 * word_error_rate(
        [t for t, _, _ in rows[:8]], hyps), "example": hyps[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/whisper_t5x_distill_demo")
    p.add_argument("--teacher", default="base")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--eval_every", type=int, default=0, help="eval during training (0: at the start and the end)")
    p.add_argument("--heldout_rows", type=int, default=32, help="held-out clips decoded after training (all: 32)")
    p.add_argument("--fixed_tokens", type=int, default=64, help="tokens per clip of the equal-work decode timing")
    p.add_argument("--measure_only", action="store_true",
                   help="reuse the finished run in --work (its label and distill times too); measure again")
    p.add_argument("--name", default="distill_demo")
    args = p.parse_args(argv)
    data, labels, out = (os.path.join(args.work, d) for d in ("data", "labels", "run"))
    splits = build_dataset(data)
    py = [sys.executable, "-m", "whisper_t5x.main"]
    walls_file = os.path.join(args.work, "walls.json")
    wall: Dict[str, float] = {}
    if args.measure_only:
        with open(walls_file) as f:
            wall = json.load(f)
    else:
        if os.path.exists(os.path.join(labels, "summary.json")):  # labels of an earlier run are reused
            print(f"labels in {labels}: reused", flush=True)
        else:
            wall["label"] = _run(py + ["label", "--dataset", data, "--split", "train+validation", "--output_dir",
                                       labels, "--text_column", "text", "--model", args.teacher, "--language", "en",
                                       "--quiet"])
        if os.path.exists(out):
            raise SystemExit(f"{out} exists: remove it (the distill run would resume it), or --measure_only")
        wall["distill"] = _run(py + ["distill", "--dataset", data, "--labels", labels, "--teacher", args.teacher,
                                     "--student_decoder_layers", str(args.layers), "--eval_split", "validation",
                                     "--output_dir", out, "--max_steps", str(args.steps), "--batch_size",
                                     str(args.batch_size), "--learning_rate", str(args.learning_rate),
                                     "--warmup_steps", str(min(10, args.steps // 5)), "--language", "en",
                                     "--log_every", "1", "--eval_every", str(args.eval_every or args.steps),
                                     "--save_every", str(args.steps), "--gin.TrainConfig.progress=False",
                                     f"--gin.TrainConfig.eval_sample_len={MAX_NEW_TOKENS}"])
        with open(walls_file, "w") as f:
            json.dump(wall, f)
    label = label_summary(labels)
    export = os.path.join(out, "export")
    held = splits["validation"][:args.heldout_rows]
    t0 = time.perf_counter()
    teacher = pipeline_wer(args.teacher, held, fixed_tokens=args.fixed_tokens)
    before = pipeline_wer(initial_student(args.teacher, args.layers, os.path.join(args.work, "student0")), held,
                          runs=1)
    after = pipeline_wer(export, held, fixed_tokens=args.fixed_tokens)
    wall["heldout_decodes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tf = _guarded(transformers_check, export, held)
    ct2 = _guarded(ctranslate2_check, export, args.work, held)
    wall["export_checks"] = time.perf_counter() - t0
    import training_curves
    from whisper_t5x.training.metrics import read_metrics

    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    png = training_curves.plot({f"{args.layers}-layer student": records}, os.path.join(RESULTS, f"{args.name}.png"),
                               f"distilling {args.teacher} into {args.layers} decoder layers (CPU, espeak-ng)")
    result = dict(teacher=args.teacher, student_decoder_layers=args.layers, steps=args.steps,
                  batch_size=args.batch_size, learning_rate=args.learning_rate, label=label, wall_s=wall,
                  pseudo_labels_kept=_kept(labels), heldout_rows=len(held), teacher_eval=teacher,
                  student_before=before, student_after=after, transformers=tf, ctranslate2=ct2,
                  fixed_tokens=args.fixed_tokens, curve=os.path.relpath(png, ROOT), training_summary=training_curves.summary("distill", records),
                  train_evals=[{k: r.get(k) for k in ("step", "loss", "ce", "kl", "wer")} for r in records
                               if r.get("split") == "eval"],
                  command=" ".join(["python", "benchmarks/distill_demo.py"] + list(argv or sys.argv[1:])), cpu=_cpu())
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = _markdown(args, result)
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _guarded(check, *args) -> Dict[str, object]:
    """A check's result, or the error it raised (the other figures are still written)."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001 - reported in the results
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def _markdown(args, r: Dict[str, object]) -> List[str]:
    teacher, before, after, tf, ct2 = (r[k] for k in ("teacher_eval", "student_before", "student_after",
                                                      "transformers", "ctranslate2"))
    label, wall = r["label"], r["wall_s"]
    lines = [f"# Distillation: {args.teacher} -> {args.layers} decoder layers, {args.steps} steps of "
             f"{args.batch_size}", "",
             f"`{r['command']}` ({r['cpu']}, a 2-core machine shared with other jobs"
             + ("; training from the same command without `--measure_only`, measured again here" if
                args.measure_only else "") + "). Label run: "
             f"{label['rows']} rows in {label['wall_s']:.0f} s, pseudo-labels kept (WER <= 10% against the "
             f"dataset text): {r['pseudo_labels_kept']}; distill run {wall['distill']:.0f} s (with its evals).", "",
             f"Held-out: {r['heldout_rows']} espeak-ng clips of sentences never trained on, WER against the true "
             "text through `FlaxWhisperPipeline` (greedy, the same normaliser as `label`); decode s = wall time to "
             "transcribe all of them (the second of two passes: compiled), same run, batch 8, greedy without "
             f"fallback, at most {MAX_NEW_TOKENS} tokens per clip.", "",
             "| model | decoder layers | held-out WER % | decode s (as decoded) | "
             f"decode s ({r['fixed_tokens']} tokens per clip) |", "|---|---:|---:|---:|---:|",
             f"| teacher ({args.teacher}) | {teacher['decoder_layers']} | {teacher['wer']:.2f} | "
             f"{teacher['decode_s']:.2f} | {teacher['fixed_decode_s']:.2f} |",
             f"| student as initialised | {args.layers} | {before['wer']:.2f} | - | - |",
             f"| distilled student | {args.layers} | {after['wer']:.2f} | {after['decode_s']:.2f} | "
             f"{after['fixed_decode_s']:.2f} |", "",
             f"Equal work (end-of-text suppressed, every clip decodes {r['fixed_tokens']} tokens): the student "
             f"decodes the clips {teacher['fixed_decode_s'] / after['fixed_decode_s']:.2f}x as fast as the teacher "
             "(the encoder, the same in both, is part of both times). As decoded, each model stops at its own "
             f"end-of-text: {teacher['decode_s'] / after['decode_s']:.2f}x (a student that repeats itself runs to "
             f"the {MAX_NEW_TOKENS}-token cap).", ""]
    if "error" in tf:
        lines.append(f"transformers PyTorch: the export did not load/decode: {tf['error']}")
    else:
        lines.append(f"transformers `{tf['loaded']}` loads the export ({tf['decoder_layers']} decoder layers); its "
                     f"greedy `generate` on the first 8 held-out clips: WER {tf['wer_first_8']:.2f}%.")
    if "error" in ct2:
        lines.append(f"CTranslate2's converter: {ct2['error']}")
    else:
        lines.append(f"CTranslate2's `TransformersConverter` converts it; decoded with `ctranslate2.models.Whisper`, "
                     f"WER on the first 8 clips {ct2['wer_first_8']:.2f}%.")
    lines += ["", f"Training: {r['training_summary']}. Curve: `{r['curve']}` "
              f"(`python benchmarks/training_curves.py {args.work}/run --output {r['curve']}` redraws it).", "",
              "Examples after distillation:", ""]
    lines += [f"- {e['reference']!r} -> {e['hypothesis']!r}" for e in after["examples"]]
    return lines


def _kept(labels: str) -> str:
    from whisper_t5x.app.label import sink

    rows = sink.read_table(labels).to_pylist()
    return f"{sum(1 for r in rows if r.get('keep'))} of {len(rows)}"


from _machine import cpu_name as _cpu  # noqa: E402


if __name__ == "__main__":
    sys.exit(main())
