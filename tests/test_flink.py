"""The pipeline on real Flink: the FlinkRunner (the job server's embedded Flink) and a standalone
local cluster through the job server, with LOOPBACK and worker-pool (EXTERNAL) SDK workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from make_hostile import Case
from test_cli import classify, demo_args, image_list, read_jsonl
from test_embeddings import embeddings_args, torch_features
from test_streaming import run_streaming_scenario

from beam_ml_flink import services
from conftest import IMAGES, ROOT

FLINK_LOCATION = Path(os.environ.get("FLINK_LOCATION", ROOT / "build" / "flink-1.19.3" / "pyflink"))
JOB_SERVER_JAR = Path(
    os.environ.get(
        "FLINK_JOB_SERVER_JAR", ROOT / "build" / "flink-job-server" / "beam-flink-job-server.jar"
    )
)
FLINK_CONF = ROOT / "data" / "flink-conf.yaml"
FLINK_CONF_LOCAL = ROOT / "data" / "flink-conf-local.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def flink_parts() -> None:
    if not (FLINK_LOCATION / "bin" / "start-cluster.sh").is_file():
        pytest.fail(f"no Flink distribution at {FLINK_LOCATION}; `make flink` installs it")
    if not JOB_SERVER_JAR.is_file():
        pytest.fail(f"no job server jar at {JOB_SERVER_JAR}; `make flink-job-server` builds it")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, hostile: list[Case]) -> Path:
    """An image list of the real photos and the corpus of hostile and odd inputs."""
    names = [str(p) for p in sorted(IMAGES.iterdir())] + [str(c.path) for c in hostile]
    return image_list(tmp_path_factory.mktemp("inputs"), names)


def results(output_dir: Path) -> tuple[dict[str, list], dict[str, str]]:
    """Predictions (image -> [(index, score)]) and failures (image -> reason) of one run, checking
    that no image appears twice."""
    predictions = read_jsonl(sorted(output_dir.glob("results-*.jsonl")))
    failures = read_jsonl(sorted(output_dir.glob("results_failures-*.jsonl")))
    seen = [r["image"] for r in predictions + failures]
    assert len(seen) == len(set(seen)), "an image appears more than once"
    return (
        {r["image"]: [(t["index"], t["score"]) for t in r["top_k"]] for r in predictions},
        {r["image"]: r["error"] for r in failures},
    )


@pytest.fixture(scope="module")
def direct(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """What the DirectRunner makes of the inputs."""
    out = tmp_path_factory.mktemp("direct")
    run = classify(*demo_args(inputs, out / "results"), "--runner=DirectRunner")
    assert run.returncode == 0, run.stderr[-3000:]
    return results(out)


def assert_same_as_direct(output_dir: Path, inputs: Path, direct: tuple[dict, dict]) -> None:
    predictions, failures = results(output_dir)
    expected_predictions, expected_failures = direct
    listed = [line for line in inputs.read_text().splitlines() if line and not line.startswith("#")]
    assert sorted([*predictions, *failures]) == sorted(listed)
    assert failures == expected_failures
    assert predictions.keys() == expected_predictions.keys()
    for image, top_k in predictions.items():
        expected = expected_predictions[image]
        assert [i for i, _ in top_k] == [i for i, _ in expected], image
        assert [s for _, s in top_k] == pytest.approx([s for _, s in expected], abs=1e-5), image


def test_flink_runner_embedded_loopback(
    inputs: Path, direct: tuple[dict, dict], tmp_path: Path
) -> None:
    conf_dir = services.flink_conf_dir(FLINK_CONF, tmp_path / "conf", None)
    # The CLI with --verbose, so that the job server's own log (which Beam logs) shows.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink",
            "--verbose",
            *demo_args(inputs, tmp_path / "out" / "results"),
            "--runner=FlinkRunner",
            "--flink_version=1.19",
            f"--flink_job_server_jar={JOB_SERVER_JAR}",
            "--environment_type=LOOPBACK",
        ],
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, "FLINK_CONF_DIR": str(conf_dir)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_as_direct(tmp_path / "out", inputs, direct)
    # The job server that Beam started read data/flink-conf.yaml through FLINK_CONF_DIR.
    assert f"configuration file from {conf_dir / 'config.yaml'}" in run.stderr
    assert "Loading configuration property: parallelism.default, 2" in run.stderr


def test_streaming_with_a_new_model_on_the_flink_runner(
    tmp_path: Path, photos: dict[str, bytes], flipped_model: Path
) -> None:
    # The CLI keeps the impulse of the watch alive until --stop_after (Flink would otherwise end
    # the job when its sources finish) and gives the job server Java 17's module flags.
    runner = [
        "--runner=FlinkRunner",
        "--flink_version=1.19",
        f"--flink_job_server_jar={JOB_SERVER_JAR}",
        "--environment_type=LOOPBACK",
    ]
    run_streaming_scenario(
        tmp_path, photos, flipped_model, runner, stop_after_s=90, start_timeout_s=150
    )


@pytest.fixture(scope="module")
def local_flink(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.JobServer, services.LocalFlinkCluster]]:
    """A standalone Flink cluster and a job server that submits to it; both are stopped after the
    module, whatever its tests did."""
    work = tmp_path_factory.mktemp("flink")
    with services.LocalFlinkCluster(FLINK_LOCATION, FLINK_CONF_LOCAL, work / "cluster") as cluster:
        assert isinstance(cluster, services.LocalFlinkCluster)
        server = services.JobServer(
            JOB_SERVER_JAR, work / "job-server", cluster.master, cluster.conf_dir
        )
        with server:
            yield server, cluster


@pytest.mark.parametrize("environment", ["LOOPBACK", "EXTERNAL"])
def test_local_cluster_through_the_job_server(
    environment: str,
    local_flink: tuple[services.JobServer, services.LocalFlinkCluster],
    inputs: Path,
    direct: tuple[dict, dict],
    tmp_path: Path,
) -> None:
    server, cluster = local_flink
    finished_before = cluster.overview()["jobs-finished"]
    args = [
        "--runner=PortableRunner",
        f"--job_endpoint={server.endpoint}",
        f"--flink_master={cluster.master}",  # what `beam_ml_flink.services` passes as FLINK_MASTER
    ]
    with sdk_environment(environment, tmp_path) as environment_args:
        run = classify(*demo_args(inputs, tmp_path / "out" / "results"), *args, *environment_args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_as_direct(tmp_path / "out", inputs, direct)
    # The job ran on the cluster, not on a Flink embedded somewhere.
    assert cluster.overview()["jobs-finished"] == finished_before + 1
    # The summary counts every input, failures too (with EXTERNAL workers, from Flink's
    # accumulators).
    predictions, failures = direct
    counted = f": {len(predictions)} images classified, {len(failures)} failed ("
    assert counted in run.stderr, run.stderr[-2000:]


def test_embeddings_on_the_local_cluster_with_a_worker_pool(
    local_flink: tuple[services.JobServer, services.LocalFlinkCluster],
    features_model: Path,
    photos: dict[str, bytes],
    tmp_path: Path,
) -> None:
    """`--output_kind embeddings` on the local cluster, the SDK workers in a pool of their own
    (EXTERNAL): every photo's row holds torch's normalised features, in Parquet."""
    import pyarrow.parquet as pq

    server, cluster = local_flink
    listing = image_list(tmp_path, [str(IMAGES / name) for name in photos])
    out = tmp_path / "out" / "vectors"
    with sdk_environment("EXTERNAL", tmp_path) as environment_args:
        run = classify(
            *embeddings_args(listing, out, features_model, "parquet"),
            "--runner=PortableRunner",
            f"--job_endpoint={server.endpoint}",
            f"--flink_master={cluster.master}",
            *environment_args,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    expected = torch_features(features_model, photos)
    files = sorted(out.parent.glob("vectors-*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    got = {Path(r["image"]).name: r["embedding"] for r in rows}
    assert sorted(got) == sorted(expected)
    for name, vector in got.items():
        np.testing.assert_allclose(vector, expected[name], atol=1e-5, rtol=0, err_msg=name)
    assert f": {len(photos)} images classified, 0 failed" in run.stderr, run.stderr[-2000:]


@contextlib.contextmanager
def sdk_environment(environment: str, work_dir: Path) -> Iterator[list[str]]:
    """The SDK workers of a run: LOOPBACK, or a worker pool started for it (EXTERNAL)."""
    if environment == "LOOPBACK":
        yield ["--environment_type=LOOPBACK"]
        return
    with services.WorkerPool(work_dir / "worker-pool") as pool:
        assert isinstance(pool, services.WorkerPool)
        yield ["--environment_type=EXTERNAL", f"--environment_config={pool.address}"]


def _jobmanager_log(cluster: services.LocalFlinkCluster) -> str:
    return "".join(p.read_text() for p in cluster.log_dir.glob("*standalonesession*.log"))


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.5)
