"""The local services of the Flink run modes: a standalone Flink cluster, the Beam Flink job server
and an SDK worker pool.

Each is a context manager that checks its ports are free, starts its processes, waits until they
answer, and stops everything it started on the way out, also when the job fails or is interrupted.
`python -m beam_ml_flink.services [services] -- command` wraps a command in them (the Makefile's
Flink targets); the tests use the classes directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import yaml

# The ports of Beam's Flink job server and of the SDK worker pool, as Beam documents them.
JOB_PORT = 8099
ARTIFACT_PORT = 8098
EXPANSION_PORT = 8097
WORKER_POOL_PORT = 5000

# Flink's own defaults, used when the configuration does not set them.
DEFAULT_REST_PORT = 8081
DEFAULT_RPC_PORT = 6123

START_TIMEOUT_S = 180.0

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


class ServiceError(RuntimeError):
    """A local service could not be started."""


def check_ports_free(ports: Sequence[int], service: str) -> None:
    """Raises ServiceError naming the first of `ports` that something already listens on."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise ServiceError(
                    f"port {port} is already in use, and the {service} needs it: stop what "
                    f"listens there (`ss -ltnp 'sport = :{port}'` shows which process), "
                    "then try again"
                )


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


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


class _Process:
    """A long-running child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def wait_for_port(self, port: int, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not _port_open(port):
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the {self.name} exited with code {self.process.returncode} before it "
                    f"listened on port {port}; its log ({self.log}) ends with:\n{_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the {self.name} did not listen on port {port} within {timeout:.0f} s; its "
                    f"log ({self.log}) ends with:\n{_tail(self.log)}"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()


class _Service:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Service:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalFlinkCluster(_Service):
    """A standalone Flink cluster (one JobManager, one TaskManager) started with the scripts of the
    Flink distribution at `flink_location`, configured by `conf_file`; logs and pid files go to
    `work_dir`."""

    def __init__(
        self,
        flink_location: str | os.PathLike[str],
        conf_file: str | os.PathLike[str],
        work_dir: Path,
    ):
        self.flink_location = Path(flink_location)
        self.conf_file = Path(conf_file)
        self.work_dir = Path(work_dir)
        self.conf_dir = self.work_dir / "conf"
        self.log_dir = self.work_dir / "log"
        self.pid_dir = self.work_dir / "pid"
        self.rest_port = int(_conf_value(self.conf_file, "rest.port", DEFAULT_REST_PORT))  # type: ignore[call-overload]
        self.rpc_port = int(_conf_value(self.conf_file, "jobmanager.rpc.port", DEFAULT_RPC_PORT))  # type: ignore[call-overload]
        self._started = False

    @property
    def master(self) -> str:
        """The address a job server or `--flink_master` takes."""
        return f"localhost:{self.rest_port}"

    @property
    def web_ui(self) -> str:
        return f"http://localhost:{self.rest_port}"

    def _script(self, name: str) -> Path:
        script = self.flink_location / "bin" / name
        if not script.is_file():
            raise ServiceError(
                f"{script} does not exist: FLINK_LOCATION must be a Flink distribution (the folder "
                "holding bin/, conf/ and lib/); `make flink` installs one into build/"
            )
        return script

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LOG_DIR=str(self.log_dir),
            FLINK_PID_DIR=str(self.pid_dir),
        )
        return env

    def start(self) -> None:
        start_script = self._script("start-cluster.sh")
        check_ports_free([self.rest_port, self.rpc_port], "local Flink cluster")
        flink_conf_dir(self.conf_file, self.conf_dir, self.flink_location)
        for folder in (self.log_dir, self.pid_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self._started = True
        subprocess.run(
            [str(start_script)],
            env=self._env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
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
                if self.overview().get("slots-available", 0) > 0:
                    return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {log}\n{_tail(log)}" for log in sorted(self.log_dir.glob("*.log"))
                )
                raise ServiceError(
                    f"the local Flink cluster had no free task slot on {self.web_ui} within "
                    f"{START_TIMEOUT_S:.0f} s; its logs in {self.log_dir}:\n{logs}"
                )
            time.sleep(0.5)

    def start_taskmanager(self) -> None:
        """Starts one more TaskManager with the cluster's configuration (to replace a lost one)."""
        subprocess.run(
            [str(self._script("taskmanager.sh")), "start"],
            env=self._env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def pids(self, role: str) -> list[int]:
        """The live processes of a role ("standalonesession" or "taskexecutor")."""
        pids = []
        for pid_file in self.pid_dir.glob(f"*-{role}.pid"):
            for line in pid_file.read_text().split():
                with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                    os.kill(int(line), 0)
                    pids.append(int(line))
        return pids

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        stop_script = self.flink_location / "bin" / "stop-cluster.sh"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(stop_script)],
                env=self._env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
        # stop-cluster.sh signals and returns; whatever has not exited shortly after is killed.
        deadline = time.monotonic() + 20
        while (
            pids := self.pids("standalonesession") + self.pids("taskexecutor")
        ) and time.monotonic() < deadline:
            time.sleep(0.25)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class JobServer(_Service):
    """Beam's Flink job server (`java -jar jar`) on the job, artifact and expansion ports. Its
    Flink is `flink_master`: "[local]" for the one embedded in it, or a cluster's "host:port"."""

    def __init__(
        self,
        jar: str | os.PathLike[str],
        work_dir: Path,
        flink_master: str = "[local]",
        flink_conf_dir: Path | None = None,
        job_port: int = JOB_PORT,
        artifact_port: int = ARTIFACT_PORT,
        expansion_port: int = EXPANSION_PORT,
    ):
        self.jar = Path(jar)
        self.work_dir = Path(work_dir)
        self.flink_master = flink_master
        self.flink_conf_dir = flink_conf_dir
        self.ports = (job_port, artifact_port, expansion_port)
        self._process: _Process | None = None

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
            str(self.work_dir / "artifacts"),
        ]
        env = dict(os.environ)
        if self.flink_conf_dir is not None:
            argv += ["--flink-conf-dir", str(self.flink_conf_dir)]
            env["FLINK_CONF_DIR"] = str(self.flink_conf_dir)
        self._process = _Process("Flink job server", argv, self.work_dir / "job-server.log", env)
        self._process.wait_for_port(job_port)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None


class WorkerPool(_Service):
    """Beam's Python SDK worker pool, the EXTERNAL environment that needs no Docker: the runner asks
    it for SDK workers, which it starts as processes of this Python (and so with beam_ml_flink)."""

    def __init__(self, work_dir: Path, port: int = WORKER_POOL_PORT):
        self.work_dir = Path(work_dir)
        self.port = port
        self._process: _Process | None = None

    @property
    def address(self) -> str:
        """What `--environment_config` takes with `--environment_type=EXTERNAL`."""
        return f"localhost:{self.port}"

    def start(self) -> None:
        check_ports_free([self.port], "SDK worker pool")
        argv = [
            sys.executable,
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={self.port}",
        ]
        # The pool starts each SDK worker as `python` from PATH: make that this Python.
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self._process = _Process("SDK worker pool", argv, self.work_dir / "worker-pool.log", env)
        self._process.wait_for_port(self.port)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the services are stopped either way."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def argument_parser() -> argparse.ArgumentParser:
    """The flags of `python -m beam_ml_flink.services`."""
    parser = argparse.ArgumentParser(
        prog="python -m beam_ml_flink.services",
        description="Start local Flink services, run a command, and stop the services afterwards "
        "(also when the command fails or is interrupted).",
    )
    parser.add_argument(
        "--flink-conf",
        required=True,
        help="Flink YAML configuration: for the local cluster with --cluster, else for the Flink "
        "embedded in the job server (exported to the command as FLINK_CONF_DIR)",
    )
    parser.add_argument(
        "--flink-location", default=os.environ.get("FLINK_LOCATION"), help="Flink distribution"
    )
    parser.add_argument("--cluster", action="store_true", help="start a standalone Flink cluster")
    parser.add_argument(
        "--flink-master",
        metavar="HOST:PORT",
        help="an existing Flink cluster's REST address, for the job server to submit to",
    )
    parser.add_argument(
        "--job-server", metavar="JAR", help="start the Beam Flink job server from JAR"
    )
    parser.add_argument(
        "--worker-pool", action="store_true", help="start the SDK worker pool on port 5000"
    )
    parser.add_argument(
        "--work-dir", default="build/flink", help="logs, pid files, staged artifacts"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.cluster and args.flink_master:
        parser.error("--cluster starts a cluster; --flink-master names one that runs: give one")
    if args.cluster and not args.flink_location:
        parser.error("--cluster needs --flink-location or FLINK_LOCATION: a Flink distribution")

    work_dir = Path(args.work_dir).resolve()
    flink_location = Path(args.flink_location) if args.flink_location else None
    try:
        with contextlib.ExitStack() as services, _terminate_as_interrupt():
            env = dict(os.environ)
            master = "[local]"
            if args.cluster:
                assert flink_location is not None
                cluster = LocalFlinkCluster(flink_location, args.flink_conf, work_dir / "cluster")
                services.enter_context(cluster)
                master = cluster.master
                print(
                    f"Flink cluster up; its web UI: {cluster.web_ui}", file=sys.stderr, flush=True
                )
                conf_dir = cluster.conf_dir
            else:
                conf_dir = flink_conf_dir(args.flink_conf, work_dir / "conf", None)
                env["FLINK_CONF_DIR"] = str(conf_dir)
                master = args.flink_master or master
            if args.job_server:
                server = JobServer(args.job_server, work_dir / "job-server", master, conf_dir)
                services.enter_context(server)
                print(f"Flink job server up on {server.endpoint}", file=sys.stderr, flush=True)
            if args.worker_pool:
                pool = WorkerPool(work_dir / "worker-pool")
                services.enter_context(pool)
                print(f"SDK worker pool up on {pool.address}", file=sys.stderr, flush=True)
            return subprocess.run(command, env=env).returncode
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the services were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
