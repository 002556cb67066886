"""Kafka in and out on real Flink: a real broker (KRaft, from Maven Central), Beam's KafkaIO
expanded by the Java expansion service and run EMBEDDED in Flink's JVM, no Docker. Every message is
answered exactly once (a prediction or a failure with its reason); when the TaskManager is killed
mid-stream, none is lost and those written since the last checkpoint come again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from make_hostile import Case
from test_cli import classify, demo_args, image_list, read_jsonl
from test_flink import (
    FLINK_CONF_LOCAL,
    FLINK_LOCATION,
    JOB_SERVER_JAR,
    _restarts,
    _wait_for,
    checkpointed_on,
)

from beam_ml_flink import services
from beam_ml_flink.messages import Collector, Message, consumer_lag, image_messages, produce
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGENET_LABELS, IMAGES, ROOT

KAFKA_JAR = Path(os.environ.get("KAFKA_BROKER_JAR", ROOT / "build" / "kafka" / "kafka-broker.jar"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def kafka_parts() -> None:
    if not KAFKA_JAR.is_file():
        pytest.fail(f"no Kafka broker jar at {KAFKA_JAR}; `make kafka` builds it")
    if not JOB_SERVER_JAR.is_file():
        pytest.fail(f"no job server jar at {JOB_SERVER_JAR}; `make flink-job-server` builds it")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.KafkaBroker]:
    with services.KafkaBroker(KAFKA_JAR, tmp_path_factory.mktemp("kafka")) as broker:
        assert isinstance(broker, services.KafkaBroker)
        yield broker


@pytest.fixture(scope="module")
def expansion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.ExpansionService]:
    work = tmp_path_factory.mktemp("expansion")
    with services.ExpansionService(JOB_SERVER_JAR, work) as expansion:
        assert isinstance(expansion, services.ExpansionService)
        yield expansion


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_broker_answers_and_stops(tmp_path: Path) -> None:
    """A broker of its own (other ports): a message goes through it; its port is free after."""
    port, controller = 19092, 19093
    with services.KafkaBroker(KAFKA_JAR, tmp_path, port, controller) as broker:
        assert isinstance(broker, services.KafkaBroker)
        broker.create_topics(["ping"])
        produce(broker.bootstrap_servers, "ping", [Message(b"k", b"hello")])
        collector = Collector(broker.bootstrap_servers, ["ping"])
        assert collector.until_answered([b"k"], 60)
        collector.close()
        assert [(r.key, r.value) for r in collector.records] == [(b"k", b"hello")]
        # A second broker on the same ports is refused, naming the port.
        with pytest.raises(services.ServiceError, match=f"port {port} is already in use"):
            services.KafkaBroker(KAFKA_JAR, tmp_path / "second", port, controller).start()
    assert not port_in_use(port) and not port_in_use(controller)


def test_the_services_stop_the_broker_when_the_command_fails(tmp_path: Path) -> None:
    """The broker on Kafka's own port (the module's broker starts after this test), stopped when
    the command fails; its address reaches the command."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink.services",
            "--work-dir",
            str(tmp_path),
            "--kafka",
            str(KAFKA_JAR),
            "--topics",
            "a,b",
            "--",
            sys.executable,
            "-c",
            "import os, sys; print(os.environ['KAFKA_BOOTSTRAP_SERVERS']); sys.exit(3)",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stdout.strip() == f"127.0.0.1:{services.KAFKA_PORT}"
    assert "topics a, b" in run.stderr
    assert not port_in_use(services.KAFKA_PORT)


def kafka_args(
    broker: services.KafkaBroker, expansion: services.ExpansionService, run: str
) -> list[str]:
    return [
        f"--input_topic={run}-in",
        f"--output_topic={run}-out",
        f"--failures_topic={run}-failures",
        f"--bootstrap_servers={broker.bootstrap_servers}",
        f"--expansion_service={expansion.address}",
        f"--consumer_group={run}",
        f"--model_path={DEMO_MODEL}",
        f"--labels={IMAGENET_LABELS}",
        "--mean=" + ",".join(map(str, DEMO_MEAN)),
        "--std=" + ",".join(map(str, DEMO_STD)),
        "--batch_size=4",
    ]


def answers(collector: Collector, failures_topic: str) -> tuple[dict, dict, int]:
    """(key -> prediction record), (key -> failure record), and the number of duplicate keys."""
    predictions: dict[bytes, dict] = {}
    failures: dict[bytes, dict] = {}
    duplicates = 0
    for record in collector.records:
        assert record.key is not None and record.value is not None
        target = failures if record.topic == failures_topic else predictions
        if record.key in predictions or record.key in failures:
            duplicates += 1
        target[record.key] = json.loads(record.value)
    return predictions, failures, duplicates


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, hostile: list[Case]) -> dict[str, dict]:
    """What the DirectRunner makes of the photos and the hostile corpus, by path."""
    names = [str(p) for p in sorted(IMAGES.iterdir())] + [str(c.path) for c in hostile]
    out = tmp_path_factory.mktemp("direct")
    run = classify(*demo_args(image_list(out, names), out / "results"), "--runner=DirectRunner")
    assert run.returncode == 0, run.stderr[-3000:]
    records = read_jsonl(sorted(out.glob("results*.jsonl")))
    return {r["image"]: r for r in records}


@pytest.mark.parametrize("message_format", ["uri", "bytes"])
def test_every_message_answered_once_on_the_flink_runner(
    message_format: str,
    broker: services.KafkaBroker,
    expansion: services.ExpansionService,
    direct: dict[str, dict],
    tmp_path: Path,
) -> None:
    """The photos and the hostile corpus as messages, plus a message with no key and an empty
    one: each gets exactly one record, keyed by its message's key, the DirectRunner's answer."""
    run = f"{message_format}-{uuid.uuid4().hex[:8]}"
    broker.create_topics([f"{run}-in", f"{run}-out", f"{run}-failures"])
    messages = image_messages(list(direct), message_format)
    extra = [Message(None, b"no key"), Message(b"empty", b"")]
    if message_format == "uri":
        extra.append(Message(b"missing", str(tmp_path / "nope.jpg").encode()))
    collector = Collector(broker.bootstrap_servers, [f"{run}-out", f"{run}-failures"])
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beam_ml_flink",
                *kafka_args(broker, expansion, run),
                f"--message_format={message_format}",
                "--runner=FlinkRunner",
                "--flink_version=1.19",
                f"--flink_job_server_jar={JOB_SERVER_JAR}",
                "--environment_type=LOOPBACK",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            produce(broker.bootstrap_servers, f"{run}-in", [*messages, *extra])
            keys = (
                [m.key for m in messages]
                + [m.key for m in extra if m.key]
                + [b"%s-in/0@%d" % (run.encode(), len(messages))]
            )
            answered = collector.until_answered(keys, 300, job)
            collector.poll(3)  # anything more (a duplicate) would come now
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=120)
            collector.close()
    assert answered, (tmp_path / "job.log").read_text()[-3000:]
    predictions, failures, duplicates = answers(collector, f"{run}-failures")
    assert duplicates == 0
    for message in messages:
        key = message.key.decode()
        expected = direct[key]
        if not message.value:  # a bytes message of a file with no bytes, or none to read
            assert "is empty" in failures[message.key]["error"], key
        elif "error" in expected:
            assert message.key in failures, key
            # The reason is the DirectRunner's, but names the image as the message does.
            reason = failures[message.key]["error"]
            assert reason.split(": ", 1)[1] == expected["error"].split(": ", 1)[1], key
        else:
            got = predictions[message.key]
            assert got["image"] == key
            assert [t["index"] for t in got["top_k"]] == [t["index"] for t in expected["top_k"]]
    no_key = f"{run}-in/0@{len(messages)}".encode()
    assert "the message has no key" in failures[no_key]["error"]
    assert "is empty" in failures[b"empty"]["error"]
    if message_format == "uri":
        assert "no such file" in failures[b"missing"]["error"]
    assert len(predictions) + len(failures) == len(messages) + len(extra)


def test_nothing_is_lost_when_the_taskmanager_is_killed(
    broker: services.KafkaBroker,
    expansion: services.ExpansionService,
    demo_top1: dict[str, int],
    tmp_path: Path,
    record_property,
) -> None:
    """A stream of 300 messages on the local cluster, checkpointed every 2 s: the TaskManager is
    SIGKILLed mid-stream (after 100 answers, while messages still arrive) and a new one started.
    Flink restarts the job from its last checkpoint (the Kafka offsets are in it), and every
    message has its prediction in the output topic. The records written after that checkpoint
    and before the kill are written again: counted."""
    run = f"kill-{uuid.uuid4().hex[:8]}"
    broker.create_topics([f"{run}-in", f"{run}-out", f"{run}-failures"])
    folder = tmp_path / "many"
    folder.mkdir()
    photos = sorted(demo_top1)
    expected = {}
    for i in range(300):
        link = folder / f"{i:03d}-{photos[i % len(photos)]}"
        link.symlink_to(IMAGES / photos[i % len(photos)])
        expected[str(link).encode()] = demo_top1[photos[i % len(photos)]]
    messages = image_messages([k.decode() for k in expected], "uri")
    collector = Collector(broker.bootstrap_servers, [f"{run}-out", f"{run}-failures"])
    with contextlib.ExitStack() as stack:
        work = tmp_path / "flink"
        cluster = stack.enter_context(
            services.LocalFlinkCluster(FLINK_LOCATION, FLINK_CONF_LOCAL, work / "cluster")
        )
        assert isinstance(cluster, services.LocalFlinkCluster)
        server = stack.enter_context(
            services.JobServer(
                JOB_SERVER_JAR, work / "job-server", cluster.master, cluster.conf_dir
            )
        )
        assert isinstance(server, services.JobServer)
        log = stack.enter_context(open(tmp_path / "job.log", "w"))
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beam_ml_flink",
                *kafka_args(broker, expansion, run),
                *checkpointed_on(server, cluster, tmp_path / "checkpoints"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(lambda: job.poll() is None and job.kill())
        restarts_before = _restarts(cluster)

        def answered() -> int:
            collector.poll(0.5)
            return len({r.key for r in collector.records})

        # The first 20 messages, answered once the job runs; then the other 280 over about 28 s,
        # and the TaskManager killed midway through them.
        produce(broker.bootstrap_servers, f"{run}-in", messages[:20])
        _wait_for(lambda: answered() >= 20, 240, "the job to answer the first 20 messages")
        producer = threading.Thread(
            target=produce, args=(broker.bootstrap_servers, f"{run}-in", messages[20:], 0.1)
        )
        producer.start()
        stack.callback(producer.join)
        _wait_for(lambda: answered() >= 100, 120, "the first 100 answers")
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        answered_before_the_kill = answered()
        (taskmanager,) = cluster.pids("taskexecutor")
        os.kill(taskmanager, signal.SIGKILL)
        cluster.start_taskmanager()
        all_answered = collector.until_answered(list(expected), 400, job)
        collector.poll(5)  # late duplicates
        collector.close()
        restarts = _restarts(cluster)
        # SIGTERM to the command cancels the job on the cluster, which frees its slots.
        os.killpg(job.pid, signal.SIGTERM)
        assert job.wait(timeout=120) == 0
        overview = cluster.overview()
        assert (overview["jobs-running"], overview["jobs-cancelled"]) == (0, 1)
    assert all_answered, (tmp_path / "job.log").read_text()[-3000:]
    assert restarts > restarts_before, "the job was not restarted: the kill came too late"
    predictions, failures, duplicates = answers(collector, f"{run}-failures")
    assert failures == {}
    assert {k: p["top_k"][0]["index"] for k, p in predictions.items()} == expected
    # At least once: what was written after the last checkpoint before the kill comes again.
    record_property("answered_before_the_kill", answered_before_the_kill)
    record_property("duplicates", duplicates)
    print(f"answered before the kill: {answered_before_the_kill}; duplicates: {duplicates}")
    assert answered_before_the_kill < len(expected), "the kill came after the stream"
    assert duplicates <= answered_before_the_kill


def test_the_consumer_lag_is_what_the_group_has_not_committed(
    broker: services.KafkaBroker,
) -> None:
    """consumer_lag against the broker: every message while the group has committed nothing,
    the rest once it has committed some; a topic the broker lacks is a sentence."""
    from confluent_kafka import Consumer, TopicPartition

    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic])
    produce(broker.bootstrap_servers, topic, [Message(b"%d" % i, b"x") for i in range(5)])
    assert consumer_lag(broker.bootstrap_servers, topic, group) == 5
    committer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": group})
    committer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    committer.close()
    assert consumer_lag(broker.bootstrap_servers, topic, group) == 2
    with pytest.raises(ValueError, match=f"has no topic {topic}-missing"):
        consumer_lag(broker.bootstrap_servers, f"{topic}-missing", group)


def test_a_running_stream_logs_its_answers_and_its_lag(
    broker: services.KafkaBroker, expansion: services.ExpansionService, tmp_path: Path
) -> None:
    """A backlog of the photos as messages waits in the topic before the job starts: the stream's
    progress lines show the consumer group's lag at all of them before anything is committed,
    the records answered growing to all of them, and the lag at 0 once a checkpoint has
    committed the offsets."""
    run = f"lag-{uuid.uuid4().hex[:8]}"
    broker.create_topics([f"{run}-in", f"{run}-out", f"{run}-failures"])
    messages = image_messages([str(p) for p in sorted(IMAGES.iterdir())], "bytes")
    n = len(messages)
    produce(broker.bootstrap_servers, f"{run}-in", messages)
    log_path = tmp_path / "job.log"
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beam_ml_flink",
                *kafka_args(broker, expansion, run),
                "--message_format=bytes",
                "--progress_interval=1",
                "--checkpointing_interval=2000",
                "--runner=FlinkRunner",
                "--flink_version=1.19",
                f"--flink_job_server_jar={JOB_SERVER_JAR}",
                "--environment_type=LOOPBACK",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for(
                lambda: (
                    f"{n} records answered" in log_path.read_text()
                    and "Kafka lag 0 messages" in log_path.read_text()
                ),
                300,
                f"the stream's lines to show {n} answers and no lag",
            )
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=120)
    lines = [line for line in log_path.read_text().splitlines() if "stream: " in line]
    lags = [line.rsplit("Kafka lag ", 1)[1].split()[0] for line in lines if "Kafka lag " in line]
    assert lags[0] == str(n), lines
    assert lags[-1] == "0", lines
    assert f"(consumer group {run})" in lines[0]
    answered = [
        int(line.split("stream: ", 1)[1].split()[0]) for line in lines if "answered" in line
    ]
    assert answered == sorted(answered) and answered[-1] == n, lines
    assert "0 failed" in next(line for line in lines if f"{n} records answered" in line)
    # Stopped, the job is cancelled and its runner reports no metrics: the workers here counted.
    assert f": {n} images classified, 0 failed, as this process's workers counted them" in (
        log_path.read_text()
    )
