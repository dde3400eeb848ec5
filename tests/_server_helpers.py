"""Starting and stopping a ``whisper-t5x serve`` subprocess for the serving tests and benchmark."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    """``(status, body)`` of a GET; ``(None, error)`` when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read().decode() or "null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read().decode() or "null")
        except ValueError:
            return e.code, None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)


class ServerProcess:
    """``python -m whisper_t5x.app.serving ARGS --host 127.0.0.1 --port <free>`` in a subprocess.

    ``health_log`` records every ``/health`` answer seen while waiting for
    readiness (so tests can check the server was not ready before warm-up).

    ``env``: variables to set (a ``None`` value removes one from the inherited environment).
    """

    def __init__(self, args: Sequence[str], env: Optional[dict] = None, port: Optional[int] = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="whisper_t5x-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "whisper_t5x.app.serving", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        self.health_log: List[tuple] = []

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            status, body = get_json(self.url + "/health", timeout=5)
            if status is not None:
                self.health_log.append((status, body))
            if status == 200:
                return
            time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class InProcessServer:
    """A uvicorn server for ``app`` in a thread of this process, on a free port (fake pipelines, fast)."""

    def __init__(self, app, port: Optional[int] = None):
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def gradio_call(client, url: str, api_name: str, data: list, timeout: float = 240.0):
    """Gradio's HTTP API by hand: ``POST /gradio_api/call/NAME`` then read its event stream.

    ``client``: an ``httpx.Client`` (carrying any login cookies). Returns
    ``(post_status, events)`` with ``events`` a list of ``(event, data)``
    (empty when the POST was refused).
    """
    r = client.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=timeout)
    if r.status_code != 200:
        return r.status_code, [("refused", r.text)]
    event_id = r.json()["event_id"]
    events, name = [], None
    with client.stream("GET", f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, line.split(":", 1)[1].strip()))
                if name in ("complete", "error"):
                    break
    return r.status_code, events
