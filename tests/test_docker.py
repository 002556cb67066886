"""DOCKER SDK workers on the local Flink cluster: the TaskManager starts containers of the worker
image (`make docker-cpu`), which read the inputs and the model through the folder the container
engine mounts. Run by `make test-docker` (which builds the image and sets BMF_WORKER_IMAGE);
skipped in `make test`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from test_cli import classify, demo_args
from test_flink import (  # noqa: F401 (fixtures)
    assert_same_as_direct,
    direct,
    flink_parts,
    inputs,
    local_flink,
)

from beam_ml_flink import services

IMAGE = os.environ.get("BMF_WORKER_IMAGE")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not IMAGE, reason="make test-docker builds the worker image and runs this"),
]


def containers_of(image: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"ancestor={image}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_docker_workers_give_the_direct_runners_answers(
    local_flink: tuple[services.JobServer, services.LocalFlinkCluster],  # noqa: F811
    inputs: Path,  # noqa: F811
    direct: tuple[dict, dict],  # noqa: F811
    tmp_path: Path,
) -> None:
    assert IMAGE
    server, cluster = local_flink
    finished_before = cluster.overview()["jobs-finished"]
    before = containers_of(IMAGE)
    run = classify(
        *demo_args(inputs, tmp_path / "out" / "results"),
        "--runner=PortableRunner",
        f"--job_endpoint={server.endpoint}",
        "--environment_type=DOCKER",
        f"--environment_config={IMAGE}",
        timeout=800,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Every input exactly once, with the DirectRunner's predictions and failures.
    assert_same_as_direct(tmp_path / "out", inputs, direct)
    assert cluster.overview()["jobs-finished"] == finished_before + 1
    # The SDK harness containers are gone once the job is done.
    assert containers_of(IMAGE) == before
