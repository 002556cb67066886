"""Scale-out on a real local Flink cluster: two TaskManagers, each with its own SDK worker pool
(EXTERNAL environments, as pods with a worker-pool sidecar), a job over 512 samples in WebDataset
shards spread over both, and a TaskManager killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from make_shards import Shards, make_shards
from test_cli import demo_args
from test_flink import FLINK_CONF_LOCAL, FLINK_LOCATION, JOB_SERVER_JAR, _restarts, _wait_for
from test_flink import results as read_results

from beam_ml_flink import services
from conftest import IMAGES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SAMPLES = 512
SHARDS = 8


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.JobServer, services.LocalFlinkCluster]]:
    work = tmp_path_factory.mktemp("scale")
    cluster = services.LocalFlinkCluster(
        FLINK_LOCATION, FLINK_CONF_LOCAL, work / "cluster", taskmanagers=2, worker_pools=True
    )
    with cluster:
        server = services.JobServer(
            JOB_SERVER_JAR, work / "job-server", cluster.master, cluster.conf_dir
        )
        with server:
            yield server, cluster


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    return make_shards(tmp_path_factory.mktemp("shards"), samples=SAMPLES, shards=SHARDS)


@pytest.fixture(scope="module")
def expected(shards: Shards, demo_top1: dict[str, int]) -> dict[str, int]:
    """The reference top-1 of every sample of the tar shards, from the photo it holds."""
    return {
        id: demo_top1[metadata["json"]["source"]]
        for id, metadata in shards.metadata.items()
        if id.startswith("photos-")
    }


def tar_shards(shards: Shards) -> str:
    return f"{shards.folder}/webdataset/photos-{{00000..{SHARDS - 1:05d}}}.tar"


def job_command(
    input: str, output: Path, server: services.JobServer, cluster: services.LocalFlinkCluster
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "beam_ml_flink",
        *demo_args(input, output),
        "--batch_size=16",
        "--runner=PortableRunner",
        f"--job_endpoint={server.endpoint}",
        "--environment_type=EXTERNAL",
        f"--environment_config={cluster.worker_pool_address}",
    ]


def rest(cluster: services.LocalFlinkCluster, path: str) -> dict:
    with urllib.request.urlopen(f"{cluster.web_ui}{path}", timeout=10) as response:
        return json.load(response)


def assert_every_sample_once(output: Path, expected: dict[str, int]) -> None:
    predictions, failures = read_results(output)  # asserts that no sample appears twice
    assert failures == {}
    assert {image: top_k[0][0] for image, top_k in predictions.items()} == expected


def test_a_job_over_shards_runs_on_both_taskmanagers(
    cluster: tuple[services.JobServer, services.LocalFlinkCluster],
    shards: Shards,
    expected: dict[str, int],
    tmp_path: Path,
) -> None:
    server, flink = cluster
    assert flink.overview()["taskmanagers"] == 2 and flink.parallelism == 4
    run = subprocess.run(
        job_command(tar_shards(shards), tmp_path / "results", server, flink),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(expected) == SAMPLES
    assert_every_sample_once(tmp_path, expected)
    # The Flink REST API: the classifying tasks ran on both TaskManagers.
    (job,) = [j for j in rest(flink, "/jobs/overview")["jobs"] if j["state"] == "FINISHED"][-1:]
    vertices = rest(flink, f"/jobs/{job['jid']}")["vertices"]
    classify = [v for v in vertices if "ClassifySamples" in v["name"]]
    assert classify, [v["name"] for v in vertices]
    taskmanagers = {
        tm["taskmanager-id"]
        for vertex in classify
        for tm in rest(flink, f"/jobs/{job['jid']}/vertices/{vertex['id']}/taskmanagers")[
            "taskmanagers"
        ]
    }
    assert len(taskmanagers) == 2, taskmanagers
    # Each TaskManager asked its own worker pool for SDK workers.
    for index in range(2):
        log = (flink.work_dir / f"worker-pool-{index}" / "worker-pool.log").read_text()
        assert "Starting worker" in log, f"the worker pool of TaskManager {index} started none"


def test_a_killed_taskmanager_is_replaced_and_every_sample_comes_out_once(
    cluster: tuple[services.JobServer, services.LocalFlinkCluster],
    shards: Shards,
    expected: dict[str, int],
    tmp_path: Path,
) -> None:
    """TaskManager 1 is killed (SIGKILL) mid-job and started again, as an orchestrator would:
    Flink's restart strategy reruns the job, and every sample still comes out exactly once."""
    server, flink = cluster
    restarts_before = _restarts(flink)
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            job_command(tar_shards(shards), tmp_path / "results", server, flink),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(lambda: flink.overview()["jobs-running"] == 1, 180, "the job to run")
            time.sleep(15)  # into the classification
            assert job.poll() is None, "the job ended before a TaskManager could be killed"
            pid = flink.taskmanager_pid(1)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            flink.start_taskmanager(1)
            returncode = job.wait(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
    assert returncode == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert_every_sample_once(tmp_path, expected)
    restarts = _restarts(flink)
    assert restarts > restarts_before
    assert flink.overview()["taskmanagers"] == 2


def test_parquet_shards_and_damaged_ones_to_parquet_on_both_taskmanagers(
    cluster: tuple[services.JobServer, services.LocalFlinkCluster],
    shards: Shards,
    demo_top1: dict[str, int],
    tmp_path: Path,
) -> None:
    """img2dataset's Parquet files, the damaged shards and the hostile tar, with Parquet out:
    every sample once, the samples before each damage classified, each failure with its reason."""
    server, flink = cluster
    input = f"{shards.folder}/{{parquet/*.parquet,damaged/*,webdataset/hostile.tar}}"
    command = job_command(input, tmp_path / "results", server, flink)
    run = subprocess.run(
        [*command, "--output_format=parquet"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = pq.read_table(sorted(tmp_path.glob("results-*.parquet"))).to_pylist()
    failures = pq.read_table(sorted(tmp_path.glob("results_failures-*.parquet"))).to_pylist()
    seen = [r["image"] for r in predictions + failures]
    assert len(seen) == len(set(seen)), "a sample came out twice"
    wanted = [i for i in [*shards.images, *shards.failures] if not i.startswith("photos-")]
    assert sorted(seen) == sorted(wanted)
    for record in failures:
        assert shards.failures[record["image"]] in record["error"], record
    # The Parquet rows hold the photos over and over: each has the top-1 of the photo it holds.
    top1_by_bytes = {(IMAGES / name).read_bytes(): index for name, index in demo_top1.items()}
    for record in predictions:
        data = shards.images[record["image"]]
        if data in top1_by_bytes:
            assert record["top_indices"][0] == top1_by_bytes[data], record["image"]
