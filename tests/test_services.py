"""The local Flink services name a busy port before starting, and stop everything they started
when the command they wrap fails or is interrupted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_flink import FLINK_CONF, FLINK_CONF_LOCAL, FLINK_LOCATION, JOB_SERVER_JAR

from beam_ml_flink import services
from beam_ml_flink.services.process import port_open

pytestmark = pytest.mark.slow


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_busy_port_is_named_before_anything_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(services.ServiceError, match=f"port {port} is already in use"):
            services.check_ports_free([port], "Flink job server")


def test_services_stop_when_the_command_fails(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink.services",
            f"--flink-conf={FLINK_CONF}",
            f"--job-server={JOB_SERVER_JAR}",
            f"--work-dir={tmp_path}",
            "--",
            sys.executable,
            "-c",
            f"import socket, sys; socket.create_connection(('127.0.0.1', {services.JOB_PORT})); "
            "sys.exit(3)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert "Flink job server up on localhost:8099" in run.stderr
    assert not port_in_use(services.JOB_PORT)


def test_the_cluster_stops_when_interrupted(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    log = tmp_path / "services.log"
    with log.open("w") as stderr:
        command = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beam_ml_flink.services",
                f"--flink-conf={FLINK_CONF_LOCAL}",
                f"--flink-location={FLINK_LOCATION}",
                "--cluster",
                "--taskmanagers=2",
                "--worker-pool",
                f"--work-dir={tmp_path}",
                "--",
                "bash",
                "-c",
                f"echo $WORKER_POOL_ADDRESS > {ready}.part; mv {ready}.part {ready}; sleep 300",
            ],
            stderr=stderr,
        )
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert command.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the cluster did not start"
        time.sleep(0.5)
    assert port_in_use(8081)
    # Two TaskManagers, each with its worker pool on a loopback address of its own.
    assert ready.read_text().strip() == "sdk-worker-pool:5000"
    cluster = services.LocalFlinkCluster(FLINK_LOCATION, FLINK_CONF_LOCAL, tmp_path / "cluster")
    assert len(cluster.pids("taskexecutor")) == 2
    pools = [services.LocalFlinkCluster.worker_pool_ip(i) for i in range(2)]
    assert all(port_open(services.WORKER_POOL_PORT, ip) for ip in pools)
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=120) == 130
    assert cluster.pids("standalonesession") == [] and cluster.pids("taskexecutor") == []
    assert not port_in_use(8081)
    assert not any(port_open(services.WORKER_POOL_PORT, ip) for ip in pools)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cluster", "--taskmanagers=0"], "--taskmanagers must be 1 or more; got 0"),
        (
            ["--taskmanagers=2"],
            "--taskmanagers is the size of the cluster that --cluster or --pod-cluster starts",
        ),
    ],
)
def test_a_bad_cluster_size_is_a_usage_error(args: list[str], message: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink.services",
            f"--flink-conf={FLINK_CONF_LOCAL}",
            f"--flink-location={FLINK_LOCATION}",
        ]
        + args
        + ["--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
