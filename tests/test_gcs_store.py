"""gs:// paths end to end through Beam's own GCS filesystem against a real GCS emulator
(fake-gcs-server, `make fake-gcs-server`, started by the services): a list of photos, the model
pinned by its SHA-256 and the labels read from it, JSON results written to it and read back by
--show, matching a local run of the same photos; WebDataset and Parquet shards read from it and
Parquet written to it; a missing bucket and a store that does not answer reported in a sentence
within seconds. Expected classes come from torch and the PIL + torchvision recipe."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from make_shards import make_shards
from test_shards import _reference_top1

import beam_ml_flink as bmf
from beam_ml_flink import services
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.parquet_reader import read_parquet
from beam_ml_flink.progress import count_inputs
from beam_ml_flink.services.process import port_open
from beam_ml_flink.streaming import ModelWatch
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGENET_LABELS, IMAGES, ROOT, torch_top1

GCS_STORE_BINARY = Path(
    os.environ.get("GCS_STORE_BINARY", ROOT / "build" / "bin" / "fake-gcs-server")
)
RECIPE = ["--mean=" + ",".join(map(str, DEMO_MEAN)), "--std=" + ",".join(map(str, DEMO_STD))]
MISSING = "gs://images/photos/not-uploaded.jpg"
MODEL_URI = f"gs://models/{DEMO_MODEL.name}"
LABELS_URI = f"gs://models/{IMAGENET_LABELS.name}"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def free_port() -> int:
    """A port that nothing listens on now (others' services hold the usual ones)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def store_binary() -> None:
    if not GCS_STORE_BINARY.is_file():
        pytest.fail(f"no GCS emulator at {GCS_STORE_BINARY}; `make fake-gcs-server` builds it")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.GcsStore]:
    """The store with the photos (and their list, naming one object that is not there), the demo
    model and its labels."""
    work = tmp_path_factory.mktemp("gcs-store")
    buckets = ["images", "models", "results", "shards"]
    with services.GcsStore(GCS_STORE_BINARY, work, free_port(), buckets) as store:
        assert isinstance(store, services.GcsStore)
        client = store.client()
        photos = sorted(IMAGES.iterdir())
        for photo in photos:
            client.bucket("images").blob(f"photos/{photo.name}").upload_from_filename(photo)
        uris = [f"gs://images/photos/{p.name}" for p in photos]
        listing = "\n".join(["# the photos, and one object that is not there", *uris, MISSING])
        client.bucket("images").blob("list.txt").upload_from_string(listing)
        for path in (DEMO_MODEL, IMAGENET_LABELS):
            client.bucket("models").blob(path.name).upload_from_filename(path)
        yield store


def classify(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "beam_ml_flink", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def bare_environment() -> dict[str, str]:
    """This environment without any Google Cloud setting."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STORAGE_EMULATOR", "GOOGLE_", "CLOUDSDK_"))
    }


def objects(store: services.GcsStore, bucket: str, prefix: str) -> dict[str, bytes]:
    client = store.client()
    return {
        f"gs://{bucket}/{blob.name}": blob.download_as_bytes()
        for blob in client.list_blobs(bucket, prefix=prefix)
    }


def jsonl(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for data in files.values() for line in data.decode().splitlines()]


@pytest.fixture
def store_environment(store: services.GcsStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process reaches the store through the environment, as a worker does."""
    for name, value in store.client_environment.items():
        monkeypatch.setenv(name, value)
    FileSystems.set_options(PipelineOptions([]))
    yield


# The store as a service.


def test_the_store_answers_creates_buckets_batches_and_stops(tmp_path: Path) -> None:
    """Its buckets, an object kept as a file under the work dir, a batch of copies and deletes
    (how Beam renames a sink's files) answered part by part, its port checked and freed."""
    port = free_port()
    with services.GcsStore(GCS_STORE_BINARY, tmp_path, port, ["first", "second"]) as store:
        assert isinstance(store, services.GcsStore)
        client = store.client()
        assert {b.name for b in client.list_buckets()} == {"first", "second"}
        bucket = client.bucket("first")
        bucket.blob("a/b.txt").upload_from_string(b"hello")
        assert (tmp_path / "data" / "first" / "a" / "b.txt").read_bytes() == b"hello"
        with client.batch(raise_exception=False) as batch:
            bucket.copy_blob(bucket.blob("a/b.txt"), bucket, "a/c.txt")
            bucket.copy_blob(bucket.blob("a/missing.txt"), bucket, "a/d.txt")
        assert [r.status_code for r in batch._responses] == [200, 404]
        with client.batch():
            bucket.delete_blob("a/b.txt")
        assert [b.name for b in client.list_blobs("first")] == ["a/c.txt"]
        assert bucket.blob("a/c.txt").download_as_bytes() == b"hello"
        with pytest.raises(services.ServiceError, match=f"port {port} is already in use"):
            services.GcsStore(GCS_STORE_BINARY, tmp_path / "second", port).start()
    assert not port_open(port)


def test_the_services_give_the_command_the_store(tmp_path: Path) -> None:
    """--gcs-store with --buckets: google-cloud-storage's plain Client() in the command reaches
    it through the exported environment; the store is stopped when the command fails."""
    port = free_port()
    script = (
        "import sys; from google.cloud import storage; "
        "print(sorted(b.name for b in storage.Client().list_buckets())); sys.exit(3)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink.services",
            f"--work-dir={tmp_path}",
            f"--gcs-store={GCS_STORE_BINARY}",
            f"--gcs-store-port={port}",
            "--buckets=photos,predictions",
            "--",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=bare_environment(),
    )
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stdout.strip() == "['photos', 'predictions']"
    assert f"GCS store up on http://127.0.0.1:{port}, buckets photos, predictions" in run.stderr
    assert not port_open(port)


@pytest.mark.usefixtures("store_environment")
def test_progress_counts_the_inputs_in_the_store() -> None:
    """A list's entries, a prefix's and a glob's objects, as Beam's GCS filesystem lists them."""
    photos = sorted(IMAGES.iterdir())
    assert count_inputs("gs://images/list.txt") == len(photos) + 1
    assert count_inputs("gs://images/photos/") == len(photos)
    jpegs = [p for p in photos if p.suffix == ".jpg"]
    assert count_inputs("gs://images/photos/*.jpg") == len(jpegs) > 0


# The command on the DirectRunner, every path in the store.


def test_a_list_in_the_store_answers_as_the_local_run(
    store: services.GcsStore, demo_top1: dict[str, int], tmp_path: Path
) -> None:
    """The list, the model (pinned by its digest) and the labels on gs://, JSON results written
    there and read back by --show: the same answers as the same photos run from local files."""
    common = [*RECIPE, "--batch_size=4", f"--model_sha256={sha256(DEMO_MODEL)}", "--top_k=3"]
    local_list = tmp_path / "list.txt"
    local_list.write_text("".join(f"{p}\n" for p in sorted(IMAGES.iterdir())))
    local = classify(
        f"--input={local_list}",
        f"--output={tmp_path / 'local'}",
        f"--model_path={DEMO_MODEL}",
        f"--labels={IMAGENET_LABELS}",
        *common,
        env=bare_environment(),
    )
    assert local.returncode == 0, local.stderr[-3000:]
    remote = classify(
        "--input=gs://images/list.txt",
        "--output=gs://results/list/results",
        f"--model_path={MODEL_URI}",
        f"--labels={LABELS_URI}",
        *common,
        "--show=3",
        env={**bare_environment(), **store.client_environment},
    )
    assert remote.returncode == 0, remote.stderr[-3000:]

    written = objects(store, "results", "list/")
    predictions = jsonl({k: v for k, v in written.items() if "results-" in k})
    failures = jsonl({k: v for k, v in written.items() if "results_failures-" in k})
    local_predictions = jsonl({str(p): p.read_bytes() for p in tmp_path.glob("local-*-of-*.jsonl")})
    assert len(local_predictions) == len(demo_top1)
    by_name = {Path(r["image"]).name: r["top_k"] for r in predictions}
    assert by_name == {Path(r["image"]).name: r["top_k"] for r in local_predictions}
    assert {name: top_k[0]["index"] for name, top_k in by_name.items()} == demo_top1
    assert all(r["image"].startswith("gs://images/photos/") for r in predictions)
    # The object that is not there is the one failure, said as a missing local file is.
    [failure] = failures
    assert failure["image"] == MISSING
    assert failure["error"] == f"{MISSING}: no such file; check the path"
    shown = [line for line in remote.stdout.splitlines() if line.startswith("gs://images/")]
    assert len(shown) == 3
    assert "  gs://results/list/results-00000-of-00001.jsonl" in remote.stdout.splitlines()


def test_tar_and_parquet_shards_in_the_store_to_parquet_there(
    store: services.GcsStore, tmp_path: Path
) -> None:
    shards = make_shards(tmp_path / "shards", samples=8, shards=2)
    bucket = store.client().bucket("shards")
    uploaded = sorted((shards.folder / "webdataset").glob("photos-*.tar"))
    uploaded += sorted((shards.folder / "parquet").glob("*.parquet"))
    for path in uploaded:
        bucket.blob(f"{path.parent.name}/{path.name}").upload_from_filename(path)
    run = classify(
        "--input=gs://shards/{webdataset/photos-{00000..00001}.tar,parquet/*.parquet}",
        "--output=gs://results/shards/r",
        "--output_format=parquet",
        f"--model_path={MODEL_URI}",
        *RECIPE,
        "--batch_size=4",
        env={**bare_environment(), **store.client_environment},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = objects(store, "results", "shards/")
    rows = {uri: read_parquet(io.BytesIO(data)).to_pylist() for uri, data in written.items()}
    predictions = [r for uri, rs in rows.items() if "/r-" in uri for r in rs]
    failures = [r for uri, rs in rows.items() if "/r_failures-" in uri for r in rs]
    expected_ids = {i for i in shards.images if not i.startswith(("hostile/", "damaged"))}
    got = {r["image"]: r["top_indices"][0] for r in predictions}
    assert len(got) == len(predictions) and set(got) == expected_ids
    assert got == _reference_top1(shards, expected_ids)
    # The null image of the last Parquet shard, as when the shard is local.
    assert {r["image"] for r in failures} == {"00001/null-image"}


# Models from the store.


@pytest.mark.usefixtures("store_environment")
def test_a_model_from_the_store_is_refused_unless_it_is_the_pinned_one(
    store: services.GcsStore,
) -> None:
    wrong = hashlib.sha256(b"another model").hexdigest()
    with pytest.raises(bmf.ModelLoadError) as failed:
        ImageClassifierHandler(MODEL_URI, model_sha256=wrong).load_model()
    assert (
        f"the model {MODEL_URI} is not the pinned one: expected sha256 {wrong}, the file has "
        f"{sha256(DEMO_MODEL)}; it was not loaded" in str(failed.value)
    )


@pytest.mark.usefixtures("store_environment")
def test_a_model_watch_on_a_prefix_of_the_store(
    store: services.GcsStore, flipped_model: Path
) -> None:
    """--watch_models with a gs:// prefix: a model written there after the watch began is loaded
    from the store and answers as torch does."""
    handler = ImageClassifierHandler(MODEL_URI, mean=DEMO_MEAN, std=DEMO_STD)
    watch = ModelWatch("gs://models/watch/", 0.0, time.time() - 1, handler._load)
    assert watch.current() is None
    store.client().bucket("models").blob("watch/flipped.pt").upload_from_filename(flipped_model)
    found = watch.current()
    assert found is not None
    path, model = found
    assert path == "gs://models/watch/flipped.pt"
    photos = {name: (IMAGES / name).read_bytes() for name in ("flower.jpg", "rocket.jpg")}
    expected = torch_top1(photos, flipped_model, mean=DEMO_MEAN, std=DEMO_STD)
    with torch.no_grad():
        got = [c.top_k[0][0] for c in model.classify(list(photos.values()), 1)]
    assert got == list(expected.values())


# A store that cannot be used is a sentence, within seconds.


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "endpoint",
            "the object store at http://127.0.0.1:1 (gs://images, named by --input) does not "
            "answer",
        ),
        (
            "bucket",
            "(gs://no-such-bucket, named by --output): the bucket no-such-bucket does not exist",
        ),
    ],
)
def test_a_store_that_cannot_be_used_is_a_sentence(
    store: services.GcsStore, case: str, message: str
) -> None:
    environment = store.client_environment
    if case == "endpoint":
        environment = {**environment, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:1"}
    started = time.monotonic()
    run = classify(
        "--input=gs://images/list.txt",
        "--output=" + ("gs://no-such-bucket/r" if case == "bucket" else "gs://results/never/r"),
        f"--model_path={MODEL_URI}",
        env={**bare_environment(), **environment},
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert time.monotonic() - started < 60
