"""How far a run is: every few seconds a line. A batch run's tells the images done, the failures,
the rate and, where the input count is known, an estimate of the time left; a stream's tells the
records answered and failed so far, the rate over the last interval and, for Kafka, the consumer
group's lag (what the broker holds that the job has not committed yet).

The counts come from this process (its readers and handlers), where the SDK workers run in it (the
DirectRunner, Prism, LOOPBACK on Flink), else from the runner's metrics where it reports them
while the job runs. Where neither tells anything, no line is written: the summary at the end
still is. (On Flink with EXTERNAL or DOCKER workers nothing is known while a batch job runs:
Beam's metrics, and the records a task hands on, reach Flink when a task's bundle ends, which
in a batch job is its whole input.)
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from beam_ml_flink.counts import CLASSIFIED, COUNTS, FAILURE_STAGES
from beam_ml_flink.stores import image_pattern, remote_matches

# A list longer than this is not read through to count its images.
COUNT_LIST_BYTES = 256 << 20


def count_inputs(input: str) -> int | None:
    """How many images an --input names: a list's entries, or the files (objects) a folder, glob
    or prefix matches; None where that is not known cheaply (shards, a very long list)."""
    if FileSystems.get_scheme(input) not in (None, "file"):
        return _count_remote(input)
    if os.path.isdir(input):
        return sum(1 for p in os.scandir(input) if p.is_file())
    if set("*?[") & set(input):
        return sum(1 for p in glob.glob(input) if os.path.isfile(p))
    try:
        if os.path.getsize(input) > COUNT_LIST_BYTES:
            return None
        with open(input, errors="replace") as f:
            return sum(1 for line in f if line.strip() and not line.lstrip().startswith("#"))
    except OSError:
        return None


def _count_remote(input: str) -> int | None:
    """count_inputs of a remote --input (s3://...), as Beam's filesystem lists and reads it."""
    pattern = image_pattern(input)
    try:
        if set("*?[") & set(pattern):
            return remote_matches(pattern)
        [found] = FileSystems.match([input])[0].metadata_list
        if found.size_in_bytes > COUNT_LIST_BYTES:
            return None
        with FileSystems.open(input) as f:
            lines = f.read().decode(errors="replace").splitlines()
    except Exception:  # noqa: BLE001 - the count is a nicety; the run reports real errors
        return None
    return sum(1 for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressReporter(threading.Thread):
    """Logs a progress line every `interval` seconds until stopped. `result` (the running
    job's PipelineResult, once there is one) is asked for metrics where this process's handlers
    have seen nothing. With `streaming`, the lines are a stream's, and `backlog` (when given)
    says what is still waiting to be read, e.g. a Kafka consumer group's lag."""

    def __init__(
        self,
        interval: float,
        total: int | None,
        namespace: str,
        logger: logging.Logger,
        *,
        streaming: bool = False,
        backlog: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(name="progress", daemon=True)
        self.interval = interval
        self.total = total
        self.namespace = namespace
        self.logger = logger
        self.streaming = streaming
        self.backlog = backlog
        self.result: Any = None
        self._stop_event = threading.Event()
        self._first: tuple[float, int] | None = None  # when images were first seen, and how many
        self._last: tuple[float, int] | None = None  # a stream's previous line: when, how many

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            counts = self.counts()
            if self.streaming:
                line = self.stream_line(counts, self.backlog() if self.backlog else None)
                if line is not None:
                    self.logger.info("%s", line)
            elif counts is not None:
                self.logger.info("%s", self.line(*counts, time.monotonic()))

    def counts(self) -> tuple[int, int] | None:
        classified, failed = COUNTS.snapshot()
        if classified + failed:
            return classified, failed
        if self.result is None:
            return None
        try:
            metrics = self.result.metrics().query(MetricsFilter().with_namespace(self.namespace))
        except Exception:  # noqa: BLE001 - a runner without live metrics: no line
            return None
        totals = dict.fromkeys((CLASSIFIED, *FAILURE_STAGES), 0)
        for counter in metrics["counters"]:
            if counter.key.metric.name in totals:
                totals[counter.key.metric.name] += counter.attempted or 0
        classified = totals.pop(CLASSIFIED)
        failed = sum(totals.values())
        return (classified, failed) if classified + failed else None

    def line(self, classified: int, failed: int, now: float) -> str:
        done = classified + failed
        if self._first is None:
            self._first = (now - self.interval, 0)
        since, base = self._first
        # From the interval in which images were first seen: the workers' start is not in it.
        rate = (done - base) / (now - since) if now > since else 0.0
        text = f"progress: {done:,} images done"
        if self.total:
            text += f" of {self.total:,} ({min(done / self.total, 1):.0%})"
        text += f", {failed:,} failed, {rate:.1f} images/s"
        if self.total and rate > 0 and done < self.total:
            text += f", about {_duration((self.total - done) / rate)} left"
        return text

    def stream_line(self, counts: tuple[int, int] | None, backlog: str | None) -> str | None:
        """A stream's line: the records answered and failed so far and the rate since the
        previous line (where counts are known), and the backlog; None when nothing is known."""
        parts = []
        if counts is not None:
            classified, failed = counts
            done = classified + failed
            now = time.monotonic()
            since, before = self._last or (now - self.interval, 0)
            self._last = (now, done)
            rate = (done - before) / (now - since) if now > since else 0.0
            parts.append(
                f"{done:,} records answered, {failed:,} failed, "
                f"{rate:.1f} records/s over the last {now - since:.0f} s"
            )
        if backlog is not None:
            parts.append(backlog)
        return "stream: " + ", ".join(parts) if parts else None
