"""The Docker and Dataproc targets print, with DRY_RUN=1, complete and well-formed commands built
from .env, or from the environment where it overrides .env."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

from beam_ml_flink import services
from beam_ml_flink.options import ImageClassificationOptions
from beam_ml_flink.services.pod_cluster import flink_deployment_properties
from conftest import ROOT

pytestmark = pytest.mark.slow

SETTINGS = {
    "PROJECT_ID": "test-project",
    "REGION": "europe-west4",
    "ZONE": "europe-west4-b",
    "CLUSTER_NAME": "test-cluster",
    "IMAGE_REPOSITORY": "europe-west4-docker.pkg.dev/test-project/images",
    "IMAGE_NAME": "classifier",
    "IMAGE_TAG": "v7",
    "IMAGE_BEAM_VERSION": "2.77.0",
    "DATAPROC_IMAGE_VERSION": "2.3-debian12",
    "MASTER_MACHINE_TYPE": "n2-standard-2",
    "WORKER_MACHINE_TYPE": "n2-highcpu-16",
    "NUM_WORKERS": "5",
    "WORKER_BOOT_DISK_SIZE": "200GB",
    "FLINK_REST_PORT": "8082",
    "FLINK_TUNNEL_PORT": "28082",
    "CLUSTER_INPUT": "gs://test-bucket/in/images.txt",
    "CLUSTER_OUTPUT": "gs://test-bucket/out/results",
    "CLUSTER_MODEL": "gs://test-bucket/models/model.pt",
    "CLUSTER_ARTIFACTS": "gs://test-bucket/staging",
}
IMAGE_URI = "europe-west4-docker.pkg.dev/test-project/images/classifier:v7"


def dry_run(target: str, settings: dict[str, str] | None = SETTINGS) -> list[list[str]]:
    """The commands `make DRY_RUN=1 target` prints, each split as a shell would."""
    env = {**os.environ, **(settings or {}), "DRY_RUN": "1"}
    run = subprocess.run(
        ["make", "--no-print-directory", "-s", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    commands = [shlex.split(line) for line in run.stdout.splitlines() if line.strip()]
    for command in commands:
        for word in command:
            assert "$(" not in word and not word.endswith("="), f"{word!r} in {command}"
    return commands


def flags(command: list[str]) -> dict[str, str]:
    return dict(
        w.removeprefix("--").split("=", 1) for w in command if w.startswith("--") and "=" in w
    )


def test_docker_cpu_builds_the_cpu_stage_of_the_dockerfile() -> None:
    assert dry_run("docker-cpu") == [
        [
            "docker",
            "build",
            "--target",
            "cpu",
            "--build-arg",
            "BEAM_VERSION=2.77.0",
            "--tag",
            IMAGE_URI,
            ".",
        ]
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "AS cpu" in dockerfile and "ARG BEAM_VERSION" in dockerfile
    # The public images by default; `make docker-cpu` without Docker Hub passes bases made here.
    assert "ARG SDK_IMAGE=apache/beam_python3.11_sdk:${BEAM_VERSION}" in dockerfile
    assert "ARG BUILDER_IMAGE=rust:1.95-slim-bookworm" in dockerfile
    assert "FROM ${SDK_IMAGE} AS cpu" in dockerfile
    assert "FROM ${BUILDER_IMAGE} AS builder" in dockerfile


def test_push_docker_cpu_logs_in_to_the_registry_host_and_pushes() -> None:
    commands = dry_run("push-docker-cpu")
    assert commands[-2:] == [
        ["gcloud", "auth", "configure-docker", "europe-west4-docker.pkg.dev", "--quiet"],
        ["docker", "push", IMAGE_URI],
    ]
    assert commands[0][:2] == ["docker", "build"]  # the image is built first


def test_create_flink_cluster_has_every_setting() -> None:
    (command,) = dry_run("create-flink-cluster")
    assert command[:5] == ["gcloud", "dataproc", "clusters", "create", "test-cluster"]
    assert flags(command) == {
        "project": "test-project",
        "region": "europe-west4",
        "zone": "europe-west4-b",
        "image-version": "2.3-debian12",
        "optional-components": "FLINK,DOCKER",
        "master-machine-type": "n2-standard-2",
        "worker-machine-type": "n2-highcpu-16",
        "num-workers": "5",
        "worker-boot-disk-size": "200GB",
        "scopes": "cloud-platform",
        # The metaspace that the Kubernetes manifest gives its TaskManagers.
        "properties": "flink:taskmanager.memory.jvm-metaspace.size="
        + flink_deployment_properties(ROOT / "deploy" / "kubernetes" / "flink-deployment.yaml")[
            "taskmanager.memory.jvm-metaspace.size"
        ],
    }
    assert "--enable-component-gateway" in command


def test_run_portable_flink_cluster_tunnels_submits_and_closes_the_tunnel() -> None:
    tunnel, submit, close = dry_run("run-portable-flink-cluster")
    assert tunnel[:4] == ["gcloud", "compute", "ssh", "test-cluster-m"]
    assert flags(tunnel) == {"project": "test-project", "zone": "europe-west4-b"}
    assert tunnel[tunnel.index("-L") + 1] == "28082:localhost:8082"
    assert close == ["pkill", "-f", "28082:localhost:8082"]

    # The services wrapper: its flags parse, and its job server submits to the tunnelled cluster.
    assert submit[1:3] == ["-m", "beam_ml_flink.services"]
    split = submit.index("--")
    wrapper = services.argument_parser().parse_args(submit[3:split])
    assert wrapper.flink_master == "localhost:28082" and not wrapper.cluster
    assert Path(ROOT / wrapper.job_server).name == "beam-flink-job-server.jar"
    assert (ROOT / wrapper.flink_conf).is_file()
    # The job's artifacts go where the cluster's TaskManagers read them, not this machine's disk.
    assert wrapper.artifacts_dir == "gs://test-bucket/staging"

    # The job: the CLI on the PortableRunner with the pushed image as its SDK workers.
    job = submit[split + 1 :]
    assert job[1:3] == ["-m", "beam_ml_flink"]
    options = PipelineOptions(job[3:])
    ours = options.view_as(ImageClassificationOptions)
    assert (ours.input, ours.output, ours.model_path) == (
        "gs://test-bucket/in/images.txt",
        "gs://test-bucket/out/results",
        "gs://test-bucket/models/model.pt",
    )
    portable = options.view_as(PortableOptions)
    assert portable.job_endpoint == f"localhost:{services.JOB_PORT}"
    assert (portable.environment_type, portable.environment_config) == ("DOCKER", IMAGE_URI)
    assert options.get_all_options()["runner"] == "PortableRunner"


def test_remove_flink_cluster() -> None:
    assert dry_run("remove-flink-cluster") == [
        [
            "gcloud",
            "dataproc",
            "clusters",
            "delete",
            "test-cluster",
            "--project=test-project",
            "--region=europe-west4",
            "--quiet",
        ]
    ]


@pytest.mark.parametrize("target", ["create-flink-cluster", "run-portable-flink-cluster"])
def test_defaults_come_from_dot_env(target: str) -> None:
    settings = dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    printed = " ".join(" ".join(c) for c in dry_run(target, settings=None))
    used = {
        "create-flink-cluster": ["PROJECT_ID", "REGION", "ZONE", "CLUSTER_NAME", "NUM_WORKERS"],
        "run-portable-flink-cluster": [
            "CLUSTER_INPUT",
            "CLUSTER_OUTPUT",
            "CLUSTER_MODEL",
            "CLUSTER_ARTIFACTS",
            "IMAGE_NAME",
        ],
    }[target]
    for key in used:
        assert settings[key] in printed, key
