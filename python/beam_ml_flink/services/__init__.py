"""The local services of the run modes: a standalone Flink cluster of one or more TaskManagers,
the Beam Flink job server, SDK worker pools, a Kafka broker, the Java expansion service that
KafkaIO needs, an S3-compatible object store, a Google Cloud Storage emulator, and a Flink cluster
in containers that share nothing (PodFlinkCluster).

Each is a context manager that checks its ports are free, starts its processes, waits until they
answer, and stops everything it started on the way out, also when the job fails or is interrupted.
`python -m beam_ml_flink.services [services] -- command` wraps a command in them (the Makefile's
Flink, Kafka and object store targets); the tests use the classes directly.
"""

from beam_ml_flink.services.command import argument_parser, main
from beam_ml_flink.services.flink import (
    ARTIFACT_PORT,
    EXPANSION_PORT,
    JAVA_17_FLAGS,
    JOB_PORT,
    JobServer,
    LocalFlinkCluster,
    cancel_flink_jobs,
    flink_conf_dir,
    flink_job_metrics,
)
from beam_ml_flink.services.gcs_store import GCS_STORE_PORT, GcsStore
from beam_ml_flink.services.kafka import (
    JAVA_EXPANSION_PORT,
    KAFKA_CONTROLLER_PORT,
    KAFKA_PORT,
    ExpansionService,
    KafkaBroker,
)
from beam_ml_flink.services.object_store import (
    OBJECT_STORE_ACCESS_KEY,
    OBJECT_STORE_PORT,
    OBJECT_STORE_SECRET_KEY,
    ObjectStore,
)
from beam_ml_flink.services.pod_cluster import PodFlinkCluster, flink_deployment_properties
from beam_ml_flink.services.process import ServiceError, check_ports_free
from beam_ml_flink.services.worker_pool import WORKER_POOL_PORT, WorkerPool

__all__ = [
    "ARTIFACT_PORT",
    "EXPANSION_PORT",
    "GCS_STORE_PORT",
    "JAVA_17_FLAGS",
    "JAVA_EXPANSION_PORT",
    "JOB_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_PORT",
    "OBJECT_STORE_ACCESS_KEY",
    "OBJECT_STORE_PORT",
    "OBJECT_STORE_SECRET_KEY",
    "WORKER_POOL_PORT",
    "ExpansionService",
    "GcsStore",
    "JobServer",
    "KafkaBroker",
    "LocalFlinkCluster",
    "ObjectStore",
    "PodFlinkCluster",
    "ServiceError",
    "WorkerPool",
    "argument_parser",
    "cancel_flink_jobs",
    "check_ports_free",
    "flink_conf_dir",
    "flink_deployment_properties",
    "flink_job_metrics",
    "main",
]
