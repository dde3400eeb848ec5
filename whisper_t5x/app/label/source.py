"""Dataset rows for one process: ``datasets`` in, :class:`SourceRow` out.

* :func:`load_split` opens one split of a hub id / local folder
  (``datasets.load_dataset``) or a ``save_to_disk`` folder
  (``datasets.load_from_disk``), map-style or streaming, and casts an
  ``Audio`` column to ``Audio(decode=False)``: ``datasets`` never decodes audio
  (``datasets`` 5 would use torchcodec); :func:`whisper_t5x.audio.loading.load_audio`
  does, from the ``{"bytes", "path"}`` struct or a plain path.
* :func:`process_rows` takes this process's share with
  ``datasets.distributed.split_dataset_by_node``: contiguous blocks of a
  map-style dataset, whole shards (or every N-th row) of a streaming one.
  Every process count partitions the rows, and rows already written (by any
  earlier run, with any process count) are skipped by key, so a rerun labels
  each row exactly once. A map-style dataset skips them by reading the id
  column alone, so done rows' audio is never read again.
* A row repeating an earlier row's ``(split, id)`` is not labelled (the
  first is) and is counted in :class:`Skips` (the job warns and reports it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, List, Optional, Set, Tuple

logger = logging.getLogger("whisper_t5x.app.label")

Key = Tuple[str, str]  # (split, id): the resume key


class SourceError(ValueError):
    """The dataset, a split or a named column cannot be used."""


@dataclasses.dataclass
class SourceRow:
    """One input row: where its audio is and what it should say."""

    split: str
    id: str
    audio: Any  # {"bytes", "path"} dict, a path, or None
    reference: Optional[str] = None


@dataclasses.dataclass
class SplitSource:
    """One opened split and how to read its columns."""

    split: str
    dataset: Any  # datasets.Dataset or datasets.IterableDataset
    audio_column: str
    id_column: Optional[str]  # None: the audio path is the id
    text_column: Optional[str]
    base_dir: Optional[str]  # resolves relative audio paths of local manifests


def _is_saved_to_disk(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")
    )


_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}


def _open(dataset: str, config_name: Optional[str], split: str, streaming: bool):
    import datasets

    if _is_saved_to_disk(dataset):
        ds = datasets.load_from_disk(dataset)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise SourceError(f"split {split!r} not in {dataset} (it has {sorted(ds)})")
            ds = ds[split]
        return ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds)))) if streaming else ds
    try:
        builder = _FILE_BUILDERS.get(os.path.splitext(dataset)[1].lower()) if os.path.isfile(dataset) else None
        if builder is not None:  # one manifest / data file: it is the split asked for
            return datasets.load_dataset(builder, data_files={split: dataset}, split=split, streaming=streaming)
        return datasets.load_dataset(dataset, config_name, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; say which and why
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        hint = ""
        if "torchcodec" in str(cause):
            hint = (" (datasets encodes the audio of an audiofolder through torchcodec; describe the files in a "
                    "CSV/JSON manifest with a path column, or store them as Parquet with audio bytes)")
        raise SourceError(f"cannot load split {split!r} of dataset {dataset!r}: {type(cause).__name__}: "
                          f"{str(cause).strip().splitlines()[0] if str(cause).strip() else ''}{hint}") from e


def load_split(dataset: str, split: str, *, config_name: Optional[str] = None, streaming: bool = False,
               audio_column: str = "audio", id_column: Optional[str] = "id",
               text_column: Optional[str] = None) -> SplitSource:
    """Opens ``split`` of ``dataset`` with audio left encoded; checks the named columns."""
    import datasets

    ds = _open(dataset, config_name, split, streaming)
    features = ds.features
    columns = list(features) if features is not None else None
    if columns is not None:
        if audio_column not in columns:
            raise SourceError(f"dataset {dataset!r} split {split!r} has no audio column {audio_column!r} "
                              f"(columns: {columns}); pass --audio_column")
        if text_column and text_column not in columns:
            raise SourceError(f"dataset {dataset!r} split {split!r} has no text column {text_column!r} "
                              f"(columns: {columns})")
        if id_column and id_column not in columns:
            logger.info("split %s has no id column %r: the audio path is the row id", split, id_column)
            id_column = None
        if isinstance(features[audio_column], datasets.Audio):
            ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    keep = [c for c in (audio_column, id_column, text_column) if c]
    ds = ds.select_columns(keep)
    base = os.path.abspath(dataset if os.path.isdir(dataset) else os.path.dirname(dataset)) \
        if os.path.exists(dataset) else None
    return SplitSource(split, ds, audio_column, id_column, text_column, base)


def _audio_source(value: Any, base_dir: Optional[str]) -> Any:
    """The row's audio as ``load_audio`` takes it: bytes preferred, else a resolved path."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return {"bytes": value["bytes"]}
        if value.get("path") is not None:
            return _resolve(value["path"], base_dir)
        if value.get("array") is not None:
            return value
        return None
    if isinstance(value, (str, os.PathLike)):
        return _resolve(value, base_dir)
    return value


def _resolve(path: Any, base_dir: Optional[str]) -> str:
    path = os.fspath(path)
    if base_dir and not os.path.isabs(path) and "://" not in path and not os.path.exists(path):
        cand = os.path.join(base_dir, path)
        if os.path.exists(cand):
            return cand
    return path


def _id_value(src: SplitSource, value: Any) -> str:
    """A row's id from its id-column value (or its audio path when there is no id column)."""
    if value is None or value == "":
        what = f"id column {src.id_column!r}" if src.id_column else "audio path (there is no id column)"
        raise SourceError(f"a row of split {src.split!r} has an empty {what}; pass --id_column")
    return str(value)


def _row_id(src: SplitSource, row: dict) -> str:
    if src.id_column:
        return _id_value(src, row[src.id_column])
    audio = row[src.audio_column]
    return _id_value(src, audio.get("path") if isinstance(audio, dict) else audio)


def _id_array(src: SplitSource, ds):
    """The row ids of a map-style ``ds`` as one Arrow column (audio bytes are never read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = src.id_column or src.audio_column
    values = ds.select_columns([column]).with_format("arrow")[:].column(column)
    if not src.id_column and pa.types.is_struct(values.type):
        values = pc.struct_field(values, "path")
    return values


def _ids(src: SplitSource, ds) -> List[str]:
    """Every row id of a map-style ``ds``, in order."""
    return [_id_value(src, v) for v in _id_array(src, ds).to_pylist()]


EXAMPLES = 5  # duplicate ids named in the warning and the summary


@dataclasses.dataclass
class Skips:
    """Input rows that are not labelled: already written, or repeating an id of the input."""

    done: int = 0  # (split, id) written by an earlier run
    duplicates: int = 0  # rows whose (split, id) an earlier row of the input has
    examples: List[str] = dataclasses.field(default_factory=list)  # "split/id" of the first few

    def duplicate(self, split: str, rid: str, n: int = 1) -> None:
        self.duplicates += n
        name = f"{split}/{rid}"
        if len(self.examples) < EXAMPLES and name not in self.examples:
            self.examples.append(name)


def _first_of_each_id(src: SplitSource, ds, skips: Optional[Skips]):
    """``ds`` without the rows that repeat an earlier row's id (counted in ``skips`` if given)."""
    import pyarrow.compute as pc

    if pc.count_distinct(_id_array(src, ds)).as_py() == len(ds):  # no repeats (the usual case): no Python loop
        return ds
    seen: Set[str] = set()
    keep: List[int] = []
    for i, rid in enumerate(_ids(src, ds)):
        if rid in seen:
            if skips is not None:
                skips.duplicate(src.split, rid)
            continue
        seen.add(rid)
        keep.append(i)
    return ds if len(keep) == len(ds) else ds.select(keep)


def process_rows(src: SplitSource, process_index: int, process_count: int, done: Set[Key],
                 skips: Optional[Skips] = None) -> Iterator[SourceRow]:
    """This process's rows of ``src`` whose ``(split, id)`` is neither in ``done`` nor an earlier row's.

    A map-style dataset drops the later rows of a repeated id before it is
    split between processes (every process drops the same rows; process 0
    counts them), so the shares stay the same from run to run. A streaming one
    drops those it meets in this process's own stream.
    """
    import datasets
    from datasets.distributed import split_dataset_by_node

    skips = Skips() if skips is None else skips
    ds = src.dataset
    map_style = isinstance(ds, datasets.Dataset)
    if map_style:
        ds = _first_of_each_id(src, ds, skips if process_index == 0 else None)
    if process_count > 1:
        ds = split_dataset_by_node(ds, rank=process_index, world_size=process_count)
    if map_style and done:
        ds, skipped = _drop_done(src, ds, done)
        skips.done += skipped
    seen: Set[str] = set()
    for row in ds:
        rid = _row_id(src, row)
        if not map_style:
            if rid in seen:
                skips.duplicate(src.split, rid)
                continue
            seen.add(rid)
        if (src.split, rid) in done:
            skips.done += 1
            continue
        ref = row.get(src.text_column) if src.text_column else None
        yield SourceRow(src.split, rid, _audio_source(row[src.audio_column], src.base_dir),
                        None if ref is None else str(ref))


def _drop_done(src: SplitSource, ds, done: Set[Key]):
    """``ds`` without the rows already written, found from the id column alone."""
    keep = [i for i, rid in enumerate(_ids(src, ds)) if (src.split, rid) not in done]
    skipped = len(ds) - len(keep)
    return (ds.select(keep) if skipped else ds), skipped


def open_splits(dataset: str, splits: List[str], **kwargs: Any) -> List[SplitSource]:
    """:func:`load_split` for each name of ``splits``."""
    return [load_split(dataset, s, **kwargs) for s in splits]
