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

from beam_ml_flink.services.pod_cluster import (
    PodFlinkCluster,
    flink_deployment_properties,
    image_exists,
    podman_missing,
)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "flink-deployment.yaml"
FLINK_IMAGE = os.environ.get("BMF_FLINK_IMAGE", "localhost/beam-ml-flink/flink:1.19.3")
TASKMANAGERS = int(os.environ.get("BMF_TASKMANAGERS", "2"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(podman_missing() is not None, reason=str(podman_missing())),
    pytest.mark.skipif(
        podman_missing() is None and not image_exists(FLINK_IMAGE),
        reason=f"no Flink image {FLINK_IMAGE}: `make docker-flink` builds it",
    ),
]


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
