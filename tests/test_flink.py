"""The pipeline on real Flink: the FlinkRunner (the job server's embedded Flink) and a standalone
local cluster through the job server, with LOOPBACK and worker-pool (EXTERNAL) SDK workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from make_hostile import Case
from test_cli import classify, demo_args, image_list, read_jsonl
from test_embeddings import embeddings_args, torch_features
from test_streaming import drop, records, run_streaming_scenario

from beam_ml_flink import services
from conftest import DEMO_MODEL, IMAGES, ROOT

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


def test_a_folder_stream_loses_no_image_when_the_taskmanager_is_killed(
    local_flink: tuple[services.JobServer, services.LocalFlinkCluster],
    photos: dict[str, bytes],
    demo_top1: dict[str, int],
    tmp_path: Path,
    record_property,
) -> None:
    """A folder watched on the local cluster, checkpointed every 2 s: 20 photos, then 40 more
    dropped one every half second and the TaskManager SIGKILLed after 30 answers, a new one
    started. Flink restarts the job from its last checkpoint (the files already seen and the
    open windows are in it), and every file dropped has its answer in the window files: the
    photos their reference top-1, a file that is not an image its reason. What was written after
    that checkpoint and before the kill may be written again: counted. The last test of the
    module: the cluster it leaves has its one TaskManager again."""
    server, cluster = local_flink
    inbox, output = tmp_path / "inbox", tmp_path / "out" / "results"
    inbox.mkdir()
    names = sorted(photos)
    files = {inbox / f"{i:03d}-{names[i % len(names)]}": names[i % len(names)] for i in range(60)}
    not_an_image = inbox / "030-notes.jpg"
    first, later = list(files)[:20], [*list(files)[20:30], not_an_image, *list(files)[30:]]
    for path in first:
        drop(photos[files[path]], path)
    restarts_before = _restarts(cluster)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(tmp_path / "job.log", "w"))
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beam_ml_flink",
                *demo_args(inbox, output),
                "--streaming",
                "--poll_interval=1",
                "--window_size=2",
                *checkpointed_on(server, cluster, tmp_path / "checkpoints"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(lambda: job.poll() is None and job.kill())

        def answered() -> set[str]:
            return {r["image"] for r in records(output)}

        def drop_later() -> None:
            for path in later:
                drop(photos[files[path]] if path in files else b"not an image", path)
                time.sleep(0.5)

        # Without --finish_bundle_before_checkpointing (the command's default for a watch on
        # Flink), a checkpoint could keep the watch's starting element: no file matched, ever.
        _wait_for(lambda: len(answered()) >= 20, 240, "the job to answer the first 20 files")
        dropper = threading.Thread(target=drop_later)
        dropper.start()
        stack.callback(dropper.join)
        _wait_for(lambda: len(answered()) >= 30, 120, "30 answers")
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        answered_before_the_kill = len(answered())
        (taskmanager,) = cluster.pids("taskexecutor")
        os.kill(taskmanager, signal.SIGKILL)
        cluster.start_taskmanager()
        everything = {str(p) for p in [*first, *later]}
        _wait_for(lambda: answered() >= everything, 300, "every file's answer after the kill")
        restarts = _restarts(cluster)
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        # SIGTERM to the command cancels the job on the cluster, which frees its slots.
        os.killpg(job.pid, signal.SIGTERM)
        assert job.wait(timeout=120) == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert restarts > restarts_before, "the job was not restarted: the kill came too late"
    written = records(output)
    by_image = {r["image"]: r for r in written}
    assert sorted(by_image) == sorted(everything)
    assert "unsupported or unrecognised image format" in by_image[str(not_an_image)]["error"]
    assert {p: by_image[str(p)]["top_k"][0]["index"] for p in files} == {
        p: demo_top1[name] for p, name in files.items()
    }
    assert {by_image[str(p)]["model"] for p in files} == {str(DEMO_MODEL)}
    duplicates = len(written) - len(by_image)
    record_property("answered_before_the_kill", answered_before_the_kill)
    record_property("duplicates", duplicates)
    print(f"answered before the kill: {answered_before_the_kill}; duplicates: {duplicates}")
    assert answered_before_the_kill < len(everything), "the kill came after the stream"
    assert duplicates <= answered_before_the_kill


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


def _restarts(cluster: services.LocalFlinkCluster) -> int:
    """How many times the JobManager has restarted a job so far."""
    return _jobmanager_log(cluster).count("switched from state RUNNING to RESTARTING")


def checkpointed_on(
    server: services.JobServer, cluster: services.LocalFlinkCluster, checkpoints: Path
) -> list[str]:
    """The flags of a streaming job on the local cluster through the job server, LOOPBACK,
    checkpointed every 2 s into ``checkpoints``."""
    return [
        "--checkpointing_interval=2000",
        "--state_backend=filesystem",
        f"--state_backend_storage_path=file://{checkpoints}",
        "--runner=PortableRunner",
        f"--job_endpoint={server.endpoint}",
        f"--flink_master={cluster.master}",
        "--environment_type=LOOPBACK",
    ]


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.5)
