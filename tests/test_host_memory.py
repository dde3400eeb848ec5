"""host_memory: glibc's thresholds are pinned once, a process's own MALLOC_* choice wins, trim runs."""


import numpy as np
import pytest

from whisper_t5x import host_memory

SR = 16000


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    for k in host_memory._ENV:
        monkeypatch.delenv(k, raising=False)
    if host_memory._glibc() is None:
        pytest.skip("not glibc")


def test_thresholds_are_pinned_once(fresh, monkeypatch):
    calls = []
    libc = host_memory._glibc()

    class Spy:
        gnu_get_libc_version = libc.gnu_get_libc_version

        def mallopt(self, param, value):
            calls.append((param, value))
            return libc.mallopt(param, value)

    monkeypatch.setattr(host_memory, "_glibc", lambda: Spy())
    assert host_memory.return_freed_memory(1 << 20) is True
    assert sorted(calls) == [(host_memory._M_MMAP_THRESHOLD, 1 << 20), (host_memory._M_TRIM_THRESHOLD, 1 << 20)]
    assert host_memory.return_freed_memory() is True and len(calls) == 2  # once per process


def test_a_process_choice_in_the_environment_wins(fresh, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert host_memory.return_freed_memory() is False and host_memory._applied is None


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.return_freed_memory() is False and host_memory.trim() is False


@pytest.fixture(scope="module")
def tiny():
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    try:
        return FlaxWhisperPipeline("tiny.en", compile_cache=False)  # leaves the process-wide JAX cache alone
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"tiny.en not available: {e}")


def test_the_pipeline_trims_after_each_call_on_a_cpu(tiny, monkeypatch):
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(SR * 2) / SR)).astype(np.float32)
    trims = []
    monkeypatch.setattr(host_memory, "trim", lambda: trims.append(1) or True)
    assert tiny.return_freed_memory is True  # CPU backend, default on
    tiny(tone)
    assert trims == [1]
    monkeypatch.setattr(tiny, "return_freed_memory", False)
    tiny(tone)
    assert trims == [1]


def test_threshold_stays_above_a_steps_logits():
    assert host_memory.threshold_for(0) == host_memory.DEFAULT_THRESHOLD == 2 << 20
    assert host_memory.threshold_for(8 * 51865 * 4) == 2 << 20  # base, 8 slots: 1.7 MB of logits
    assert host_memory.threshold_for(16 * 51866 * 4) == 4 << 20
