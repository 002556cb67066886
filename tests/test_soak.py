"""Memory under load (tests/soak.py, each measurement in a fresh process): 20,000 images through
`classify` keep resident memory flat, and one batch of 64 camera-size JPEGs stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parent / "soak.py"


def measure(*args: str) -> dict:
    run = subprocess.run(
        [sys.executable, str(SOAK), *args], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_20000_images_keep_memory_flat() -> None:
    figures = measure("soak", "--images", "20000")
    assert figures["failed"] == 0
    assert len(figures["rss_mb"]) == 20
    # Under 5% growth from the end of the warm-up to the end of the run.
    assert figures["growth"] < 0.05, figures


def test_a_batch_of_64_camera_jpegs_has_bounded_memory() -> None:
    figures = measure("camera", "--count", "64")
    assert figures["classified"] == 64
    # One 12-megapixel image decodes per core at a time, not all 64 (36 MB of RGB each).
    assert figures["batch_peak_mb"] < 100 + 100 * (os.cpu_count() or 1), figures
