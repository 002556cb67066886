"""A Flink cluster whose machines share nothing, in containers: a JobManager and N TaskManager pods
on one podman network, each with its own filesystem and network namespace and no folder of this
machine mounted, the layout of deploy/kubernetes/flink-deployment.yaml (a pod per TaskManager, so
that an SDK worker pool beside it is at localhost). Only the JobManager's REST port is published,
to this machine's loopback: what a client of a real cluster sees."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

from beam_ml_flink.services.flink import ARTIFACT_PORT, DEFAULT_REST_PORT, EXPANSION_PORT, JOB_PORT
from beam_ml_flink.services.object_store import (
    OBJECT_STORE_ACCESS_KEY,
    OBJECT_STORE_PORT,
    OBJECT_STORE_SECRET_KEY,
    client_environment,
    create_buckets,
    s3_client,
    wait_until_answers,
)
from beam_ml_flink.services.process import (
    START_TIMEOUT_S,
    Service,
    ServiceError,
    check_ports_free,
    port_open,
)

# Every container, pod and network of a cluster carries this label with the cluster's name, so
# that stopping it removes exactly what it made, whatever state a failed start left.
CLUSTER_LABEL = "beam-ml-flink.cluster"
# The JobManager's name on the cluster's network, as the TaskManagers and the job server reach it.
JOBMANAGER_HOST = "jobmanager"
# Beam's SDK worker image started with --worker_pool serves workers on this port (boot.go); each
# TaskManager reaches the one in its pod at localhost (deploy/kubernetes/flink-deployment.yaml).
WORKER_POOL_ARGS = ("--worker_pool",)
WORKER_POOL_CONTAINER_PORT = 50000
JOB_SERVER_HOST = "job-server"
# The object store's name and port on the cluster's network: the endpoint the SDK workers use.
OBJECT_STORE_HOST = "object-store"
OBJECT_STORE_CONTAINER_PORT = 9000
# With an object store and a bucket, the job server stages the jobs' artifacts under this prefix
# of the first bucket, where every TaskManager reads them (docs/runners.md).
ARTIFACTS_PREFIX = "beam-artifacts"
PODMAN_TIMEOUT_S = 120.0


def flink_deployment_properties(manifest: str | Path) -> dict[str, str]:
    """The Flink configuration of a FlinkDeployment manifest (deploy/kubernetes/) as Flink
    properties: its flinkConfiguration, and the JobManager's and TaskManagers' memory as
    their process sizes, which is what the Flink Kubernetes Operator makes of them. A cluster in
    containers started with these runs the TaskManagers the manifest describes."""
    documents = [d for d in yaml.safe_load_all(Path(manifest).read_text()) if d]
    deployments = [d for d in documents if d.get("kind") == "FlinkDeployment"]
    if len(deployments) != 1:
        raise ServiceError(
            f"{manifest} holds {len(deployments)} FlinkDeployment documents; give a manifest "
            "with exactly one"
        )
    spec = deployments[0]["spec"]
    properties = {str(k): str(v) for k, v in (spec.get("flinkConfiguration") or {}).items()}
    for role in ("jobManager", "taskManager"):
        memory = ((spec.get(role) or {}).get("resource") or {}).get("memory")
        if memory:
            properties[f"{role.lower()}.memory.process.size"] = str(memory)
    return properties


def podman_missing() -> str | None:
    """Why no cluster in containers can start here, or None when podman answers."""
    if shutil.which("podman") is None:
        return "podman is not installed: `make container-engine` installs podman and runc"
    result = subprocess.run(["podman", "info"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return (
            f"podman does not answer (`podman info` exited with {result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        )
    return None


def image_exists(image: str) -> bool:
    return (
        subprocess.run(["podman", "image", "exists", image], check=False).returncode == 0
        if shutil.which("podman")
        else False
    )


def _graph_root() -> str:
    """Where podman keeps its images, as it says."""
    result = _podman("info", "--format", "{{.Store.GraphRoot}}", check=False)
    return result.stdout.strip() or "(podman info did not say)"


def _podman(
    *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs podman; `env` is added to its environment (a container's keys are passed as
    `--env NAME`, taken from there, so that no key is on a command line)."""
    try:
        result = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=PODMAN_TIMEOUT_S,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except subprocess.TimeoutExpired as error:
        raise ServiceError(
            f"`podman {' '.join(args[:3])} ...` did not finish within {PODMAN_TIMEOUT_S:.0f} s; "
            "`podman ps -a` shows what the engine is doing"
        ) from error
    if check and result.returncode != 0:
        raise ServiceError(
            f"`podman {' '.join(args)}` failed with exit code {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}"
        )
    return result


def _env_flags(env: Mapping[str, str]) -> list[str]:
    """`podman run` flags that pass the variables of `env` by name: their values come from
    podman's own environment (`_podman(env=...)`), so that no key is on a command line."""
    return [arg for name in env for arg in ("--env", name)]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class PodFlinkCluster(Service):
    """A standalone Flink session cluster in containers of `image` (`make docker-flink`): a
    JobManager container and `taskmanagers` TaskManager pods on a podman network of their own,
    configured by `flink_properties` (Flink's keys; :func:`flink_deployment_properties` reads them
    from the Kubernetes manifest). Flink's REST API is published at 127.0.0.1:`rest_port`
    (:attr:`master`); nothing else of the cluster is reachable from this machine, and no folder of
    this machine is visible in it. Leaving the context (also on an exception, Ctrl-C or SIGTERM)
    removes every container, pod and network it made.

    With `object_store_image` (S3Proxy, data/container/s3proxy.Dockerfile) an S3-compatible store
    runs on the network too, as `object-store:9000`, published at 127.0.0.1:`object_store_port`,
    `buckets` created; the worker pool sidecars get its in-cluster endpoint and keys in their
    environment, and :attr:`client_environment` is what a client on this machine needs. The job
    server and the TaskManagers get them too (:attr:`java_environment`), and the job server
    stages the jobs' artifacts in the store, `s3://<first bucket>/beam-artifacts` unless
    `artifacts_dir` says otherwise: no TaskManager could read them from the job server's own
    disk."""

    def __init__(
        self,
        image: str,
        taskmanagers: int = 2,
        rest_port: int = DEFAULT_REST_PORT,
        flink_properties: Mapping[str, str] | None = None,
        name: str | None = None,
        worker_image: str | None = None,
        job_server_image: str | None = None,
        job_server_ports: tuple[int, int, int] = (JOB_PORT, ARTIFACT_PORT, EXPANSION_PORT),
        artifacts_dir: str | None = None,
        object_store_image: str | None = None,
        object_store_port: int = OBJECT_STORE_PORT,
        buckets: Sequence[str] = (),
        access_key: str = OBJECT_STORE_ACCESS_KEY,
        secret_key: str = OBJECT_STORE_SECRET_KEY,
    ):
        if taskmanagers < 1:
            raise ServiceError(f"a cluster needs at least one TaskManager; got {taskmanagers}")
        self.image = image
        self.taskmanagers = taskmanagers
        self.rest_port = rest_port
        self.flink_properties = dict(flink_properties or {})
        self.name = name or f"beam-ml-flink-{secrets.token_hex(4)}"
        self.network = self.name
        self.jobmanager = f"{self.name}-jobmanager"
        self.slots = int(self.flink_properties.get("taskmanager.numberOfTaskSlots", "1"))
        self.worker_image = worker_image
        self.job_server_image = job_server_image
        self.job_server_ports = job_server_ports
        if artifacts_dir is None and object_store_image and buckets and job_server_image:
            artifacts_dir = f"s3://{buckets[0]}/{ARTIFACTS_PREFIX}"
        self.artifacts_dir = artifacts_dir
        self.job_server = f"{self.name}-job-server"
        self.object_store_image = object_store_image
        self.object_store_port = object_store_port
        self.buckets = list(buckets)
        self.access_key = access_key
        self.secret_key = secret_key
        self.object_store = f"{self.name}-object-store"
        self._object_store_ip: str | None = None
        self._starts = [0] * taskmanagers
        self._started = False
        self._previous_sigterm: Any = None

    @property
    def master(self) -> str:
        """The address a job server or `--flink_master` on this machine takes."""
        return f"localhost:{self.rest_port}"

    @property
    def job_endpoint(self) -> str:
        """With a job server: what `--job_endpoint` of a PortableRunner on this machine takes."""
        return f"localhost:{self.job_server_ports[0]}"

    @property
    def worker_pool_address(self) -> str:
        """With a worker image: what `--environment_config` takes (EXTERNAL environments)."""
        return f"localhost:{WORKER_POOL_CONTAINER_PORT}"

    @property
    def object_store_endpoint(self) -> str:
        """With an object store: its endpoint as this machine reaches it."""
        return f"http://127.0.0.1:{self.object_store_port}"

    @property
    def client_environment(self) -> dict[str, str]:
        """With an object store: what a process on this machine needs in its environment to reach
        it through boto3 and Beam's S3 filesystem (endpoint, keys, region)."""
        return client_environment(self.object_store_endpoint, self.access_key, self.secret_key)

    @property
    def worker_environment(self) -> dict[str, str]:
        """With an object store: the same as the SDK workers in the pods see it, at its name on
        the cluster's network."""
        endpoint = f"http://{OBJECT_STORE_HOST}:{OBJECT_STORE_CONTAINER_PORT}"
        return client_environment(endpoint, self.access_key, self.secret_key)

    @property
    def java_environment(self) -> dict[str, str]:
        """With an object store: the same for the job server and the TaskManagers, whose S3
        filesystem (Beam's Java one, AWS SDK 2.30) reads the endpoint from AWS_ENDPOINT_URL_S3.
        The endpoint is the store's address on the cluster's network, not its name: the Java SDK
        sends a request for a bucket to the host `<bucket>.<endpoint's host>` unless that host is
        an IP address, and only the store's name is in the network's DNS."""
        if not self._object_store_ip:
            return {}
        endpoint = f"http://{self._object_store_ip}:{OBJECT_STORE_CONTAINER_PORT}"
        return client_environment(endpoint, self.access_key, self.secret_key)

    @property
    def web_ui(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def parallelism(self) -> int:
        return self.slots * self.taskmanagers

    def taskmanager_pod(self, index: int) -> str:
        return f"{self.name}-taskmanager-{index}"

    def _label(self) -> list[str]:
        return ["--label", f"{CLUSTER_LABEL}={self.name}"]

    def _properties(self, **extra: str) -> list[str]:
        properties = {
            "jobmanager.rpc.address": JOBMANAGER_HOST,
            "rest.address": JOBMANAGER_HOST,
            "parallelism.default": str(self.parallelism),
            **self.flink_properties,
            **extra,
        }
        return [arg for key, value in properties.items() for arg in ("-D", f"{key}={value}")]

    def start(self) -> None:
        reason = podman_missing()
        if reason:
            raise ServiceError(reason)
        for image, target in (
            (self.image, "docker-flink"),
            (self.worker_image, "docker-cpu"),
            (self.job_server_image, "docker-job-server"),
            (self.object_store_image, "docker-object-store"),
        ):
            if image and not image_exists(image):
                raise ServiceError(
                    f"there is no image {image} in podman's store {_graph_root()}: "
                    f"`make {target}` builds it (where podman runs as root, make keeps the "
                    "images in ~/.cache/beam_ml_flink/containers: give podman "
                    "CONTAINERS_STORAGE_CONF=build/container-engine/storage.conf to use them)"
                )
        ports = [self.rest_port] + (list(self.job_server_ports) if self.job_server_image else [])
        ports += [self.object_store_port] if self.object_store_image else []
        check_ports_free(ports, "Flink cluster in containers")
        self._started = True
        _podman("network", "create", *self._label(), self.network)
        if self.object_store_image:
            self.start_object_store()
        _podman(
            "run", "--detach", "--name", self.jobmanager, *self._label(),
            "--network", self.network, "--network-alias", JOBMANAGER_HOST,
            "--publish", f"127.0.0.1:{self.rest_port}:8081",
            self.image, "bin/jobmanager.sh", "start-foreground", *self._properties(),
        )  # fmt: skip
        for index in range(self.taskmanagers):
            self.start_taskmanager(index)
        if self.job_server_image:
            self.start_job_server()
        for container in self.containers(infra=True):
            self._check_no_host_mounts(container)
        self._wait_until_ready()
        if self.job_server_image:
            self._wait_for_job_server()
        if self.object_store_image:
            self._wait_for_object_store()

    def start_object_store(self) -> None:
        """S3Proxy on the cluster's network as `object-store:9000`, its objects inside its own
        container; the keys reach it through the environment, never a command line."""
        keys = {"S3PROXY_IDENTITY": self.access_key, "S3PROXY_CREDENTIAL": self.secret_key}
        _podman(
            "run", "--detach", "--name", self.object_store, *self._label(),
            "--network", self.network, "--network-alias", OBJECT_STORE_HOST,
            "--publish", f"127.0.0.1:{self.object_store_port}:{OBJECT_STORE_CONTAINER_PORT}",
            *_env_flags(keys),
            self.object_store_image or "",
            env=keys,
        )  # fmt: skip
        address = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        self._object_store_ip = _podman(
            "inspect", "--format", address, self.object_store
        ).stdout.strip()

    def _wait_for_object_store(self) -> None:
        wait_until_answers(
            self.object_store_endpoint,
            self.access_key,
            self.secret_key,
            lambda: self.object_store in self.exited(),
            lambda: f"its log ({self.object_store}) ends with:\n{self.logs(self.object_store)}",
        )
        create_buckets(self.store_client(), self.object_store_endpoint, self.buckets)

    def store_client(self) -> Any:
        """A boto3 S3 client of the cluster's object store, from this machine."""
        return s3_client(self.object_store_endpoint, self.access_key, self.secret_key)

    def exited(self) -> list[str]:
        """The names of the cluster's containers that have exited."""
        return self._listed("ps", "--all", "--filter=status=exited", "--format={{.Names}}")

    def start_job_server(self) -> None:
        """Beam's Flink job server, submitting to the JobManager over the cluster network. Its
        ports are published at the same numbers, because the job server tells the client its
        artifact staging endpoint by its own port number."""
        job, artifact, expansion = self.job_server_ports
        args = [
            f"--flink-master={JOBMANAGER_HOST}:8081",
            "--job-host=0.0.0.0",
            f"--job-port={job}",
            f"--artifact-port={artifact}",
            f"--expansion-port={expansion}",
        ]
        if self.artifacts_dir:
            args.append(f"--artifacts-dir={self.artifacts_dir}")
        publish = [
            arg
            for port in self.job_server_ports
            for arg in ("--publish", f"127.0.0.1:{port}:{port}")
        ]
        store = self.java_environment
        _podman(
            "run", "--detach", "--name", self.job_server, *self._label(),
            "--network", self.network, "--network-alias", JOB_SERVER_HOST, *publish,
            *_env_flags(store),
            self.job_server_image or "", *args,
            env=store,
        )  # fmt: skip

    def _wait_for_job_server(self) -> None:
        started = time.monotonic()
        while True:
            # Its published port refuses connections until the job server listens inside.
            if port_open(self.job_server_ports[0]):
                return
            log = self.logs(self.job_server)
            exited = self.exited()
            if self.job_server in exited or time.monotonic() > started + START_TIMEOUT_S:
                raise ServiceError(
                    f"Beam's job server {self.job_server} did not answer on {self.job_endpoint} "
                    f"within {time.monotonic() - started:.0f} s; its log ends with:\n{log[-3000:]}"
                )
            time.sleep(1)

    def start_taskmanager(self, index: int) -> None:
        """TaskManager `index` in a pod of its own, as on Kubernetes: the pod holds the network
        namespace, which an SDK worker pool container beside it shares. Its Flink resource ID is
        the pod's name; a TaskManager started again in place of one that died gets a new one
        (`<pod>-<n>`), as a replacement pod on Kubernetes has a new name: under the same ID the
        JobManager takes it for the old one reconnecting and keeps looking for the old one's
        results there, and a batch job's restarts failed ("Connection for partition ... not
        reachable") until they ran out."""
        pod = self.taskmanager_pod(index)
        self._starts[index] += 1
        resource_id = pod if self._starts[index] == 1 else f"{pod}-{self._starts[index]}"
        _podman(
            "pod", "create", "--name", pod, *self._label(), "--network", self.network,
            "--network-alias", pod, "--hostname", pod,
        )  # fmt: skip
        # The store's endpoint and keys: a TaskManager reads the staged artifacts from there.
        java = self.java_environment
        # The address the TaskManager gives the JobManager: the distribution's says localhost.
        _podman(
            "run", "--detach", "--pod", pod, "--name", f"{pod}-taskmanager", *self._label(),
            *_env_flags(java),
            self.image, "bin/taskmanager.sh", "start-foreground",
            *self._properties(**{"taskmanager.host": pod, "taskmanager.resource-id": resource_id}),
            env=java,
        )  # fmt: skip
        if self.worker_image:
            store = self.worker_environment if self.object_store_image else {}
            _podman(
                "run", "--detach", "--pod", pod, "--name", f"{pod}-worker-pool", *self._label(),
                *_env_flags(store),
                self.worker_image, *WORKER_POOL_ARGS,
                env=store,
            )  # fmt: skip

    def _check_no_host_mounts(self, container: str) -> None:
        # An engine configured to mount a folder into every container (the `volumes` of a
        # containers.conf, as DOCKER workers on one machine use) would break "share nothing".
        mounts = json.loads(_podman("inspect", "--format", "{{json .Mounts}}", container).stdout)
        binds = [m.get("Source") for m in mounts or [] if m.get("Type") == "bind"]
        if binds:
            raise ServiceError(
                f"the container {container} has folders of this machine mounted ({binds}): the "
                "container engine's configuration adds them (the `volumes` of the containers.conf "
                "that CONTAINERS_CONF names); start the cluster with one that mounts nothing, such "
                "as data/container/containers.conf"
            )

    def containers(self, infra: bool = False) -> list[str]:
        """The names of the cluster's containers; with `infra`, the pods' infrastructure
        containers (which hold a pod's namespaces and run nothing of ours) too."""
        listed = self._listed("ps", "--all", "--format", "{{.Names}}/{{.IsInfra}}")
        return [n for n, is_infra in (c.split("/") for c in listed) if infra or is_infra != "true"]

    def pods(self) -> list[str]:
        return self._listed("pod", "ps", "--format", "{{.Name}}")

    def networks(self) -> list[str]:
        return self._listed("network", "ls", "--format", "{{.Name}}")

    def _listed(self, *command: str) -> list[str]:
        result = _podman(*command, "--filter", f"label={CLUSTER_LABEL}={self.name}")
        return sorted(line for line in result.stdout.split() if line)

    def logs(self, container: str, lines: int = 30) -> str:
        """The last `lines` of a container's output (Flink logs to the console in a container)."""
        result = _podman("logs", "--tail", str(lines), container, check=False)
        return result.stdout + result.stderr

    def overview(self) -> dict[str, int]:
        """The cluster's /overview from its REST API."""
        with urllib.request.urlopen(f"{self.web_ui}/overview", timeout=5) as response:
            overview: dict[str, int] = json.load(response)
            return overview

    def taskmanager_info(self) -> list[dict[str, Any]]:
        """The registered TaskManagers, from the REST API's /taskmanagers."""
        with urllib.request.urlopen(f"{self.web_ui}/taskmanagers", timeout=5) as response:
            taskmanagers: list[dict[str, Any]] = json.load(response)["taskmanagers"]
            return taskmanagers

    def _wait_until_ready(self) -> None:
        started = time.monotonic()
        while True:
            with contextlib.suppress(OSError, ValueError):
                overview = self.overview()
                if (
                    overview.get("taskmanagers", 0) >= self.taskmanagers
                    and overview.get("slots-available", 0) >= self.parallelism
                ):
                    return
            exited = self.exited()
            if exited or time.monotonic() > started + START_TIMEOUT_S:
                logs = "\n".join(f"--- {c}\n{self.logs(c)}" for c in self.containers())
                what = f"{', '.join(exited)} exited" if exited else "it timed out"
                raise ServiceError(
                    f"the Flink cluster in containers {self.name} did not have {self.taskmanagers} "
                    f"TaskManagers with {self.parallelism} free task slots on {self.web_ui}: "
                    f"{what} after {time.monotonic() - started:.0f} s. The "
                    f"containers' logs end with:\n{logs}"
                )
            time.sleep(1)

    def stop(self) -> None:
        if not self._started:
            return
        # Pods first (their containers with them), then what is left, then the network.
        pods = self.pods()
        if pods:
            _podman("pod", "rm", "--force", "--time", "10", *pods, check=False)
        containers = self.containers(infra=True)
        if containers:
            _podman("rm", "--force", "--time", "10", *containers, check=False)
        networks = self.networks()
        if networks:
            _podman("network", "rm", "--force", *networks, check=False)
        left = self.containers(infra=True) + self.pods() + self.networks()
        if left:
            raise ServiceError(
                f"the Flink cluster in containers {self.name} left {left} behind: remove them with "
                f"`podman pod rm -f` / `podman rm -f` / `podman network rm`"
            )
        self._started = False

    def __enter__(self) -> PodFlinkCluster:
        # SIGTERM unwinds like Ctrl-C while the cluster runs, so that it is removed either way;
        # only the main thread may set handlers, and a handler someone else set is left alone.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            self._previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        try:
            super().__enter__()
        except BaseException:
            self._restore_sigterm()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
