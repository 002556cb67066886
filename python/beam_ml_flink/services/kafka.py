"""Kafka's local services: an Apache Kafka broker (KRaft, one node, loopback only) and Beam's Java
expansion service, which expands Beam's KafkaIO for Python pipelines and makes its Java transforms
run EMBEDDED in Flink's JVM instead of in a Docker container.

The broker is Apache Kafka from Maven Central (data/kafka.pom.xml, `make kafka`); the expansion
service runs from the job server's class path (data/flink-job-server.pom.xml), which holds KafkaIO
and Beam's Java SDK harness.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from beam_ml_flink.services.flink import JAVA_17_FLAGS
from beam_ml_flink.services.process import (
    START_TIMEOUT_S,
    ChildProcess,
    ProcessService,
    ServiceError,
    check_ports_free,
    log_tail,
)

KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
# The job server's own expansion service is on 8097 and makes Java transforms run in Docker.
JAVA_EXPANSION_PORT = 8096

# The broker's log: Kafka's own INFO lines, the chatty ones at WARN.
_LOG4J2 = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.clients
        level: WARN
      - name: state.change.logger
        level: WARN
"""


def _admin(bootstrap: str):  # type: ignore[no-untyped-def]
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError as e:
        raise ServiceError(
            "the Kafka services need the confluent-kafka package: "
            "pip install 'beam-ml-flink[kafka]'"
        ) from e
    return AdminClient({"bootstrap.servers": bootstrap})


class KafkaBroker(ProcessService):
    """One Kafka broker and controller (KRaft) on loopback, from the launcher `jar` that
    `make kafka` assembles; its configuration, data and log under `work_dir`. The data is formatted
    anew at each start: the broker starts empty."""

    def __init__(
        self,
        jar: str | os.PathLike[str],
        work_dir: Path,
        port: int = KAFKA_PORT,
        controller_port: int = KAFKA_CONTROLLER_PORT,
    ):
        self.jar = Path(jar)
        self.work_dir = Path(work_dir)
        self.port = port
        self.controller_port = controller_port

    @property
    def bootstrap_servers(self) -> str:
        """What `--bootstrap_servers` and Kafka clients take."""
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        data = self.work_dir / "data"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            # One node: the internal topics (consumer offsets, transactions) have one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        config = self.work_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        (self.work_dir / "log4j2.yaml").write_text(_LOG4J2)
        return config

    def start(self) -> None:
        if not self.jar.is_file():
            raise ServiceError(
                f"the Kafka broker jar {self.jar} does not exist; `make kafka` builds it"
            )
        check_ports_free([self.port, self.controller_port], "Kafka broker")
        with contextlib.suppress(FileNotFoundError):
            for item in sorted((self.work_dir / "data").rglob("*"), reverse=True):
                item.unlink() if item.is_file() else item.rmdir()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        logging = f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.yaml'}"
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = ChildProcess(
            "Kafka storage format",
            [
                "java",
                logging,
                "-cp",
                str(self.jar),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
            ],
            self.work_dir / "format.log",
        )
        code = fmt.process.wait(timeout=120)
        fmt.stop()
        if code != 0:
            raise ServiceError(
                f"formatting the Kafka broker's storage failed (exit {code}); its log "
                f"({fmt.log}) ends with:\n{log_tail(fmt.log)}"
            )
        self._process = ChildProcess(
            "Kafka broker",
            ["java", logging, "-jar", str(self.jar), str(config)],
            self.work_dir / "broker.log",
        )
        self._process.wait_for_port(self.port)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Until the broker answers a metadata request (it listens before it has a leader)."""
        admin = _admin(self.bootstrap_servers)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                metadata = admin.list_topics(timeout=5)
                if metadata.brokers:
                    return
            except Exception as e:  # noqa: BLE001 - not ready yet; retried until the deadline
                error = e
            else:
                error = RuntimeError("no broker in the metadata yet")
            assert self._process is not None
            if self._process.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(
                    f"the Kafka broker on {self.bootstrap_servers} did not answer ({error}); its "
                    f"log ({self._process.log}) ends with:\n{log_tail(self._process.log)}"
                )
            time.sleep(0.5)

    def create_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        """Creates `topics` (those that exist are left as they are)."""
        from confluent_kafka.admin import NewTopic

        admin = _admin(self.bootstrap_servers)
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=30)
            except Exception as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise ServiceError(f"could not create the Kafka topic {topic}: {e}") from e


class ExpansionService(ProcessService):
    """Beam's Java expansion service, on `port`, from the class path of the Flink job server's
    launcher `jar` (which holds KafkaIO). The Java transforms it expands run EMBEDDED: in the
    JVM of the Flink TaskManager (or of the job server's embedded Flink), with Beam's Java SDK
    harness from the job's class path, so no Docker is needed. Their Kafka reads are Beam's
    primitive unbounded reads (`use_deprecated_read`), which Flink runs as its own sources with
    their state in Flink's checkpoints."""

    def __init__(
        self,
        jar: str | os.PathLike[str],
        work_dir: Path,
        port: int = JAVA_EXPANSION_PORT,
    ):
        self.jar = Path(jar)
        self.work_dir = Path(work_dir)
        self.port = port

    @property
    def address(self) -> str:
        """What `--expansion_service` takes."""
        return f"localhost:{self.port}"

    def start(self) -> None:
        if not self.jar.is_file():
            raise ServiceError(
                f"the Flink job server jar {self.jar} does not exist; "
                "`make flink-job-server` builds it (the expansion service runs from it)"
            )
        check_ports_free([self.port], "Java expansion service")
        argv = [
            "java",
            *JAVA_17_FLAGS,
            "-cp",
            str(self.jar),
            "org.apache.beam.sdk.expansion.service.ExpansionService",
            str(self.port),
            "--defaultEnvironmentType=EMBEDDED",
            "--experiments=use_deprecated_read",
        ]
        self._process = ChildProcess(
            "Java expansion service", argv, self.work_dir / "expansion-service.log"
        )
        self._process.wait_for_port(self.port)
