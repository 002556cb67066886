"""Parquet files read back (outputs, shards) give pyarrow's rows and start no Arrow thread, so a
process that read them cannot abort at exit with "terminate called without an active exception"
(apache/arrow#34314): the CLI that prints a Parquet job's results exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Runs in a fresh interpreter: counts the process's threads before and after the reads.
THREADS_AROUND_READS = """
import os, sys
import pyarrow.parquet  # its import starts threads of its own; the reads must start none
from beam_ml_flink.parquet_reader import open_parquet, read_parquet

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
with open(sys.argv[1], "rb") as f:
    rows = read_parquet(f).num_rows
rows += read_parquet(sys.argv[1]).num_rows
with open(sys.argv[1], "rb") as f:
    for batch in open_parquet(f).iter_batches(batch_size=7, columns=["image"], use_threads=False):
        rows += batch.num_rows
print(before, threads(), rows)
"""


def _table(rows: int) -> pa.Table:
    return pa.table(
        {
            "image": [f"s3://bucket/{i}.jpg" for i in range(rows)],
            "top_labels": [["tabby", "tiger cat"]] * rows,
            "top_scores": pa.array([[0.75, 0.125]] * rows, type=pa.list_(pa.float32())),
        }
    )


def test_a_file_object_reads_as_pyarrow_reads_the_path(tmp_path: Path) -> None:
    from beam_ml_flink.parquet_reader import read_parquet

    path = tmp_path / "results.parquet"
    pq.write_table(_table(300), path, row_group_size=64)
    with path.open("rb") as f:
        assert read_parquet(f).to_pylist() == pq.read_table(path).to_pylist()


def test_reading_starts_no_arrow_thread(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    pq.write_table(_table(300), path, row_group_size=64)
    done = subprocess.run(
        [sys.executable, "-c", THREADS_AROUND_READS, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, rows = map(int, done.stdout.split())
    assert rows == 900
    assert after == before, f"{after - before} thread(s) left running by the reads"
