"""The machine a benchmark ran on, recorded beside every result (CPUs change between sessions)."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """``lscpu``'s model name (e.g. "Intel(R) Xeon(R) Processor"), else what the platform says."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
