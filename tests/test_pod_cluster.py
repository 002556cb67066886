"""The Flink cluster whose machines share nothing: a JobManager container and TaskManager pods on
one podman network (`make test-cluster` builds the image with `make docker-flink` and runs this)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
import yaml
from make_hostile import Case
from make_shards import Shards, make_shards
from test_flink import direct, inputs, results  # noqa: F401 (fixtures)

from beam_ml_flink.messages import image_paths
from beam_ml_flink.objects import object_key
from beam_ml_flink.services import ARTIFACT_PORT, EXPANSION_PORT, JOB_PORT, ServiceError
from beam_ml_flink.services.pod_cluster import (
    WORKER_POOL_ARGS,
    WORKER_POOL_CONTAINER_PORT,
    PodFlinkCluster,
    flink_deployment_properties,
    image_exists,
    podman_missing,
)
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGENET_LABELS, IMAGES

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "flink-deployment.yaml"
FLINK_IMAGE = os.environ.get("BMF_FLINK_IMAGE", "localhost/beam-ml-flink/flink:1.19.3")
TASKMANAGERS = int(os.environ.get("BMF_TASKMANAGERS", "2"))
JOB_SERVER_IMAGE = os.environ.get(
    "BMF_JOB_SERVER_IMAGE", "localhost/beam-ml-flink/flink-job-server:flink-1.19"
)
# Any image of Beam's Python SDK harness serves as the worker pool sidecar: ours (make docker-cpu)
# or its base (make container-bases).
WORKER_IMAGE = os.environ.get(
    "BMF_WORKER_IMAGE", "localhost/beam-ml-flink/beam_python3.11_sdk:2.77.0"
)

# Opt-in, as the DOCKER worker test is: `make test-cluster` builds the images and names them.
needs_cluster = pytest.mark.skipif(
    "BMF_FLINK_IMAGE" not in os.environ
    or podman_missing() is not None
    or not image_exists(FLINK_IMAGE),
    reason="the cluster in containers runs under `make test-cluster`, which builds its images"
    if "BMF_FLINK_IMAGE" not in os.environ
    else podman_missing() or f"no Flink image {FLINK_IMAGE}: `make docker-flink` builds it",
)


def test_the_pods_are_the_kubernetes_manifests_pods() -> None:
    """The cluster in containers starts what the manifests describe: the TaskManager's sidecar
    with the manifest's arguments and port, the job server with its ports."""
    deployment = yaml.safe_load(MANIFEST.read_text())
    sidecars = deployment["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    pool = next(c for c in sidecars if c["name"] == "beam-worker-pool")
    assert pool["args"] == list(WORKER_POOL_ARGS)
    assert [p["containerPort"] for p in pool["ports"]] == [WORKER_POOL_CONTAINER_PORT]
    job_server = next(
        d for d in yaml.safe_load_all((MANIFEST.parent / "job-server.yaml").read_text())
        if d["kind"] == "Deployment"
    )  # fmt: skip
    container = job_server["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["job-host"] == "0.0.0.0"
    assert [int(args[k]) for k in ("job-port", "artifact-port", "expansion-port")] == [
        JOB_PORT,
        ARTIFACT_PORT,
        EXPANSION_PORT,
    ]
    assert args["flink-master"].endswith(":8081")
    # The TaskManagers' memory is the pod's, as the operator sets it.
    properties = flink_deployment_properties(MANIFEST)
    spec = deployment["spec"]
    for role in ("taskManager", "jobManager"):
        memory = properties[f"{role.lower()}.memory.process.size"]
        assert memory == spec[role]["resource"]["memory"]
    assert spec["flinkConfiguration"].items() <= properties.items()


@needs_cluster
def test_an_image_that_is_not_there_is_named_with_the_store_it_was_looked_for_in() -> None:
    graph_root = subprocess.run(
        ["podman", "info", "--format", "{{.Store.GraphRoot}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    cluster = PodFlinkCluster(FLINK_IMAGE, worker_image="localhost/beam-ml-flink/absent:0")
    with pytest.raises(ServiceError) as raised:
        cluster.start()
    message = str(raised.value)
    assert "there is no image localhost/beam-ml-flink/absent:0" in message
    assert f"in podman's store {graph_root}" in message and "make docker-cpu" in message
    assert cluster.containers() == [] and cluster.networks() == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def leftovers(name: str) -> list[str]:
    """Every container (infrastructure ones too), pod and network whose name starts with `name`."""
    found = []
    for command in (
        ["ps", "--all", "--format", "{{.Names}}"],
        ["pod", "ps", "--format", "{{.Name}}"],
        ["network", "ls", "--format", "{{.Name}}"],
    ):
        listed = subprocess.run(["podman", *command], capture_output=True, text=True, check=True)
        found += [n for n in listed.stdout.split() if n.startswith(name)]
    infra = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.PodName}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found + [f"infra of {n}" for n in infra.stdout.split() if n.startswith(name)]


@pytest.mark.slow
@needs_cluster
def test_taskmanager_pods_register_share_nothing_and_leave_nothing() -> None:
    properties = flink_deployment_properties(MANIFEST)
    cluster = PodFlinkCluster(
        FLINK_IMAGE,
        taskmanagers=TASKMANAGERS,
        rest_port=free_port(),
        flink_properties=properties,
    )
    with cluster:
        assert cluster.overview()["taskmanagers"] == TASKMANAGERS
        registered = cluster.taskmanager_info()
        # The manifest's configuration is the cluster's: its slots per TaskManager.
        slots = int(properties["taskmanager.numberOfTaskSlots"])
        assert [tm["slotsNumber"] for tm in registered] == [slots] * TASKMANAGERS
        # Each TaskManager in its own pod, registered under the pod's name on the cluster network
        # (the JobManager reaches it there, not at a loopback address of its own).
        pods = [cluster.taskmanager_pod(i) for i in range(TASKMANAGERS)]
        assert sorted(tm["id"] for tm in registered) == pods
        hosts = [urlparse(tm["path"].replace("pekko.tcp", "tcp")).hostname for tm in registered]
        assert sorted(hosts) == pods

        containers = cluster.containers()
        assert len(containers) == 1 + TASKMANAGERS
        assert len(cluster.pods()) == TASKMANAGERS
        for container in cluster.containers(infra=True):
            mounts = subprocess.run(
                ["podman", "inspect", "--format", "{{range .Mounts}}{{.Type}}:{{.Source}} {{end}}",
                 container],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert "bind:" not in mounts, f"{container} mounts a folder of this machine: {mounts}"
        # This folder (a mount of it or of a folder above it would show it, and a mount left
        # in an image leaves it as an empty folder); not the folder above it, which may be
        # one every image has (/tmp for a clone there).
        for container in containers:
            seen = subprocess.run(
                ["podman", "exec", container, "test", "-e", str(ROOT)], check=False
            )
            assert seen.returncode == 1, f"{ROOT} is visible in {container}"
    assert leftovers(cluster.name) == []


@pytest.mark.slow
@needs_cluster
def test_sigterm_removes_the_cluster() -> None:
    name = f"beam-ml-flink-sigterm-{os.getpid()}"
    script = textwrap.dedent(
        f"""
        import time
        from beam_ml_flink.services.pod_cluster import PodFlinkCluster
        with PodFlinkCluster({FLINK_IMAGE!r}, taskmanagers=1, rest_port={free_port()},
                             name={name!r}):
            print("ready", flush=True)
            time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == "ready", line + process.stdout.read()
            assert leftovers(name)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    assert leftovers(name) == []


@pytest.mark.slow
@needs_cluster
@pytest.mark.skipif(
    not image_exists(JOB_SERVER_IMAGE) or not image_exists(WORKER_IMAGE),
    reason=f"no job server image {JOB_SERVER_IMAGE} (make docker-job-server) or worker image "
    f"{WORKER_IMAGE} (make container-bases or make docker-cpu)",
)
def test_a_pipeline_from_this_machine_runs_on_the_taskmanager_pods() -> None:
    """The client sees only endpoints: the job server's, published to loopback, and the worker
    pool's address as each TaskManager sees it (localhost:50000 in its pod)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    ports = (free_port(), free_port(), free_port())
    with PodFlinkCluster(
        FLINK_IMAGE,
        taskmanagers=TASKMANAGERS,
        rest_port=free_port(),
        worker_image=WORKER_IMAGE,
        job_server_image=JOB_SERVER_IMAGE,
        job_server_ports=ports,
        flink_properties={"taskmanager.numberOfTaskSlots": "1"},
    ) as cluster:
        options = PipelineOptions(
            [
                "--runner=PortableRunner",
                f"--job_endpoint={cluster.job_endpoint}",
                "--environment_type=EXTERNAL",
                f"--environment_config={cluster.worker_pool_address}",
                f"--parallelism={TASKMANAGERS}",
            ]
        )
        pipeline = beam.Pipeline(options=options)
        squares = pipeline | beam.Create(range(100)) | beam.Map(lambda x: x * x)
        assert_that(squares, equal_to([x * x for x in range(100)]))
        state = pipeline.run().wait_until_finish(duration=300_000)
        assert state == "DONE"
        assert cluster.overview()["jobs-finished"] == 1


# The cluster's own pipeline: our worker image (make docker-cpu) as the sidecars and the object
# store (make docker-object-store) on the cluster's network; the inputs, model, labels and outputs
# are objects, and the client on this machine sees only endpoints and URIs.
OBJECT_STORE_IMAGE = os.environ.get(
    "BMF_OBJECT_STORE_IMAGE", "localhost/beam-ml-flink/s3proxy:3.3.0"
)
BUCKET = "beam-ml-flink"
needs_store_cluster = pytest.mark.skipif(
    not image_exists(JOB_SERVER_IMAGE)
    or not image_exists(OBJECT_STORE_IMAGE)
    or not image_exists(WORKER_IMAGE)
    or "beam_python3.11_sdk" in WORKER_IMAGE,
    reason=f"needs the job server image {JOB_SERVER_IMAGE}, the object store image "
    f"{OBJECT_STORE_IMAGE} and our worker image (make docker-cpu), not {WORKER_IMAGE}",
)
SAMPLES = 256
SHARDS = 8


def store_cluster_parts() -> dict[str, Any]:
    """What a cluster running the command needs besides Flink: our worker image as the sidecars,
    the job server and the object store with its bucket, on free ports."""
    return {
        "worker_image": WORKER_IMAGE,
        "job_server_image": JOB_SERVER_IMAGE,
        "job_server_ports": (free_port(), free_port(), free_port()),
        "object_store_image": OBJECT_STORE_IMAGE,
        "object_store_port": free_port(),
        "buckets": [BUCKET],
    }


@pytest.fixture(scope="module")
def store_cluster() -> Iterator[PodFlinkCluster]:
    """Two TaskManager pods with the manifest's configuration, each with our worker pool sidecar,
    the job server and the object store, all in containers."""
    with PodFlinkCluster(
        FLINK_IMAGE,
        taskmanagers=TASKMANAGERS,
        rest_port=free_port(),
        flink_properties=flink_deployment_properties(MANIFEST),
        **store_cluster_parts(),
    ) as cluster:
        yield cluster
    assert leftovers(cluster.name) == []


def cluster_job(
    cluster: PodFlinkCluster, store: str, input: str | Path, output: Path, *args: str
) -> tuple[list[str], dict[str, str]]:
    """`python -m beam_ml_flink.objects`: the input, the demo model and its labels put under
    `store`, the job run on the cluster on their URIs, its output got back into `output`*; with
    the environment that reaches the store from this machine."""
    command = [
        sys.executable, "-m", "beam_ml_flink.objects", "--store", store, "--input", str(input),
        "--model", str(DEMO_MODEL), "--labels", str(IMAGENET_LABELS), "--output", str(output),
        "--", sys.executable, "-m", "beam_ml_flink",
        "--mean=" + ",".join(map(str, DEMO_MEAN)), "--std=" + ",".join(map(str, DEMO_STD)),
        "--batch_size=8", "--show=20",
        "--runner=PortableRunner", f"--job_endpoint={cluster.job_endpoint}",
        "--environment_type=EXTERNAL", f"--environment_config={cluster.worker_pool_address}",
        # The job server in its container has no Flink configuration: without it, parallelism 1.
        f"--parallelism={cluster.parallelism}",
        *args,
    ]  # fmt: skip
    # FLINK_MASTER: the command reads the job's counters from Flink's REST API.
    return command, {**os.environ, **cluster.client_environment, "FLINK_MASTER": cluster.master}


def run_in_cluster(
    cluster: PodFlinkCluster, store: str, input: str | Path, output: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    command, env = cluster_job(cluster, store, input, output, *args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def rest(cluster: PodFlinkCluster, path: str) -> dict:
    with urllib.request.urlopen(f"{cluster.web_ui}{path}", timeout=10) as response:
        return json.load(response)


def ran_on_taskmanagers(cluster: PodFlinkCluster, vertex_name: str) -> set[str]:
    """The TaskManagers the last finished job's vertices named `vertex_name` ran on."""
    jobs = [j for j in rest(cluster, "/jobs/overview")["jobs"] if j["state"] == "FINISHED"]
    job = max(jobs, key=lambda j: j["end-time"])
    vertices = [v for v in rest(cluster, f"/jobs/{job['jid']}")["vertices"]]
    named = [v for v in vertices if vertex_name in v["name"]]
    assert named, [v["name"] for v in vertices]
    return {
        tm["taskmanager-id"]
        for vertex in named
        for tm in rest(cluster, f"/jobs/{job['jid']}/vertices/{vertex['id']}/taskmanagers")[
            "taskmanagers"
        ]
    }


@pytest.mark.slow
@needs_cluster
@needs_store_cluster
def test_photos_and_hostile_inputs_from_the_store_give_the_direct_runners_answers(
    store_cluster: PodFlinkCluster,
    inputs: Path,  # noqa: F811
    direct: tuple[dict, dict],  # noqa: F811
    hostile: list[Case],
    tmp_path: Path,
) -> None:
    store = f"s3://{BUCKET}/photos"
    run = run_in_cluster(store_cluster, store, inputs, tmp_path / "results")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    predictions, failures = results(tmp_path)  # asserts that no input came out twice
    # Each input came out under its object URI; map them back to the local paths.
    local = {f"{store}/inputs/{object_key(p)}": p for p in image_paths(str(inputs))}
    assert sorted(predictions) + sorted(failures) and set(predictions) | set(failures) == set(local)
    expected_predictions, expected_failures = direct
    assert {local[i] for i in predictions} == set(expected_predictions)
    for uri, top_k in predictions.items():
        expected = expected_predictions[local[uri]]
        assert [i for i, _ in top_k] == [i for i, _ in expected], uri
        assert [s for _, s in top_k] == pytest.approx([s for _, s in expected], abs=1e-5), uri
    assert {local[i] for i in failures} == set(expected_failures)
    # What exists locally failed for the same reason; what does not (a missing path, a folder)
    # was listed under its would-be URI and failed as an object that is not there.
    uploaded = {str(c.path) for c in hostile if c.path.is_file()}
    for uri, reason in failures.items():
        if local[uri] in uploaded:
            assert reason == expected_failures[local[uri]].replace(local[uri], uri), uri
        else:
            assert reason == f"{uri}: no such file; check the path"
    assert f"{store}/inputs/" in run.stdout  # the table names the objects
    assert f"{len(predictions)} images classified, {len(failures)} failed" in run.stderr
    # The classifying tasks ran on both TaskManager pods, each asking its own sidecar for workers.
    assert ran_on_taskmanagers(store_cluster, "Classify") == {
        store_cluster.taskmanager_pod(i) for i in range(TASKMANAGERS)
    }
    for index in range(TASKMANAGERS):
        pool = f"{store_cluster.taskmanager_pod(index)}-worker-pool"
        assert "Starting worker" in store_cluster.logs(pool, lines=10_000), pool
    # Nothing of this machine is visible in any container, the store's and the sidecars' included.
    for container in store_cluster.containers():
        seen = subprocess.run(["podman", "exec", container, "test", "-e", str(ROOT)])
        assert seen.returncode == 1, f"{ROOT} is visible in {container}"


@pytest.mark.slow
@needs_cluster
@needs_store_cluster
def test_a_pipelines_staged_files_reach_the_workers_through_the_store(
    store_cluster: PodFlinkCluster, tmp_path: Path
) -> None:
    """The job server stages a job's artifacts in the store (s3://BUCKET/beam-artifacts) and
    each TaskManager serves them to its workers from there: a file staged with
    `--files_to_stage` is read back in the workers. In the job server's own folder, the
    TaskManagers (other machines) would not find it and the workers would get an empty file."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    assert store_cluster.artifacts_dir == f"s3://{BUCKET}/beam-artifacts"
    token = secrets.token_hex(8)
    staged = tmp_path / f"staged-{token}.txt"
    staged.write_text(token)

    def read_staged(x: int, name: str = staged.name) -> str:
        folder = os.environ.get("SEMI_PERSISTENT_DIRECTORY", "/tmp")
        with open(os.path.join(folder, "staged", name)) as f:
            return f"{f.read()}-{x}"

    options = PipelineOptions(
        [
            "--runner=PortableRunner",
            f"--job_endpoint={store_cluster.job_endpoint}",
            "--environment_type=EXTERNAL",
            f"--environment_config={store_cluster.worker_pool_address}",
            f"--parallelism={store_cluster.parallelism}",
            f"--files_to_stage={staged}",
        ]
    )
    pipeline = beam.Pipeline(options=options)
    read = pipeline | beam.Create(range(20)) | beam.Map(read_staged)
    assert_that(read, equal_to([f"{token}-{x}" for x in range(20)]))
    assert pipeline.run().wait_until_finish(duration=300_000) == "DONE"
    for index in range(TASKMANAGERS):
        container = f"{store_cluster.taskmanager_pod(index)}-taskmanager"
        log = store_cluster.logs(container, lines=100_000)
        assert "FileNotFoundException" not in log, container


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    return make_shards(tmp_path_factory.mktemp("shards"), samples=SAMPLES, shards=SHARDS)


@pytest.fixture(scope="module")
def expected_shards(shards: Shards, demo_top1: dict[str, int]) -> dict[str, int]:
    """The reference top-1 of every sample of the tar shards, from the photo it holds."""
    return {
        id: demo_top1[metadata["json"]["source"]]
        for id, metadata in shards.metadata.items()
        if id.startswith("photos-")
    }


@pytest.mark.slow
@needs_cluster
@needs_store_cluster
def test_tar_and_parquet_shards_in_the_store(
    store_cluster: PodFlinkCluster,
    shards: Shards,
    expected_shards: dict[str, int],
    demo_top1: dict[str, int],
    tmp_path: Path,
) -> None:
    tars = run_in_cluster(
        store_cluster, f"s3://{BUCKET}/tar", f"{shards.folder}/webdataset/photos-*.tar",
        tmp_path / "tar" / "results",
    )  # fmt: skip
    assert tars.returncode == 0, tars.stderr[-3000:]
    predictions, failures = results(tmp_path / "tar")
    assert failures == {}
    assert {image: top_k[0][0] for image, top_k in predictions.items()} == expected_shards
    assert ran_on_taskmanagers(store_cluster, "ClassifySamples") == {
        store_cluster.taskmanager_pod(i) for i in range(TASKMANAGERS)
    }

    parquet = run_in_cluster(
        store_cluster, f"s3://{BUCKET}/parquet", f"{shards.folder}/parquet/*.parquet",
        tmp_path / "parquet" / "results", "--output_format=parquet",
    )  # fmt: skip
    assert parquet.returncode == 0, parquet.stderr[-3000:]
    out = tmp_path / "parquet"
    rows = pq.read_table(sorted(out.glob("results-*.parquet"))).to_pylist()
    failed = pq.read_table(sorted(out.glob("results_failures-*.parquet"))).to_pylist()
    seen = [r["image"] for r in rows + failed]
    assert len(seen) == len(set(seen)), "a sample came out twice"
    # The Parquet files' samples are named SHARD/ROW, the shard a number: one row holds no image.
    wanted = [i for i in [*shards.images, *shards.failures] if i.split("/")[0].isdigit()]
    assert sorted(seen) == sorted(wanted)
    for record in failed:
        assert shards.failures[record["image"]] in record["error"], record
    top1_by_bytes = {(IMAGES / name).read_bytes(): index for name, index in demo_top1.items()}
    for record in rows:
        data = shards.images[record["image"]]
        if data in top1_by_bytes:
            assert record["top_indices"][0] == top1_by_bytes[data], record["image"]


@pytest.mark.slow
@needs_cluster
@needs_store_cluster
def test_a_killed_taskmanager_pod_is_replaced_and_every_sample_comes_out_once(
    store_cluster: PodFlinkCluster,
    shards: Shards,
    expected_shards: dict[str, int],
    tmp_path: Path,
) -> None:
    """TaskManager pod 1 is killed (`podman pod kill`) mid-job and started again, as Kubernetes
    replaces a pod: Flink's restart strategy reruns the job, and every sample comes out once."""
    before = rest(store_cluster, "/jobs/overview")["jobs"]
    command, env = cluster_job(
        store_cluster, f"s3://{BUCKET}/kill", f"{shards.folder}/webdataset/photos-*.tar",
        tmp_path / "results",
    )  # fmt: skip
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while store_cluster.overview()["jobs-running"] < 1:
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(1)
        time.sleep(20)  # into the classification
        assert job.poll() is None, "the job ended before a TaskManager could be killed"
        pod = store_cluster.taskmanager_pod(1)
        subprocess.run(["podman", "pod", "kill", pod], check=True, capture_output=True)
        subprocess.run(["podman", "pod", "rm", "--force", pod], check=True, capture_output=True)
        store_cluster.start_taskmanager(1)
        returncode = job.wait(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    jobs = [j for j in rest(store_cluster, "/jobs/overview")["jobs"] if j not in before]
    if returncode != 0:
        # What Flink saw, for the message: each new job's exception history.
        for failed in jobs:
            history = rest(store_cluster, f"/jobs/{failed['jid']}/exceptions")
            entries = history.get("exceptionHistory", {}).get("entries", [])
            with open(tmp_path / "job.log", "a") as log:
                for entry in entries:
                    log.write(f"\n{entry.get('taskName')} on {entry.get('location')}:\n")
                    log.write(str(entry.get("stacktrace", ""))[:1500])
        with open(tmp_path / "job.log", "a") as log:
            log.write(f"\njobs: {jobs}\nthe job server's log ends with:\n")
            log.write(store_cluster.logs(store_cluster.job_server, lines=40))
            # A TaskManager that died on its own (a metaspace exhausted, say) says why here.
            for container in store_cluster.exited():
                log.write(f"\n{container} exited; its log ends with:\n")
                log.write(store_cluster.logs(container, lines=15))
    assert returncode == 0, (tmp_path / "job.log").read_text()[-6000:]
    predictions, failures = results(tmp_path)  # asserts that no sample came out twice
    assert failures == {}
    assert {image: top_k[0][0] for image, top_k in predictions.items()} == expected_shards
    (run,) = [j for j in jobs if j["state"] == "FINISHED"]
    exceptions = rest(store_cluster, f"/jobs/{run['jid']}/exceptions")
    assert exceptions.get("exceptionHistory", {}).get("entries"), "the job never restarted"
    assert store_cluster.overview()["taskmanagers"] == TASKMANAGERS


class _WrongKeyCluster(PodFlinkCluster):
    """A cluster whose SDK workers are given a secret key the store refuses."""

    @property
    def worker_environment(self) -> dict[str, str]:
        return {**super().worker_environment, "AWS_SECRET_ACCESS_KEY": "not-the-stores-secret"}


@pytest.mark.slow
@needs_cluster
@needs_store_cluster
def test_workers_that_the_store_refuses_fail_the_job_with_the_reason(tmp_path: Path) -> None:
    """The client reaches the store and puts the files; the workers are refused by it: the job
    fails within minutes, and the error names the object and the store's answer."""
    properties = {
        "taskmanager.numberOfTaskSlots": "1",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "1",
        "restart-strategy.fixed-delay.delay": "1 s",
    }
    with _WrongKeyCluster(
        FLINK_IMAGE,
        taskmanagers=1,
        rest_port=free_port(),
        flink_properties=properties,
        **store_cluster_parts(),
    ) as cluster:
        listed = tmp_path / "images.txt"
        listed.write_text(f"{IMAGES / 'china.jpg'}\n")
        started = time.monotonic()
        run = run_in_cluster(cluster, f"s3://{BUCKET}/refused", listed, tmp_path / "results")
        took = time.monotonic() - started
        assert run.returncode != 0, run.stdout[-2000:]
        # The first object the workers ask for is the input list: its URI and the store's answer.
        assert f"s3://{BUCKET}/refused/inputs.txt" in run.stderr, run.stderr[-3000:]
        assert "403" in run.stderr and "Forbidden" in run.stderr, run.stderr[-3000:]
        assert took < 600
    assert leftovers(cluster.name) == []
