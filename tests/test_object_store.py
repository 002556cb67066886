"""s3:// paths end to end against a real S3-compatible store (S3Proxy from Maven Central, started
by the services): images, lists, shards, models and labels read from it, results written to it,
models pinned by their SHA-256, and a store that does not answer or refuses the keys reported in
a sentence within seconds. Expected classes come from the PIL + torchvision recipe and torch."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from make_shards import make_shards
from test_packages import SIZE, compile_tiny
from test_shards import _reference_top1

import beam_ml_flink as bmf
from beam_ml_flink import services
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.parquet_reader import read_parquet
from beam_ml_flink.pipeline import FAILURES, ReadImage
from beam_ml_flink.progress import count_inputs
from beam_ml_flink.services.process import port_open
from beam_ml_flink.streaming import ModelWatch
from conftest import (
    DEMO_MEAN,
    DEMO_MODEL,
    DEMO_STD,
    IMAGENET_LABELS,
    IMAGES,
    ROOT,
    reference,
    torch_top1,
)

OBJECT_STORE_JAR = Path(
    os.environ.get("OBJECT_STORE_JAR", ROOT / "build" / "s3proxy" / "s3proxy.jar")
)
# The module's store is on a port of its own: the services' test takes the default one.
PORT = 19000
# A key of this run only, so that finding it in a command's output cannot be a coincidence.
SECRET = f"secret-{secrets.token_hex(12)}"
RECIPE = ["--mean=" + ",".join(map(str, DEMO_MEAN)), "--std=" + ",".join(map(str, DEMO_STD))]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def store_jar() -> None:
    if not OBJECT_STORE_JAR.is_file():
        pytest.fail(f"no object store jar at {OBJECT_STORE_JAR}; `make s3proxy` builds it")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.ObjectStore]:
    """The store with the photos (and their list, naming one object that is not there), the demo
    model and its labels."""
    work = tmp_path_factory.mktemp("object-store")
    buckets = ["images", "models", "results", "shards"]
    with services.ObjectStore(OBJECT_STORE_JAR, work, PORT, buckets, secret_key=SECRET) as store:
        assert isinstance(store, services.ObjectStore)
        client = store.client()
        for photo in sorted(IMAGES.iterdir()):
            client.upload_file(str(photo), "images", f"photos/{photo.name}")
        uris = [f"s3://images/photos/{p.name}" for p in sorted(IMAGES.iterdir())]
        listing = "\n".join(["# the photos, and one object that is not there", *uris, MISSING])
        client.put_object(Bucket="images", Key="list.txt", Body=listing.encode())
        client.upload_file(str(DEMO_MODEL), "models", DEMO_MODEL.name)
        client.upload_file(str(IMAGENET_LABELS), "models", IMAGENET_LABELS.name)
        yield store


MISSING = "s3://images/photos/not-uploaded.jpg"
MODEL_URI = f"s3://models/{DEMO_MODEL.name}"
LABELS_URI = f"s3://models/{IMAGENET_LABELS.name}"


def flags(
    store: services.ObjectStore, secret: str = SECRET, endpoint: str | None = None
) -> list[str]:
    """Beam's S3 options for the store."""
    return [
        f"--s3_endpoint_url={endpoint or store.endpoint}",
        f"--s3_access_key_id={store.access_key}",
        f"--s3_secret_access_key={secret}",
        "--s3_region_name=us-east-1",
    ]


def classify(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "beam_ml_flink", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def bare_environment() -> dict[str, str]:
    """This environment without any AWS setting: the store is then reached through the command's
    flags alone, and boto3's default checksums are what it gets."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def objects(store: services.ObjectStore, bucket: str, prefix: str) -> dict[str, bytes]:
    client = store.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        f"s3://{bucket}/{o['Key']}": client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


def jsonl(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for data in files.values() for line in data.decode().splitlines()]


def expected_top1(demo_top1: dict[str, int]) -> dict[str, int]:
    return {f"s3://images/photos/{name}": index for name, index in demo_top1.items()}


@pytest.mark.usefixtures("store_environment")
def test_progress_counts_the_inputs_in_the_store() -> None:
    """The progress lines' input count: a list's entries, a prefix's and a glob's objects."""
    photos = sorted(IMAGES.iterdir())
    assert count_inputs("s3://images/list.txt") == len(photos) + 1
    assert count_inputs("s3://images/photos/") == len(photos)
    jpegs = [p for p in photos if p.suffix == ".jpg"]
    assert count_inputs("s3://images/photos/*.jpg") == len(jpegs) > 0


# The store as a service.


def test_the_store_answers_creates_buckets_and_stops(tmp_path: Path) -> None:
    port = 19010
    with services.ObjectStore(OBJECT_STORE_JAR, tmp_path, port, ["first", "second"]) as store:
        assert isinstance(store, services.ObjectStore)
        client = store.client()
        assert {b["Name"] for b in client.list_buckets()["Buckets"]} == {"first", "second"}
        client.put_object(Bucket="first", Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket="first", Key="a/b.txt")["Body"].read() == b"hello"
        # Its objects are files under the work dir.
        assert (tmp_path / "data" / "first" / "a" / "b.txt").read_bytes() == b"hello"
        with pytest.raises(services.ServiceError, match=f"port {port} is already in use"):
            services.ObjectStore(OBJECT_STORE_JAR, tmp_path / "second", port).start()
    assert not port_open(port)
    log = (tmp_path / "s3proxy.log").read_text()
    assert "ERROR" not in log and store.secret_key not in log


def test_the_services_stop_the_store_when_the_command_fails(tmp_path: Path) -> None:
    """The store on its default port, its buckets created, its client environment given to the
    command, and stopped when the command fails."""
    script = (
        "import boto3, sys; "
        "print(sorted(b['Name'] for b in boto3.client('s3').list_buckets()['Buckets'])); "
        "sys.exit(3)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink.services",
            f"--work-dir={tmp_path}",
            f"--object-store={OBJECT_STORE_JAR}",
            "--buckets=photos,predictions",
            "--",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stdout.strip() == "['photos', 'predictions']"
    assert f"object store up on http://127.0.0.1:{services.OBJECT_STORE_PORT}" in run.stderr
    assert not port_open(services.OBJECT_STORE_PORT)


def test_the_services_stop_the_store_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with (tmp_path / "services.log").open("w") as log:
        command = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beam_ml_flink.services",
                f"--work-dir={tmp_path}",
                f"--object-store={OBJECT_STORE_JAR}",
                "--",
                "bash",
                "-c",
                f"touch {ready}; sleep 300",
            ],
            stderr=log,
        )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert command.poll() is None, (tmp_path / "services.log").read_text()
        assert time.monotonic() < deadline, "the store did not start"
        time.sleep(0.25)
    assert port_open(services.OBJECT_STORE_PORT)
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=60) == 130
    assert not port_open(services.OBJECT_STORE_PORT)


# The command on the DirectRunner, every path in the store.


def test_a_list_in_the_store_with_model_labels_and_output_there(
    store: services.ObjectStore, demo_top1: dict[str, int]
) -> None:
    """The store reached through Beam's S3 flags alone; --verbose and --show; the key given on
    the command line appears in none of the output."""
    run = classify(
        "--input=s3://images/list.txt",
        "--output=s3://results/list/results",
        f"--model_path={MODEL_URI}",
        f"--labels={LABELS_URI}",
        *RECIPE,
        "--batch_size=4",
        "--show=3",
        "--verbose",
        *flags(store),
        env=bare_environment(),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert SECRET not in run.stdout + run.stderr

    written = objects(store, "results", "list/")
    predictions = jsonl({k: v for k, v in written.items() if "results-" in k})
    failures = jsonl({k: v for k, v in written.items() if "results_failures-" in k})
    expected = expected_top1(demo_top1)
    seen = [r["image"] for r in predictions + failures]
    assert sorted(seen) == sorted([*expected, MISSING])
    assert {r["image"]: r["top_k"][0]["index"] for r in predictions} == expected
    labels = IMAGENET_LABELS.read_text().splitlines()
    assert all(r["top_k"][0]["label"] == labels[r["top_k"][0]["index"]] for r in predictions)
    [failure] = failures
    assert failure["error"] == f"{MISSING}: no such file; check the path"
    # --show reads the results back from the store.
    shown = [line for line in run.stdout.splitlines() if line.startswith("s3://images/photos/")]
    assert len(shown) == 3
    assert "  s3://results/list/results-00000-of-00001.jsonl" in run.stdout.splitlines()


def test_a_prefix_in_the_store_with_the_environment_and_no_failure(
    store: services.ObjectStore, demo_top1: dict[str, int]
) -> None:
    """The store reached through the environment the services export (no S3 flag); every photo
    classified, so there is no failures object (Beam cannot write an empty one to S3)."""
    run = classify(
        "--input=s3://images/photos/",
        "--output=s3://results/prefix/r",
        f"--model_path={MODEL_URI}",
        f"--labels={LABELS_URI}",
        *RECIPE,
        "--batch_size=4",
        env={**bare_environment(), **store.client_environment},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = objects(store, "results", "prefix/")
    assert list(written) == ["s3://results/prefix/r-00000-of-00001.jsonl"]
    predictions = jsonl(written)
    assert len(predictions) == len(demo_top1)
    assert {r["image"]: r["top_k"][0]["index"] for r in predictions} == expected_top1(demo_top1)


JOB_SERVER_JAR = Path(
    os.environ.get(
        "FLINK_JOB_SERVER_JAR", ROOT / "build" / "flink-job-server" / "beam-flink-job-server.jar"
    )
)


def job_through_a_job_server(
    store: services.ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    artifacts_dir: str,
    keep_artifacts: bool = False,
) -> tuple[subprocess.CompletedProcess, str, str]:
    """The photos in the store classified through a job server (its embedded Flink, LOOPBACK
    workers) that stages the job's artifacts under `artifacts_dir`; the job server's environment
    is this process's, with the store's settings and nothing else of AWS. Returns the command's
    run, the job server's endpoint and its log."""
    for name in os.environ:
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in store.client_environment.items():
        monkeypatch.setenv(name, value)
    conf = services.flink_conf_dir(ROOT / "data" / "flink-conf.yaml", tmp_path / "conf", None)
    server = services.JobServer(
        JOB_SERVER_JAR,
        tmp_path / "job-server",
        flink_conf_dir=conf,
        artifacts_dir=artifacts_dir,
        keep_artifacts=keep_artifacts,
    )
    with server:
        run = classify(
            "--input=s3://images/photos/",
            f"--output={tmp_path / 'results'}",
            f"--model_path={MODEL_URI}",
            *RECIPE,
            "--runner=PortableRunner",
            f"--job_endpoint={server.endpoint}",
            "--environment_type=LOOPBACK",
            env=dict(os.environ),
        )
        log = (tmp_path / "job-server" / "job-server.log").read_text()
    return run, server.endpoint, log


def test_the_job_server_stages_the_artifacts_in_the_store(
    store: services.ObjectStore,
    demo_top1: dict[str, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job server whose artifacts folder is a bucket writes each job's artifacts there with
    Beam's Java S3 filesystem, which reaches the store through the environment alone (its
    driver takes no filesystem options), and the job runs on them."""
    store.client().create_bucket(Bucket="staging")
    run, _, _ = job_through_a_job_server(
        store, tmp_path, monkeypatch, "s3://staging/beam-artifacts", keep_artifacts=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = [
        json.loads(line)
        for path in sorted(tmp_path.glob("results-*-of-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert {r["image"]: r["top_k"][0]["index"] for r in predictions} == expected_top1(demo_top1)
    # One folder for the job, holding what the client staged: at least Beam's list of the
    # submitting environment's packages, which names Beam itself; nothing on the local disk.
    staged = objects(store, "staging", "beam-artifacts/")
    assert len({uri.split("/")[4] for uri in staged}) == 1, list(staged)
    listed = [data for uri, data in staged.items() if uri.endswith("environment_dependencies.txt")]
    assert listed and b"apache-beam" in listed[0], list(staged)
    assert not (tmp_path / "job-server" / "artifacts").exists()


def test_a_job_server_that_cannot_stage_the_artifacts_is_a_sentence(
    store: services.ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its artifacts folder a bucket that does not exist: the job server refuses the job's
    artifacts with a bare gRPC status, and the command says what that means."""
    run, endpoint, log = job_through_a_job_server(
        store, tmp_path, monkeypatch, "s3://no-such-bucket/beam-artifacts"
    )
    assert run.returncode == 1, run.stderr[-3000:]
    sentence = (
        f"python -m beam_ml_flink: error: the job server at {endpoint} could not stage the "
        "job's artifacts ("
    )
    said = [line for line in run.stderr.splitlines() if line.startswith(sentence)]
    assert len(said) == 1 and "--artifacts-dir" in said[0], run.stderr[-3000:]
    assert "NoSuchBucket" in log or "does not exist" in log


def test_tar_and_parquet_shards_in_the_store(store: services.ObjectStore, tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "shards", samples=8, shards=2)
    client = store.client()
    uploaded = [*sorted((shards.folder / "webdataset").glob("photos-*.tar"))]
    uploaded += sorted((shards.folder / "parquet").glob("*.parquet"))
    for path in uploaded:
        client.upload_file(str(path), "shards", f"{path.parent.name}/{path.name}")
    input = "s3://shards/{webdataset/photos-{00000..00001}.tar,parquet/*.parquet}"
    run = classify(
        f"--input={input}",
        "--output=s3://results/shards/r",
        "--output_format=parquet",
        f"--model_path={MODEL_URI}",
        *RECIPE,
        "--batch_size=4",
        *flags(store),
        env=bare_environment(),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = objects(store, "results", "shards/")
    rows = {
        uri: read_parquet(io.BytesIO(data)).to_pylist() for uri, data in sorted(written.items())
    }
    predictions = [r for uri, rs in rows.items() if "/r-" in uri for r in rs]
    failures = [r for uri, rs in rows.items() if "/r_failures-" in uri for r in rs]
    expected_ids = {i for i in shards.images if not i.startswith(("hostile/", "damaged"))}
    got = {r["image"]: r["top_indices"][0] for r in predictions}
    assert len(got) == len(predictions) and set(got) == expected_ids
    assert got == _reference_top1(shards, expected_ids)
    # The null image of the last Parquet shard, as when the shard is local.
    assert {r["image"]: r["error"] for r in failures}.keys() == {"00001/null-image"}


# Models pinned by their digest.


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store_environment(
    store: services.ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """This process reaches the store through the environment, as a worker does."""
    for name, value in store.client_environment.items():
        monkeypatch.setenv(name, value)
    FileSystems.set_options(PipelineOptions([]))
    yield


@pytest.mark.usefixtures("store_environment")
def test_images_one_object_each_are_read_through_one_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Beam's S3 filesystem makes a client for every file it opens; the image reader makes one
    for all the images of a worker. Each photo's bytes are as stored, and an object that is not
    there is still its failure."""
    from apache_beam.io.aws import s3io

    made: list[object] = []
    make = s3io.S3IO.__init__

    def counted(self: s3io.S3IO, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        make(self, *args, **kwargs)

    monkeypatch.setattr(s3io.S3IO, "__init__", counted)
    read = ReadImage()
    photos = sorted(IMAGES.iterdir())
    for photo in photos:
        assert list(read.process((photo.name, f"s3://images/photos/{photo.name}"))) == [
            (photo.name, photo.read_bytes())
        ]
    (missing,) = read.process(("gone", MISSING))
    assert missing.tag == FAILURES
    assert missing.value == ("gone", f"{MISSING}: no such file; check the path")
    assert len(made) == 1, f"{len(made)} S3 clients for {len(photos) + 1} objects"


@pytest.mark.usefixtures("store_environment")
def test_a_package_from_the_store_pinned_by_its_digest(
    store: services.ObjectStore, tmp_path: Path
) -> None:
    """An AOTInductor package (the tiny model, compiled here) fetched from the store answers as
    torch's own package loader does on the recipe's tensors."""
    package = compile_tiny(tmp_path)
    store.client().upload_file(str(package), "models", "tiny.pt2")
    handler = ImageClassifierHandler(
        "s3://models/tiny.pt2", resize=SIZE, crop=SIZE, model_sha256=sha256(package).upper()
    )
    model = handler.load_model()
    assert model.model_format == "aoti"
    photos = [p.read_bytes() for p in sorted(IMAGES.iterdir())]
    batch = torch.stack([reference(data, resize=SIZE, crop=SIZE) for data in photos])
    with torch.no_grad():
        theirs = torch._inductor.aoti_load_package(str(package))(batch).numpy()
    np.testing.assert_allclose(model.logits(photos), theirs, rtol=0, atol=1e-5)


@pytest.mark.usefixtures("store_environment")
def test_a_digest_mismatch_is_refused_before_anything_is_loaded(
    store: services.ObjectStore, tmp_path: Path
) -> None:
    """Bytes that are no model at all: with the wrong digest, the digest is what fails, so the
    check came first; with their own digest, the loader is what fails."""
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a model, and never to be loaded\n" * 100)
    store.client().upload_file(str(garbage), "models", "garbage.pt")
    wrong = sha256(DEMO_MODEL)
    for path in ("s3://models/garbage.pt", str(garbage)):
        handler = ImageClassifierHandler(path, model_sha256=wrong)
        with pytest.raises(bmf.ModelLoadError) as failed:
            handler.load_model()
        assert (
            f"the model {path} is not the pinned one: expected sha256 {wrong}, the file has "
            f"{sha256(garbage)}; it was not loaded" in str(failed.value)
        )
        with pytest.raises(bmf.ModelLoadError) as failed:
            ImageClassifierHandler(path, model_sha256=sha256(garbage)).load_model()
        assert "sha256" not in str(failed.value)
    # A local model that fails its check is left where it is.
    assert garbage.exists()
    with pytest.raises(ValueError, match="model_sha256 must be a SHA-256 digest"):
        ImageClassifierHandler(str(garbage), model_sha256="abc123")


def test_the_command_refuses_a_model_that_is_not_the_pinned_one(
    store: services.ObjectStore, tmp_path: Path
) -> None:
    wrong = hashlib.sha256(b"another model").hexdigest()
    run = classify(
        "--input=s3://images/list.txt",
        f"--output={tmp_path / 'r'}",
        f"--model_path={MODEL_URI}",
        f"--model_sha256={wrong}",
        *flags(store),
        env=bare_environment(),
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"expected sha256 {wrong}, the file has {sha256(DEMO_MODEL)}" in run.stderr
    assert "Traceback" not in run.stderr
    assert not list(tmp_path.glob("r*"))


@pytest.mark.usefixtures("store_environment")
def test_a_model_watch_on_a_prefix_of_the_store(
    store: services.ObjectStore, flipped_model: Path
) -> None:
    """--watch_models with an s3:// prefix: a model written there after the watch began is
    loaded from the store and answers."""
    handler = ImageClassifierHandler(MODEL_URI, mean=DEMO_MEAN, std=DEMO_STD)
    watch = ModelWatch("s3://models/watch/", 0.0, time.time() - 1, handler._load)
    assert watch.current() is None
    store.client().upload_file(str(flipped_model), "models", "watch/flipped.pt")
    found = watch.current()
    assert found is not None
    path, model = found
    assert path == "s3://models/watch/flipped.pt"
    photos = {name: (IMAGES / name).read_bytes() for name in ("flower.jpg", "rocket.jpg")}
    expected = torch_top1(photos, flipped_model, mean=DEMO_MEAN, std=DEMO_STD)
    got = [c.top_k[0][0] for c in model.classify(list(photos.values()), 1)]
    assert got == list(expected.values())


@pytest.mark.usefixtures("store_environment")
def test_a_remote_model_is_fetched_again_when_the_object_changes(
    store: services.ObjectStore, flipped_model: Path
) -> None:
    client = store.client()
    pinned = {}
    for model in (DEMO_MODEL, flipped_model):
        client.upload_file(str(model), "models", "changing.pt")
        handler = ImageClassifierHandler("s3://models/changing.pt", model_sha256=sha256(model))
        # Loads only if the local copy is the object as it is now.
        pinned[model.name] = handler.load_model()
    assert len(pinned) == 2


# A store that cannot be used is a sentence, within seconds.


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "endpoint",
            "the object store at http://127.0.0.1:1 (s3://images, named by --input) does not "
            "answer",
        ),
        (
            "key",
            "the object store at http://127.0.0.1:19000 (s3://images, named by --input) refused "
            "the credentials (HTTP 403",
        ),
        ("bucket", "(s3://no-such-bucket, named by --output): the bucket no-such-bucket does not"),
        ("input", "--input s3://images/nothing-here/: no object matches this pattern"),
        ("model", "the model s3://models/not-there.pt does not exist"),
    ],
)
def test_a_store_that_cannot_be_used_is_a_sentence(
    store: services.ObjectStore, case: str, message: str
) -> None:
    wrong_key = f"wrong-{secrets.token_hex(8)}"
    started = time.monotonic()
    run = classify(
        "--input=" + ("s3://images/nothing-here/" if case == "input" else "s3://images/list.txt"),
        "--output=" + ("s3://no-such-bucket/r" if case == "bucket" else "s3://results/never/r"),
        "--model_path=" + ("s3://models/not-there.pt" if case == "model" else MODEL_URI),
        *flags(
            store,
            secret=wrong_key if case == "key" else SECRET,
            endpoint="http://127.0.0.1:1" if case == "endpoint" else None,
        ),
        env=bare_environment(),
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert wrong_key not in run.stdout + run.stderr and SECRET not in run.stdout + run.stderr
    assert time.monotonic() - started < 60
