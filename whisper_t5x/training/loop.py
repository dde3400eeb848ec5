"""The training loop: batches in, partitioned steps, metrics out once per interval, checkpoints, evaluation.

:func:`train` reads as the algorithm::

    for each step up to max_steps:
        batch  = the loader's next host batch, made a global array over the mesh
        state, metrics = train_step(state, batch[, teacher_params])   # donated state, async dispatch
        every log_every steps:  fetch the interval's metrics at once, write JSONL / TensorBoard
        every eval_every steps: eval loss and WER
        every save_every steps: checkpoint (state + data position), written in the background
    at the end: checkpoint, evaluation, export

Everything it runs is built by the caller (:class:`Trainer`): the loop knows
neither the model nor the dataset. Ctrl-C or SIGTERM stops after the step in
flight and saves a checkpoint (rerunning the same command resumes); SIGUSR1
exports the current parameters after the step in flight.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from whisper_t5x.training.data import BatchLoader, DataPosition
from whisper_t5x.training.metrics import IntervalMeter, MetricsLog

logger = logging.getLogger("whisper_t5x.training.loop")

__all__ = ["LoopConfig", "Trainer", "TrainResult", "train"]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """When the loop logs, evaluates and saves (in steps).

    ``eval_every`` ``None``: evaluate only at the start of a fresh run (with
    ``eval_at_start``) and at the end.
    """

    max_steps: int
    log_every: int = 10
    eval_every: Optional[int] = None
    eval_at_start: bool = True
    save_every: int = 500


@dataclasses.dataclass
class Trainer:
    """What the loop runs; built by the caller (``whisper_t5x.app.train``).

    ``make_batch(fields)`` turns a host batch's arrays into the step's global
    batch; ``checkpoint_meta(position)`` is the JSON saved beside the state;
    ``evaluate(params, teacher_params)`` returns eval scalars (or is ``None``);
    ``export(params)`` writes the Hugging Face directory and returns its path
    (``None`` on processes other than 0). ``sum_over_processes`` adds a small
    host vector over processes (identity on one).
    """

    train_step: Callable
    state: Any
    loader: BatchLoader
    make_batch: Callable[[Dict[str, np.ndarray]], Any]
    checkpointer: Any
    checkpoint_meta: Callable[[DataPosition], Dict[str, Any]]
    log: MetricsLog
    teacher_params: Any = None
    evaluate: Optional[Callable[..., Dict[str, Any]]] = None
    export: Optional[Callable[[Any], Optional[str]]] = None
    sum_over_processes: Callable[[np.ndarray], np.ndarray] = lambda v: v


@dataclasses.dataclass
class TrainResult:
    step: int
    interrupted: bool = False
    export_dir: Optional[str] = None
    last_train: Dict[str, Any] = dataclasses.field(default_factory=dict)
    last_eval: Dict[str, Any] = dataclasses.field(default_factory=dict)
    first_step_s: Optional[float] = None


class _Requests:
    """Stop (SIGINT / SIGTERM) and export (SIGUSR1) requests, noted by signal handlers, acted on between steps.

    A second Ctrl-C does not wait for the step: it raises ``KeyboardInterrupt`` (no checkpoint).
    """

    def __init__(self):
        self.stop = False
        self.export = False
        self._old: Dict[int, Any] = {}

    def _on_stop(self, signum, _frame) -> None:
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True
        logger.warning("stopping after the step in flight (a checkpoint is saved; Ctrl-C again to quit now)")

    def __enter__(self) -> "_Requests":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_stop)
        self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_stop)
        if hasattr(signal, "SIGUSR1"):
            self._old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "export", True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _run_eval(t: Trainer, step: int) -> Dict[str, Any]:
    started = time.perf_counter()
    out = t.evaluate(t.state.params, t.teacher_params)
    scalars = {k: v for k, v in out.items() if isinstance(v, (int, float, np.floating))}
    scalars["eval_time_s"] = time.perf_counter() - started
    t.log.write(step, scalars, split="eval")
    wer = f", WER {100 * scalars['wer']:.2f}%" if "wer" in scalars else ""
    t.log.message(f"step {step}: eval loss {scalars.get('loss', float('nan')):.4f}{wer}")
    for ex in out.get("examples", [])[:2]:
        logger.info("eval example: ref %r / hyp %r", ex["reference"][:120], ex["hypothesis"][:120])
    return scalars


def _log_interval(t: Trainer, meter: IntervalMeter, step: int) -> Dict[str, Any]:
    audio, bad = t.sum_over_processes(np.asarray([meter.audio_seconds, meter.bad_rows], np.float64))
    meter.bad_rows = int(bad)
    scalars = meter.flush(audio_seconds=float(audio))
    t.log.write(step, scalars)
    return scalars


def train(t: Trainer, config: LoopConfig, start_step: int = 0) -> TrainResult:
    """Runs steps ``start_step + 1 .. config.max_steps``; returns where it ended."""
    result = TrainResult(step=start_step)
    step = start_step
    position = t.loader.position
    saved_step = start_step
    meter = IntervalMeter()
    teacher = () if t.teacher_params is None else (t.teacher_params,)
    with _Requests() as requests:
        try:
            if t.evaluate is not None and config.eval_at_start and start_step == 0:
                result.last_eval = _run_eval(t, 0)
            meter.reset()
            while step < config.max_steps and not requests.stop:
                host = next(t.loader)
                t.state, metrics = t.train_step(t.state, t.make_batch(host.fields), *teacher)
                step += 1
                position = host.position
                meter.add(metrics, host.tokens, host.audio_seconds, host.bad_rows)
                if step == start_step + 1:  # the first step compiles: time it alone, keep it out of throughput
                    jax.block_until_ready(metrics)
                    result.first_step_s = time.perf_counter() - meter.started
                    t.log.message(f"step {step}: first step (compile included) {result.first_step_s:.1f} s")
                    meter.restart_clock()
                t.log.advance()
                if step % config.log_every == 0 or step == config.max_steps:
                    result.last_train = _log_interval(t, meter, step)
                if t.evaluate is not None and config.eval_every and step % config.eval_every == 0 \
                        and step < config.max_steps:
                    result.last_eval = _run_eval(t, step)
                    meter.pause(result.last_eval["eval_time_s"])  # evaluation is not training time
                if step % config.save_every == 0 and step < config.max_steps:
                    t.checkpointer.save(step, t.state, t.checkpoint_meta(position))
                    saved_step = step
                if requests.export and t.export is not None:
                    requests.export = False
                    path = t.export(t.state.params)
                    if path:
                        t.log.message(f"step {step}: exported to {path}")
            if meter.steps:
                result.last_train = _log_interval(t, meter, step)
            if step != saved_step or t.checkpointer.latest_step() is None:
                t.checkpointer.save(step, t.state, t.checkpoint_meta(position))
            result.step = step
            result.interrupted = requests.stop and step < config.max_steps
            if result.interrupted:
                return result
            if t.evaluate is not None and step > start_step:
                result.last_eval = _run_eval(t, step)
            if t.export is not None:
                result.export_dir = t.export(t.state.params)
            return result
        finally:
            t.loader.close()
            t.checkpointer.wait()
