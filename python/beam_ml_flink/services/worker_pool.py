"""Beam's Python SDK worker pool, the EXTERNAL environment that needs no Docker, bound to one
address: on a cluster each TaskManager has its own pool beside it (a sidecar at localhost:5000 in
its pod); on this machine each local TaskManager reaches its own pool under one name,
``sdk-worker-pool``, which that TaskManager's JVM resolves to a loopback address of its own.

``python -m beam_ml_flink.services.worker_pool --address HOST:PORT`` runs one pool.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from beam_ml_flink.services.process import ChildProcess, ProcessService, check_ports_free

WORKER_POOL_PORT = 5000
# The name under which a local TaskManager finds its own pool (see LocalFlinkCluster).
WORKER_POOL_HOST = "sdk-worker-pool"


class WorkerPool(ProcessService):
    """A worker pool on `host`:`port`: the runner asks it for SDK workers, which it starts as
    processes of this Python (and so with beam_ml_flink)."""

    def __init__(self, work_dir: Path, port: int = WORKER_POOL_PORT, host: str = "127.0.0.1"):
        self.work_dir = Path(work_dir)
        self.port = port
        self.host = host

    @property
    def address(self) -> str:
        """What `--environment_config` takes with `--environment_type=EXTERNAL`."""
        return f"{'localhost' if self.host == '127.0.0.1' else self.host}:{self.port}"

    def start(self) -> None:
        check_ports_free([self.port], "SDK worker pool", self.host)
        argv = [
            sys.executable,
            "-m",
            "beam_ml_flink.services.worker_pool",
            f"--address={self.host}:{self.port}",
        ]
        # The pool starts each SDK worker as `python` from PATH: make that this Python.
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self._process = ChildProcess(
            "SDK worker pool", argv, self.work_dir / "worker-pool.log", env
        )
        self._process.wait_for_port(self.port, host=self.host)


def main(argv: Sequence[str] | None = None) -> None:
    """Serves Beam's worker pool on one address until interrupted."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import (
        BeamFnExternalWorkerPoolServicer,
        kill_process_gracefully,
    )
    from apache_beam.utils import thread_pool_executor

    parser = argparse.ArgumentParser(
        prog="python -m beam_ml_flink.services.worker_pool",
        description="Beam's Python SDK worker pool (EXTERNAL environments) on one address.",
    )
    parser.add_argument("--address", required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    # The options of Beam's own worker_pool_main, which binds every address instead.
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    if server.add_insecure_port(args.address) == 0:
        parser.error(f"could not listen on {args.address}")
    pool = BeamFnExternalWorkerPoolServicer(use_process=True, data_buffer_time_limit_ms=-1)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()

    @atexit.register
    def stop_workers() -> None:
        for worker in list(pool._worker_processes.values()):
            kill_process_gracefully(worker)

    print(f"SDK worker pool listening on {args.address}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
