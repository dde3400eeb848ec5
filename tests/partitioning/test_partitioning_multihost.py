"""2 processes x 2 CPU devices (jax.distributed + gloo): each process feeds only
its rows of the global batch; the gathered result equals a single-process run.
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from partitioning_test_utils import free_port, parse_result, subprocess_env  # noqa: E402

TIMEOUT_S = 150


@pytest.fixture(scope="module")
def multihost():
    out_dir = tempfile.mkdtemp(prefix="partitioning_mh_")
    port = free_port()
    script = os.path.join(HERE, "partitioning_multihost_worker.py")
    env = subprocess_env(2)
    procs, logs = [], []
    try:
        for pid in range(2):
            log = open(os.path.join(out_dir, f"log{pid}.txt"), "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, script, str(pid), str(port), out_dir],
                                          env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
        deadline = time.time() + TIMEOUT_S
        for p in procs:
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                break
    finally:
        for p in procs:  # always end both workers
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    results = [parse_result(o) for o in outputs]
    if any(p.returncode != 0 for p in procs) or None in results:
        raise AssertionError("multi-host workers failed:\n" + "\n=====\n".join(o[-5000:] for o in outputs))
    return out_dir, results


def _reference():
    import jax

    import partitioning_toy_model as T

    model = T.ToyModel()
    variables = T.init_fn(model)()
    return np.asarray(jax.jit(model.apply)(variables, T.tokens(batch=8)))


@pytest.mark.parametrize("name", ["dp", "mp", "2d", "mp_span"])
def test_gathered_output_equals_single_process(multihost, name):
    out_dir, _ = multihost
    ref = _reference()
    for pid in range(2):
        got = np.load(os.path.join(out_dir, f"{name}_{pid}.npy"))
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_data_layout_per_process(multihost):
    _, (r0, r1) = multihost
    for name in ("dp", "mp", "2d"):
        # batch split over the two hosts; each feeds only its half
        assert r0[name]["layout"] == [8, 0, 2, True] and r1[name]["layout"] == [8, 1, 2, True]
        assert r0[name]["local_rows"] == [0, 4] and r1[name]["local_rows"] == [4, 8]
        assert r0[name]["chunk"] == [[0, 4], [0, 6], 0] and r1[name]["chunk"] == [[4, 8], [0, 6], 0]
    # model axis across both hosts: one data shard, two replicas of it
    assert r0["mp_span"]["layout"] == [8, 0, 1, True] and r1["mp_span"]["layout"] == [8, 0, 1, False]
    assert r0["mp_span"]["chunk"][-1] == 0 and r1["mp_span"]["chunk"][-1] == 1
    assert r0["mp"]["mesh"] == {"data": 2, "model": 2} and r0["mp_span"]["mesh"] == {"data": 1, "model": 4}


def test_each_process_holds_only_its_shards(multihost):
    _, (r0, _) = multihost
    full = r0["dp"]["local_param_bytes"]  # replicated on 2 local devices
    assert r0["mp"]["local_param_bytes"] < full  # model-sharded params: less per process
    assert r0["2d"]["local_param_bytes"] < r0["mp"]["local_param_bytes"]
