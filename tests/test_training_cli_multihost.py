"""``whisper-t5x train`` over ``jax.distributed`` (slow): 2 processes x 2 CPU devices read their own halves
of each global batch and give the same per-step losses as 1 process x 4 devices; both checkpoint, resume
and export.

    python -m pytest -q tests/test_training_cli_multihost.py -m slow
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "partitioning"))
from partitioning_test_utils import REPO, free_port, subprocess_env  # noqa: E402

from tests._training_io_fixtures import save_tiny_model, sine_dataset  # noqa: E402
from whisper_t5x.training.metrics import read_metrics  # noqa: E402

pytest.importorskip("datasets")
pytest.importorskip("orbax.checkpoint")
TIMEOUT_S = 900


def _command(setup, out, steps):
    return [sys.executable, "-m", "whisper_t5x.main", "train", "--dataset", setup["data"], "--model", setup["model"],
            "--output_dir", str(out), "--max_steps", str(steps), "--batch_size", "4", "--learning_rate", "1e-3",
            "--warmup_steps", "0", "--log_every", "1", "--save_every", "2", "--gin.OptimizerConfig.total_steps=10",
            "--gin.TrainConfig.progress=False", "--quiet"]


def _run(setup, out, steps, processes, devices, log_dir):
    port = free_port()
    procs = []
    for pid in range(processes):
        cmd = _command(setup, out, steps)
        if processes > 1:
            cmd += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes),
                    "--process_id", str(pid)]
        log = open(os.path.join(log_dir, f"log-{time.time_ns()}-{pid}.txt"), "w+")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(devices), stdout=log,
                                       stderr=subprocess.STDOUT), log))
    deadline = time.time() + TIMEOUT_S
    logs = []
    for p, log in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.seek(0)
        logs.append(log.read())
    assert all(p.returncode == 0 for p, _ in procs), "\n=====\n".join(x[-4000:] for x in logs)
    return logs


def _losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"}


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    setup = {"model": save_tiny_model(tmp_path / "model"), "data": sine_dataset(tmp_path / "data")}
    one, two = tmp_path / "one", tmp_path / "two"
    _run(setup, one, 3, 1, 4, str(tmp_path))
    _run(setup, two, 3, 2, 2, str(tmp_path))
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    # the same rows in each global batch, reduced over 4 devices either way (summation order may differ)
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5, atol=1e-6)
    assert os.path.isfile(two / "export" / "model.safetensors")
    logs = _run(setup, two, 4, 2, 2, str(tmp_path))  # both processes resume from the shared checkpoint
    assert "resuming at step 3" in logs[0]
    assert sorted(_losses(two)) == [1, 2, 3, 4]
