"""Smoke test of the peer benchmark (benchmarks/peers.py): ~20 s of speech, our pipeline + faster-whisper int8."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "peers.py")

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import _speech_corpus as corpus  # noqa: E402


def test_normalizer_and_wer():
    assert corpus.normalize("The keeper's lamp - bright, STEADY!") == ["the", "keepers", "lamp", "bright", "steady"]
    assert corpus.wer("a b c d", "a b c d") == 0.0
    assert corpus.wer("a b c d", "a x c") == 0.5
    assert corpus.wer("Hello, world.", "hello world") == 0.0


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_corpus_is_reproducible_and_exact_length(tmp_path):
    a, ref = corpus.make_audio(20, directory=str(tmp_path))
    b, ref2 = corpus.make_audio(20, directory=str(tmp_path))
    assert a.dtype.name == "float32" and a.shape == (20 * 16000,)
    assert ref == ref2 and ref.startswith("The lighthouse keeper woke before dawn")
    assert (a == b).all() and 0.1 < abs(a).max() <= 1.0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_peers_script_runs(tmp_path):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("psutil")
    cmd = [sys.executable, SCRIPT, "--durations", "20", "--runs", "1", "--systems", "ours", "faster_whisper_int8",
           "--no-compile_cache", "--no_plot", "--out", str(tmp_path), "--name", "smoke"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.load(open(tmp_path / "smoke.json"))
    for name in ("ours", "faster_whisper_int8"):
        d = results["systems"][name]["durations"]["20 s"]
        assert d["wall_s"] > 0 and d["rtf"] > 0 and d["peak_rss_mb"] > 100, d
        assert d["wer"] < 0.2, (name, d["wer"], d["text"])
    assert results["systems"]["ours"]["durations"]["20 s"]["first_call_s"] > 0
    table = (tmp_path / "smoke.md").read_text()
    assert "faster-whisper int8" in table and "| system |" in table
    assert results["machine"]["logical_cores"] >= 1
