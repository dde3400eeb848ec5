"""Training rows from local datasets (as ``whisper-t5x label`` opens them) and from the label job's Parquet:
the join on (split, id), keep / error filtering, pseudo-label text, language and segments, previous-row
prompts, audio read on demand, named errors. No model."""

import numpy as np
import pytest

from tests._training_io_fixtures import sine, write_split
from whisper_t5x.training.data import EmptySplitError, MissingTextColumnError
from whisper_t5x.training.targets import TimedText

pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    texts = [f"reference {i}" for i in range(8)]
    segments = [[{"start": 0.0, "end": 0.3, "text": t}] if i % 2 else [] for i, t in enumerate(texts)]
    write_split(root / "train.parquet", [sine(i, 0.3) for i in range(8)], texts, "t",
                extra={"prev": [f"before {i}" for i in range(8)], "segments": segments})
    return str(root)


def _labels(out, rows):
    from whisper_t5x.app.label import sink

    writer = sink.PartWriter(str(out), sink.row_schema(True))
    for r in rows:
        base = dict(split="train", language="en", duration=0.3, avg_logprob=-0.1, no_speech_prob=0.0, error=None,
                    reference="x", wer=0.0, keep=True, segments=[])
        base.update(r)
        writer.add(base)
    writer.close()
    return str(out)


def test_plain_dataset_rows(dataset):
    from whisper_t5x.app.train_data import open_rows

    rows = open_rows(dataset, "train", language="en")
    assert len(rows) == 8 and rows.examples[3].text == "reference 3" and rows.examples[3].language == "en"
    assert rows.examples[0].previous_text is None and rows.examples[3].previous_text == "reference 2"
    audio = rows.fetch_audio([2, 0, 2])  # repeats and any order
    from whisper_t5x.audio.loading import load_audio

    waves = [load_audio(a) for a in audio]
    assert np.allclose(waves[0], waves[2]) and not np.allclose(waves[0][:4000], waves[1][:4000])
    assert np.allclose(waves[1], sine(0, 0.3), atol=1e-3)
    assert rows.examples[1].segments == (TimedText(0.0, 0.3, "reference 1"),) and rows.examples[2].segments == ()
    assert open_rows(dataset, "train", segments_column=None).examples[1].segments == ()
    with_prompts = open_rows(dataset, "train", prompt_column="prev", max_rows=3)
    assert [e.previous_text for e in with_prompts.examples] == ["before 0", "before 1", "before 2"]


def test_pseudo_labels_join(dataset, tmp_path):
    from whisper_t5x.app.train_data import open_rows

    labels = _labels(tmp_path / "labels", [
        dict(id="t0", text="pseudo zero", segments=[{"start": 0.0, "end": 0.3, "text": "pseudo zero"}]),
        dict(id="t1", text="pseudo one", language="de"),
        dict(id="t2", text="pseudo two", keep=False),
        dict(id="t3", text=None, error="AudioError: broken"),
        dict(id="t4", text="pseudo four"),
        dict(id="t5", text="pseudo five", split="validation"),
    ])
    rows = open_rows(dataset, "train", labels=labels)
    assert [e.text for e in rows.examples] == ["pseudo zero", "pseudo one", "pseudo four"]
    assert rows.examples[0].segments == (TimedText(0.0, 0.3, "pseudo zero"),)
    assert rows.examples[1].language == "de" and rows.examples[0].language == "en"
    # the previous text is the previous dataset row's (t1 follows t0), not the previous kept row's (t4)
    assert [e.previous_text for e in rows.examples] == [None, "pseudo zero", None]
    from whisper_t5x.audio.loading import load_audio

    assert np.allclose(load_audio(rows.fetch_audio([2])[0]), sine(4, 0.3), atol=1e-3)  # t4's audio
    with pytest.raises(EmptySplitError, match="pseudo-label"):
        open_rows(dataset, "train", labels=_labels(tmp_path / "none", [dict(id="t0", text="x", keep=False)]))
    with pytest.raises(EmptySplitError, match="whisper-t5x label"):
        open_rows(dataset, "train", labels=str(tmp_path / "missing"))


def test_missing_text_column_names_the_columns(dataset):
    from whisper_t5x.app.train_data import open_rows

    with pytest.raises(MissingTextColumnError, match="transcript.*columns"):
        open_rows(dataset, "train", text_column="transcript")
