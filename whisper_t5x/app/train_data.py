"""Training rows from Hugging Face datasets and from the label job's Parquet, as :class:`RowSet`\\ s.

A split is opened exactly as ``whisper-t5x label`` opens it
(:func:`whisper_t5x.app.label.source.load_split`: hub id, local
Parquet/Arrow/JSON/CSV file or folder, ``save_to_disk`` folder; the audio
column cast to ``Audio(decode=False)``, decoded later by our own loader).
Only the text, id and prompt columns are read up front (one Arrow column
each; audio bytes are never read here); a batch's audio is read when the
batch is built, by row index, through the label job's row reader, so paths
relative to a local manifest resolve the same way.

With ``labels`` (a ``whisper-t5x label`` output directory) the targets are
the pseudo-labels: rows are joined on ``(split, id)``, those with an
``error`` or with ``keep`` false are left out, and each row's ``text``,
``language`` and ``segments`` become its target, language and timestamps.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

from whisper_t5x.app.label import sink, source
from whisper_t5x.training.data import EmptySplitError, MissingTextColumnError, RowSet
from whisper_t5x.training.targets import Example, TimedText

logger = logging.getLogger("whisper_t5x.app.train")

__all__ = ["open_rows"]


def _column(ds, name: str) -> List[Any]:
    """One column of a map-style dataset as Python values (read alone, as Arrow)."""
    return ds.select_columns([name]).with_format("arrow")[:].column(name).to_pylist()


def _path_ids(src: source.SplitSource) -> List[str]:
    """Row ids from the audio paths (no id column), read from the Arrow struct's ``path`` field only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = src.dataset.select_columns([src.audio_column]).with_format("arrow")[:].column(src.audio_column)
    if pa.types.is_struct(values.type):
        values = pc.struct_field(values, "path")
    return [str(v) for v in values.to_pylist()]


def _row_ids(src: source.SplitSource) -> List[str]:
    return [str(v) for v in _column(src.dataset, src.id_column)] if src.id_column else _path_ids(src)


def _labels(labels_dir: str, split: str) -> Dict[str, Dict[str, Any]]:
    """``id -> {text, language, segments}`` of the usable pseudo-labels of ``split``."""
    table = sink.read_table(labels_dir)
    if table.num_rows == 0 or "text" not in table.column_names:
        raise EmptySplitError(f"{labels_dir} holds no pseudo-labels (run whisper-t5x label first)")
    rows = table.to_pylist()
    out: Dict[str, Dict[str, Any]] = {}
    dropped = 0
    for r in rows:
        if r.get("split") != split:
            continue
        if r.get("error") or r.get("text") is None or ("keep" in r and not r.get("keep")):
            dropped += 1
            continue
        out[str(r["id"])] = r
    logger.info("%s: %d pseudo-label(s) of split %s kept, %d left out (error or keep false)", labels_dir, len(out),
                split, dropped)
    return out


def _segments(value: Any) -> tuple:
    return tuple(TimedText(float(s["start"]), float(s["end"]), str(s.get("text") or "")) for s in value or ())


def open_rows(dataset: str, split: str, *, dataset_config: Optional[str] = None, audio_column: str = "audio",
              text_column: str = "text", id_column: Optional[str] = "id", labels: Optional[str] = None,
              language: Optional[str] = None, prompt_column: Optional[str] = None,
              segments_column: Optional[str] = "segments", max_rows: Optional[int] = None) -> RowSet:
    """The rows of ``split`` of ``dataset`` (named errors for a missing column or an empty split).

    ``segments_column``: a column of ``[{"start", "end", "text"}]`` (the label job's
    layout) giving rows segment times, used when the dataset has it.
    """
    opened = dict(config_name=dataset_config, audio_column=audio_column, id_column=id_column)
    try:
        src = source.load_split(dataset, split, text_column=None if labels else text_column, **opened)
    except source.SourceError as e:
        source.load_split(dataset, split, **opened)  # raises again if the text column is not what failed
        raise MissingTextColumnError(f"{e}; pass --text_column") from e
    ds = src.dataset

    def extra_column(name: str, required: bool) -> Optional[List[Any]]:
        try:
            full = source.load_split(dataset, split, config_name=dataset_config, audio_column=audio_column,
                                     id_column=None, text_column=name)
        except source.SourceError:
            if required:
                raise
            return None
        return _column(full.dataset, name)

    prompt_values = extra_column(prompt_column, True) if prompt_column else None
    if labels:
        by_id = _labels(labels, split)
        ids = _row_ids(src)
        keep = [i for i, rid in enumerate(ids) if rid in by_id]
        chosen = [by_id[ids[i]] for i in keep]
        texts = [str(r["text"]) for r in chosen]
        langs = [r.get("language") or language for r in chosen]
        segs = [_segments(r.get("segments")) for r in chosen]
    else:
        keep = list(range(len(ds)))
        texts = ["" if t is None else str(t) for t in _column(ds, text_column)]
        langs = [language] * len(texts)
        seg_values = extra_column(segments_column, False) if segments_column else None
        segs = [_segments(v) for v in seg_values] if seg_values is not None else [()] * len(texts)
    if max_rows is not None:
        keep, texts, langs, segs = keep[:max_rows], texts[:max_rows], langs[:max_rows], segs[:max_rows]
    if not keep:
        raise EmptySplitError(f"split {split!r} of {dataset!r} has no rows to train on"
                              + (f" (none has a usable pseudo-label in {labels})" if labels else ""))
    if prompt_values is not None:
        previous = [prompt_values[i] for i in keep]
    else:  # the previous row of the split, when it is the previous dataset row
        previous = [texts[k - 1] if k and keep[k - 1] == keep[k] - 1 else None for k in range(len(keep))]
    examples = [Example(t, lang, s, None if p is None else str(p))
                for t, lang, s, p in zip(texts, langs, segs, previous)]
    return RowSet(split, examples, _AudioReader(src, keep))


@dataclasses.dataclass
class _AudioReader:
    """``fetch_audio``: the audio of rows (indices into the kept rows) via the label job's row reader."""

    src: source.SplitSource
    keep: Sequence[int]

    def __call__(self, indices: Sequence[int]) -> List[Any]:
        unique = sorted({int(self.keep[i]) for i in indices})
        if not unique:
            return []
        subset = dataclasses.replace(self.src, dataset=self.src.dataset.select(unique))
        found: Dict[int, Any] = {}
        try:
            rows = list(source.process_rows(subset, 0, 1, set()))
        except Exception as e:  # noqa: BLE001 - one bad batch read: every row of it is reported as unusable
            return [e for _ in indices]
        if len(rows) == len(unique):
            found = {dataset_row: r.audio for dataset_row, r in zip(unique, rows)}
        else:  # rows sharing an id (the reader keeps the first of each): read them one by one
            for dataset_row in unique:
                one = dataclasses.replace(subset, dataset=self.src.dataset.select([dataset_row]))
                found[dataset_row] = next(iter(source.process_rows(one, 0, 1, set()))).audio
        return [found[int(self.keep[i])] for i in indices]
