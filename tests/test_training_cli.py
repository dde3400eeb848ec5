"""``whisper-t5x train`` / ``distill`` end to end on a tiny random model and a local Parquet dataset of sine
clips: a run, its outputs, resuming it, distilling, and the named errors reported before any step.

Slow (``-m slow``): SIGKILL in the middle of a run, then the same command again, ends with the same
parameters as a run never interrupted (bit for bit on CPU; tolerance 0).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests._training_io_fixtures import save_tiny_model, sine_dataset
from whisper_t5x.training.metrics import read_metrics

pytest.importorskip("datasets")
pytest.importorskip("orbax.checkpoint")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# total_steps fixed: runs with different --max_steps compile the same step (the schedule is in the program)
QUICK = ["--batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "0", "--log_every", "1",
         "--gin.OptimizerConfig.total_steps=10", "--gin.TrainConfig.progress=False",
         "--gin.TrainConfig.eval_sample_len=3", "--gin.TrainConfig.eval_at_start=False", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    os.environ.setdefault("WHISPER_T5X_CACHE", str(root / "jax_cache"))  # the resumed run reuses compiled steps
    return {"model": save_tiny_model(root / "model"), "data": sine_dataset(root / "data"), "root": root}


def _train(setup, out, *extra, command="train"):
    from whisper_t5x.main import main

    base = ["whisper-t5x", command, "--dataset", setup["data"], "--output_dir", str(out)]
    if command == "train":
        base += ["--model", setup["model"]]
    return main(base + QUICK + list(extra))


def _steps(out, split="train"):
    return [r["step"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == split]


@pytest.fixture(scope="module")
def first_run(setup):
    out = setup["root"] / "run"
    rc = _train(setup, out, "--max_steps", "2", "--save_every", "1", "--eval_split", "validation")
    return out, rc


def test_train_writes_its_outputs(first_run):
    out, rc = first_run
    assert rc == 0
    assert sorted(os.listdir(out)) == ["checkpoints", "config.gin", "export", "metrics.jsonl", "tensorboard"]
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]
    assert _steps(out) == [1, 2] and _steps(out, "eval") == [2]
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    last = [r for r in records if r["split"] == "train"][-1]
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "audio_hours_per_hour", "step_time_s"):
        assert np.isfinite(last[key]), key
    ev = [r for r in records if r["split"] == "eval"][-1]
    assert np.isfinite(ev["loss"]) and "wer" in ev
    assert "DataSection.dataset" in open(out / "config.gin").read()
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    model, _ = FlaxWhisperForConditionalGeneration.from_pretrained(str(out / "export"), _do_init=False)
    assert model.config.d_model == 64 and model.tokenizer is not None


def test_rerun_resumes(setup, first_run):
    out, rc = first_run
    assert rc == 0
    assert _train(setup, out, "--max_steps", "3", "--save_every", "1") == 0
    assert _steps(out) == [1, 2, 3]  # steps 1-2 were not run again
    assert "3" in os.listdir(out / "checkpoints")


@pytest.mark.slow
def test_distill_a_smaller_student(setup, tmp_path):
    out = tmp_path / "distill"
    rc = _train(setup, out, "--teacher", setup["model"], "--student_decoder_layers", "1", "--max_steps", "2",
                command="distill")
    assert rc == 0
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert {"ce", "kl"} <= set(records[-1]) and _steps(out) == [1, 2]
    from whisper_t5x.model.pretrained import FlaxWhisperForConditionalGeneration

    student, _ = FlaxWhisperForConditionalGeneration.from_pretrained(str(out / "export"), _do_init=False)
    assert student.config.decoder_layers == 1 and student.config.encoder_layers == 2


@pytest.mark.parametrize("extra, command, error", [
    (["--text_column", "transcript"], "train", "MissingTextColumnError"),
    (["--batch_size", "16"], "train", "EmptySplitError"),
    (["--language", "de"], "train", "NonEnglishTargetError"),
    (["--split", "test"], "train", "SourceError|split"),
    (["--student_decoder_layers", "3"], "distill", "StudentLayersError"),
])
def test_named_errors_before_any_step(setup, tmp_path, capsys, extra, command, error):
    import re

    out = tmp_path / "bad"
    args = ["--teacher", setup["model"]] if command == "distill" else []
    rc = _train(setup, out, "--max_steps", "2", *args, *extra, command=command)
    err = capsys.readouterr().err
    assert rc in (1, 2) and re.search(error, err), err
    assert not os.path.exists(out / "metrics.jsonl")  # nothing ran


def test_checkpoint_of_another_model_is_a_named_error(setup, first_run, tmp_path, capsys):
    out, _ = first_run
    other = save_tiny_model(tmp_path / "wide", d_model=128, encoder_ffn_dim=512, decoder_ffn_dim=512)
    setup = dict(setup, model=other)
    rc = _train(setup, out, "--max_steps", "5")
    err = capsys.readouterr().err
    assert rc == 2 and "CheckpointMismatchError" in err and "d_model" in err


def test_batch_size_the_data_axis_does_not_divide(setup, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "whisper_t5x.main", "train", "--dataset", setup["data"], "--model",
           setup["model"], "--output_dir", str(tmp_path / "o"), "--batch_size", "3", "--max_steps", "1",
           "--warmup_steps", "0", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "BatchSizeError" in proc.stderr and "data axis" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ slow: SIGKILL + resume
def _cli(setup, out, steps):
    return [sys.executable, "-m", "whisper_t5x.main", "train", "--dataset", setup["data"], "--model",
            setup["model"], "--output_dir", str(out), "--max_steps", str(steps), "--save_every", "2",
            "--gin.TrainConfig.async_checkpoints=False", *QUICK]


def _params(out):
    from whisper_t5x.checkpoints.safetensors_io import iter_tensors

    return dict(iter_tensors(os.path.join(out, "export", "model.safetensors")))


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(setup, tmp_path):
    """Kill -9 after a checkpoint, rerun the same command: parameters bit-identical to a run never
    interrupted (same order, same row choices, restored optimizer state and step)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    steps = 6
    whole = tmp_path / "whole"
    subprocess.run(_cli(setup, whole, steps), cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(setup, killed, steps), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if max(_steps(killed) or [0]) >= 3:  # past the checkpoint of step 2, before the end
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(killed / "export")
    rerun = subprocess.run(_cli(setup, killed, steps), cwd=REPO, env=env, check=True, capture_output=True,
                           text=True, timeout=900)
    assert "resuming at step" in rerun.stdout, rerun.stdout  # from a checkpoint, not from scratch
    assert _steps(killed) == list(range(1, steps + 1))
    a, b = _params(whole), _params(killed)
    assert sorted(a) == sorted(b)
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)
    assert worst == 0.0, worst
