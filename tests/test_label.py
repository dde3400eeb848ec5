"""``whisper-t5x label``: a local Parquet dataset of espeak-ng clips (audio bytes, ids, reference
text) plus a corrupt row, labelled in-process with a fake pipeline (fast checks of the job's
contract) and over ``jax.distributed`` with 2 processes x 2 CPU devices and ``tiny.en``."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as pads
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "partitioning"))
from partitioning_test_utils import REPO, free_port, subprocess_env  # noqa: E402

from tests._speech import ESPEAK, needs_espeak, synthesize_file  # noqa: E402

datasets = pytest.importorskip("datasets")

TRAIN = ["The cat sat on the mat.", "Open the door please.", "It is a sunny day.", "I like green apples."]
VALIDATION = ["We walk to school.", "The river is cold."]
N_ROWS = len(TRAIN) + len(VALIDATION) + 1  # + the corrupt row
NO_FALLBACK = "--gin.DecodeSection.temperature=0.0"


def _write_split(path, texts, prefix, corrupt=False):
    rows = {"id": [], "audio": [], "text": []}
    for i, t in enumerate(texts):
        with open(synthesize_file(t), "rb") as f:
            rows["audio"].append({"bytes": f.read(), "path": f"{prefix}{i}.wav"})
        rows["id"].append(f"{prefix}{i}")
        rows["text"].append(t)
    if corrupt:
        rows["id"].append("corrupt")
        rows["text"].append("this row has no audio")
        rows["audio"].append({"bytes": b"definitely not an audio file", "path": "corrupt.wav"})
    # stored as datasets.Audio (decode=True): the job must cast it to decode=False itself
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    ds.cast_column("audio", datasets.Audio()).to_parquet(path)


@pytest.fixture(scope="module")
def speech_dataset(tmp_path_factory):
    if ESPEAK is None:
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("label_ds")
    _write_split(str(root / "train.parquet"), TRAIN, "train", corrupt=True)
    _write_split(str(root / "validation.parquet"), VALIDATION, "val")
    return str(root)


def _read(out):
    return pads.dataset(os.path.join(out, "data"), format="parquet").to_table().to_pylist()


def _keys(rows):
    return sorted((r["split"], r["id"]) for r in rows)


ALL_KEYS = sorted([("train", f"train{i}") for i in range(len(TRAIN))] + [("train", "corrupt")]
                  + [("validation", f"val{i}") for i in range(len(VALIDATION))])


# ----------------------------------------------------------------- fake pipeline
class FakePipeline:
    """Says the reference for clips whose text has an even length, a wrong sentence otherwise."""

    def __init__(self, speech_dataset):
        from whisper_t5x.audio.loading import load_audio

        self.by_len = {}
        for t in TRAIN + VALIDATION:
            self.by_len[load_audio(synthesize_file(t)).shape[0]] = t
        self.calls = []

    def transcribe(self, inputs, **kw):
        from whisper_t5x.results import Segment, Transcription

        assert kw["return_timestamps"] is True
        self.calls.append(len(inputs))
        out = []
        for x in inputs:
            ref = self.by_len[x["array"].shape[0]]
            text = ref if len(ref) % 2 == 0 else "completely different words here"
            dur = x["array"].shape[0] / 16000
            out.append(Transcription(" " + text, (Segment(0.0, dur, text, avg_logprob=-0.25, no_speech_prob=0.01),),
                                     "en", dur))
        return out


def _label(speech_dataset, out, *extra, pipeline=None):
    from whisper_t5x.app.label import main

    argv = ["whisper-t5x", "--dataset", speech_dataset, "--split", "train+validation", "--output_dir", str(out),
            "--text_column", "text", "--quiet", *extra]
    return main(argv, pipeline=pipeline)


def test_corrupt_row_is_kept_with_its_error(speech_dataset, tmp_path):
    fake = FakePipeline(speech_dataset)
    assert _label(speech_dataset, tmp_path, pipeline=fake) == 0
    rows = {r["id"]: r for r in _read(tmp_path)}
    assert _keys(rows.values()) == ALL_KEYS
    bad = rows.pop("corrupt")
    assert bad["error"].startswith("audio decoding failed") and bad["text"] is None and bad["keep"] is False
    for r in rows.values():
        assert r["error"] is None and r["duration"] > 0.5 and r["language"] == "en"
        assert r["segments"] == [{"start": 0.0, "end": r["duration"], "text": r["text"]}]
        assert r["avg_logprob"] == pytest.approx(-0.25) and r["no_speech_prob"] == pytest.approx(0.01)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["output"]["rows"] == N_ROWS and summary["output"]["failed"] == 1
    assert summary["this_run"]["rows"] == N_ROWS and set(summary["this_run"]["splits"]) == {"train", "validation"}
    assert (tmp_path / "config.gin").read_text().count("LabelConfig.text_column = 'text'") == 1


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_wer_threshold_sets_keep(speech_dataset, tmp_path, threshold):
    assert _label(speech_dataset, tmp_path, "--wer_threshold", str(threshold),
                  pipeline=FakePipeline(speech_dataset)) == 0
    rows = [r for r in _read(tmp_path) if r["error"] is None]
    exact = [r for r in rows if len(r["reference"]) % 2 == 0]
    wrong = [r for r in rows if len(r["reference"]) % 2 == 1]
    assert exact and wrong
    assert all(r["wer"] == 0.0 for r in exact) and all(r["wer"] >= 0.75 for r in wrong)
    assert [r["keep"] for r in rows] == [r["wer"] <= threshold for r in rows]
    assert sum(r["keep"] for r in rows) == (len(rows) if threshold >= 1.0 else len(exact))


def test_streaming_and_map_style_give_the_same_rows(speech_dataset, tmp_path):
    for name, extra in (("map", ()), ("stream", ("--streaming",))):
        assert _label(speech_dataset, tmp_path / name, *extra, pipeline=FakePipeline(speech_dataset)) == 0
    drop = ("avg_logprob", "no_speech_prob")
    a = sorted(({k: v for k, v in r.items() if k not in drop} for r in _read(tmp_path / "map")), key=str)
    b = sorted(({k: v for k, v in r.items() if k not in drop} for r in _read(tmp_path / "stream")), key=str)
    assert len(a) == N_ROWS and a == b


def test_resume_skips_rows_already_written(speech_dataset, tmp_path):
    fake = FakePipeline(speech_dataset)
    assert _label(speech_dataset, tmp_path, "--max_rows", "3", "--part_rows", "1", pipeline=fake) == 0
    first = _read(tmp_path)
    assert len(first) == 3
    # a part being written when the process was killed: hidden, ignored by readers and by resume
    (tmp_path / "data" / ".tmp-part-killed.parquet").write_bytes(b"PAR1 half a file")
    fake.calls.clear()
    assert _label(speech_dataset, tmp_path, pipeline=fake) == 0
    rows = _read(tmp_path)
    assert _keys(rows) == ALL_KEYS
    audible_first = sum(r["error"] is None for r in first)
    assert sum(fake.calls) == len(TRAIN) + len(VALIDATION) - audible_first
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["this_run"]["skipped"] == 3 and summary["output"]["rows"] == N_ROWS


def test_hardware_preset_applies_to_label_config(speech_dataset):
    from whisper_t5x.app import gin_config
    from whisper_t5x.app.label.config import make_label_config

    gin_config.parse_gin(["runs/label.gin", "hardware/gpu"], [], extra_bindings=[
        "LabelConfig.dataset = 'x'", "LabelConfig.output_dir = 'y'"])
    cfg = make_label_config()
    assert (cfg.model.dtype, cfg.partition.batch_size, cfg.grouping.group_size) == ("bfloat16", 16, 64)
    assert getattr(cfg.partition.partitioner, "__name__", "") == "PjitPartitioner"
    gin_config.parse_gin(["runs/label.gin", "hardware/gpu"], [], extra_bindings=[
        "LabelConfig.dataset = 'x'", "LabelConfig.output_dir = 'y'", "PartitionSection.batch_size = 3"])
    assert make_label_config().partition.batch_size == 3  # an explicit binding after the preset wins


def test_named_errors(speech_dataset, tmp_path, capsys):
    assert _label(speech_dataset, tmp_path, "--text_column", "nope", pipeline=FakePipeline(speech_dataset)) == 1
    assert "no text column 'nope'" in capsys.readouterr().err
    assert _label(speech_dataset, tmp_path, "--split", "test", pipeline=FakePipeline(speech_dataset)) == 1
    assert "split 'test'" in capsys.readouterr().err
    from whisper_t5x.app.label import main

    assert main(["whisper-t5x", "--dataset", speech_dataset]) == 2
    assert "output_dir is required" in capsys.readouterr().err


def test_duration_groups_sort_within_the_buffer():
    from whisper_t5x.app.label.batching import DecodedRow, duration_groups
    from whisper_t5x.app.label.source import SourceRow

    rng = np.random.default_rng(0)
    lens = rng.integers(1, 100, size=23)
    rows = [DecodedRow(SourceRow("s", str(i), None), np.zeros(int(n) * 160, np.float32)) for i, n in enumerate(lens)]
    groups = list(duration_groups(iter(rows), group_size=4, buffer_size=8))
    assert sorted(r.row.id for g in groups for r in g) == sorted(r.row.id for r in rows)
    assert [len(g) for g in groups[:-1]] == [4] * (len(groups) - 1)
    for g in groups:
        d = [r.duration for r in g]
        assert d == sorted(d)
    # every group's spread is within the buffer's: similar durations together
    spread = np.mean([g[-1].duration - g[0].duration for g in groups])
    assert spread < 0.5 * (lens.max() - lens.min()) / 100


def test_transcript_fields_adapter():
    from whisper_t5x.app.label.job import transcript_fields

    from whisper_t5x.results import Segment, Transcription

    f = transcript_fields(Transcription(" a b ", (
        Segment(0.0, 1.0, " a", avg_logprob=-1.0, no_speech_prob=0.5),
        Segment(1.0, 1.0, " "),  # no text: not a segment of the row
        Segment(1.0, 4.0, " b", avg_logprob=-0.2, no_speech_prob=0.1)), "en", 4.0))
    assert f.text == "a b" and f.language == "en"
    assert f.segments == [{"start": 0.0, "end": 1.0, "text": "a"}, {"start": 1.0, "end": 4.0, "text": "b"}]
    assert f.avg_logprob == pytest.approx((-1.0 * 1 + -0.2 * 3) / 4)
    assert f.no_speech_prob == pytest.approx((0.5 + 0.1 * 3) / 4)
    assert transcript_fields(Transcription("", (), None, 1.0)).avg_logprob is None


# ------------------------------------------------------------ 2 processes, tiny.en
TIMEOUT_S = 240


def _start(speech_dataset, out, num_processes, *extra, log_dir):
    port = free_port()
    env = subprocess_env(2)
    procs = []
    for pid in range(num_processes):
        cmd = [sys.executable, "-m", "whisper_t5x.main", "label", "--dataset", speech_dataset,
               "--split", "train+validation", "--output_dir", str(out), "--text_column", "text",
               "--model", "tiny.en", "--wer_threshold", "0.5", NO_FALLBACK, *extra]
        if num_processes > 1:
            cmd += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(num_processes),
                    "--process_id", str(pid)]
        log = open(os.path.join(log_dir, f"log-{time.time_ns()}-{pid}.txt"), "w+")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _wait(procs, timeout=TIMEOUT_S):
    deadline = time.time() + timeout
    try:
        for p, _ in procs:
            p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    logs = []
    for p, log in procs:
        log.seek(0)
        logs.append(log.read())
        log.close()
    if any(p.returncode != 0 for p, _ in procs):
        raise AssertionError("label processes failed:\n" + "\n=====\n".join(x[-4000:] for x in logs))
    return logs


@pytest.fixture(scope="module")
def two_process_run(speech_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("label_2p")
    logs = _wait(_start(speech_dataset, out, 2, "--part_rows", "2", log_dir=str(out)))
    return out, logs


@needs_espeak
def test_two_processes_label_every_row_exactly_once(two_process_run):
    out, logs = two_process_run
    rows = _read(out)
    assert _keys(rows) == ALL_KEYS  # exactly once: no duplicates, none missing
    parts = os.listdir(os.path.join(out, "data"))
    assert {p.split("-p0000")[1][0] for p in parts if p.endswith(".parquet")} == {"0", "1"}  # both wrote
    by_id = {r["id"]: r for r in rows}
    assert by_id.pop("corrupt")["error"].startswith("audio decoding failed")
    for r in by_id.values():
        assert r["error"] is None and r["text"] and r["language"] == "en" and r["segments"]
        assert r["keep"] == (r["wer"] <= 0.5) and r["avg_logprob"] < 0
    assert np.mean([r["wer"] for r in by_id.values()]) < 0.6  # tiny.en does understand espeak-ng
    s = json.load(open(out / "summary.json"))
    assert s["this_run"]["processes"] == 2 and s["this_run"]["reported"] == 2
    assert s["this_run"]["rows"] == N_ROWS and s["output"]["rows"] == N_ROWS and s["output"]["failed"] == 1
    per = [json.load(open(out / f"summary.process{i}.json")) for i in range(2)]
    assert sum(p["rows"] for p in per) == N_ROWS and all(p["rows"] > 0 for p in per)
    assert "summary: this run" in "".join(logs)


@needs_espeak
@pytest.mark.slow
def test_sigkill_then_rerun_with_two_streaming_processes(speech_dataset, two_process_run, tmp_path):
    out = tmp_path / "out"
    procs = _start(speech_dataset, out, 1, "--part_rows", "1", "--group_size", "1", "--gin.LabelConfig.buffer_size=1",
                   log_dir=str(tmp_path))
    data = out / "data"
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and procs[0][0].poll() is None:
        if data.is_dir() and any(p.endswith(".parquet") and not p.startswith(".") for p in os.listdir(data)):
            break
        time.sleep(0.05)
    procs[0][0].send_signal(signal.SIGKILL)
    procs[0][0].wait(timeout=10)
    procs[0][1].close()
    before = _read(out)
    assert 1 <= len(before) < N_ROWS, "the process finished before it was killed"
    assert len(set(_keys(before))) == len(before)
    _wait(_start(speech_dataset, out, 2, "--streaming", log_dir=str(tmp_path)))
    rows = _read(out)
    assert _keys(rows) == ALL_KEYS
    # streaming multi-process output agrees with the map-style run's transcripts
    ref = {r["id"]: r["text"] for r in _read(two_process_run[0])}
    assert {r["id"]: r["text"] for r in rows} == ref


# ------------------------------------------- one folder, several runs; bad input (tones, no espeak)
from tests._label_fakes import SlowPipeline, write_tone_dataset  # noqa: E402

TONE_IDS = [f"t{i:02d}" for i in range(40)]
FAKE_PIPELINE = "--gin.PartitionSection.pipeline='tests._label_fakes:SlowPipeline'"


@pytest.fixture(scope="module")
def tone_dataset(tmp_path_factory):
    return write_tone_dataset(str(tmp_path_factory.mktemp("tones") / "tones.parquet"), TONE_IDS)


def _label_tones(dataset, out, *extra, pipeline=None):
    from whisper_t5x.app.label import main

    return main(["whisper-t5x", "--dataset", dataset, "--split", "train", "--output_dir", str(out),
                 "--text_column", "text", "--quiet", *extra], pipeline=pipeline or SlowPipeline())


def _label_process(dataset, out, log_path, delay_s=0.0, *extra):
    env = subprocess_env(1)
    env["LABEL_FAKE_DELAY_S"] = str(delay_s)
    cmd = [sys.executable, "-m", "whisper_t5x.main", "label", "--dataset", dataset, "--split", "train",
           "--output_dir", str(out), "--text_column", "text", "--quiet", FAKE_PIPELINE, *extra]
    log = open(log_path, "w+")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _finish(proc, log, timeout=120):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    log.seek(0)
    text = log.read()
    log.close()
    return proc.returncode, text


def test_concurrent_runs_after_a_sigkill_write_each_row_once(tone_dataset, tmp_path, capsys):
    """The issue's case: 16 rows written, a run killed, then the same command twice at once."""
    out = tmp_path / "out"
    assert _label_tones(tone_dataset, out, "--max_rows", "16", "--part_rows", "4") == 0
    assert len(_read(out)) == 16
    # a process holding the folder (as a run does): the same command is refused by name, before labelling
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from whisper_t5x.app.label.lock import acquire; "
         f"acquire({str(out)!r}, 0, 1); print('locked', flush=True); time.sleep(600)"],
        cwd=REPO, env=subprocess_env(1), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert _label_tones(tone_dataset, out) == 2
        err = capsys.readouterr().err.strip()
        assert "is in use" in err and f"pid {holder.pid} " in err and len(err.splitlines()) == 1, err
        assert len(_read(out)) == 16
    finally:  # SIGKILL: the kernel drops its lock, so the next runs are not blocked by a stale one
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()
    runs = [_label_process(tone_dataset, out, tmp_path / f"run{i}.txt", 0.1) for i in range(2)]
    results = [_finish(p, f) for p, f in runs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, text in results:
        assert rc == 0 or "is in use" in text, text
    rows = _read(out)
    assert _keys(rows) == sorted(("train", i) for i in TONE_IDS)  # each (split, id) exactly once
    summary = json.load(open(out / "summary.json"))
    assert summary["output"]["rows"] == len(TONE_IDS) and summary["output"]["duplicate_rows"] == 0


def test_run_locks_let_one_run_of_n_processes_in():
    import tempfile

    from whisper_t5x.app.label.lock import LabelBusyError, acquire

    out = tempfile.mkdtemp()
    with acquire(out, 0, 2) as a:
        assert a.locked
        with acquire(out, 1, 2):  # the other process of the same run (same count, its own index)
            with pytest.raises(LabelBusyError, match="index 1 is writing to it"):
                acquire(out, 1, 2)
        with pytest.raises(LabelBusyError, match="index 0 is writing to it.*process 0 of 2"):
            acquire(out, 0, 1)
        # another process count: its shares overlap this run's
        with pytest.raises(LabelBusyError, match="a label run with 2 process"):
            acquire(out, 1, 3)
    acquire(out, 1, 3).release()  # released: free again, whatever the count
    with acquire(out, 0, 1):
        with pytest.raises(LabelBusyError, match="a label run with 1 process"):
            acquire(out, 1, 2)


@pytest.mark.parametrize("streaming", [False, True])
def test_repeated_ids_are_labelled_once_and_reported(tmp_path, capsys, streaming):
    ids = ["a", "b", "a", "c", "b", "a", "d"]
    dataset = write_tone_dataset(str(tmp_path / "dup.parquet"), ids)
    out = tmp_path / "out"
    warnings_seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings_seen.append(record.getMessage())
    logger = logging.getLogger("whisper_t5x.app.label")
    logger.addHandler(handler)
    try:
        assert _label_tones(dataset, out, *(["--streaming"] if streaming else [])) == 0
    finally:
        logger.removeHandler(handler)
    captured = capsys.readouterr()
    rows = _read(out)
    assert _keys(rows) == [("train", x) for x in "abcd"]
    first = {x: int((0.2 + ids.index(x) * 0.01) * 16000) / 16000 for x in "abcd"}
    assert {r["id"]: r["duration"] for r in rows} == pytest.approx(first)  # the first row of each id
    assert any("3 input row(s) repeat the (split, id) of an earlier row (e.g. train/a, train/b)" in w
               for w in warnings_seen), warnings_seen
    run = json.load(open(out / "summary.json"))["this_run"]
    assert run["duplicate_ids"] == 3 and run["duplicate_examples"] == ["train/a", "train/b"]
    assert run["rows"] == 4 and "3 repeated id(s) skipped" in captured.out


def test_summary_counts_distinct_rows_of_old_duplicated_parts(tone_dataset, tmp_path):
    import shutil

    out = tmp_path / "out"
    assert _label_tones(tone_dataset, out, "--max_rows", "10", "--part_rows", "4") == 0
    data = out / "data"
    part = sorted(p for p in os.listdir(data) if p.endswith(".parquet"))[0]  # 4 rows, as an earlier version wrote
    shutil.copy(data / part, data / part.replace("part-", "part-old-"))
    assert len(_read(out)) == 14
    assert _label_tones(tone_dataset, out) == 0
    assert len(_read(out)) == len(TONE_IDS) + 4
    output = json.load(open(out / "summary.json"))["output"]
    assert output["rows"] == len(TONE_IDS) and output["duplicate_rows"] == 4
    assert output["splits"]["train"]["rows"] == len(TONE_IDS) and output["kept"] == len(TONE_IDS)


@pytest.mark.parametrize("flag, message", [
    ("--output_dir=/proc/x", "cannot create the output directory /proc/x"),
    ("--gin.DecodeSection.chunk_length_s=100", "DecodeSection.chunk_length_s must be in (0, 30]"),
    ("--gin.DecodeSection.stride_length_s=15", "DecodeSection.stride_length_s must be >= 0 and less than half"),
    ("--language=klingon", "unknown language 'klingon'"),
    ("--gin.DecodeSection.language='xx'", "`whisper-t5x languages` lists"),
])
def test_bad_output_dir_and_decode_values_are_one_line_errors(tone_dataset, tmp_path, capsys, flag, message):
    class Untouchable:
        def transcribe(self, *a, **k):
            raise AssertionError("no row may be labelled")

    assert _label_tones(tone_dataset, tmp_path / "out", flag, pipeline=Untouchable()) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("whisper-t5x label: error:")


def test_a_file_as_output_dir_is_a_one_line_error(tone_dataset, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert _label_tones(tone_dataset, tmp_path / "f") == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is not a directory" in err and len(err.splitlines()) == 1
