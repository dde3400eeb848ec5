"""A training run's curves: train and eval loss and eval WER against the step, from OUT/metrics.jsonl.

    python benchmarks/training_curves.py OUT [OUT2 ...] --output benchmarks/results/curves.png \
        [--labels finetune distill] [--title "..."]

Each ``OUT`` is a ``whisper-t5x train`` / ``distill`` output directory (or its
``metrics.jsonl``). Left: the training loss (per target token, each log
interval) and the eval loss, with a distillation run's parts (``ce`` on the
labels, ``kl`` to the teacher, per token before weighting) dotted; right: the
eval WER (%). Several runs share the axes, one colour each. Prints a one-line
summary per run.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from whisper_t5x.training.metrics import METRICS_FILE, read_metrics  # noqa: E402


def series(records: List[dict], split: str, key: str):
    pts = sorted((r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def summary(name: str, records: List[dict]) -> str:
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    parts = [name, f"{train[-1]['step'] if train else 0} steps"]
    if train:
        parts.append(f"train loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}")
    wers = [r for r in evals if r.get("wer") is not None]
    if wers:
        parts.append(f"eval WER {100 * wers[0]['wer']:.1f}% (step {wers[0]['step']}) -> "
                     f"{100 * wers[-1]['wer']:.1f}% (step {wers[-1]['step']})")
    rates = [r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
    if rates:
        parts.append(f"median {sorted(rates)[len(rates) // 2]:.0f} target tokens/s")
    return ", ".join(parts)


def plot(runs: Dict[str, List[dict]], output: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, records) in enumerate(runs.items()):
        color = f"C{k}"
        x, y = series(records, "train", "loss")
        ax_loss.plot(x, y, color=color, lw=1.2, label=f"{name} train")
        for part, style in (("ce", ":"), ("kl", "-.")):  # a distillation run's parts (per token, unweighted)
            x, y = series(records, "train", part)
            if x:
                ax_loss.plot(x, y, style, color=color, lw=0.9, alpha=0.8, label=f"{name} train {part}")
        x, y = series(records, "eval", "loss")
        if x:
            ax_loss.plot(x, y, "o--", color=color, ms=4, label=f"{name} eval")
        x, y = series(records, "eval", "wer")
        if x:
            ax_wer.plot(x, [100 * v for v in y], "o-", color=color, ms=4, label=name)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss per target token")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_wer.set_xlabel("step")
    ax_wer.set_ylabel("eval WER (%)")
    ax_wer.grid(alpha=0.3)
    if ax_wer.lines:
        ax_wer.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="output directories (or metrics.jsonl files)")
    p.add_argument("--labels", nargs="*", help="a name per run (default: the directory names)")
    p.add_argument("--output", default="benchmarks/results/training_curves.png")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    runs: Dict[str, List[dict]] = {}
    for k, path in enumerate(args.runs):
        file = path if path.endswith(".jsonl") else os.path.join(path, METRICS_FILE)
        name = args.labels[k] if args.labels and k < len(args.labels) else os.path.basename(
            os.path.dirname(file) if path.endswith(".jsonl") else os.path.abspath(path).rstrip("/"))
        records = read_metrics(file)
        if not records:
            print(f"{file}: no records", file=sys.stderr)
            return 2
        runs[name] = records
        print(summary(name, records))
    print(plot(runs, args.output, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
