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

from whisper_t5x.app import file_job, gin_config, inputs
from whisper_t5x.app.config import DecodeSection, GroupingSection, PartitionSection, TranscribeConfig
from whisper_t5x import main as cli
from whisper_t5x.results import Segment, Transcription

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

    def transcribe(self, inputs, task="transcribe", language=None, return_timestamps=False, chunk_length_s=30.0,
                   stride_length_s=None, batch_size=None, generate_kwargs=None, progress=None, long_form="chunked"):
        FakePipeline.calls.append(dict(n=len(inputs), task=task, batch_size=batch_size, timestamps=return_timestamps,
                                       long_form=long_form, generate_kwargs=generate_kwargs))
        out = []
        for x in inputs:
            n = len(x["array"])
            text = f" {task} {n} samples batch {batch_size}"
            segments = (Segment(0.0, n / 16000, text),) if return_timestamps else ()
            out.append(Transcription(text, segments, language or "en", n / 16000))
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
    assert gin_config.rewrite_gin_args(argv) == [
        "p", "transcribe", "--gin_bindings=A.b = 1", "x", "--gin_bindings=MODEL = 'tiny.en'", "--", "--gin.C.d=2"]
    with pytest.raises(gin_config.GinConfigError):
        gin_config.rewrite_gin_args(["p", "--gin.A.b"])


def test_discover_names_and_shards(audio_dir, tmp_path):
    odd = tmp_path / "take.1.RAW"
    odd.write_bytes(b"x")
    files, errors = inputs.discover_audio([audio_dir, odd, audio_dir / "c.wav", tmp_path / "nope"])
    rel = [os.path.relpath(f, tmp_path) for f in files]
    assert rel == ["in/a/x.wav", "in/b/x.wav", "in/bad.wav", "in/c.wav", "take.1.RAW"]  # txt ignored, c.wav once
    assert errors == [(str(tmp_path / "nope"), "no such file or directory")]
    names = [i.name for i in inputs.assign_output_names(files)]
    # a stem shared by several inputs gets a hash of each one's path; unique stems stay as they are
    ha, hb = (inputs.path_hash(str(audio_dir / d / "x.wav")) for d in "ab")
    assert names == [f"x-{ha}", f"x-{hb}", "bad", "c", "take.1"] and ha != hb and re.fullmatch("[0-9a-f]{8}", ha)
    same_dir = [str(tmp_path / "s.wav"), str(tmp_path / "s.mp3"), str(tmp_path / "t.wav")]
    assert [i.name for i in inputs.assign_output_names(same_dir)] == [
        f"s-{inputs.path_hash(same_dir[1])}", f"s-{inputs.path_hash(same_dir[0])}", "t"]
    shards = [inputs.shard_for_process(list(range(7)), i, 3) for i in range(3)]
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
                           "--gin.PartitionSection.pipeline='tests.test_cli:broken_pipeline'"], capsys)
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
            f"--gin.PartitionSection.pipeline={FAKE}", "--gin.TASK='translate'",
            "--gin_bindings=PartitionSection.batch_size = 3", "--group_size", "2"]
    rc, stdout, err = run_main(args, capsys)
    assert rc == 1  # bad.wav failed, the others were written
    assert "bad.wav" in err and "1 file(s) failed" in err
    assert "3 file(s) transcribed, 0 skipped, 1 failed" in stdout and "real-time factor" in stdout
    [pipe] = FakePipeline.instances
    assert pipe.init["batch_size"] == 3 and pipe.init["partitioner"] is not None  # hardware/cpu.gin
    assert [c["n"] for c in FakePipeline.calls] == [2, 1]  # group_size 2, bad file never reached the model
    assert all(c["task"] == "translate" and c["batch_size"] == 3 for c in FakePipeline.calls)
    ha, hb = (inputs.path_hash(str(audio_dir / d / "x.wav")) for d in "ab")
    names = {f"x-{ha}": 8000, f"x-{hb}": 12000, "c": 16000}
    expected = {f"{n}.{e}" for n in names for e in ("txt", "srt", "vtt", "json", "tsv")} | {"config.gin",
                                                                                            "manifest.jsonl"}
    assert set(os.listdir(out)) == expected
    for n, samples in names.items():
        doc = json.loads((out / f"{n}.json").read_text())
        assert doc["text"] == f"translate {samples} samples batch 3"
        assert doc["segments"][0]["end"] == pytest.approx(samples / 16000)  # open end -> duration
    config = (out / "config.gin").read_text()
    assert "PartitionSection.batch_size = 3" in config and "TASK = 'translate'" in config
    assert "GroupingSection.group_size = 2" in config and "PjitPartitioner.backend = 'cpu'" in config
    assert "# command: whisper-t5x transcribe" in config and "--gin.TASK=" in config  # header

    # resume: nothing left to do except the broken file, and no model is built
    before = {p: os.path.getmtime(out / p) for p in os.listdir(out) if p not in ("config.gin", "manifest.jsonl")}
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
        def transcribe(self, inputs, **kw):
            if any(len(x["array"]) == 12000 for x in inputs):
                raise RuntimeError("cannot handle 0.75 s")
            return super().transcribe(inputs, **kw)

    (audio_dir / "bad.wav").unlink()
    gin_config.parse_gin([], [])
    config = gin_config.make(TranscribeConfig, output_dir=str(tmp_path / "o"), output_formats="txt",
                             partition=PartitionSection(pipeline=Picky))
    report = file_job.run_transcribe(config, [audio_dir], process_index=0, process_count=1)
    assert len(report.done) == 2 and [os.path.basename(p) for p, _ in report.failed] == ["x.wav"]
    assert "cannot handle" in report.failed[0][1]
    ha = inputs.path_hash(str(audio_dir / "a" / "x.wav"))
    assert sorted(os.listdir(tmp_path / "o")) == sorted(["c.txt", "config.gin", "manifest.jsonl", f"x-{ha}.txt"])


def test_benchmark_command(audio_dir, tmp_path, capsys):
    (audio_dir / "bad.wav").unlink()
    out = tmp_path / "bench"
    rc, stdout, _ = run_main(["benchmark", audio_dir, "--output_dir", out, f"--gin.PartitionSection.pipeline={FAKE}"],
                             capsys)
    assert rc == 0 and "3 file(s) transcribed" in stdout
    assert [c["n"] for c in FakePipeline.calls] == [3, 3]  # untimed warm-up, then the timed run
    metrics = json.loads((out / "benchmark.json").read_text())
    assert metrics["files"] == 3 and metrics["audio_s"] == pytest.approx(2.25) and metrics["rtf"] > 0
    ha, hb = (inputs.path_hash(str(audio_dir / d / "x.wav")) for d in "ab")
    assert sorted(os.listdir(out)) == sorted(["benchmark.json", "c.json", "config.gin", "manifest.jsonl",
                                              f"x-{ha}.json", f"x-{hb}.json"])
    rc, stdout, _ = run_main(["benchmark", audio_dir, "--output_dir", out, f"--gin.PartitionSection.pipeline={FAKE}"],
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
                              f"--gin.PartitionSection.pipeline={FAKE}"], _env(FAKE_PIPELINE_LOG=str(log)), 120)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(n) for _, n in lines) == [4000, 8000, 12000, 16000]  # each file transcribed once
    by_pid = {}
    for pid, n in lines:
        by_pid.setdefault(pid, []).append(int(n))
    assert sorted(map(sorted, by_pid.values())) == [[4000, 12000], [8000, 16000]]  # round-robin, one per process
    assert sorted(os.listdir(out)) == ["config.gin"] + [f"f{i}.{e}" for i in range(4) for e in ("json", "txt")] + [
        "manifest.jsonl", "manifest.process1.jsonl"]  # each process records its own files
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
           "--output_dir", str(out), "--output_format", "all", "--gin.PartitionSection.batch_size=2"]
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
        assert words in " ".join((out / f"{stem}.txt").read_text().lower().split())  # a segment a line
    assert "PartitionSection.batch_size = 2" in (out / "config.gin").read_text()
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
    assert sorted(os.listdir(out)) == ["config.gin"] + [f"jfk{i}.txt" for i in range(4)] + [
        "manifest.jsonl", "manifest.process1.jsonl"]
    assert "ask not" in (out / "jfk3.txt").read_text().lower()
    assert all("2 file(s) transcribed" in o for o in outs)


def test_long_form_flag_reaches_the_pipeline_and_is_validated(audio_dir, tmp_path, capsys):
    fake = "--gin.PartitionSection.pipeline='tests.test_cli:FakePipeline'"
    rc, _, _ = run_main(["transcribe", audio_dir / "c.wav", "--output_dir", tmp_path / "o", fake,
                         "--long_form", "sequential"], capsys)
    assert rc == 0 and [c["long_form"] for c in FakePipeline.calls] == ["sequential"]
    with pytest.raises(ValueError, match="long_form"):
        DecodeSection(long_form="seek")
    rc, _, err = run_main(["transcribe", audio_dir / "c.wav", "--output_dir", tmp_path / "o", fake,
                           "--long_form", "seek"], capsys)
    assert rc == 2 and "DecodeSection.long_form" in err and "seek" in err


# ------------------------------------------------------- issue 13: resume, discovery, Ctrl-C, errors
def _wav_samples(path):
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


def _assert_each_output_is_its_own(out, src_dir):
    """Every txt output holds the transcript of the input the manifest names for it."""
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    owners = {r["name"]: r["source"] for r in records}
    for txt in out.glob("*.txt"):
        samples = _wav_samples(owners[txt.stem])
        assert txt.read_text() == f"transcribe {samples} samples batch None\n", (txt.name, owners[txt.stem])
    assert {os.path.basename(s) for s in owners.values()} == {p.name for p in src_dir.rglob("*.wav")}


def test_resume_never_skips_a_new_input_whose_name_collides(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_wav(src / "interview (1).wav", 0.5)
    write_wav(src / "interview_1.wav", 0.75)
    args = ["transcribe", src, "--output_dir", out, f"--gin.PartitionSection.pipeline={FAKE}"]
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "2 file(s) transcribed" in stdout
    write_wav(src / "interview 1.wav", 1.0)  # sanitises to the same stem as both others
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "1 file(s) transcribed, 2 skipped" in stdout
    assert [c["n"] for c in FakePipeline.calls] == [1]
    texts = sorted(p.read_text() for p in out.glob("*.txt"))
    assert texts == sorted(f"transcribe {n} samples batch None\n" for n in (8000, 12000, 16000))
    _assert_each_output_is_its_own(out, src)


def test_a_recorded_output_name_never_passes_to_another_input(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    write_wav(src / "a" / "x.wav", 0.5)
    args = ["transcribe", src, "--output_dir", out, f"--gin.PartitionSection.pipeline={FAKE}"]
    assert run_main(args, capsys)[0] == 0 and (out / "x.txt").exists()
    (src / "a" / "x.wav").unlink()
    write_wav(src / "b" / "x.wav", 0.75)  # same stem, another input: x.txt is not its transcript
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "1 file(s) transcribed, 0 skipped" in stdout
    assert (out / "x.txt").read_text() == "transcribe 8000 samples batch None\n"  # a's, untouched
    # Names stay with their inputs: a/x.wav back, c.wav added, nothing already done is redone.
    write_wav(src / "a" / "x.wav", 0.5)
    write_wav(src / "c.wav", 0.25)
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "1 file(s) transcribed, 2 skipped" in stdout and [c["n"] for c in FakePipeline.calls] == [1]
    _assert_each_output_is_its_own(out, src)
    # An output nobody recorded (another tool, an older version) is redone rather than trusted.
    (out / "d.txt").write_text("stale\n")
    write_wav(src / "d.wav", 0.125)
    rc, stdout, _ = run_main(args, capsys)
    assert rc == 0 and "1 file(s) transcribed, 3 skipped" in stdout
    assert (out / "d.txt").read_text() == "transcribe 2000 samples batch None\n"


def test_output_names_depend_on_the_input_alone(tmp_path):
    first = [str(tmp_path / "a" / "x.wav"), str(tmp_path / "b" / "x.wav"), str(tmp_path / "talk.wav")]
    names = {i.path: i.name for i in inputs.assign_output_names(first)}
    more = first + [str(tmp_path / "0" / "x.wav"), str(tmp_path / "c" / "x.flac"), str(tmp_path / "talk!.mp3")]
    again = {i.path: i.name for i in inputs.assign_output_names(more, claimed={n: p for p, n in names.items()})}
    assert {p: again[p] for p in first} == names  # not shifted by the files added
    assert len(set(again.values())) == len(more)
    assert names[first[2]] == "talk" and again[more[5]].startswith("talk-")  # the recorded owner keeps "talk"
    # a name claimed by a source that is not in this run is never handed out
    taken = inputs.assign_output_names([str(tmp_path / "new" / "talk.wav")], claimed={"talk": first[2]})
    assert taken[0].name == "talk-2"  # a unique stem carries no hash: a counter steps around the claim


def test_symlink_loops_do_not_hang_discovery(tmp_path):
    d = tmp_path / "loops"
    (d / "sub").mkdir(parents=True)
    write_wav(d / "sub" / "a.wav", 0.1)
    os.symlink(".", d / "self1")
    os.symlink(".", d / "self2")  # two links to "." made 2^40 paths to walk
    os.symlink("..", d / "sub" / "up")
    (tmp_path / "outside").mkdir()
    write_wav(tmp_path / "outside" / "b.wav", 0.1)
    os.symlink(tmp_path / "outside", d / "link1")
    os.symlink(tmp_path / "outside", d / "link2")
    code = ("import sys; from whisper_t5x.app import inputs; "
            "print('\\n'.join(inputs.discover_audio(sys.argv[1:])[0]))")
    p = subprocess.run([sys.executable, "-c", code, str(d)], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == [str(d / "link1" / "b.wav"), str(d / "sub" / "a.wav")]


class CtrlCPipeline(FakePipeline):
    """Decodes in batches of ``batch_size`` inputs and gets Ctrl-C during the second batch of the run."""

    batches = 0

    def transcribe(self, inputs, batch_size=None, **kw):
        for _ in range(0, len(inputs), batch_size):
            CtrlCPipeline.batches += 1
            if CtrlCPipeline.batches == 2:
                raise KeyboardInterrupt
        return super().transcribe(inputs, batch_size=batch_size, **kw)


def test_ctrl_c_keeps_the_files_already_done(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        write_wav(src / f"f{i}.wav", 1.0)
    CtrlCPipeline.batches = 0
    args = ["transcribe", src, "--output_dir", out, "--batch_size", "2",  # default group_size (16)
            "--gin.PartitionSection.pipeline='tests.test_cli:CtrlCPipeline'"]
    rc, stdout, err = run_main(args, capsys)
    assert rc == 130 and "interrupted" in err and "2 file(s) transcribed" in stdout
    assert sorted(p.name for p in out.glob("*.txt")) == ["f0.txt", "f1.txt"]
    assert not list(out.glob(".tmp-*"))
    rc, stdout, _ = run_main(args, capsys)  # resume
    assert rc == 0 and "3 file(s) transcribed, 2 skipped" in stdout
    assert [c["n"] for c in FakePipeline.calls] == [2, 1]  # groups of one batch of windows


def test_group_holds_one_batch_of_windows(tmp_path):
    gin_config.parse_gin([], [])
    config = gin_config.make(TranscribeConfig, partition=PartitionSection(batch_size=4))
    loaded = [file_job._Loaded(inputs.InputFile(str(i), str(i)), np.zeros(int(s * 16000), np.float32), s)
              for i, s in enumerate([10, 10, 70, 10, 100, 10, 10, 10, 10, 10])]
    groups = list(file_job._iter_groups(iter(loaded), config, lambda: 4))
    # windows of 30 s owning 20 s: 10 s -> 1, 70 s -> 3, 100 s -> 5 (alone, over the budget)
    assert [[x.item.name for x in g] for g in groups] == [["0", "1"], ["2", "3"], ["4"], ["5", "6", "7", "8"], ["9"]]
    assert [file_job.window_count(x.audio.shape[0], config) for x in loaded[:5]] == [1, 1, 3, 1, 5]
    # group_batches: several batches per call (fewer calls, more at risk on Ctrl-C)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        write_wav(src / f"f{i}.wav", 1.0)
    for group_batches, calls in ((1, [2, 2, 1]), (2, [4, 1])):
        FakePipeline.calls.clear()
        config = gin_config.make(TranscribeConfig, partition=PartitionSection(batch_size=2, pipeline=FakePipeline),
                                 grouping=GroupingSection(group_batches=group_batches),
                                 output_dir=str(tmp_path / f"o{group_batches}"))
        file_job.run_transcribe(config, [src])
        assert [c["n"] for c in FakePipeline.calls] == calls
    with pytest.raises(ValueError, match="group_batches"):
        GroupingSection(group_batches=0)


def test_serve_without_the_extra_is_a_one_line_hint(monkeypatch, capsys):
    for name in list(sys.modules):
        if name == "whisper_t5x.app.serving" or name.startswith("whisper_t5x.app.serving."):
            monkeypatch.delitem(sys.modules, name)
    for name in ("fastapi", "uvicorn", "gradio"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    rc = cli.main(["whisper-t5x", "serve", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "[serve]" in err and "fastapi" in err and "pip install" in err


def test_unusable_output_dir_is_a_one_line_error(audio_dir, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, why in ((a_file, "not a directory"), (a_file / "sub", "cannot create")):
        rc, stdout, err = run_main(["transcribe", audio_dir / "c.wav", "--output_dir", out,
                                    f"--gin.PartitionSection.pipeline={FAKE}"], capsys)
        assert rc == 2 and why in err and str(out) in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not FakePipeline.instances


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(audio_dir, tmp_path, capsys, umask, mode):
    old = os.umask(umask)
    try:
        rc, _, _ = run_main(["transcribe", audio_dir / "c.wav", "--output_dir", tmp_path / "o", "--output_format",
                             "txt,json", f"--gin.PartitionSection.pipeline={FAKE}"], capsys)
    finally:
        os.umask(old)
    assert rc == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "o").iterdir()}
    assert modes == {"c.txt": mode, "c.json": mode, "config.gin": mode, "manifest.jsonl": mode}


@pytest.mark.parametrize("flag, message", [
    ("--gin.DecodeSection.chunk_length_s=100", "DecodeSection.chunk_length_s must be in (0, 30] seconds"),
    ("--chunk_length_s=12", None),
    ("--gin.DecodeSection.stride_length_s=20", "DecodeSection.stride_length_s must be >= 0 and less than half"),
    ("--gin.DecodeSection.language='klingon'", "unknown language 'klingon'"),
    ("--language=Klingon", "`whisper-t5x languages` lists the codes and names"),
])
def test_bad_windows_and_languages_fail_before_the_model(audio_dir, tmp_path, capsys, flag, message):
    FakePipeline.instances.clear()
    rc = cli.main(["whisper-t5x", "transcribe", str(audio_dir), "--output_dir", str(tmp_path / "o"), flag,
                   f"--gin.PartitionSection.pipeline={FAKE}"])
    err = capsys.readouterr().err.strip()
    if message is None:  # a valid value reaches the pipeline (audio_dir holds one undecodable file: rc 1)
        assert rc == 1 and FakePipeline.instances, err
        return
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not FakePipeline.instances  # no model was built


def test_languages_command_lists_every_code(capsys):
    from whisper_t5x.text.languages import LANGUAGES

    assert cli.main(["whisper-t5x", "languages"]) == 0
    out = capsys.readouterr().out
    for code, name in LANGUAGES.items():
        assert f"{code:<4} {name}\n" in out
    assert "mandarin (zh)" in out
