"""Progress lines of batch runs: what they count, the rate and the time left, and that the command
writes them while it runs (and not with --progress_interval 0)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from test_cli import classify, demo_args, image_list

from beam_ml_flink.progress import ProgressReporter, count_inputs
from conftest import IMAGES


def reporter(total: int | None, interval: float = 10) -> ProgressReporter:
    return ProgressReporter(interval, total, "namespace", logging.getLogger("test"))


def test_a_line_says_done_failed_rate_and_time_left() -> None:
    progress = reporter(total=1000)
    assert progress.line(90, 10, now=100.0) == (
        "progress: 100 images done of 1,000 (10%), 10 failed, 10.0 images/s, about 0:01:30 left"
    )
    # The rate runs from the interval in which the first images were seen.
    assert progress.line(290, 10, now=120.0) == (
        "progress: 300 images done of 1,000 (30%), 10 failed, 10.0 images/s, about 0:01:10 left"
    )


def test_without_a_count_there_is_no_time_left() -> None:
    assert reporter(total=None).line(5, 0, now=10.0) == (
        "progress: 5 images done, 0 failed, 0.5 images/s"
    )


def test_inputs_are_counted_where_that_is_cheap(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\na.jpg\n\nb.jpg\n  # more\nc.jpg\n")
    assert count_inputs(str(listing)) == 3
    photos = len(list(IMAGES.iterdir()))
    assert count_inputs(str(IMAGES)) == photos
    assert count_inputs(f"{IMAGES}/*.jpg") == len(list(IMAGES.glob("*.jpg")))
    # A scheme that no installed filesystem serves.
    assert count_inputs("azfs://account/container/list.txt") is None


@pytest.mark.slow
def test_the_command_reports_progress_while_it_runs(tmp_path: Path) -> None:
    names = [str(p) for p in sorted(IMAGES.iterdir())] * 6
    listing = image_list(tmp_path, names)
    run = classify(*demo_args(listing, tmp_path / "r"), "--progress_interval=0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = re.findall(r"progress: (\d+) images done of (\d+) \(\d+%\), (\d+) failed", run.stderr)
    assert len(lines) >= 2, run.stderr
    done = [int(d) for d, _, _ in lines]
    assert done == sorted(done) and 0 < done[-1] <= len(names)
    assert {int(total) for _, total, _ in lines} == {len(names)}
    assert "left" in run.stderr
    assert "finished in" in run.stderr and f"{len(names)} images classified" in run.stderr
    quiet = classify(*demo_args(listing, tmp_path / "q"), "--progress_interval=0")
    assert quiet.returncode == 0 and "progress:" not in quiet.stderr
