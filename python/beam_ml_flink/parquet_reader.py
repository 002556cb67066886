"""Reading Parquet files without leaving Arrow's threads behind.

``pyarrow.parquet.read_table`` and threaded reads start threads of Arrow's pools. At interpreter
exit those pools are torn down while a thread can still be joinable, and the process aborts with
"terminate called without an active exception" after its work is done (apache/arrow#34314,
#33975). With pyarrow 25.0.1 on this project's machines a script that read one small file object
with ``read_table`` aborted at exit in 5 of 40, 4 of 40 and 2 of 60 runs (11 of 40 when the read
was left in an unfinished generator). A ``ParquetFile`` opened without pre-buffering and read
without threads starts no thread at all: 0 aborts in 100 runs.
"""

from __future__ import annotations

from typing import Any


def open_parquet(source: Any) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` on ``source`` (a path or a binary file object) that
    reads in the calling thread; pass ``use_threads=False`` to its ``read``/``iter_batches``."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(source, pre_buffer=False)


def read_parquet(source: Any) -> Any:
    """The whole file as a ``pyarrow.Table``, read in the calling thread."""
    return open_parquet(source).read(use_threads=False)
