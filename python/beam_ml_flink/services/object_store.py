"""An S3-compatible object store on loopback: S3Proxy 3 (Apache-2.0) with its filesystem backend,
from Maven Central (data/s3proxy.pom.xml, `make s3proxy`). Its objects are files under the work
directory, kept from one start to the next; it answers S3 requests signed with AWS signature v2 or
v4 for one fixed identity.

Beam's S3 filesystem (`apache-beam[aws]`, boto3) reads and writes it given the environment that
`ObjectStore.client_environment` holds; `python -m beam_ml_flink.services --object-store JAR`
exports that environment to the command it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from beam_ml_flink.services.process import (
    START_TIMEOUT_S,
    ChildProcess,
    ProcessService,
    ServiceError,
    check_ports_free,
    log_tail,
)

OBJECT_STORE_PORT = 9000
# A fixed identity: the store listens on loopback only and holds test data.
OBJECT_STORE_ACCESS_KEY = "beam-ml-flink"
OBJECT_STORE_SECRET_KEY = "beam-ml-flink-local-secret"
OBJECT_STORE_REGION = "us-east-1"
# The store's log: S3Proxy's requests and errors at INFO; its Jetty and jclouds at WARN (logback
# logs everything at DEBUG when it has no configuration).
_LOGBACK = """\
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>[%d] %level %logger{20}: %msg%n</pattern></encoder>
  </appender>
  <logger name="org.gaul.s3proxy" level="INFO"/>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


def s3_client(endpoint: str, access_key: str, secret_key: str, **config: Any) -> Any:
    """A boto3 S3 client of `endpoint`; `config` goes to botocore's Config (timeouts,
    retries)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise ServiceError(
            "the object store needs boto3 (Beam's S3 filesystem uses it): "
            "pip install 'beam-ml-flink[aws]'"
        ) from e
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=OBJECT_STORE_REGION,
        config=Config(**config),
    )


def wait_until_answers(
    endpoint: str,
    access_key: str,
    secret_key: str,
    exited: Callable[[], bool],
    log: Callable[[], str],
) -> None:
    """Waits until the store at `endpoint` answers an S3 request (ListBuckets) signed with the
    identity; raises ServiceError with `log()` when `exited()` says its process has gone, or after
    START_TIMEOUT_S."""
    client = s3_client(
        endpoint,
        access_key,
        secret_key,
        connect_timeout=5,
        read_timeout=10,
        retries={"max_attempts": 1},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            client.list_buckets()
            return
        except Exception as e:  # noqa: BLE001 - not ready yet; retried until the deadline
            error = e
        if exited() or time.monotonic() > deadline:
            raise ServiceError(f"the object store on {endpoint} did not answer ({error}); {log()}")
        time.sleep(0.25)


def create_buckets(client: Any, endpoint: str, buckets: Sequence[str]) -> None:
    """Creates `buckets` through the S3 `client` of the store at `endpoint` (those that exist are
    left as they are)."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket in existing:
            continue
        try:
            client.create_bucket(Bucket=bucket)
        except Exception as e:
            raise ServiceError(
                f"could not create the bucket {bucket} in the object store on {endpoint}: {e}"
            ) from e


def client_environment(endpoint: str, access_key: str, secret_key: str) -> dict[str, str]:
    """What a process needs in its environment to reach the store at `endpoint` through boto3 and
    Beam's S3 filesystems (Python's, and Java's in a job server or TaskManager) without any flag:
    the endpoint, the identity and a region (boto3 reads AWS_DEFAULT_REGION, the Java SDK
    AWS_REGION)."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": OBJECT_STORE_REGION,
        "AWS_REGION": OBJECT_STORE_REGION,
    }


class ObjectStore(ProcessService):
    """S3Proxy on 127.0.0.1:`port` from the launcher `jar` that `make s3proxy` assembles, its
    objects under `work_dir`/data, its configuration and log under `work_dir`. `buckets` are created
    once it answers (those that exist are kept)."""

    def __init__(
        self,
        jar: str | os.PathLike[str],
        work_dir: Path,
        port: int = OBJECT_STORE_PORT,
        buckets: Sequence[str] = (),
        access_key: str = OBJECT_STORE_ACCESS_KEY,
        secret_key: str = OBJECT_STORE_SECRET_KEY,
    ):
        self.jar = Path(jar)
        self.work_dir = Path(work_dir)
        self.port = port
        self.buckets = list(buckets)
        self.access_key = access_key
        self.secret_key = secret_key

    @property
    def endpoint(self) -> str:
        """What `--s3_endpoint_url` and S3 clients take."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_environment(self) -> dict[str, str]:
        """What a process needs in its environment to reach the store through boto3 and Beam's S3
        filesystem without any flag: the endpoint, the identity and a region."""
        return client_environment(self.endpoint, self.access_key, self.secret_key)

    def client(self) -> Any:
        """A boto3 S3 client of the store."""
        return s3_client(self.endpoint, self.access_key, self.secret_key)

    def _write_config(self) -> Path:
        data = self.work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        properties = {
            "s3proxy.endpoint": self.endpoint,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": self.access_key,
            "s3proxy.credential": self.secret_key,
            # Beam's Java S3 filesystem sends every upload's bucket-key setting, false too
            # (x-amz-server-side-encryption-bucket-key-enabled), which S3Proxy would refuse
            # with 501 Not Implemented.
            "s3proxy.ignore-unknown-headers": "true",
            "jclouds.provider": "filesystem-nio2",
            "jclouds.filesystem.basedir": str(data),
            # filesystem-nio2 asks for an identity of its own, which it does not check.
            "jclouds.identity": "local",
            "jclouds.credential": "local",
        }
        config = self.work_dir / "s3proxy.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        # The credential is in this file: readable by its owner only.
        config.chmod(0o600)
        (self.work_dir / "logback.xml").write_text(_LOGBACK)
        return config

    def start(self) -> None:
        if not self.jar.is_file():
            raise ServiceError(
                f"the object store's jar {self.jar} does not exist; `make s3proxy` builds it"
            )
        check_ports_free([self.port], "object store (S3Proxy)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._process = ChildProcess(
            "object store (S3Proxy)",
            [
                "java",
                "-Xmx256m",
                f"-Dlogback.configurationFile={self.work_dir / 'logback.xml'}",
                "-jar",
                str(self.jar),
                "--properties",
                str(config),
            ],
            self.work_dir / "s3proxy.log",
        )
        self._process.wait_for_port(self.port)
        self._wait_until_ready()
        self.create_buckets(self.buckets)

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        wait_until_answers(
            self.endpoint,
            self.access_key,
            self.secret_key,
            lambda: process.process.poll() is not None,
            lambda: f"its log ({process.log}) ends with:\n{log_tail(process.log)}",
        )

    def create_buckets(self, buckets: Sequence[str]) -> None:
        """Creates `buckets` (those that exist are left as they are)."""
        create_buckets(self.client(), self.endpoint, buckets)
