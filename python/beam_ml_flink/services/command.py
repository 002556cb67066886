"""`python -m beam_ml_flink.services [services] -- command`: starts the services asked for, runs the
command, and stops the services afterwards, also when the command fails or is interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from beam_ml_flink.arguments import ArgumentParser
from beam_ml_flink.services.flink import JobServer, LocalFlinkCluster, flink_conf_dir
from beam_ml_flink.services.kafka import ExpansionService, KafkaBroker
from beam_ml_flink.services.object_store import ObjectStore
from beam_ml_flink.services.process import ServiceError
from beam_ml_flink.services.worker_pool import WorkerPool


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
    parser = ArgumentParser(
        prog="python -m beam_ml_flink.services",
        description="Start local Flink and Kafka services, run a command, and stop the services "
        "afterwards (also when the command fails or is interrupted).",
    )
    parser.add_argument(
        "--flink-conf",
        help="Flink YAML configuration: for the local cluster with --cluster, else for the Flink "
        "embedded in the job server (exported to the command as FLINK_CONF_DIR); needed by "
        "--cluster and --job-server",
    )
    parser.add_argument(
        "--flink-location", default=os.environ.get("FLINK_LOCATION"), help="Flink distribution"
    )
    parser.add_argument("--cluster", action="store_true", help="start a standalone Flink cluster")
    parser.add_argument(
        "--taskmanagers",
        type=int,
        default=1,
        metavar="N",
        help="with --cluster: how many TaskManagers (default 1); the jobs' default parallelism "
        "is all their slots",
    )
    parser.add_argument(
        "--flink-master",
        metavar="HOST:PORT",
        help="an existing Flink cluster's REST address, for the job server to submit to",
    )
    parser.add_argument(
        "--job-server", metavar="JAR", help="start the Beam Flink job server from JAR"
    )
    parser.add_argument(
        "--worker-pool",
        action="store_true",
        help="start an SDK worker pool: with --cluster one beside each TaskManager, which each "
        "reaches as sdk-worker-pool:5000; else one on localhost:5000. Its address is exported "
        "to the command as WORKER_POOL_ADDRESS",
    )
    parser.add_argument(
        "--kafka",
        metavar="JAR",
        help="start a Kafka broker from JAR (make kafka) on port 9092; its address is exported "
        "to the command as KAFKA_BOOTSTRAP_SERVERS",
    )
    parser.add_argument(
        "--topics",
        default="",
        metavar="T1,T2",
        help="with --kafka: the topics to create",
    )
    parser.add_argument(
        "--partitions", type=int, default=1, help="with --topics: partitions per topic"
    )
    parser.add_argument(
        "--expansion-service",
        metavar="JAR",
        help="start Beam's Java expansion service for KafkaIO from the job server JAR on port "
        "8096 (Java transforms EMBEDDED in Flink)",
    )
    parser.add_argument(
        "--object-store",
        metavar="JAR",
        help="start an S3-compatible object store (S3Proxy, make s3proxy) from JAR on port 9000, "
        "its objects under the work dir; what S3 clients and Beam's S3 filesystem need to reach "
        "it (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
        "AWS_DEFAULT_REGION) is exported to the command",
    )
    parser.add_argument(
        "--buckets",
        default="",
        metavar="B1,B2",
        help="with --object-store: the buckets to create",
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
    if (args.cluster or args.job_server) and not args.flink_conf:
        parser.error("--cluster and --job-server need --flink-conf: a Flink YAML configuration")
    if args.topics and not args.kafka:
        parser.error("--topics are created on the broker that --kafka starts: give --kafka JAR")
    if args.buckets and not args.object_store:
        parser.error(
            "--buckets are created in the store that --object-store starts: give --object-store JAR"
        )
    if args.cluster and not args.flink_location:
        parser.error("--cluster needs --flink-location or FLINK_LOCATION: a Flink distribution")
    if args.taskmanagers < 1:
        parser.error(f"--taskmanagers must be 1 or more; got {args.taskmanagers}")
    if args.taskmanagers > 1 and not args.cluster:
        parser.error(
            "--taskmanagers is the size of the cluster that --cluster starts: give --cluster"
        )

    work_dir = Path(args.work_dir).resolve()
    flink_location = Path(args.flink_location) if args.flink_location else None
    try:
        with contextlib.ExitStack() as services, _terminate_as_interrupt():
            env = dict(os.environ)
            master = "[local]"
            if args.object_store:
                # First, so that the other services (and their SDK workers) inherit its address.
                buckets = [b for b in args.buckets.split(",") if b]
                store = ObjectStore(args.object_store, work_dir / "object-store", buckets=buckets)
                services.enter_context(store)
                env.update(store.client_environment)
                os.environ.update(store.client_environment)
                print(
                    f"object store up on {store.endpoint}"
                    + (f", buckets {', '.join(buckets)}" if buckets else ""),
                    file=sys.stderr,
                    flush=True,
                )
            if args.cluster:
                assert flink_location is not None
                cluster = LocalFlinkCluster(
                    flink_location,
                    args.flink_conf,
                    work_dir / "cluster",
                    taskmanagers=args.taskmanagers,
                    worker_pools=args.worker_pool,
                )
                services.enter_context(cluster)
                master = cluster.master
                pools = " (each with its SDK worker pool)" if args.worker_pool else ""
                print(
                    f"Flink cluster up with {args.taskmanagers} TaskManager(s){pools}, parallelism "
                    f"{cluster.parallelism}; its web UI: {cluster.web_ui}",
                    file=sys.stderr,
                    flush=True,
                )
                if args.worker_pool:
                    env["WORKER_POOL_ADDRESS"] = cluster.worker_pool_address
                conf_dir = cluster.conf_dir
                env["FLINK_MASTER"] = cluster.master
            elif args.flink_conf:
                conf_dir = flink_conf_dir(args.flink_conf, work_dir / "conf", None)
                env["FLINK_CONF_DIR"] = str(conf_dir)
                master = args.flink_master or master
            if args.flink_master:
                env["FLINK_MASTER"] = args.flink_master
            if args.job_server:
                server = JobServer(args.job_server, work_dir / "job-server", master, conf_dir)
                services.enter_context(server)
                print(f"Flink job server up on {server.endpoint}", file=sys.stderr, flush=True)
            if args.worker_pool and not args.cluster:
                pool = WorkerPool(work_dir / "worker-pool")
                services.enter_context(pool)
                env["WORKER_POOL_ADDRESS"] = pool.address
                print(f"SDK worker pool up on {pool.address}", file=sys.stderr, flush=True)
            if args.kafka:
                broker = KafkaBroker(args.kafka, work_dir / "kafka")
                services.enter_context(broker)
                topics = [t for t in args.topics.split(",") if t]
                broker.create_topics(topics, args.partitions)
                env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
                print(
                    f"Kafka broker up on {broker.bootstrap_servers}"
                    + (f", topics {', '.join(topics)}" if topics else ""),
                    file=sys.stderr,
                    flush=True,
                )
            if args.expansion_service:
                expansion = ExpansionService(args.expansion_service, work_dir / "expansion")
                services.enter_context(expansion)
                print(f"Java expansion service up on {expansion.address}", file=sys.stderr)
            return subprocess.run(command, env=env).returncode
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the services were stopped", file=sys.stderr)
        return 130
