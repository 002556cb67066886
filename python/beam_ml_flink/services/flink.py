"""Flink's local services: a standalone Flink cluster, Beam's Flink job server and Beam's Python
SDK worker pool."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import yaml

from beam_ml_flink.services.process import (
    START_TIMEOUT_S,
    ChildProcess,
    ProcessService,
    Service,
    ServiceError,
    check_ports_free,
    log_tail,
)
from beam_ml_flink.services.worker_pool import WORKER_POOL_HOST, WORKER_POOL_PORT, WorkerPool

# The ports of Beam's Flink job server, as Beam documents them.
JOB_PORT = 8099
ARTIFACT_PORT = 8098
EXPANSION_PORT = 8097

# Flink's own defaults, used when the configuration does not set them.
DEFAULT_REST_PORT = 8081
DEFAULT_RPC_PORT = 6123

# What Flink's own config.yaml passes to its JVMs so that Flink runs on Java 17: a job server's
# embedded Flink needs them too, as soon as a streaming job keeps state.
JAVA_17_FLAGS = tuple(
    [f"--add-exports=java.base/{p}=ALL-UNNAMED" for p in ("sun.net.util",)]
    + ["--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED"]
    + [
        f"--add-opens=java.base/{p}=ALL-UNNAMED"
        for p in (
            "java.lang",
            "java.net",
            "java.io",
            "java.nio",
            "sun.nio.ch",
            "java.lang.reflect",
            "java.text",
            "java.time",
            "java.util",
            "java.util.concurrent",
            "java.util.concurrent.atomic",
            "java.util.concurrent.locks",
        )
    ]
)


def flink_conf_dir(
    conf_file: str | os.PathLike[str], dest: Path, flink_location: Path | None
) -> Path:
    """Makes a FLINK_CONF_DIR at `dest`: `conf_file` as its config.yaml, and the logging
    configuration and host lists (masters, workers: this machine) of the Flink distribution at
    `flink_location` when one is given."""
    conf_file = Path(conf_file)
    if not conf_file.is_file():
        raise ServiceError(
            f"Flink configuration {conf_file} does not exist; pass an existing YAML file"
        )
    try:
        yaml.safe_load(conf_file.read_text())
    except yaml.YAMLError as e:
        raise ServiceError(f"Flink configuration {conf_file} is not valid YAML: {e}") from e
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if flink_location is not None:
        for item in (flink_location / "conf").iterdir():
            if item.suffix in (".properties", ".xml") or item.name in ("masters", "workers"):
                shutil.copy(item, dest / item.name)
    shutil.copy(conf_file, dest / "config.yaml")
    return dest


def _conf_value(conf_file: Path, dotted: str, default: object) -> object:
    """A key of a Flink YAML configuration, nested (`rest: {port: 8081}`) or flat (`rest.port`)."""
    conf = yaml.safe_load(conf_file.read_text()) or {}
    if dotted in conf:
        return conf[dotted]
    node: object = conf
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def cancel_flink_jobs(master: str, name: str, timeout: float = 60.0) -> list[str]:
    """Cancels the running jobs named `name` on the Flink cluster whose REST API is at `master`
    (host:port) and waits until they have stopped; returns their ids.

    Beam's job server does not do this itself: cancelling a job through it stops only its own
    wait for the job when the job runs on a Flink cluster, and the job keeps its task slots."""
    base = master if master.startswith("http") else f"http://{master}"

    def running() -> list[str]:
        with urllib.request.urlopen(f"{base}/jobs/overview", timeout=10) as response:
            jobs = json.load(response)["jobs"]
        return [
            job["jid"]
            for job in jobs
            if job["name"] == name and job["state"] not in ("FINISHED", "CANCELED", "FAILED")
        ]

    ids = running()
    for jid in ids:
        request = urllib.request.Request(f"{base}/jobs/{jid}?mode=cancel", method="PATCH")
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10).close()
    deadline = time.monotonic() + timeout
    while ids and running() and time.monotonic() < deadline:
        time.sleep(0.5)
    return ids


def _varints(data: bytes) -> list[int]:
    """The unsigned varints of a Beam metric payload, in order."""
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
    return values


def flink_job_metrics(master: str, name: str, namespace: str) -> dict[str, int]:
    """The Beam metrics of `namespace` that the newest job named `name` on the Flink cluster at
    `master` (host:port) has reported to Flink (its accumulators), summed over its tasks:
    counters by name, and distributions as NAME.count and NAME.sum. Empty when there are none.

    What a job server across a version gap may not return through Beam's job API."""
    base = master if master.startswith("http") else f"http://{master}"
    with urllib.request.urlopen(f"{base}/jobs/overview", timeout=10) as response:
        jobs = [job for job in json.load(response)["jobs"] if job["name"] == name]
    if not jobs:
        return {}
    jid = max(jobs, key=lambda job: job["start-time"])["jid"]
    with urllib.request.urlopen(f"{base}/jobs/{jid}/accumulators", timeout=10) as response:
        accumulators = json.load(response)["user-task-accumulators"]
    totals: dict[str, int] = {}
    for accumulator in accumulators:
        if accumulator["name"] != "__metricscontainers":
            continue
        for metric in json.loads(accumulator["value"])["metrics"].get("attempted", []):
            labels = metric.get("labels", {})
            if labels.get("NAMESPACE") != namespace:
                continue
            values = _varints(base64.b64decode(metric["payload"]))
            if metric["type"].endswith(":sum_int64:v1") and values:
                totals[labels["NAME"]] = totals.get(labels["NAME"], 0) + values[0]
            elif metric["type"].endswith(":distribution_int64:v1") and len(values) >= 2:
                for part, value in zip(("count", "sum"), values[:2], strict=True):
                    key = f"{labels['NAME']}.{part}"
                    totals[key] = totals.get(key, 0) + value
    return totals


class LocalFlinkCluster(Service):
    """A standalone Flink cluster on loopback: one JobManager and `taskmanagers` TaskManagers,
    started with the scripts of the Flink distribution at `flink_location` and configured by
    `conf_file`, whose default parallelism becomes all their slots. With `worker_pools`, each
    TaskManager has its own SDK worker pool beside it, as on a real cluster, which it reaches as
    ``sdk-worker-pool:5000`` (:attr:`worker_pool_address`, for ``--environment_config``).
    Logs and pid files go to `work_dir`."""

    def __init__(
        self,
        flink_location: str | os.PathLike[str],
        conf_file: str | os.PathLike[str],
        work_dir: Path,
        taskmanagers: int = 1,
        worker_pools: bool = False,
    ):
        if taskmanagers < 1:
            raise ServiceError(f"a cluster needs at least one TaskManager; got {taskmanagers}")
        self.flink_location = Path(flink_location)
        self.conf_file = Path(conf_file)
        self.work_dir = Path(work_dir)
        self.taskmanagers = taskmanagers
        self.worker_pools = worker_pools
        self.conf_dir = self.work_dir / "conf"
        self.log_dir = self.work_dir / "log"
        self.pid_dir = self.work_dir / "pid"
        self.tmp_dir = self.work_dir / "tmp"
        self.rest_port = int(_conf_value(self.conf_file, "rest.port", DEFAULT_REST_PORT))  # type: ignore[call-overload]
        self.rpc_port = int(_conf_value(self.conf_file, "jobmanager.rpc.port", DEFAULT_RPC_PORT))  # type: ignore[call-overload]
        self.slots = int(_conf_value(self.conf_file, "taskmanager.numberOfTaskSlots", 1))  # type: ignore[call-overload]
        self._pools: dict[int, WorkerPool] = {}
        self._started = False

    @property
    def master(self) -> str:
        """The address a job server or `--flink_master` takes."""
        return f"localhost:{self.rest_port}"

    @property
    def web_ui(self) -> str:
        return f"http://localhost:{self.rest_port}"

    @property
    def parallelism(self) -> int:
        """The jobs' default parallelism: every slot of every TaskManager."""
        return self.slots * self.taskmanagers

    @property
    def worker_pool_address(self) -> str:
        """With `worker_pools`: what `--environment_config` takes (EXTERNAL environments)."""
        return f"{WORKER_POOL_HOST}:{WORKER_POOL_PORT}"

    @staticmethod
    def worker_pool_ip(index: int) -> str:
        """The loopback address of TaskManager `index`'s worker pool."""
        return f"127.0.0.{index + 2}"

    def _script(self, name: str) -> Path:
        script = self.flink_location / "bin" / name
        if not script.is_file():
            raise ServiceError(
                f"{script} does not exist: FLINK_LOCATION must be a Flink distribution (the folder "
                "holding bin/, conf/ and lib/); `make flink` installs one into build/"
            )
        return script

    def _env(self, conf_dir: Path | None = None, ident: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(conf_dir or self.conf_dir),
            FLINK_LOG_DIR=str(self.log_dir),
            FLINK_PID_DIR=str(self.pid_dir),
        )
        if ident:
            # Names the TaskManager's pid file and logs (flink-IDENT-taskexecutor-...).
            env["FLINK_IDENT_STRING"] = ident
        return env

    def start(self) -> None:
        self._script("taskmanager.sh")
        check_ports_free([self.rest_port, self.rpc_port], "local Flink cluster")
        flink_conf_dir(self.conf_file, self.conf_dir, self.flink_location)
        conf = yaml.safe_load((self.conf_dir / "config.yaml").read_text()) or {}
        conf.pop("parallelism.default", None)
        conf.setdefault("parallelism", {})["default"] = self.parallelism
        # The processes' working folders (a TaskManager's blobs and local state, hundreds of MB)
        # under the work dir, removed on stop: in /tmp, where Flink puts them, a killed
        # TaskManager's folder would stay behind.
        if "io.tmp.dirs" not in conf:
            conf.setdefault("io", {}).setdefault("tmp", {}).setdefault("dirs", str(self.tmp_dir))
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        for folder in (self.log_dir, self.pid_dir, self.tmp_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self._started = True
        subprocess.run(
            [str(self._script("jobmanager.sh")), "start"],
            env=self._env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        for index in range(self.taskmanagers):
            self.start_taskmanager(index)
        self._wait_until_ready()

    def overview(self) -> dict[str, int]:
        """The cluster's /overview from its REST API."""
        with urllib.request.urlopen(f"{self.web_ui}/overview", timeout=5) as response:
            overview: dict[str, int] = json.load(response)
            return overview

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError, ValueError):
                overview = self.overview()
                if (
                    overview.get("taskmanagers", 0) >= self.taskmanagers
                    and overview.get("slots-available", 0) >= self.parallelism
                ):
                    return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {log}\n{log_tail(log)}" for log in sorted(self.log_dir.glob("*.log"))
                )
                raise ServiceError(
                    f"the local Flink cluster did not have {self.taskmanagers} TaskManagers with "
                    f"{self.parallelism} free task slots on {self.web_ui} within "
                    f"{START_TIMEOUT_S:.0f} s; its logs in {self.log_dir}:\n{logs}"
                )
            time.sleep(0.5)

    def start_taskmanager(self, index: int = 0) -> None:
        """Starts TaskManager `index` with the cluster's configuration (also to replace a lost
        one), and with `worker_pools` its worker pool unless that one still runs."""
        conf_dir = self.conf_dir
        if self.worker_pools:
            ip = self.worker_pool_ip(index)
            if index not in self._pools:
                pool = WorkerPool(self.work_dir / f"worker-pool-{index}", host=ip)
                self._pools[index] = pool
                pool.start()
            conf_dir = self._taskmanager_conf_dir(index, ip)
        subprocess.run(
            [str(self._script("taskmanager.sh")), "start"],
            env=self._env(conf_dir, f"tm{index}"),
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def _taskmanager_conf_dir(self, index: int, pool_ip: str) -> Path:
        """The cluster's configuration, plus a hosts file of the TaskManager's own JVM in which
        ``sdk-worker-pool`` is its pool's loopback address."""
        conf_dir = self.work_dir / f"conf-tm{index}"
        if conf_dir.exists():
            shutil.rmtree(conf_dir)
        shutil.copytree(self.conf_dir, conf_dir)
        hosts = conf_dir / "hosts"
        hostname = socket.gethostname()
        hosts.write_text(
            f"127.0.0.1 localhost {hostname}\n::1 localhost\n{pool_ip} {WORKER_POOL_HOST}\n"
        )
        conf = yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}
        java = conf.setdefault("env", {}).setdefault("java", {}).setdefault("opts", {})
        java["taskmanager"] = f"{java.get('taskmanager', '')} -Djdk.net.hosts.file={hosts}".strip()
        (conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        return conf_dir

    def taskmanager_pid(self, index: int) -> int | None:
        """The live process of TaskManager `index`, if it runs."""
        for pid in self._pids_in(self.pid_dir.glob(f"flink-tm{index}-taskexecutor.pid")):
            return pid
        return None

    def pids(self, role: str) -> list[int]:
        """The live processes of a role ("standalonesession" or "taskexecutor")."""
        return self._pids_in(self.pid_dir.glob(f"*-{role}.pid"))

    @staticmethod
    def _pids_in(pid_files: Iterable[Path]) -> list[int]:
        pids = []
        for pid_file in pid_files:
            for line in pid_file.read_text().split():
                with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                    os.kill(int(line), 0)
                    pids.append(int(line))
        return pids

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        # What Flink's stop scripts do (SIGTERM to each process of the pid files), for every
        # TaskManager's pid file; whatever has not exited shortly after is killed.
        for pid in self.pids("taskexecutor") + self.pids("standalonesession"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (
            pids := self.pids("standalonesession") + self.pids("taskexecutor")
        ) and time.monotonic() < deadline:
            time.sleep(0.25)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pool in self._pools.values():
            pool.stop()
        self._pools.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class JobServer(ProcessService):
    """Beam's Flink job server (`java -jar jar`) on the job, artifact and expansion ports. Its
    Flink is `flink_master`: "[local]" for the one embedded in it, or a cluster's "host:port".
    It stages the jobs' artifacts under `artifacts_dir` (a folder or a bucket's URI, which it
    reaches with the credentials and endpoint in its environment), by default under `work_dir`,
    and removes each job's when the job ends unless `keep_artifacts`."""

    def __init__(
        self,
        jar: str | os.PathLike[str],
        work_dir: Path,
        flink_master: str = "[local]",
        flink_conf_dir: Path | None = None,
        job_port: int = JOB_PORT,
        artifact_port: int = ARTIFACT_PORT,
        expansion_port: int = EXPANSION_PORT,
        artifacts_dir: str | None = None,
        keep_artifacts: bool = False,
    ):
        self.jar = Path(jar)
        self.work_dir = Path(work_dir)
        self.artifacts_dir = artifacts_dir or str(self.work_dir / "artifacts")
        self.keep_artifacts = keep_artifacts
        self.flink_master = flink_master
        self.flink_conf_dir = flink_conf_dir
        self.ports = (job_port, artifact_port, expansion_port)

    @property
    def endpoint(self) -> str:
        """What `--job_endpoint` takes."""
        return f"localhost:{self.ports[0]}"

    def start(self) -> None:
        if not self.jar.is_file():
            raise ServiceError(
                f"the Flink job server jar {self.jar} does not exist; "
                "`make flink-job-server` builds it"
            )
        check_ports_free(self.ports, "Flink job server")
        job_port, artifact_port, expansion_port = self.ports
        argv = [
            "java",
            *JAVA_17_FLAGS,
            "-jar",
            str(self.jar),
            "--flink-master",
            self.flink_master,
            "--job-port",
            str(job_port),
            "--artifact-port",
            str(artifact_port),
            "--expansion-port",
            str(expansion_port),
            "--artifacts-dir",
            self.artifacts_dir,
        ]
        if self.keep_artifacts:
            argv.append("--clean-artifacts-per-job=false")
        env = dict(os.environ)
        if self.flink_conf_dir is not None:
            argv += ["--flink-conf-dir", str(self.flink_conf_dir)]
            env["FLINK_CONF_DIR"] = str(self.flink_conf_dir)
        self._process = ChildProcess(
            "Flink job server", argv, self.work_dir / "job-server.log", env
        )
        self._process.wait_for_port(job_port)
