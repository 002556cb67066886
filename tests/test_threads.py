"""One ImageClassifier shared by threads: the GIL is released during the work, answers agree."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import beam_ml_flink as bmf
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, TINY_MODEL


def test_calls_release_the_gil_and_overlap(photos: dict[str, bytes]) -> None:
    classifier = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    batch = list(photos.values()) * 2
    start = threading.Barrier(2, timeout=30)
    windows: list[tuple[float, float]] = []

    def work() -> np.ndarray:
        start.wait()
        began = time.perf_counter()
        logits = classifier.logits(batch)
        windows.append((began, time.perf_counter()))
        return logits

    with ThreadPoolExecutor(2) as pool:
        first, second = [f.result(timeout=120) for f in [pool.submit(work), pool.submit(work)]]
    np.testing.assert_array_equal(first, second)
    (a_start, a_end), (b_start, b_end) = windows
    # Had either call held the GIL, the other could not have started until it returned.
    assert a_start < b_end and b_start < a_end, windows


def test_a_python_thread_runs_while_a_batch_is_classified(photos: dict[str, bytes]) -> None:
    classifier = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    batch = list(photos.values()) * 3
    done = threading.Event()
    ticks = 0

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.01)
    before = ticks
    classifier.classify(batch)
    during = ticks - before
    done.set()
    counter.join(timeout=10)
    assert during > 10, f"the counting thread advanced only {during} times"


def test_eight_threads_over_1000_batches_give_the_answers_of_one(photos: dict[str, bytes]) -> None:
    classifier = bmf.ImageClassifier(TINY_MODEL, resize=(64, 64))
    data = list(photos.values())
    batches = [
        [b"" if (i + k) % 97 == 0 else data[(i + k) % len(data)] for k in range(1 + i % 4)]
        for i in range(1000)
    ]

    def answers(batch: list[bytes]) -> list:
        return [
            (r.ok, [c[0] for c in r.top_k], [c[2] for c in r.top_k], r.error)
            for r in classifier.classify(batch, top_k=3)
        ]

    expected = [answers(batch) for batch in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(answers, batches, timeout=600))
    assert sum(not ok for batch in expected for ok, *_ in batch) > 0, "no failure was tried"
    for want, run in zip(expected, got, strict=True):
        assert [(ok, top, error) for ok, top, _, error in run] == [
            (ok, top, error) for ok, top, _, error in want
        ]
        for (*_, probs, _), (*_, want_probs, _) in zip(run, want, strict=True):
            np.testing.assert_allclose(probs, want_probs, atol=1e-6)
