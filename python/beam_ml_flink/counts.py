"""What became of every input, counted: the Beam counters that the summary at the end of a run
and its progress lines read.

Every input ends as a prediction or as a failure; a failure is counted by the stage where it
happened, where it is made. The counters are Beam metrics, so every runner reports them: through
its job service, or, on Flink with EXTERNAL or DOCKER workers, in the Flink job's accumulators.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from apache_beam.metrics import Metrics

# The handler's namespace (``get_metrics_namespace``), beside RunInference's own metrics.
METRICS_NAMESPACE = "BeamML_BeamMLFlink"
CLASSIFIED = "images_classified"
# Failures, by stage: the bytes could not be had (a missing file, a directory, a damaged shard,
# a message without a value), the bytes are not an image the decoder and preprocessing accept,
# or the model failed on the batch.
FAILED_READ = "failed_read"
FAILED_DECODE = "failed_decode"
FAILED_INFERENCE = "failed_inference"
FAILURE_STAGES = (FAILED_READ, FAILED_DECODE, FAILED_INFERENCE)


# How the core's inference errors begin (src/error.rs, Error::Inference); every other error of an
# image is its decoding's or preprocessing's.
INFERENCE_ERROR = "inference failed"


class _Counts:
    """Inputs classified and failed in this process (where the SDK workers run in it), for
    progress lines while the job runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._classified = 0
        self._failed = 0

    def add(self, classified: int, failed: int) -> None:
        with self._lock:
            self._classified += classified
            self._failed += failed

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self._classified, self._failed


COUNTS = _Counts()


def failure_stage(error: str) -> str:
    """The stage (FAILED_DECODE or FAILED_INFERENCE) of an error the core gave an image."""
    return FAILED_INFERENCE if error.startswith(INFERENCE_ERROR) else FAILED_DECODE


def count_failures(stage: str, count: int = 1) -> None:
    """Counts `count` inputs that failed at `stage` (one of FAILURE_STAGES)."""
    Metrics.counter(METRICS_NAMESPACE, stage).inc(count)
    COUNTS.add(0, count)


def failures_by_stage(totals: Mapping[str, int]) -> dict[str, int]:
    """The failures of each stage in a run's summed counters."""
    return {stage: totals.get(stage, 0) for stage in FAILURE_STAGES}
