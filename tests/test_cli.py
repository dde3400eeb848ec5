"""The whisper-t5x command: arguments, gin, files, resume, failures, multi-process.

Most tests use :class:`FakePipeline` (no model); the others run the
real ``tiny.en`` model through ``python -m whisper_t5x.main``: one run by
default (``test_end_to_end_tiny_en``, ~10 s with a warm compile cache), the
two-process real-model run only with ``-m slow``.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
import wave

import numpy as np
import pytest

from whisper_t5x.app import launch
from whisper_t5x import main as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK = os.path.join(REPO, "samples", "jfk.flac")
SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)$", re.S)
VTT_CUE = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)$", re.S)
FAKE = "'tests.test_cli:FakePipeline'"

with warnings.catch_warnings():  # in case pytest.ini (which registers `slow`) is absent
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    slow = pytest.mark.slow


class FakePipeline:
    """Stands in for FlaxWhisperPipeline: describes each input instead of transcribing.

    Set ``FAKE_PIPELINE_LOG`` to a path to get one line per transcribed input
    (``<pid> <samples>``), appended by whichever process ran it.
    """

    instances = []
    calls = []

    def __init__(self, checkpoint="base", dtype=None, batch_size=None, max_length=None, partitioner=None):
        self.init = dict(checkpoint=checkpoint, dtype=dtype, batch_size=batch_size, partitioner=partitioner)
        FakePipeline.instances.append(self)

    def __call__(self, inputs, task="transcribe", language=None, return_timestamps=False, return_language=False,
                 chunk_length_s=30.0, stride_length_s=None, batch_size=None, generate_kwargs=None, progress=None,
                 long_form="chunked"):
        FakePipeline.calls.append(dict(n=len(inputs), task=task, batch_size=batch_size, timestamps=return_timestamps,
                                       long_form=long_form))
        out = []
        for x in inputs:
            n = len(x["array"])
            text = f" {task} {n} samples batch {batch_size}"
            chunks = [{"timestamp": (0.0, None), "text": text}] if return_timestamps else []
            out.append({"text": text, "chunks": chunks, "language": language or "en"})
            log = os.environ.get("FAKE_PIPELINE_LOG")
            if log:
                with open(log, "a") as f:
                    f.write(f"{os.getpid()} {n}\n")
        return out


def broken_pipeline(**kwargs):
    raise FileNotFoundError(f"no model {kwargs['checkpoint']!r}")


def write_wav(path, seconds, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.2 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.fixture()
def audio_dir(tmp_path):
    """a/x.wav (0.5 s), b/x.wav (0.75 s), c.wav (1 s), bad.wav (garbage), notes.txt."""
    d = tmp_path / "in"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    write_wav(d / "a" / "x.wav", 0.5)
    write_wav(d / "b" / "x.wav", 0.75)
    write_wav(d / "c.wav", 1.0)
    (d / "bad.wav").write_bytes(b"RIFF\x00\x00not really audio" * 10)
    (d / "notes.txt").write_text("not audio")
    return d


def run_main(args, capsys):
    FakePipeline.instances.clear()
    FakePipeline.calls.clear()
    rc = cli.main(["whisper-t5x"] + [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------- units
def test_rewrite_gin_args():
    argv = ["p", "transcribe", "--gin.A.b=1", "x", "--gin.MODEL", "'tiny.en'", "--", "--gin.C.d=2"]
    assert launch.rewrite_gin_args(argv) == [
        "p", "transcribe", "--gin_bindings=A.b = 1", "x", "--gin_bindings=MODEL = 'tiny.en'", "--", "--gin.C.d=2"]
    with pytest.raises(launch.GinConfigError):
        launch.rewrite_gin_args(["p", "--gin.A.b"])


def test_discover_names_and_shards(audio_dir, tmp_path):
    odd = tmp_path / "take.1.RAW"
    odd.write_bytes(b"x")
    files, errors = launch.discover_audio([audio_dir, odd, audio_dir / "c.wav", tmp_path / "nope"])
    rel = [os.path.relpath(f, tmp_path) for f in files]
    assert rel == ["in/a/x.wav", "in/b/x.wav", "in/bad.wav", "in/c.wav", "take.1.RAW"]  # txt ignored, c.wav once
    assert errors == [(str(tmp_path / "nope"), "no such file or directory")]
    names = [i.name for i in launch.assign_output_names(files)]
    assert names == ["in__a__x", "in__b__x", "bad", "c", "take.1"]
    same_dir = [str(tmp_path / "s.wav"), str(tmp_path / "s.mp3"), str(tmp_path / "t.wav")]
    assert [i.name for i in launch.assign_output_names(same_dir)] == ["s_mp3", "s_wav", "t"]
    shards = [launch.shard_for_process(list(range(7)), i, 3) for i in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


def test_help_and_usage_errors(capsys):
    rc, out, _ = run_main(["--help"], capsys)
    assert rc == 0 and "transcribe" in out and "--gin_file" in out
    rc, _, err = run_main(["transcribe"], capsys)
    assert rc == 2 and "needs at least one" in err
    rc, _, err = run_main(["transcribe", "x", "--no_such_flag"], capsys)
    assert rc == 2 and "no_such_flag" in err
    rc, _, err = run_main(["frobnicate", "x"], capsys)
    assert rc == 2 and "frobnicate" in err


def test_model_that_cannot_load(audio_dir, tmp_path, capsys):
    rc, _, err = run_main(["transcribe", audio_dir / "c.wav", "--model", "nope", "--output_dir", tmp_path,
                           "--gin.TranscribeConfig.pipeline='tests.test_cli:broken_pipeline'"], capsys)
    assert rc == 1 and "cannot set up model 'nope'" in err and "FileNotFoundError" in err
    rc, _, err = run_main(["transcribe", tmp_path / "empty_dir_missing", "--output_dir", tmp_path / "m"], capsys)
    assert rc == 1 and "no such file" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main(["transcribe", tmp_path / "empty", "--output_dir", tmp_path / "o"], capsys)
    assert rc == 2 and "no audio files found" in err


def test_unknown_gin_binding_fails_naming_it(audio_dir, tmp_path, capsys):
    rc, _, err = run_main(["transcribe", audio_dir, "--output_dir", tmp_path / "o",
                           "--gin.TranscribeConfig.bogus_knob=3"], capsys)
    assert rc == 2 and "bogus_knob" in err and "gin" in err
    rc, _, err = run_main(["transcribe", audio_dir, "--gin_bindings=NoSuchThing.x = 1"], capsys)
    assert rc == 2 and "NoSuchThing" in err
    rc, _, err = run_main(["transcribe", audio_dir, "--gin_file", "runs/nope"], capsys)
    assert rc == 2 and "runs/nope" in err
    rc, _, err = run_main(["benchmark", audio_dir], capsys)  # benchmark.gin: OUTPUT_DIR is required
    assert rc == 2 and "TranscribeConfig.output_dir" in err
    assert not FakePipeline.instances


def test_gin_and_flags_resume_and_failures(audio_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["transcribe", audio_dir, "--output_dir", out, "--output_format", "all", "--timestamps",
            "--gin_file", "runs/transcribe", "--gin_file", "hardware/cpu",
            f"--gin.TranscribeConfig.pipeline={FAKE}", "--gin.TASK='translate'",
            "--gin_bindings=TranscribeConfig.batch_size = 3", "--group_size", "2"]
    rc, stdout, err = run_main(args, capsys)
    assert rc == 1  # bad.wav failed, the others were written
    assert "bad.wav" in err and "1 file(s) failed" in err
    assert "3 file(s) transcribed, 0 skipped, 1 failed" in stdout and "real-time factor" in stdout
    [pipe] = FakePipeline.instances
    assert pipe.init["batch_size"] == 3 and pipe.init["partitioner"] is not None  # hardware/cpu.gin
    assert [c["n"] for c in FakePipeline.calls] == [2, 1]  # group_size 2, bad file never reached the model
    assert all(c["task"] == "translate" and c["batch_size"] == 3 for c in FakePipeline.calls)
    names = {"a__x": 8000, "b__x": 12000, "c": 16000}
    expected = {f"{n}.{e}" for n in names for e in ("txt", "srt", "vtt", "json", "tsv")} | {"config.gin"}
    assert set(os.listdir(out)) == expected
    for n, samples in names.items():
        doc = json.loads((out / f"{n}.json").read_text())
        assert doc["text"] == f"translate {samples} samples batch 3"
        assert doc["segments"][0]["end"] == pytest.approx(samples / 16000)  # open end -> duration
    config = (out / "config.gin").read_text()
    assert "TranscribeConfig.batch_size = 3" in config and "TASK = 'translate'" in config
    assert "TranscribeConfig.group_size = 2" in config and "PjitPartitioner.backend = 'cpu'" in config
    assert "# command: whisper-t5x transcribe" in config and "--gin.TASK=" in config  # header

    # resume: nothing left to do except the broken file, and no model is built
    before = {p: os.path.getmtime(out / p) for p in os.listdir(out) if p != "config.gin"}
    rc, stdout, err = run_main(args, capsys)
    assert rc == 1 and not FakePipeline.instances and "bad.wav" in err
    assert "0 file(s) transcribed, 3 skipped, 1 failed" in stdout
    assert before == {p: os.path.getmtime(out / p) for p in before}

    # --overwrite redoes them; a missing format alone also triggers a redo
    (audio_dir / "bad.wav").unlink()
    (out / "c.tsv").unlink()
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "1 file(s) transcribed, 2 skipped" in stdout
    rc, stdout, _ = run_main(args + ["--overwrite", "--notimestamps"], capsys)
    assert rc == 0 and "3 file(s) transcribed" in stdout and not FakePipeline.calls[0]["timestamps"]


def test_batch_failure_retries_files_one_by_one(audio_dir, tmp_path):
    class Picky(FakePipeline):
        def __call__(self, inputs, **kw):
            if any(len(x["array"]) == 12000 for x in inputs):
                raise RuntimeError("cannot handle 0.75 s")
            return super().__call__(inputs, **kw)

    (audio_dir / "bad.wav").unlink()
    launch.parse_gin([], [])
    config = launch.make_config(output_dir=str(tmp_path / "o"), output_formats="txt", pipeline=Picky)
    report = launch.run_transcribe(config, [audio_dir], process_index=0, process_count=1)
    assert len(report.done) == 2 and [os.path.basename(p) for p, _ in report.failed] == ["x.wav"]
    assert "cannot handle" in report.failed[0][1]
    assert sorted(os.listdir(tmp_path / "o")) == ["a__x.txt", "c.txt", "config.gin"]


def test_benchmark_command(audio_dir, tmp_path, capsys):
    (audio_dir / "bad.wav").unlink()
    out = tmp_path / "bench"
    rc, stdout, _ = run_main(["benchmark", audio_dir, "--output_dir", out, f"--gin.TranscribeConfig.pipeline={FAKE}"],
                             capsys)
    assert rc == 0 and "3 file(s) transcribed" in stdout
    assert [c["n"] for c in FakePipeline.calls] == [3, 3]  # untimed warm-up, then the timed run
    metrics = json.loads((out / "benchmark.json").read_text())
    assert metrics["files"] == 3 and metrics["audio_s"] == pytest.approx(2.25) and metrics["rtf"] > 0
    assert sorted(os.listdir(out)) == ["a__x.json", "b__x.json", "benchmark.json", "c.json", "config.gin"]
    rc, stdout, _ = run_main(["benchmark", audio_dir, "--output_dir", out, f"--gin.TranscribeConfig.pipeline={FAKE}"],
                             capsys)
    assert rc == 0 and "3 file(s) transcribed, 0 skipped" in stdout  # benchmarks always redo


def test_serve_dispatch(monkeypatch, capsys):
    import types

    seen = []
    fake = types.ModuleType("whisper_t5x.app.serving")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "whisper_t5x.app.serving", fake)
    assert cli.main(["whisper-t5x", "serve", "--port", "9000"]) == 0
    assert seen == [["whisper-t5x", "--port", "9000"]]
    del fake.main
    assert cli.main(["whisper-t5x", "serve"]) == 2 and "main(argv)" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra)
    return env


def _run_processes(n, args, env, timeout):
    """The same command in ``n`` processes on 127.0.0.1; always reaps them."""
    port = _free_port()
    procs = []
    try:
        for pid in range(n):
            cmd = [sys.executable, "-m", "whisper_t5x.main", *map(str, args), f"--coordinator_address=127.0.0.1:{port}",
                   f"--num_processes={n}", f"--process_id={pid}", "--initialization_timeout=60"]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        deadline = time.time() + timeout
        outs = []
        for p in procs:
            try:
                outs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
            except subprocess.TimeoutExpired:
                outs.append(None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    if any(o is None for o in outs) or any(p.returncode != 0 for p in procs):
        raise AssertionError("processes failed:\n" + "\n=====\n".join(
            f"rc={p.returncode}\n{(o or '(timed out)')[-4000:]}" for p, o in zip(procs, outs)))
    return outs


def test_two_processes_write_each_output_once(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write_wav(src / f"f{i}.wav", 0.25 * (i + 1))
    out, log = tmp_path / "out", tmp_path / "calls.log"
    outs = _run_processes(2, ["transcribe", src, "--output_dir", out, "--output_format", "txt,json",
                              f"--gin.TranscribeConfig.pipeline={FAKE}"], _env(FAKE_PIPELINE_LOG=str(log)), 120)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(n) for _, n in lines) == [4000, 8000, 12000, 16000]  # each file transcribed once
    by_pid = {}
    for pid, n in lines:
        by_pid.setdefault(pid, []).append(int(n))
    assert sorted(map(sorted, by_pid.values())) == [[4000, 12000], [8000, 16000]]  # round-robin, one per process
    assert sorted(os.listdir(out)) == ["config.gin"] + [f"f{i}.{e}" for i in range(4) for e in ("json", "txt")]
    assert all("[process " in o and "2 file(s) transcribed" in o for o in outs)


# --------------------------------------------------------------- real model
def _espeak(path, text):
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=60)


def _parse_srt(text):
    blocks = text.strip().split("\n\n")
    cues = [SRT_CUE.match(b) for b in blocks]
    assert all(cues), text
    assert [int(c.group(1)) for c in cues] == list(range(1, len(cues) + 1))
    return cues


@pytest.mark.skipif(shutil.which("espeak-ng") is None or not os.path.exists(JFK), reason="needs espeak-ng and jfk.flac")
def test_end_to_end_tiny_en(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(JFK, src / "jfk.flac")
    _espeak(src / "speech.wav", "The quick brown fox jumps over the lazy dog.")
    (src / "corrupt.mp3").write_bytes(b"ID3\x03\x00garbage" * 50)
    cmd = [sys.executable, "-m", "whisper_t5x.main", "transcribe", str(src), "--model", "tiny.en", "--timestamps",
           "--output_dir", str(out), "--output_format", "all", "--gin.TranscribeConfig.batch_size=2"]
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stdout + p.stderr[-4000:]
    assert "corrupt.mp3" in p.stderr and "2 file(s) transcribed, 0 skipped, 1 failed" in p.stdout
    for stem, words in (("jfk", "ask not what your country"), ("speech", "brown fox")):
        srt = (out / f"{stem}.srt").read_text()
        cues = _parse_srt(srt)
        assert words in " ".join(c.group(4) for c in cues).lower()
        vtt = (out / f"{stem}.vtt").read_text()
        assert vtt.startswith("WEBVTT\n\n") and all(VTT_CUE.match(b) for b in vtt.strip().split("\n\n")[1:])
        doc = json.loads((out / f"{stem}.json").read_text())
        assert words in doc["text"].lower() and doc["segments"] and doc["language"] in ("en", "english", None)
        assert {"start", "end", "text"} <= set(doc["segments"][0])
        rows = (out / f"{stem}.tsv").read_text().splitlines()
        assert rows[0] == "start\tend\ttext" and all(re.match(r"^\d+\t\d+\t.+$", r) for r in rows[1:])
        assert words in (out / f"{stem}.txt").read_text().lower()
    assert "TranscribeConfig.batch_size = 2" in (out / "config.gin").read_text()
    # resume: the two good files are skipped without loading the model
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "0 file(s) transcribed, 2 skipped, 1 failed" in p.stdout


@slow
@pytest.mark.skipif(not os.path.exists(JFK), reason="needs jfk.flac")
def test_two_processes_tiny_en(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(4):  # 4 files of different lengths cut from jfk.flac
        subprocess.run(["ffmpeg", "-v", "error", "-i", JFK, "-t", str(3 + 2 * i), str(src / f"jfk{i}.wav")],
                       check=True, timeout=60)
    outs = _run_processes(2, ["transcribe", src, "--model", "tiny.en", "--output_dir", out, "--output_format", "txt",
                              "--gin_file", "hardware/cpu"], _env(), 560)
    assert sorted(os.listdir(out)) == ["config.gin"] + [f"jfk{i}.txt" for i in range(4)]
    assert "ask not" in (out / "jfk3.txt").read_text().lower()
    assert all("2 file(s) transcribed" in o for o in outs)


def test_long_form_flag_reaches_the_pipeline_and_is_validated(audio_dir, tmp_path, capsys):
    fake = "--gin.TranscribeConfig.pipeline='tests.test_cli:FakePipeline'"
    rc, _, _ = run_main(["transcribe", audio_dir / "c.wav", "--output_dir", tmp_path / "o", fake,
                         "--long_form", "sequential"], capsys)
    assert rc == 0 and [c["long_form"] for c in FakePipeline.calls] == ["sequential"]
    with pytest.raises(ValueError, match="long_form"):
        launch.TranscribeConfig(long_form="seek")
