"""Training metrics: gathered on the device, fetched once per log interval, written to JSONL and TensorBoard.

:class:`IntervalMeter` keeps each step's metrics as device scalars (no
transfer, no sync) and the host's own counts (target tokens, audio seconds,
rows masked out); :meth:`IntervalMeter.flush` fetches them all in one
``jax.device_get`` and reduces them: the loss weighted by each step's target
tokens, the gradient norm averaged, the learning rate of the last update,
tokens per second, hours of audio per hour of wall time and seconds per step.

:class:`MetricsLog` writes one JSON object per line to ``OUT/metrics.jsonl``
(``{"step", "split", ...}``) and the same scalars as TensorBoard event files
(``tensorboardX``: no TensorFlow), and draws a ``tqdm`` progress bar. Only
process 0 writes. Resuming from step ``s`` drops the lines and events a killed
run wrote after ``s``, so a curve never shows the same step twice.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["IntervalMeter", "MetricsLog", "METRICS_FILE", "TENSORBOARD_DIR", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class IntervalMeter:
    """One log interval's steps: device metrics held unfetched, host counts summed."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._device: List[Dict[str, Any]] = []
        self.tokens = 0
        self.audio_seconds = 0.0
        self.bad_rows = 0
        self.timed_steps = 0
        self.started = self._clock()

    def restart_clock(self) -> None:
        """Time (and count tokens and audio) from now on: the steps so far are left out of the rates
        (the first step, which compiles), their losses are kept."""
        self.tokens, self.audio_seconds, self.timed_steps = 0, 0.0, 0
        self.started = self._clock()

    def pause(self, seconds: float) -> None:
        """Leaves ``seconds`` (an evaluation) out of the interval's wall time."""
        self.started += float(seconds)

    @property
    def steps(self) -> int:
        return len(self._device)

    def add(self, device_metrics: Dict[str, Any], tokens: int = 0, audio_seconds: float = 0.0,
            bad_rows: int = 0) -> None:
        self._device.append(device_metrics)
        self.timed_steps += 1
        self.tokens += int(tokens)
        self.audio_seconds += float(audio_seconds)
        self.bad_rows += int(bad_rows)

    def flush(self, audio_seconds: Optional[float] = None) -> Dict[str, float]:
        """The interval's scalars (fetching every step's metrics at once); starts the next interval.

        ``audio_seconds``: the interval's audio over every process, when the caller has summed it.
        """
        import jax

        host = jax.device_get(self._device)
        wall = max(self._clock() - self.started, 1e-9)
        out: Dict[str, float] = {}
        if host:
            counts = np.asarray([float(m.get("token_count", 1.0)) for m in host])
            weights = counts / counts.sum() if counts.sum() > 0 else np.full(len(host), 1.0 / len(host))
            for key in host[0]:
                values = np.asarray([float(np.asarray(m[key])) for m in host])
                if key == "learning_rate":
                    out[key] = float(values[-1])
                elif key == "token_count":
                    out["target_tokens"] = float(values.sum())
                elif key in ("grad_norm",):
                    out[key] = float(values.mean())
                else:  # per-token losses and their parts
                    out[key] = float((values * weights).sum())
        seconds = self.audio_seconds if audio_seconds is None else float(audio_seconds)
        out.update(steps=float(len(host)), masked_rows=float(self.bad_rows))
        if self.timed_steps:  # none when the interval held only the first (compiling) step
            out.update(step_time_s=wall / self.timed_steps, tokens_per_s=self.tokens / wall,
                       audio_hours_per_hour=seconds / wall)
        self.reset()
        return out


def _summary_writer_class():
    """``tensorboardX.SummaryWriter``, imported without torch.

    ``tensorboardX.writer`` imports torch whenever it is installed, only to
    accept torch tensors; we pass floats, and package code never imports torch
    (seconds of start-up, and a second framework in the process), so torch is
    hidden while tensorboardX is first imported.
    """
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # "import torch" raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    out = []
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class MetricsLog:
    """``OUT/metrics.jsonl``, TensorBoard events under ``OUT/tensorboard/`` and a progress bar.

    ``start_step``: the step the run resumes from (records after it are dropped).
    ``enabled``: write anything at all (process 0 only).
    """

    def __init__(self, output_dir: str, start_step: int = 0, total_steps: Optional[int] = None,
                 enabled: bool = True, tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, METRICS_FILE)
        self._tb = None
        self._bar = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= start_step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            self._tb = SummaryWriter(os.path.join(output_dir, TENSORBOARD_DIR), purge_step=start_step + 1,
                                     flush_secs=30)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             desc="train")

    def write(self, step: int, scalars: Dict[str, Any], split: str = "train") -> Dict[str, Any]:
        """One record: appended to the JSONL, each scalar to TensorBoard as ``split/name``."""
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record.update({k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                       for k, v in scalars.items()})
        if not self.enabled:
            return record
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
        if split == "train" and "loss" in scalars:
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{float(scalars['loss']):.4f}",
                                      lr=f"{float(scalars.get('learning_rate', 0.0)):.2e}", refresh=False)
            else:
                rate = f", {scalars['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in scalars else ""
                print(f"step {int(step)}: loss {float(scalars['loss']):.4f}, "
                      f"lr {float(scalars.get('learning_rate', 0.0)):.2e}{rate}", flush=True)
        return record

    def advance(self, steps: int = 1) -> None:
        """Moves the progress bar."""
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        """A line printed above the progress bar (or plainly without one)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
