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
                f"--work-dir={tmp_path}",
                "--",
                "bash",
                "-c",
                f"touch {ready}; sleep 300",
            ],
            stderr=stderr,
        )
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert command.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the cluster did not start"
        time.sleep(0.5)
    assert port_in_use(8081)
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=120) == 130
    cluster = services.LocalFlinkCluster(FLINK_LOCATION, FLINK_CONF_LOCAL, tmp_path / "cluster")
    assert cluster.pids("standalonesession") == [] and cluster.pids("taskexecutor") == []
    assert not port_in_use(8081)
