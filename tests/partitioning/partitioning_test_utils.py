"""Runs Python snippets in fresh interpreters with N simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` only works if set
before JAX starts, and other test modules in this repo import JAX in the
pytest process, so multi-device checks run in subprocesses. A snippet reports
back by printing one line ``RESULT <json>``.
"""

import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def subprocess_env(num_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def parse_result(stdout: str):
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def run_snippet(code: str, num_devices: int = 8, timeout: float = 150.0):
    """Runs ``code``; returns the decoded RESULT, failing with its output otherwise."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=subprocess_env(num_devices),
        capture_output=True, text=True, timeout=timeout,
    )
    result = parse_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise AssertionError(
            f"snippet failed (rc={proc.returncode})\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
