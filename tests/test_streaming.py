"""``--streaming``: a watched folder classified as images arrive, windowed output, a model replaced
while the job runs, and a clean stop; on the PrismRunner (test_flink.py runs it on Flink)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli import PRISM, classify, demo_args

from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGES, torch_top1

pytestmark = pytest.mark.slow

PRISM_RUNNER = ["--runner=PrismRunner", f"--prism_location={PRISM}"]


def drop(data: bytes, dest: Path) -> None:
    """Writes a file next to ``dest`` and moves it in, so no poll sees it half written."""
    partial = dest.parent.parent / f".{dest.name}.partial"
    partial.write_bytes(data)
    os.replace(partial, dest)


def start_streaming(inbox: Path, output: Path, model: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beam_ml_flink",
            *demo_args(inbox, output),
            f"--model_path={model}",
            "--streaming",
            "--poll_interval=1",
            "--window_size=2",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def records(output: Path) -> list[dict]:
    """Every line written so far under the ``output`` prefix (predictions and failures)."""
    return [
        json.loads(line)
        for f in sorted(output.parent.glob(f"{output.name}*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def wait_for(
    condition: Callable[[], bool], job: subprocess.Popen[str], timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if job.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{job.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"no {what} after {timeout_s:.0f} s:\n{job.communicate()[1][-3000:]}")
        time.sleep(0.5)


def classified(output: Path, *images: Path) -> Callable[[], bool]:
    return lambda: {str(i) for i in images} <= {r["image"] for r in records(output)}


def run_streaming_scenario(
    tmp_path: Path,
    photos: dict[str, bytes],
    flipped_model: Path,
    runner_args: list[str],
    stop_after_s: int,
    start_timeout_s: float,
) -> None:
    """Images dropped one by one and a new model dropped in between: every file classified
    once, by the model that was current, in windowed files; then the job stops by itself."""
    inbox, models, output = tmp_path / "inbox", tmp_path / "models", tmp_path / "out" / "results"
    inbox.mkdir()
    models.mkdir()
    first_model = models / "v1.pt"
    first_model.write_bytes(DEMO_MODEL.read_bytes())
    early, late = ["china.jpg", "coffee.png"], ["flower.jpg", "rocket.jpg"]
    drop(photos[early[0]], inbox / early[0])
    job = start_streaming(
        inbox,
        output,
        first_model,
        f"--watch_models={models}",
        f"--stop_after={stop_after_s}",
        *runner_args,
    )
    wait_for(classified(output, inbox / early[0]), job, start_timeout_s, "first window")
    drop(photos[early[1]], inbox / early[1])
    drop(b"not an image", inbox / "notes.jpg")
    wait_for(classified(output, inbox / early[1], inbox / "notes.jpg"), job, 30, "second image")
    # Rewritten in place: already classified, so not classified again.
    drop(photos[early[0]], inbox / early[0])
    drop(flipped_model.read_bytes(), models / "v2.pt")
    time.sleep(2.5)  # more than a poll: the next batch sees the new model
    for name in late:
        drop(photos[name], inbox / name)
    wait_for(classified(output, *(inbox / n for n in late)), job, 30, "images after the model")
    _, stderr = job.communicate(timeout=stop_after_s + 120)
    assert job.returncode == 0, stderr[-3000:]

    written = records(output)
    assert sorted(r["image"] for r in written) == sorted(
        str(inbox / n) for n in [*early, *late, "notes.jpg"]
    )
    by_image = {Path(r["image"]).name: r for r in written}
    assert "unsupported or unrecognised image format" in by_image["notes.jpg"]["error"]
    expected = {
        **torch_top1({n: photos[n] for n in early}, DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD),
        **torch_top1({n: photos[n] for n in late}, flipped_model, mean=DEMO_MEAN, std=DEMO_STD),
    }
    assert {n: by_image[n]["top_k"][0]["index"] for n in expected} == expected
    assert {n: by_image[n]["model"] for n in expected} == {
        **{n: str(first_model) for n in early},
        **{n: str(models / "v2.pt") for n in late},
    }
    windows = {f.name.split("-")[1] for f in output.parent.glob("results-*.jsonl")}
    assert len(windows) >= 2 and all(w.startswith("[") for w in windows), windows


def test_new_images_classified_once_and_a_new_model_takes_over(
    tmp_path: Path, photos: dict[str, bytes], flipped_model: Path
) -> None:
    run_streaming_scenario(
        tmp_path, photos, flipped_model, PRISM_RUNNER, stop_after_s=30, start_timeout_s=60
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_the_job_and_its_runner(
    tmp_path: Path, photos: dict[str, bytes], signum: int
) -> None:
    inbox, output = tmp_path / "inbox", tmp_path / "out" / "results"
    inbox.mkdir()
    job = start_streaming(inbox, output, DEMO_MODEL, *PRISM_RUNNER)
    time.sleep(3)
    drop(photos["china.jpg"], inbox / "china.jpg")
    wait_for(classified(output, inbox / "china.jpg"), job, 60, "classified image")
    job.send_signal(signum)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stderr[-3000:]
    assert "interrupted: cancelling the job" in stderr
    prisms = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(PRISM).encode() in _cmdline(p)
    ]
    assert prisms == [], "the Prism runner outlived the job"


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runner=DirectRunner"], "--streaming needs a streaming runner"),
        ([*PRISM_RUNNER, f"--input={IMAGES / 'china.jpg'}"], "is neither"),
    ],
)
def test_streaming_flags_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    job = start_streaming(IMAGES, tmp_path / "results", DEMO_MODEL, *args)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 2 and message in stderr, stderr[-2000:]


def test_watch_models_needs_streaming(tmp_path: Path) -> None:
    run = classify(*demo_args(IMAGES, tmp_path / "results"), f"--watch_models={tmp_path}")
    assert run.returncode == 2 and "--watch_models needs --streaming" in run.stderr
