"""Streaming through Kafka on the local Flink cluster: ours against Beam's stock PyTorch path.

Run by `make bench-streaming`. A Kafka broker, the local Flink cluster (one TaskManager, two
slots), the job server and the Java expansion service are started once; then, for each contender,
a job reads image messages (the encoded bytes of the 256 photos of `make bench`) from a topic of
its own, classifies them, and writes one record per message to an output topic:

- stock: Beam's PytorchModelHandlerTensor(torch_script_model_path=...) in RunInference after PIL
  + torchvision preprocessing in a Map (the recipe), batch 32, as `make bench`'s stock contender;
- ours: `python -m beam_ml_flink --input_topic ... --message_format bytes` (the product's CLI).

Both run with LOOPBACK SDK workers, Flink checkpoints every 10 s, and the same MobileNetV2. Per
contender, after a warm-up of 16 messages: a steady stream at a fixed rate (--rate messages per
second, below both contenders' saturation), then the 256 photos three times over, all at once
(saturation). Sustained images/s is messages over the time from the first one produced to the
last answer; the latency of a message runs from the producer's call to the output record's
timestamp (both on this machine's clock). --bundle_ms sets Flink's --max_bundle_time_mills for
both jobs. Writes bench/results/streaming-bundle-<ms>ms.md and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import BATCH, MODELS, ROOT, cpu_model, make_inputs, make_models  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "build" / "bench" / "streaming"
FLINK_CONF_LOCAL = ROOT / "data" / "flink-conf-local.yaml"
WARM_UP = 16
# The saturation stream: the 256 photos this many times, all produced at once.
BURST_ROUNDS = 3


def stock_job(argv: list[str]) -> None:
    """The stock contender's job (a child process): Kafka bytes -> PIL + torchvision ->
    PytorchModelHandlerTensor -> one JSON record per message."""
    parser = argparse.ArgumentParser()
    for flag in ("topic", "output_topic", "bootstrap_servers", "expansion_service", "model"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("--job_endpoint", required=True)
    parser.add_argument("--flink_master", required=True)
    parser.add_argument("--bundle_ms", type=int, required=True)
    args = parser.parse_args(argv)

    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
    from apache_beam.options.pipeline_options import PipelineOptions
    from PIL import Image
    from torchvision import transforms

    from beam_ml_flink.kafka import ReadMessages, WriteMessages
    from beam_ml_flink.options import FlinkStreamingOptions  # noqa: F401 - passes the interval

    _, mean, std = MODELS["mobilenet_v2"]
    recipe = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )

    def preprocess(message):
        return message.key, recipe(Image.open(io.BytesIO(message.value)).convert("RGB"))

    def record(kv):
        key, result = kv
        value = json.dumps({"image": key.decode(), "top_1": int(result.inference.argmax())})
        return key, value.encode()

    handler = PytorchModelHandlerTensor(
        torch_script_model_path=args.model, min_batch_size=1, max_batch_size=BATCH
    )
    options = PipelineOptions(
        [
            "--runner=PortableRunner",
            f"--job_endpoint={args.job_endpoint}",
            "--environment_type=LOOPBACK",
            "--streaming",
            "--checkpointing_interval=10000",
            f"--max_bundle_time_mills={args.bundle_ms}",
        ]
    )
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | ReadMessages(args.bootstrap_servers, args.topic, args.topic, args.expansion_service)
        | beam.Map(preprocess)
        | RunInference(KeyedModelHandler(handler))
        | beam.Map(record).with_output_types(tuple[bytes, bytes])
        | WriteMessages(args.bootstrap_servers, args.output_topic, args.expansion_service)
    )
    from beam_ml_flink.__main__ import wait_or_cancel

    # SIGTERM cancels the job, on the cluster too, which frees its slots.
    wait_or_cancel(pipeline.run(), flink_rest=args.flink_master)


def job_command(
    contender: str, run: str, broker, expansion, server, master: str, model: Path, bundle_ms: int
) -> list[str]:
    if contender == "stock":
        return [
            sys.executable,
            __file__,
            "--stock-job",
            f"--topic={run}-in",
            f"--output_topic={run}-out",
            f"--bootstrap_servers={broker.bootstrap_servers}",
            f"--expansion_service={expansion.address}",
            f"--model={model}",
            f"--job_endpoint={server.endpoint}",
            f"--flink_master={master}",
            f"--bundle_ms={bundle_ms}",
        ]
    _, mean, std = MODELS["mobilenet_v2"]
    return [
        sys.executable,
        "-m",
        "beam_ml_flink",
        f"--input_topic={run}-in",
        f"--output_topic={run}-out",
        f"--failures_topic={run}-failures",
        f"--consumer_group={run}",
        f"--bootstrap_servers={broker.bootstrap_servers}",
        f"--expansion_service={expansion.address}",
        "--message_format=bytes",
        f"--model_path={model}",
        "--mean=" + ",".join(map(str, mean)),
        "--std=" + ",".join(map(str, std)),
        f"--batch_size={BATCH}",
        "--top_k=1",
        "--runner=PortableRunner",
        f"--job_endpoint={server.endpoint}",
        f"--flink_master={master}",
        f"--max_bundle_time_mills={bundle_ms}",
        "--environment_type=LOOPBACK",
    ]


def stream(
    broker, topic: str, collector, messages, rate: float | None, timeout: float, job
) -> dict:
    """Produces `messages` (at `rate` per second, or all at once) and waits for their answers;
    images/s and latency percentiles."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
    sent: dict[bytes, float] = {}
    start = time.time()
    for i, (key, value) in enumerate(messages):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.time()))
        sent[key] = time.time()
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    producer.flush(60)
    if not collector.until_answered(list(sent), timeout, job):
        raise RuntimeError(
            f"not every message of {topic} was answered within {timeout:.0f} s (job exit code "
            f"{job.poll()}; its log is in {WORK})"
        )
    answered = {r.key: r.timestamp_ms / 1000 for r in collector.records if r.key in sent}
    latencies = sorted(answered[k] - sent[k] for k in sent)
    return {
        "images_per_s": len(sent) / (max(answered.values()) - start),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    }


def run_contender(
    contender: str, services: tuple, model: Path, photos: list[str], rate: float, bundle_ms: int
):
    from beam_ml_flink.messages import Collector

    broker, expansion, server, master = services
    run = f"{contender}-{uuid.uuid4().hex[:6]}"
    broker.create_topics([f"{run}-in", f"{run}-out", f"{run}-failures"])
    data = [Path(p).read_bytes() for p in photos]
    collector = Collector(broker.bootstrap_servers, [f"{run}-out", f"{run}-failures"])
    log = open(WORK / f"{run}.log", "w")  # noqa: SIM115 - closed below
    job = subprocess.Popen(
        job_command(contender, run, broker, expansion, server, master, model, bundle_ms),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        warm = [(f"warm-{i}".encode(), data[i]) for i in range(WARM_UP)]
        stream(broker, f"{run}-in", collector, warm, None, 300, job)
        fixed = [(f"rate-{i}".encode(), d) for i, d in enumerate(data)]
        at_rate = stream(broker, f"{run}-in", collector, fixed, rate, 300, job)
        burst = [(f"burst-{i}".encode(), d) for i, d in enumerate(data * BURST_ROUNDS)]
        saturated = stream(broker, f"{run}-in", collector, burst, None, 600, job)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, 15)
        job.wait(timeout=120)
        collector.close()
        log.close()
    return {"rate": at_rate, "saturation": saturated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=8.0, help="messages/s of the steady stream")
    parser.add_argument("--contenders", default="stock,ours")
    parser.add_argument(
        "--bundle_ms", type=int, default=1000, help="Flink's --max_bundle_time_mills for both jobs"
    )
    if sys.argv[1:2] == ["--stock-job"]:
        stock_job(sys.argv[2:])
        return
    args = parser.parse_args()

    from beam_ml_flink import services

    WORK.mkdir(parents=True, exist_ok=True)
    make_models()
    photos = make_inputs()["256 photos 640x427"]
    model = MODELS["mobilenet_v2"][0]
    flink = Path(os.environ["FLINK_LOCATION"])
    jar = os.environ["FLINK_JOB_SERVER_JAR"]
    rows = {}
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(
            services.KafkaBroker(os.environ["KAFKA_BROKER_JAR"], WORK / "kafka")
        )
        expansion = stack.enter_context(services.ExpansionService(jar, WORK / "expansion"))
        cluster = stack.enter_context(
            services.LocalFlinkCluster(flink, FLINK_CONF_LOCAL, WORK / "cluster")
        )
        server = stack.enter_context(
            services.JobServer(jar, WORK / "job-server", cluster.master, cluster.conf_dir)
        )
        for contender in args.contenders.split(","):
            print(f"{contender}...", file=sys.stderr, flush=True)
            rows[contender] = run_contender(
                contender,
                (broker, expansion, server, cluster.master),
                model,
                photos,
                args.rate,
                args.bundle_ms,
            )
            print(json.dumps(rows[contender]), file=sys.stderr, flush=True)
            # A cancelled job frees its slots a little later: the next one waits for them.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                overview = cluster.overview()
                if overview["jobs-running"] == 0 and overview["slots-available"] >= 2:
                    break
                time.sleep(1)
    write_results(rows, args.rate, args.bundle_ms)


def write_results(rows: dict, rate: float, bundle_ms: int) -> None:
    lines = [
        "# make bench-streaming",
        "",
        f"Kafka -> local Flink cluster (1 TaskManager, 2 slots, LOOPBACK) -> Kafka; MobileNetV2 "
        f"(random weights), the 256 photos 640x427 as JPEG bytes per message; bundles of at most "
        f"{bundle_ms} ms (--max_bundle_time_mills); {cpu_model()}.",
        "",
        "| contender | stream | images/s | latency p50 ms | latency p99 ms |",
        "|---|---|---:|---:|---:|",
    ]
    for contender, result in rows.items():
        burst = f"{256 * BURST_ROUNDS} at once"
        streams = (("rate", f"{rate:g} messages/s"), ("saturation", burst))
        for stream_name, label in streams:
            r = result[stream_name]
            lines.append(
                f"| {contender} | {label} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} |"
            )
    if "stock" in rows and "ours" in rows:
        ratio = (
            rows["ours"]["saturation"]["images_per_s"] / rows["stock"]["saturation"]["images_per_s"]
        )
        lines += ["", f"At saturation ours sustains {ratio:.2f}x the stock path's images/s."]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"streaming-bundle-{bundle_ms}ms.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
