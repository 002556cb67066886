"""Scale-out on the local Flink cluster: 1 and 2 TaskManagers, each with its own SDK worker pool
(EXTERNAL), reading the same photos as files (a list) and as WebDataset tar shards, beside the
DirectRunner on the same inputs: bench_pipeline.py's 256 photos, each --copies times (1024
images by default, so that the workers' start is a small part of a job).

With --pod_taskmanagers N (given by `make bench-scale` when the images of `make test-cluster`
exist) also on the cluster in containers that share nothing: N TaskManager pods with the worker
image as their sidecars, the job server and the object store, the photos and shards read from the
store and the output written there; its start-up (until every pod and the store answer) is timed
too.

Run by `make bench` after bench_pipeline.py (whose photos it reads), or alone by `make
bench-scale`. images/s is over the Flink job's own duration (from the cluster's REST API: from
its submission to the cluster to its end, so the TaskManagers' start of the SDK workers and the
model's load are in it); whole run adds the command's start, the job server's translation and
the submission. Rounds alternate the inputs. Writes bench/results/scale.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import WORK, cpu_model, make_inputs  # noqa: E402

from beam_ml_flink import services  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL = ROOT / "data" / "models" / "efficientnet_lite0.pt"
PER_SHARD = 64


def make_shards(paths: list[str]) -> str:
    """The images in WebDataset tar shards of PER_SHARD (key: the position), made once; returns
    the --input that names them."""
    folder = WORK / f"shards-{len(paths)}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = -(-len(paths) // PER_SHARD)
    for s in range(shards):
        shard = folder / f"photos-{s:05d}.tar"
        if shard.exists():
            continue
        with tarfile.open(shard.with_suffix(".part"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for n in range(s * PER_SHARD, min(len(paths), (s + 1) * PER_SHARD)):
                tar.add(paths[n], arcname=f"{n:06d}.jpg")
        shard.with_suffix(".part").rename(shard)
    return f"{folder}/photos-{{00000..{shards - 1:05d}}}.tar"


def output_lines(output: Path | str) -> int:
    """The predictions written under the output prefix: local files or objects."""
    if isinstance(output, Path):
        return sum(len(p.read_text().splitlines()) for p in output.parent.glob(f"{output.name}-*"))
    from apache_beam.io.filesystems import FileSystems

    matched = FileSystems.match([f"{output}-*"])[0].metadata_list
    return sum(FileSystems.open(m.path).read().count(b"\n") for m in matched)


def classify(
    input: str, output: Path | str, runner_args: list[str], count: int, model: str = str(MODEL)
) -> float:
    """Runs the command; returns its wall seconds, after checking that every photo came out."""
    if isinstance(output, Path):
        for old in output.parent.glob(f"{output.name}*"):
            old.unlink()
    start = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink",
            f"--input={input}",
            f"--output={output}",
            f"--model_path={model}",
            "--mean=0.5,0.5,0.5",
            "--std=0.5,0.5,0.5",
            *runner_args,
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"the run failed:\n{run.stderr[-3000:]}")
    lines = output_lines(output)
    if lines != count:
        raise RuntimeError(f"{lines} predictions instead of {count}")
    return seconds


def last_job_seconds(cluster: services.LocalFlinkCluster | services.PodFlinkCluster) -> float:
    with urllib.request.urlopen(f"{cluster.web_ui}/jobs/overview", timeout=10) as response:
        jobs = json.load(response)["jobs"]
    latest = max(jobs, key=lambda job: job["start-time"])
    assert latest["state"] == "FINISHED", latest
    return latest["duration"] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--copies", type=int, default=4, help="times each photo is classified")
    parser.add_argument("--taskmanagers", default="1,2", help="cluster sizes to run")
    parser.add_argument(
        "--pod_taskmanagers",
        type=int,
        default=0,
        help="TaskManager pods of the cluster in containers (0: leave it out)",
    )
    args = parser.parse_args()
    paths = make_inputs()["256 photos 640x427"] * args.copies
    count = len(paths)
    listing = WORK / f"photos-{count}.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    inputs = {"files": str(listing), "shards": make_shards(paths)}
    output = WORK / "scale" / "results"
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    direct: dict[str, list[float]] = {name: [] for name in inputs}
    for _ in range(args.repeats):
        for name, input in inputs.items():
            direct[name].append(classify(input, output, ["--runner=DirectRunner"], count))
    for name, seconds in direct.items():
        rows.append(("DirectRunner", name, None, seconds))
        print(f"DirectRunner {name}: {statistics.median(seconds):.1f} s", flush=True)

    flink = Path(os.environ["FLINK_LOCATION"])
    jar = Path(os.environ["FLINK_JOB_SERVER_JAR"])
    for taskmanagers in (int(n) for n in args.taskmanagers.split(",")):
        work = WORK / "scale" / f"cluster-{taskmanagers}"
        cluster = services.LocalFlinkCluster(
            flink, ROOT / "data" / "flink-conf-local.yaml", work, taskmanagers, worker_pools=True
        )
        with (
            cluster,
            services.JobServer(jar, work / "job-server", cluster.master, cluster.conf_dir),
        ):
            runner = [
                "--runner=PortableRunner",
                "--job_endpoint=localhost:8099",
                "--environment_type=EXTERNAL",
                f"--environment_config={cluster.worker_pool_address}",
            ]
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in inputs}
            for _ in range(args.repeats):
                for name, input in inputs.items():
                    wall = classify(input, output, runner, count)
                    timings[name].append((last_job_seconds(cluster), wall))
            for name, pairs in timings.items():
                plural = "s" if taskmanagers > 1 else ""
                label = f"local cluster, {taskmanagers} TaskManager{plural}"
                rows.append((label, name, [job for job, _ in pairs], [wall for _, wall in pairs]))
                print(
                    f"{label} {name}: job {statistics.median(p[0] for p in pairs):.1f} s",
                    flush=True,
                )
    startup = None
    if args.pod_taskmanagers:
        pod_rows, startup = pod_cluster(args.pod_taskmanagers, paths, inputs, args.repeats)
        rows += pod_rows
    write_results(rows, args.repeats, count, startup)


def pod_cluster(
    taskmanagers: int, paths: list[str], inputs: dict[str, str], repeats: int
) -> tuple[list, float]:
    """The same jobs on the cluster in containers, inputs and output in its object store; returns
    the rows and the cluster's start-up seconds."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_ml_flink.objects import put
    from beam_ml_flink.services.pod_cluster import flink_deployment_properties

    bucket = "bench"
    started = time.perf_counter()
    cluster = services.PodFlinkCluster(
        os.environ["BMF_FLINK_IMAGE"],
        taskmanagers=taskmanagers,
        flink_properties=flink_deployment_properties(
            ROOT / "deploy" / "kubernetes" / "flink-deployment.yaml"
        ),
        worker_image=os.environ["BMF_WORKER_IMAGE"],
        job_server_image=os.environ["BMF_JOB_SERVER_IMAGE"],
        object_store_image=os.environ["BMF_OBJECT_STORE_IMAGE"],
        buckets=[bucket],
    )
    with cluster:
        startup = time.perf_counter() - started
        print(f"cluster in containers up in {startup:.1f} s", flush=True)
        os.environ.update(cluster.client_environment)
        FileSystems.set_options(PipelineOptions([]))
        store = f"s3://{bucket}"
        put(MODEL, f"{store}/{MODEL.name}")
        for path in sorted(set(paths)):
            put(path, f"{store}/photos/{Path(path).name}")
        listing = f"{store}/photos-{len(paths)}.txt"
        with FileSystems.create(listing) as target:
            target.write("".join(f"{store}/photos/{Path(p).name}\n" for p in paths).encode())
        shards = sorted(Path(inputs["shards"].split("{")[0]).parent.glob("photos-*.tar"))
        for shard in shards:
            put(shard, f"{store}/shards/{shard.name}")
        stored = {"files": listing, "shards": f"{store}/shards/photos-*.tar"}
        runner = [
            "--runner=PortableRunner",
            f"--job_endpoint={cluster.job_endpoint}",
            "--environment_type=EXTERNAL",
            f"--environment_config={cluster.worker_pool_address}",
            f"--parallelism={cluster.parallelism}",
        ]
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in stored}
        for round in range(repeats):
            for name, input in stored.items():
                output = f"{store}/output/{name}-{round}/results"
                wall = classify(input, output, runner, len(paths), f"{store}/{MODEL.name}")
                timings[name].append((last_job_seconds(cluster), wall))
        label = f"in containers, {taskmanagers} TaskManager pods, object store"
        rows = [
            (label, name, [job for job, _ in pairs], [wall for _, wall in pairs])
            for name, pairs in timings.items()
        ]
    return rows, startup


def _rate(seconds: list[float], count: int) -> str:
    rates = sorted(count / s for s in seconds)
    return f"{statistics.median(rates):.1f} ({rates[0]:.1f}-{rates[-1]:.1f})"


def write_results(rows: list, repeats: int, count: int, startup: float | None) -> None:
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()}. "
        f"EfficientNet-Lite0 (TorchScript), {count} images (256 photos 640x427, each "
        f"{count // 256} times), batch 32 (Beam's default batching); images/s as median "
        f"(min-max) of {repeats} runs, the inputs alternating. "
        "Cluster rows: data/flink-conf-local.yaml, 2 slots per TaskManager, parallelism = all "
        "slots, one SDK worker pool per TaskManager (EXTERNAL); images/s over the Flink job's "
        "duration. Whole run: the command from start to end. DirectRunner rows have no cluster: "
        "their images/s is the whole run's."
        + (
            " In containers: deploy/kubernetes/flink-deployment.yaml's configuration (2 slots "
            "per TaskManager), inputs, model and output in the object store; the cluster's "
            f"start-up (containers created until every TaskManager and the store answer) "
            f"{startup:.0f} s."
            if startup is not None
            else ""
        ),
        "",
        "| runner | input | images/s (job) | whole run images/s |",
        "|---|---|---:|---:|",
    ]
    for runner, name, job, wall in rows:
        shards = -(-count // PER_SHARD)
        input = f"{count} files (a list)" if name == "files" else f"{shards} tar shards"
        if runner.startswith("in containers"):
            input += " in the store"
        job_rate = _rate(job, count) if job else ""
        lines.append(f"| {runner} | {input} | {job_rate} | {_rate(wall, count)} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
