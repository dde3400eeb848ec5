"""Output writers (txt, srt, vtt, json, tsv): pure functions of a Transcription, no model."""

import json
import os
import re

import pytest

from whisper_t5x.app import writers as O
from whisper_t5x.results import Segment, Transcription, Word


def transcription(text, segments, language=None, duration=0.0):
    """``segments``: ``(start, end, text)``; an end of ``None`` is an open end."""
    return Transcription(text, tuple(Segment(s, e, t) for s, e, t in segments), language, duration)


RESULT = transcription(" Hello there. General Kenobi!", [(0.0, 1.5, " Hello there."), (1.5, None, " General Kenobi!")],
                       "en", 4.25)

SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)$")
VTT_CUE = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)$")


def parse_srt(text):
    cues = []
    for block in text.strip().split("\n\n"):
        m = SRT_CUE.match(block)
        assert m, f"bad srt cue {block!r}"
        cues.append((int(m.group(1)), m.group(2), m.group(3), m.group(4)))
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    return cues


def parse_vtt(text):
    head, *blocks = text.strip().split("\n\n")
    assert head == "WEBVTT"
    cues = []
    for block in blocks:
        m = VTT_CUE.match(block)
        assert m, f"bad vtt cue {block!r}"
        cues.append(m.groups())
    return cues


def test_format_timestamp():
    assert O.format_timestamp(0) == "00:00:00.000"
    assert O.format_timestamp(3661.5, ",") == "01:01:01,500"
    assert O.format_timestamp(59.9996) == "00:01:00.000"
    assert O.format_timestamp(-1) == "00:00:00.000"
    assert O.format_timestamp(12.345, always_include_hours=False) == "00:12.345"


def test_srt_none_end_uses_duration():
    cues = parse_srt(O.to_srt(RESULT))
    assert cues == [
        (1, "00:00:00,000", "00:00:01,500", "Hello there."),
        (2, "00:00:01,500", "00:00:04,250", "General Kenobi!"),
    ]


def test_vtt():
    text = O.to_vtt(RESULT)
    assert text.startswith("WEBVTT\n\n")
    assert parse_vtt(text) == [
        ("00:00:00.000", "00:00:01.500", "Hello there."),
        ("00:00:01.500", "00:00:04.250", "General Kenobi!"),
    ]


def test_json_and_tsv():
    doc = json.loads(O.to_json(RESULT))
    assert doc["text"] == "Hello there. General Kenobi!" and doc["language"] == "en" and doc["duration"] == 4.25
    assert [(s["start"], s["end"], s["text"]) for s in doc["segments"]] == [
        (0.0, 1.5, "Hello there."), (1.5, 4.25, "General Kenobi!")]
    rows = O.to_tsv(RESULT).splitlines()
    assert rows == ["start\tend\ttext", "0\t1500\tHello there.", "1500\t4250\tGeneral Kenobi!"]


def test_no_timestamps_is_one_cue_over_the_file():
    result = transcription(" Just words.", [(None, None, " Just words.")], duration=7.0)
    assert parse_srt(O.to_srt(result)) == [(1, "00:00:00,000", "00:00:07,000", "Just words.")]
    assert parse_vtt(O.to_vtt(transcription("x", [], duration=2.0))) == [("00:00:00.000", "00:00:02.000", "x")]
    assert O.to_txt(result) == "Just words.\n"
    doc = json.loads(O.to_json(transcription("a b", [])))
    assert doc["segments"] == [{"id": 0, "start": 0.0, "end": 0.0, "text": "a b"}] and doc["language"] is None


def test_missing_pieces_and_empty():
    # missing start follows the previous end; missing end takes the next start;
    # no duration: an open last chunk ends where it starts; empty chunks dropped
    result = transcription("a b c", [(0.0, None, "a"), (2.0, 3.0, " "), (None, None, "b"), (5.0, None, "c")],
                           duration=None)
    segs = O.cues(result)
    assert [(s.start, s.end, s.text) for s in segs] == [(0.0, 2.0, "a"), (3.0, 5.0, "b"), (5.0, 5.0, "c")]
    assert O.to_txt(result) == "a\nb\nc\n"
    empty = transcription("", [], duration=3.0)
    assert O.to_srt(empty) == "" and O.to_vtt(empty) == "WEBVTT\n" and O.to_txt(empty) == ""
    assert O.to_tsv(empty) == "start\tend\ttext\n"


def test_parse_formats():
    assert O.parse_formats("all") == ["txt", "srt", "vtt", "json", "tsv"]
    assert O.parse_formats("srt, .VTT,srt") == ["srt", "vtt"]
    assert O.parse_formats(["json"]) == ["json"]
    with pytest.raises(ValueError, match="docx"):
        O.parse_formats("txt,docx")


def test_write_outputs_atomic_and_exists(tmp_path):
    d = str(tmp_path / "out")
    assert not O.outputs_exist(d, "a", ["txt", "srt"])
    paths = O.write_outputs(RESULT, d, "a", ["txt", "srt"])
    assert sorted(os.listdir(d)) == ["a.srt", "a.txt"]  # no temporary files left
    assert O.outputs_exist(d, "a", ["txt", "srt"]) and not O.outputs_exist(d, "a", ["txt", "vtt"])
    with open(paths["txt"], encoding="utf-8") as f:
        assert f.read() == "Hello there.\nGeneral Kenobi!\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = O.write_outputs(RESULT, str(tmp_path), "a", ["txt", "json"])
        O.write_outputs(RESULT, str(tmp_path), "a", ["txt"])  # replacing keeps the rule
    finally:
        os.umask(old)
    assert {fmt: os.stat(p).st_mode & 0o777 for fmt, p in paths.items()} == {"txt": mode, "json": mode}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.txt"]  # no temporary file left


def test_json_carries_segment_statistics_and_words():
    words = (Word(0.0, 0.4, " Hello", 0.9), Word(0.4, 1.5, " there.", 0.8))
    seg = Segment(0.0, 1.5, " Hello there.", tokens=(50364, 2425, 456), avg_logprob=-0.3, no_speech_prob=0.02,
                  compression_ratio=1.1, temperature=0.2, words=words)
    doc = json.loads(O.to_json(Transcription(" Hello there.", (seg,), "en", 2.0)))
    [s] = doc["segments"]
    assert s["tokens"] == [50364, 2425, 456]
    assert (s["avg_logprob"], s["no_speech_prob"], s["compression_ratio"], s["temperature"]) == (-0.3, 0.02, 1.1, 0.2)
    assert s["words"] == [{"start": 0.0, "end": 0.4, "word": " Hello", "probability": 0.9},
                          {"start": 0.4, "end": 1.5, "word": " there.", "probability": 0.8}]
    plain = json.loads(O.to_json(RESULT))["segments"][0]
    assert "words" not in plain and plain["avg_logprob"] is None and plain["tokens"] == []


def test_writers_take_a_transcription_and_clip_to_its_duration():
    with pytest.raises(TypeError, match="Transcription"):
        O.render({"text": "x", "chunks": []}, "txt")
    late = transcription(" x", [(1.0, 9.0, " x")], duration=2.5)
    assert parse_srt(O.to_srt(late)) == [(1, "00:00:01,000", "00:00:02,500", "x")]
