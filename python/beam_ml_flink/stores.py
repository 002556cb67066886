"""Object stores named by the command's paths (s3://, gs://): checked once before the pipeline
starts, with short timeouts, so that a store that does not answer, refuses the keys or lacks a
bucket stops the command with a sentence instead of a worker retrying for minutes.

An S3 store is reached as Beam's S3 filesystem reaches it: the endpoint, keys and region of Beam's
options (``--s3_endpoint_url``, ``--s3_access_key_id``, ``--s3_secret_access_key``,
``--s3_region_name``), else boto3's usual places (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``~/.aws``). GCS is reached through the storage client that Beam's GCS
filesystem makes (``apache_beam.io.gcp.gcsio.create_storage_client``): Application Default
Credentials where apache-beam[gcp] can find them, else anonymously; ``STORAGE_EMULATOR_HOST``
sends it to an emulator. No message here shows a key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

# Seconds to connect and to wait for an answer, and the attempts of the check: a store that does
# not answer within them is reported, not waited for.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 20
ATTEMPTS = 2
_GLOB_CHARACTERS = frozenset("*?[")
_AWS_EXTRA = "pip install 'beam-ml-flink[aws]' (apache-beam[aws], boto3)"
_GCP_EXTRA = "pip install 'beam-ml-flink[gcp]' (google-cloud-storage)"


class StoreError(Exception):
    """An object store named by the command cannot be used; the message says why and what to do."""


def scheme(path: str) -> str | None:
    """The filesystem scheme of ``path`` ('s3', 'gs', ...), None for a local path."""
    found = FileSystems.get_scheme(path)
    return None if found in (None, "file") else found


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def s3_client(options: PipelineOptions) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise StoreError(f"s3:// paths need boto3: {_AWS_EXTRA}") from e
    s3 = options.view_as(S3Options)
    return boto3.session.Session().client(
        "s3",
        region_name=s3.s3_region_name,
        api_version=s3.s3_api_version,
        use_ssl=not s3.s3_disable_ssl,
        verify=s3.s3_verify,
        endpoint_url=s3.s3_endpoint_url,
        aws_access_key_id=s3.s3_access_key_id,
        aws_secret_access_key=s3.s3_secret_access_key,
        aws_session_token=s3.s3_session_token,
        config=Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        ),
    )


def _check_s3_bucket(client: Any, bucket: str, flags: str) -> None:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    endpoint = client.meta.endpoint_url
    where = f"the object store at {endpoint} (s3://{bucket}, named by {flags})"
    try:
        client.head_bucket(Bucket=bucket)
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise StoreError(
            f"{where}: no credentials ({e}); give --s3_access_key_id and --s3_secret_access_key, "
            "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except (ConnectionError, HTTPClientError) as e:
        raise StoreError(
            f"{where} does not answer ({e}); check --s3_endpoint_url (or AWS_ENDPOINT_URL_S3) "
            "and that the store is running"
        ) from None
    except ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = e.response.get("Error", {}).get("Code", "")
        if status in (401, 403):
            raise StoreError(
                f"{where} refused the credentials (HTTP {status}{f', {code}' if code else ''}); "
                "check --s3_access_key_id and --s3_secret_access_key (or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY), and that they may read the bucket"
            ) from None
        if status == 404:
            raise StoreError(
                f"{where}: the bucket {bucket} does not exist; create it, or check the name"
            ) from None
        raise StoreError(f"{where} answered an error: {e}") from None


def _gcs_client(options: PipelineOptions) -> Any:
    try:
        from apache_beam.io.gcp import gcsio
    except ImportError as e:
        raise StoreError(f"gs:// paths need google-cloud-storage: {_GCP_EXTRA}") from e
    return gcsio.create_storage_client(options)


def _check_gcs_bucket(client: Any, bucket: str, flags: str) -> None:
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions
    from requests import exceptions as http_exceptions

    where = f"the object store at {client.api_endpoint} (gs://{bucket}, named by {flags})"
    anonymous = type(client._credentials).__name__ == "AnonymousCredentials"
    for attempt in range(1, ATTEMPTS + 1):
        try:
            client.get_bucket(bucket, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), retry=None)
            return
        except (http_exceptions.ConnectionError, http_exceptions.Timeout) as e:
            if attempt == ATTEMPTS:
                raise StoreError(
                    f"{where} does not answer ({type(e).__name__}); check STORAGE_EMULATOR_HOST "
                    "where an emulator is meant, the network otherwise, and that the store is "
                    "running"
                ) from None
        except auth_exceptions.GoogleAuthError as e:
            raise StoreError(
                f"{where}: the credentials could not be used ({type(e).__name__}: {e}); check "
                "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`"
            ) from None
        except (exceptions.Unauthorized, exceptions.Forbidden) as e:
            hint = (
                "no credentials were found, so it was asked anonymously: install apache-beam[gcp] "
                "and set up Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS)"
                if anonymous
                else "check that the credentials (GOOGLE_APPLICATION_CREDENTIALS) may read the "
                "bucket"
            )
            raise StoreError(f"{where} refused the request (HTTP {e.code}); {hint}") from None
        except exceptions.NotFound:
            raise StoreError(
                f"{where}: the bucket {bucket} does not exist; create it, or check the name"
            ) from None
        except exceptions.GoogleAPICallError as e:
            raise StoreError(f"{where} answered an error: HTTP {e.code} {e.message}") from None


def check_stores(paths: Iterable[tuple[str, str]], options: PipelineOptions) -> None:
    """For each bucket that the (flag, path) pairs name on s3:// or gs://: the store answers, takes
    the keys and has the bucket; else StoreError. Local paths and other schemes are left to
    Beam."""
    buckets: dict[tuple[str, str], list[str]] = {}
    for flag, path in paths:
        found = scheme(path) if path else None
        if found in ("s3", "gs"):
            buckets.setdefault((found, _bucket(path)), []).append(f"--{flag}")
    clients: dict[str, Any] = {}
    for (store, bucket), flags in buckets.items():
        named = " and ".join(dict.fromkeys(flags))
        if store == "s3":
            client = clients.get(store) or clients.setdefault(store, s3_client(options))
            _check_s3_bucket(client, bucket, named)
        else:
            client = clients.get(store) or clients.setdefault(store, _gcs_client(options))
            _check_gcs_bucket(client, bucket, named)


def image_pattern(input: str) -> str:
    """A remote folder (a URI ending with '/') as the pattern of the objects under it; any other
    path as it is."""
    return f"{input}*" if scheme(input) and input.endswith("/") else input


def remote_matches(pattern: str) -> int:
    """How many objects a remote glob or prefix matches (0 where the store lists none)."""
    try:
        return len(FileSystems.match([pattern])[0].metadata_list)
    except BeamIOError:
        return 0


def check_remote_input(input: str, patterns: list[str] | None = None) -> str | None:
    """What is wrong with a remote --input (a list object, a glob or prefix of images, or shard
    ``patterns``), or None. The store itself was checked by :func:`check_stores`."""
    if patterns is not None:
        missing = [p for p in patterns if not remote_matches(p)]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            return (
                f"--input {input}: {len(missing)} of its shards or patterns match no object: "
                f"{shown}; check the range or pattern"
            )
        return None
    pattern = image_pattern(input)
    if _GLOB_CHARACTERS & set(pattern):
        if not remote_matches(pattern):
            return f"--input {input}: no object matches this pattern; check the pattern"
        return None
    if not FileSystems.exists(input):
        return (
            f"--input {input} does not exist; give a list of images (one path or URI per line), "
            "a prefix ending with '/' or a glob"
        )
    return None
