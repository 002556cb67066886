"""A stream's output files, a set per window, named as Beam names windowed files:
``PREFIX-[START, END)-SSSSS-of-NNNNN.SUFFIX`` (START and END in seconds since the epoch).

Written by Beam's ``fileio.WriteToFiles``: each bundle's records go to temporary files, which are
moved to their names when the window closes. It takes no side inputs, unlike the windowed path of
``WriteToText`` and ``WriteToParquet``, whose side inputs fail Flink's checkpoints; and its
Parquet files are made here from each window's rows, where ``WriteToParquet`` emits its batches
outside the stream's windows (Prism 2.77 fails such a job).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.value_provider import StaticValueProvider


class WriteWindowFiles(beam.PTransform):
    """Records to files starting with ``prefix`` (a path or a URI), one set per window, through
    ``sink()`` (a ``fileio.FileSink``)."""

    def __init__(self, prefix: str, suffix: str, sink: Callable[[], fileio.FileSink]) -> None:
        super().__init__()
        folder, _, stem = prefix.rpartition("/")
        self._folder = folder or "."
        self._naming = window_file_naming(stem, suffix)
        self._temp = temp_folder(prefix)
        self._sink = sink

    def expand(self, records: beam.PCollection) -> Any:
        sink = self._sink
        return records | fileio.WriteToFiles(
            path=self._folder,
            file_naming=self._naming,
            # fileio reads it as a ValueProvider.
            temp_directory=StaticValueProvider(str, self._temp),
            sink=lambda _destination: sink(),
        )


def temp_folder(prefix: str) -> str:
    """Where the files of ``prefix`` are written before their window closes: a hidden folder
    beside them, emptied as each window's files are moved to their names."""
    folder, _, stem = prefix.rpartition("/")
    return f"{folder or '.'}/.{stem}.window-files"


def remove_temp_folder(prefix: str) -> None:
    """The local temporary folder of ``prefix``, once empty (an object store has no folders)."""
    path = temp_folder(prefix)
    if "://" not in path:
        with contextlib.suppress(OSError):
            os.rmdir(path)


def window_file_naming(stem: str, suffix: str) -> Callable[..., str]:
    """``fileio``'s file naming: ``STEM-[START, END)-SSSSS-of-NNNNN SUFFIX``, as
    ``WriteToText`` names a window's shards."""

    def name(
        window: Any,
        pane: Any,
        shard_index: int,
        total_shards: int,
        compression: Any,
        destination: Any,
    ) -> str:
        start, end = float(window.start), float(window.end)
        return f"{stem}-[{start}, {end})-{shard_index:05d}-of-{total_shards:05d}{suffix}"

    return name


class ParquetRows(fileio.FileSink):
    """A file sink of rows (dicts) as one Parquet file of ``schema``, written when the file is
    closed: a window's file holds that bundle's rows of the window."""

    def __init__(self, schema: Any) -> None:
        self._schema = schema
        self._rows: list[dict[str, Any]] = []
        self._fh: BinaryIO | None = None

    def open(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._rows = []

    def write(self, record: dict[str, Any]) -> None:
        self._rows.append(record)

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert self._fh is not None, "flush before open"
        pq.write_table(pa.Table.from_pylist(self._rows, schema=self._schema), self._fh)
        self._rows = []
