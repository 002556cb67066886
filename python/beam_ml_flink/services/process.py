"""What every local service shares: a port check, a child process with its log, and a context
manager that stops what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

START_TIMEOUT_S = 180.0


class ServiceError(RuntimeError):
    """A local service could not be started."""


def check_ports_free(ports: Sequence[int], service: str, host: str = "127.0.0.1") -> None:
    """Raises ServiceError naming the first of `ports` that something already listens on."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((host, port)) == 0:
                where = f"port {port}" if host == "127.0.0.1" else f"port {port} of {host}"
                raise ServiceError(
                    f"{where} is already in use, and the {service} needs it: stop what "
                    f"listens there (`ss -ltnp 'sport = :{port}'` shows which process), "
                    "then try again"
                )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class ChildProcess:
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

    def wait_for_port(
        self, port: int, timeout: float = START_TIMEOUT_S, host: str = "127.0.0.1"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(port, host):
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the {self.name} exited with code {self.process.returncode} before it "
                    f"listened on port {port}; its log ({self.log}) ends with:\n"
                    f"{log_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the {self.name} did not listen on port {port} within {timeout:.0f} s; its "
                    f"log ({self.log}) ends with:\n{log_tail(self.log)}"
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


class Service:
    """A local service: a context manager that starts it and always stops what it started."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Service:
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


class ProcessService(Service):
    """A service that is one child process (`self._process`, set by `start`)."""

    _process: ChildProcess | None = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
