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
from beam_ml_flink.services.gcs_store import GCS_STORE_PORT, GcsStore
from beam_ml_flink.services.kafka import ExpansionService, KafkaBroker
from beam_ml_flink.services.object_store import ObjectStore
from beam_ml_flink.services.pod_cluster import PodFlinkCluster, flink_deployment_properties
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
        "AWS_DEFAULT_REGION, AWS_REGION) is exported to the command",
    )
    parser.add_argument(
        "--gcs-store",
        metavar="BINARY",
        help="start a Google Cloud Storage emulator (fake-gcs-server, make fake-gcs-server) from "
        "BINARY on --gcs-store-port, its objects under the work dir; what google-cloud-storage "
        "and Beam's GCS filesystem need to reach it (STORAGE_EMULATOR_HOST and "
        "GOOGLE_CLOUD_PROJECT) is exported to the command",
    )
    parser.add_argument(
        "--gcs-store-port",
        type=int,
        default=GCS_STORE_PORT,
        metavar="PORT",
        help=f"with --gcs-store: its port (default {GCS_STORE_PORT})",
    )
    parser.add_argument(
        "--buckets",
        default="",
        metavar="B1,B2",
        help="with --object-store, --object-store-image or --gcs-store: the buckets to create "
        "(in each store started)",
    )
    parser.add_argument(
        "--pod-cluster",
        metavar="FLINK_IMAGE",
        help="start a Flink cluster whose machines share nothing, in containers of FLINK_IMAGE "
        "(make docker-flink): a JobManager and --taskmanagers TaskManager pods on a podman network "
        "of their own, REST on 8081; FLINK_MASTER is exported to the command",
    )
    parser.add_argument(
        "--flink-deployment",
        metavar="YAML",
        help="with --pod-cluster: the Flink configuration and memory of this FlinkDeployment "
        "manifest (deploy/kubernetes/flink-deployment.yaml)",
    )
    parser.add_argument(
        "--job-server-image",
        metavar="IMAGE",
        help="with --pod-cluster: Beam's job server in a container of IMAGE (make "
        "docker-job-server), ports 8099, 8098, 8097; JOB_ENDPOINT is exported to the command",
    )
    parser.add_argument(
        "--worker-image",
        metavar="IMAGE",
        help="with --pod-cluster: an SDK worker pool sidecar of IMAGE (make docker-cpu) in each "
        "TaskManager pod; WORKER_POOL_ADDRESS (localhost:50000) is exported to the command",
    )
    parser.add_argument(
        "--object-store-image",
        metavar="IMAGE",
        help="with --pod-cluster: an S3-compatible object store in a container of IMAGE (make "
        "docker-object-store) on the cluster's network, published on port 9000; the workers, "
        "the TaskManagers and the job server get its in-cluster endpoint and the command what it "
        "needs to reach it from here (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_REGION)",
    )
    parser.add_argument(
        "--artifacts-dir",
        metavar="URI",
        help="where the job server (--job-server or --job-server-image) stages the jobs' "
        "artifacts, which every TaskManager must read: a folder, or a bucket's URI (s3://, gs://). "
        "Default: a folder under the work dir, or with --object-store-image "
        "s3://<first bucket>/beam-artifacts",
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
    if args.buckets and not (args.object_store or args.object_store_image or args.gcs_store):
        parser.error(
            "--buckets are created in the store that --object-store, --object-store-image or "
            "--gcs-store starts: give one"
        )
    if args.artifacts_dir and not (args.job_server or args.job_server_image):
        parser.error(
            "--artifacts-dir is where the job server stages the artifacts: give --job-server "
            "or --job-server-image"
        )
    if args.gcs_store_port != GCS_STORE_PORT and not args.gcs_store:
        parser.error("--gcs-store-port is the port of the store that --gcs-store starts: give it")
    pod_flags = [
        flag
        for flag, value in (
            ("--flink-deployment", args.flink_deployment),
            ("--job-server-image", args.job_server_image),
            ("--worker-image", args.worker_image),
            ("--object-store-image", args.object_store_image),
        )
        if value
    ]
    if pod_flags and not args.pod_cluster:
        parser.error(f"{', '.join(pod_flags)} belong to the cluster that --pod-cluster starts")
    if args.pod_cluster and (args.cluster or args.flink_master or args.job_server):
        parser.error(
            "--pod-cluster starts its own cluster and job server: leave out --cluster, "
            "--flink-master and --job-server"
        )
    if args.cluster and not args.flink_location:
        parser.error("--cluster needs --flink-location or FLINK_LOCATION: a Flink distribution")
    if args.taskmanagers < 1:
        parser.error(f"--taskmanagers must be 1 or more; got {args.taskmanagers}")
    if args.taskmanagers > 1 and not (args.cluster or args.pod_cluster):
        parser.error(
            "--taskmanagers is the size of the cluster that --cluster or --pod-cluster starts: "
            "give one"
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
            if args.gcs_store:
                buckets = [b for b in args.buckets.split(",") if b]
                gcs = GcsStore(
                    args.gcs_store,
                    work_dir / "gcs-store",
                    port=args.gcs_store_port,
                    buckets=buckets,
                )
                services.enter_context(gcs)
                env.update(gcs.client_environment)
                os.environ.update(gcs.client_environment)
                print(
                    f"GCS store up on {gcs.endpoint}"
                    + (f", buckets {', '.join(buckets)}" if buckets else ""),
                    file=sys.stderr,
                    flush=True,
                )
            if args.pod_cluster:
                pods = PodFlinkCluster(
                    args.pod_cluster,
                    taskmanagers=args.taskmanagers,
                    flink_properties=(
                        flink_deployment_properties(args.flink_deployment)
                        if args.flink_deployment
                        else None
                    ),
                    worker_image=args.worker_image,
                    job_server_image=args.job_server_image,
                    artifacts_dir=args.artifacts_dir,
                    object_store_image=args.object_store_image,
                    buckets=[b for b in args.buckets.split(",") if b],
                )
                print(
                    f"starting a Flink cluster in containers ({pods.name}): a JobManager and "
                    f"{args.taskmanagers} TaskManager pod(s)",
                    file=sys.stderr,
                    flush=True,
                )
                services.enter_context(pods)
                env["FLINK_MASTER"] = pods.master
                if args.job_server_image:
                    env["JOB_ENDPOINT"] = pods.job_endpoint
                if args.worker_image:
                    env["WORKER_POOL_ADDRESS"] = pods.worker_pool_address
                if args.object_store_image:
                    env.update(pods.client_environment)
                print(
                    f"Flink cluster in containers up, parallelism {pods.parallelism}; its web UI: "
                    f"{pods.web_ui}"
                    + (f"; job server on {pods.job_endpoint}" if args.job_server_image else "")
                    + (
                        f"; object store on {pods.object_store_endpoint}"
                        if args.object_store_image
                        else ""
                    ),
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
                server = JobServer(
                    args.job_server,
                    work_dir / "job-server",
                    master,
                    conf_dir,
                    artifacts_dir=args.artifacts_dir,
                )
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
