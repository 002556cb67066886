"""A Google Cloud Storage emulator on loopback: fake-gcs-server (BSD-2-Clause), built with
`go install` (`make fake-gcs-server`). It answers GCS's JSON API over plain HTTP, without checking
credentials; its objects are files under the work directory, kept from one start to the next.

google-cloud-storage, and so Beam's GCS filesystem (`apache_beam.io.gcp.gcsio`), sends every
request to it when STORAGE_EMULATOR_HOST names it: `GcsStore.client_environment` holds that and a
project; `python -m beam_ml_flink.services --gcs-store BINARY` exports it to the command it runs.

Beam renames and deletes objects (a sink's temporary files, for one) in batch requests, whose parts
google-cloud-storage sends without a Content-ID; GCS answers them, fake-gcs-server 1.56.1 skips such
parts and answers an empty batch, which the client refuses ("Bad response: not multi-part";
fsouza/fake-gcs-server issue #411, `handleBatchCall`). So the emulator listens on a port of its own
and the store's port is a small proxy that numbers those parts and passes every request on as it
is otherwise.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

# fake-gcs-server's own default port.
GCS_STORE_PORT = 4443
# The project that clients name: the emulator keeps one, whatever it is called.
GCS_STORE_PROJECT = "beam-ml-flink"
_GCP_EXTRA = "pip install 'beam-ml-flink[gcp]' (google-cloud-storage)"


# Headers that belong to one connection, not to the request or answer passed on.
_HOP_HEADERS = frozenset(
    ["connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"]
)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def number_batch_parts(body: bytes, content_type: str) -> bytes:
    """The multipart `body` of a batch request with a Content-ID on each part that has none."""
    found = _BOUNDARY.search(content_type)
    if not found:
        return body
    delimiter = b"--" + found.group(1).encode()
    pieces = body.split(delimiter)
    for i in range(1, len(pieces)):
        piece = pieces[i]
        if piece.startswith(b"--"):  # the closing delimiter
            continue
        newline = b"\r\n" if piece.startswith(b"\r\n") else b"\n"
        headers = re.split(rb"\r?\n\r?\n", piece, maxsplit=1)[0]
        if b"content-id:" not in headers.lower():
            pieces[i] = newline + b"Content-ID: <part-%d>" % i + piece
    return delimiter.join(pieces)


class _BatchProxy(ThreadingHTTPServer):
    """Passes every request on 127.0.0.1:`port` to the emulator on `backend_port`, numbering the
    parts of batch requests (see the module's docstring)."""

    daemon_threads = True

    def __init__(self, port: int, backend_port: int):
        self.backend_port = backend_port
        super().__init__(("127.0.0.1", port), _BatchProxyHandler)
        self._thread = threading.Thread(target=self.serve_forever, name="gcs-store-proxy")
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


class _BatchProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _BatchProxy

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if not size:
                    break
                chunks.append(chunk)
            # Trailers, up to the blank line that ends them.
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _pass_on(self) -> None:
        body = self._body()
        if self.path.startswith("/batch/"):
            body = number_batch_parts(body, self.headers.get("Content-Type", ""))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        backend = http.client.HTTPConnection("127.0.0.1", self.server.backend_port, timeout=300)
        try:
            backend.request(self.command, self.path, body=body, headers=headers)
            answer = backend.getresponse()
            data = answer.read()
        except OSError as e:
            self.send_error(502, f"the GCS emulator did not answer: {e}")
            return
        finally:
            backend.close()
        self.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _pass_on

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulator logs each request


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gcs_client(endpoint: str, project: str = GCS_STORE_PROJECT) -> Any:
    """A google-cloud-storage client of the emulator at `endpoint`, without credentials."""
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.storage import Client
    except ImportError as e:
        raise ServiceError(
            f"the GCS store needs google-cloud-storage (Beam's GCS filesystem uses it): "
            f"{_GCP_EXTRA}"
        ) from e
    return Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def wait_until_answers(
    client: Any, endpoint: str, exited: Callable[[], bool], log: Callable[[], str]
) -> None:
    """Waits until the emulator at `endpoint` answers a request of the JSON API (a list of
    buckets) through `client`; raises ServiceError with `log()` when `exited()` says its process
    has gone, or after START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            list(client.list_buckets(timeout=(5, 10), retry=None))
            return
        except Exception as e:  # noqa: BLE001 - not ready yet; retried until the deadline
            error = e
        if exited() or time.monotonic() > deadline:
            raise ServiceError(f"the GCS store on {endpoint} did not answer ({error}); {log()}")
        time.sleep(0.25)


def create_buckets(client: Any, endpoint: str, buckets: Sequence[str]) -> None:
    """Creates `buckets` through the storage `client` of the emulator at `endpoint` (those that
    exist are left as they are)."""
    existing = {b.name for b in client.list_buckets()}
    for bucket in buckets:
        if bucket in existing:
            continue
        try:
            client.create_bucket(bucket)
        except Exception as e:
            raise ServiceError(
                f"could not create the bucket {bucket} in the GCS store on {endpoint}: {e}"
            ) from e


def client_environment(endpoint: str, project: str = GCS_STORE_PROJECT) -> dict[str, str]:
    """What a process needs in its environment to reach the emulator at `endpoint` through
    google-cloud-storage and Beam's GCS filesystem without any flag: STORAGE_EMULATOR_HOST (a
    client then sends every request there, without credentials) and the project that
    `storage.Client()` takes when none is given."""
    return {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": project}


class GcsStore(ProcessService):
    """fake-gcs-server on 127.0.0.1:`port` from the `binary` that `make fake-gcs-server` builds,
    its objects under `work_dir`/data, its log under `work_dir`; the emulator itself listens on a
    free port behind the proxy on `port`. `buckets` are created once it answers (those that exist
    are kept)."""

    _proxy: _BatchProxy | None = None

    def __init__(
        self,
        binary: str | os.PathLike[str],
        work_dir: Path,
        port: int = GCS_STORE_PORT,
        buckets: Sequence[str] = (),
        project: str = GCS_STORE_PROJECT,
    ):
        self.binary = Path(binary)
        self.work_dir = Path(work_dir)
        self.port = port
        self.buckets = list(buckets)
        self.project = project

    @property
    def endpoint(self) -> str:
        """What STORAGE_EMULATOR_HOST and a client's `api_endpoint` take."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_environment(self) -> dict[str, str]:
        """What a process needs in its environment to reach the store through google-cloud-storage
        and Beam's GCS filesystem without any flag: STORAGE_EMULATOR_HOST and a project."""
        return client_environment(self.endpoint, self.project)

    def client(self) -> Any:
        """A google-cloud-storage client of the store."""
        return gcs_client(self.endpoint, self.project)

    def start(self) -> None:
        if not self.binary.is_file():
            raise ServiceError(
                f"the GCS store's binary {self.binary} does not exist; `make fake-gcs-server` "
                "builds it"
            )
        check_ports_free([self.port], "GCS store (fake-gcs-server)")
        data = self.work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        emulator_port = _free_port()
        self._process = ChildProcess(
            "GCS store (fake-gcs-server)",
            [
                str(self.binary),
                "-scheme=http",
                "-host=127.0.0.1",
                f"-port={emulator_port}",
                "-backend=filesystem",
                f"-filesystem-root={data}",
                # The Location of resumable uploads (how Beam writes) and of the objects' links:
                # this address, not storage.googleapis.com.
                f"-external-url={self.endpoint}",
                f"-public-host=127.0.0.1:{self.port}",
                "-log-level=warn",
            ],
            self.work_dir / "fake-gcs-server.log",
        )
        self._process.wait_for_port(emulator_port)
        try:
            self._proxy = _BatchProxy(self.port, emulator_port)
        except OSError as e:
            raise ServiceError(f"the GCS store could not listen on port {self.port}: {e}") from e
        process = self._process
        wait_until_answers(
            self.client(),
            self.endpoint,
            lambda: process.process.poll() is not None,
            lambda: f"its log ({process.log}) ends with:\n{log_tail(process.log)}",
        )
        self.create_buckets(self.buckets)

    def create_buckets(self, buckets: Sequence[str]) -> None:
        """Creates `buckets` (those that exist are left as they are)."""
        create_buckets(self.client(), self.endpoint, buckets)

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        super().stop()
