"""Reading images stored one object each from an S3 store (S3Proxy, started by the services):
Beam's `FileSystems.open`, which makes a new S3 client for every file, against the image
reader of the pipeline (`ReadImage`), which keeps one client per worker. The photos of
bench_pipeline.py (its first 128), each read whole, the two readers alternating for 3 rounds.

    .venv/bin/python bench/bench_object_reads.py

Prints milliseconds per image, median (and every round), and writes
bench/results/object-reads.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import cpu_model, make_inputs  # noqa: E402

from beam_ml_flink import services  # noqa: E402
from beam_ml_flink.pipeline import ReadImage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STORE_JAR = ROOT / "build" / "s3proxy" / "s3proxy.jar"
PHOTOS = 128
ROUNDS = 3


def main() -> None:
    photos = sorted(set(make_inputs()["256 photos 640x427"]))[:PHOTOS]
    with services.ObjectStore(STORE_JAR, Path(tempfile.mkdtemp()), 19500, ["bench"]) as store:
        client = store.client()
        for photo in photos:
            client.upload_file(photo, "bench", Path(photo).name)
        os.environ.update(store.client_environment)
        FileSystems.set_options(PipelineOptions([]))
        uris = [f"s3://bench/{Path(p).name}" for p in photos]

        def beam_open() -> None:
            for uri in uris:
                with FileSystems.open(uri) as f:
                    f.read()

        def read_image() -> None:
            reader = ReadImage()
            for uri in uris:
                assert len(list(reader.process((uri, uri)))) == 1

        readers: dict[str, Callable[[], None]] = {
            "Beam's FileSystems.open (a client per file)": beam_open,
            "ReadImage (a client per worker)": read_image,
        }
        rounds: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(ROUNDS):
            for name, read in readers.items():
                started = time.perf_counter()
                read()
                rounds[name].append((time.perf_counter() - started) / len(uris) * 1000)
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu_model()}. {len(uris)} photos (640x427 JPEG) "
        f"stored one object each in S3Proxy on this machine, each read whole; ms per image, "
        f"median of {ROUNDS} rounds (every round), the readers alternating.",
        "",
        "| reader | ms per image | rounds |",
        "|---|---:|---|",
    ]
    for name, times in rounds.items():
        each = ", ".join(f"{t:.1f}" for t in times)
        lines.append(f"| {name} | {statistics.median(times):.1f} | {each} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "object-reads.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
