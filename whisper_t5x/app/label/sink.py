"""Labelled rows to Parquet part files under ``OUT/data/``; resume from them.

Each process appends rows to its :class:`PartWriter`, which writes a part of
at most ``part_rows`` rows (or ``part_max_s`` seconds' worth) to a hidden
temporary name in ``OUT/data/`` and renames it into place, so a reader never
sees half a file: a process killed with SIGKILL leaves at most one
``.tmp-*`` file, which :func:`read_table` (``pyarrow.dataset``, which skips
names starting with ``.`` or ``_``) ignores, and loses only the rows of its
unflushed part. Part names carry a per-run token and the process index, so
runs with different process counts never overwrite each other's parts.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

DATA_DIR = "data"

SEGMENT = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])


def row_schema(with_reference: bool) -> pa.Schema:
    """The output columns (``reference``, ``wer`` and ``keep`` only with a text column)."""
    fields = [
        ("split", pa.string()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("duration", pa.float64()),
        ("segments", pa.list_(SEGMENT)),
        ("avg_logprob", pa.float64()),
        ("no_speech_prob", pa.float64()),
        ("error", pa.string()),
    ]
    if with_reference:
        fields += [("reference", pa.string()), ("wer", pa.float64()), ("keep", pa.bool_())]
    return pa.schema(fields)


def data_dir(out_dir: str) -> str:
    return os.path.join(out_dir, DATA_DIR)


def read_table(out_dir: str, columns: Optional[List[str]] = None) -> pa.Table:
    """Every row written under ``out_dir`` as one table (empty if nothing yet)."""
    path = data_dir(out_dir)
    if not os.path.isdir(path) or not any(f.endswith(".parquet") and f[0] not in "._" for f in os.listdir(path)):
        return pa.table({c: [] for c in (columns or ["split", "id"])})
    return pads.dataset(path, format="parquet").to_table(columns=columns)


def read_done_keys(out_dir: str) -> Set[Tuple[str, str]]:
    """``(split, id)`` of every row already written under ``out_dir``."""
    t = read_table(out_dir, ["split", "id"])
    return set(zip(t.column("split").to_pylist(), t.column("id").to_pylist()))


def new_run_token() -> str:
    """A name component unique to one process of one run."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


@dataclasses.dataclass
class PartWriter:
    """Buffers rows and writes them as atomically renamed Parquet parts."""

    out_dir: str
    schema: pa.Schema
    process_index: int = 0
    part_rows: int = 256
    part_max_s: float = 300.0
    token: str = dataclasses.field(default_factory=new_run_token)

    def __post_init__(self):
        self._rows: List[Dict[str, Any]] = []
        self._seq = 0
        self._opened = time.monotonic()
        self.parts: List[str] = []
        self.rows_written = 0
        os.makedirs(data_dir(self.out_dir), exist_ok=True)

    def add(self, row: Dict[str, Any]) -> None:
        if not self._rows:
            self._opened = time.monotonic()
        self._rows.append(row)
        if len(self._rows) >= self.part_rows or time.monotonic() - self._opened >= self.part_max_s:
            self.flush()

    def flush(self) -> Optional[str]:
        """Writes the buffered rows as one part; returns its path (``None`` if nothing was buffered)."""
        if not self._rows:
            return None
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        name = f"part-{self.token}-p{self.process_index:05d}-{self._seq:06d}.parquet"
        final = os.path.join(data_dir(self.out_dir), name)
        tmp = os.path.join(data_dir(self.out_dir), f".tmp-{name}")
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._seq += 1
        self.rows_written += len(self._rows)
        self._rows = []
        self.parts.append(final)
        return final

    def close(self) -> None:
        self.flush()
