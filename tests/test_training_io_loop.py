"""The training loop's schedule with fakes (no model): when it logs, evaluates, saves and exports, what a
resumed run skips, and what SIGTERM (stop after the step, checkpoint) and SIGUSR1 (export now) do."""

import os
import signal

import numpy as np
import pytest

from whisper_t5x.training.data import DataPosition, HostBatch
from whisper_t5x.training.loop import LoopConfig, Trainer, train
from whisper_t5x.training.metrics import MetricsLog, read_metrics


class FakeLoader:
    def __init__(self, start=DataPosition()):
        self.position = start
        self.closed = False

    def __next__(self):
        pos = DataPosition(self.position.epoch, self.position.index + 1)
        self.position = pos
        return HostBatch({"x": np.zeros(2)}, pos, tokens=10, audio_seconds=30.0, bad_rows=0, rows=np.arange(2))

    def close(self):
        self.closed = True


class FakeCheckpointer:
    def __init__(self, latest=None):
        self.saved = []
        self.latest = latest

    def save(self, step, state, meta):
        self.saved.append((step, int(state), meta["position"]))
        self.latest = step

    def latest_step(self):
        return self.latest

    def wait(self):
        pass


class IntState(int):
    """A step count standing in for a train state (the loop reads ``state.params``)."""

    @property
    def params(self):
        return int(self)

    def __add__(self, other):
        return IntState(int(self) + other)


def _trainer(tmp_path, on_step=None, start=0, latest=None):
    import jax.numpy as jnp

    calls = {"eval": [], "export": []}

    def step(state, batch):
        if on_step:
            on_step(int(state) + 1)
        return state + 1, {"loss": jnp.float32(1.0 / (int(state) + 1)), "token_count": jnp.float32(10),
                           "grad_norm": jnp.float32(1.0), "learning_rate": jnp.float32(1e-3)}

    t = Trainer(train_step=step, state=IntState(start), loader=FakeLoader(DataPosition(0, start)),
                make_batch=lambda f: f, checkpointer=FakeCheckpointer(latest), checkpoint_meta=lambda pos: {"position": pos.index},
                log=MetricsLog(str(tmp_path), start_step=start, tensorboard=False, progress=False),
                evaluate=lambda p, tp: calls["eval"].append(int(p)) or {"loss": 0.5, "wer": 0.1},
                export=lambda p: calls["export"].append(int(p)) or str(tmp_path / "export"))
    return t, calls


def test_schedule(tmp_path):
    t, calls = _trainer(tmp_path)
    result = train(t, LoopConfig(max_steps=7, log_every=3, eval_every=4, save_every=2))
    assert result.step == 7 and not result.interrupted and result.export_dir == str(tmp_path / "export")
    assert calls["eval"] == [0, 4, 7] and calls["export"] == [7]
    assert [s for s, _, _ in t.checkpointer.saved] == [2, 4, 6, 7]
    assert t.checkpointer.saved[-1] == (7, 7, 7)  # the state and the data position after step 7
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["split"]) for r in records] == [(0, "eval"), (3, "train"), (4, "eval"), (6, "train"),
                                                          (7, "train"), (7, "eval")]
    assert records[1]["loss"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3]))  # steps 1-3, equal token counts
    assert "tokens_per_s" not in records[1] or records[1]["tokens_per_s"] > 0
    assert t.loader.closed


def test_resumed_run_skips_the_first_evaluation(tmp_path):
    t, calls = _trainer(tmp_path, start=5, latest=5)
    result = train(t, LoopConfig(max_steps=6, log_every=10, save_every=10), start_step=5)
    assert result.step == 6 and calls["eval"] == [6] and [s for s, _, _ in t.checkpointer.saved] == [6]
    t2, calls2 = _trainer(tmp_path / "done", start=6, latest=6)
    assert train(t2, LoopConfig(max_steps=6), start_step=6).step == 6  # nothing left: no step, no save
    assert t2.checkpointer.saved == [] and calls2["eval"] == [] and calls2["export"] == [6]


def test_sigterm_stops_after_the_step_and_saves(tmp_path):
    t, calls = _trainer(tmp_path, on_step=lambda s: s == 3 and os.kill(os.getpid(), signal.SIGTERM))
    result = train(t, LoopConfig(max_steps=10, log_every=100, save_every=100, eval_at_start=False))
    assert result.interrupted and result.step == 3
    assert [s for s, _, _ in t.checkpointer.saved] == [3] and calls["export"] == [] and calls["eval"] == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1")
def test_sigusr1_exports_now(tmp_path):
    t, calls = _trainer(tmp_path, on_step=lambda s: s == 2 and os.kill(os.getpid(), signal.SIGUSR1))
    train(t, LoopConfig(max_steps=4, save_every=100, eval_at_start=False))
    assert calls["export"] == [2, 4]
