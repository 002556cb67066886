"""The Flink cluster whose machines share nothing: a JobManager container and TaskManager pods on
one podman network (`make test-cluster` builds the image with `make docker-flink` and runs this)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from beam_ml_flink.services import ARTIFACT_PORT, EXPANSION_PORT, JOB_PORT
from beam_ml_flink.services.pod_cluster import (
    WORKER_POOL_ARGS,
    WORKER_POOL_CONTAINER_PORT,
    PodFlinkCluster,
    flink_deployment_properties,
    image_exists,
    podman_missing,
)

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
        for container in containers:
            for path in (ROOT, Path("/", ROOT.parts[1])):
                seen = subprocess.run(
                    ["podman", "exec", container, "test", "-e", str(path)], check=False
                )
                assert seen.returncode == 1, f"{path} is visible in {container}"
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
