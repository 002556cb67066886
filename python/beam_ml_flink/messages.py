"""The client side of a Kafka job: images produced as messages, and the answers read back.

    python -m beam_ml_flink.messages --input images.txt --output out/results [--interval 0.5] \
        [--timeout 300] [--show 20] -- python -m beam_ml_flink --input_topic images ...

starts the job command, produces one message per image listed in ``--input`` to the job's
``--input_topic`` (a key per image, the value its path or its bytes, as the job's
``--message_format`` says), one every ``--interval`` seconds, reads the job's ``--output_topic`` and
``--failures_topic`` until every message has its answer (or ``--timeout`` seconds have passed),
writes the answers as JSON lines to ``OUTPUT-00000-of-00001.jsonl`` and
``OUTPUT_failures-00000-of-00001.jsonl``, and stops the job. The topics, brokers and format are read
from the job's own flags. Exit code 0 when every message was answered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from beam_ml_flink.arguments import ArgumentParser
from beam_ml_flink.kafka import MAX_MESSAGE_BYTES


class Message(NamedTuple):
    """A message as produced or read back: its key and value, and its topic's timestamp (ms)."""

    key: bytes | None
    value: bytes | None
    topic: str = ""
    timestamp_ms: int = 0


def image_paths(input: str) -> list[str]:
    """The images of ``input``: a list file (one path per line, blank lines and ``#`` comments
    skipped), a folder, or a glob."""
    if os.path.isdir(input):
        return sorted(str(p) for p in Path(input).iterdir() if p.is_file())
    if set("*?[") & set(input):
        return sorted(glob.glob(input))
    lines = Path(input).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def image_messages(paths: Iterable[str], message_format: str) -> list[Message]:
    """One message per image, keyed by its path (``#2``, ``#3``... on repeats), its value the path
    (``uri``) or the file's bytes (``bytes``; a file that cannot be read is sent empty)."""
    messages = []
    seen: dict[str, int] = {}
    for path in paths:
        seen[path] = seen.get(path, 0) + 1
        key = path if seen[path] == 1 else f"{path}#{seen[path]}"
        if message_format == "bytes":
            try:
                value = Path(path).read_bytes()
            except OSError:
                value = b""
        else:
            value = path.encode()
        messages.append(Message(key.encode(), value))
    return messages


def produce(
    bootstrap_servers: str, topic: str, messages: Sequence[Message], interval: float = 0.0
) -> None:
    """Sends ``messages`` to ``topic``, one every ``interval`` seconds, and waits until the broker
    has them all."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "message.max.bytes": MAX_MESSAGE_BYTES}
    )
    for i, message in enumerate(messages):
        if i and interval:
            time.sleep(interval)
        producer.produce(topic, key=message.key, value=message.value)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"Kafka at {bootstrap_servers} did not take every message to {topic}")


def consumer_lag(bootstrap_servers: str, topic: str, group: str, timeout: float = 5.0) -> int:
    """How many of ``topic``'s messages ``group`` has not committed yet: over its partitions, the
    end offset minus the group's committed offset (minus the first retained offset where the
    group has committed nothing there). Reads the broker without joining the group.

    Raises:
        confluent_kafka.KafkaException: The broker did not answer within ``timeout`` seconds.
        ValueError: The broker has no topic ``topic``.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False}
    )
    try:
        found = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise ValueError(f"Kafka at {bootstrap_servers} has no topic {topic}")
        partitions = [TopicPartition(topic, p) for p in sorted(found.partitions)]
        lag = 0
        for committed in consumer.committed(partitions, timeout=timeout):
            low, high = consumer.get_watermark_offsets(committed, timeout=timeout)
            lag += high - (committed.offset if committed.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


class Collector:
    """Reads ``topics`` from their beginning, as a new consumer group, committed records only."""

    def __init__(self, bootstrap_servers: str, topics: Sequence[str]) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"beam-ml-flink-collector-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.max.bytes": MAX_MESSAGE_BYTES,
            }
        )
        self._consumer.subscribe(list(topics))
        self.records: list[Message] = []

    def poll(self, seconds: float) -> None:
        """Adds what arrives within ``seconds`` to ``records``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            record = self._consumer.poll(min(left, 0.5))
            if record is None or record.error():
                continue
            self.records.append(
                Message(record.key(), record.value(), record.topic() or "", record.timestamp()[1])
            )

    def until_answered(
        self, keys: Iterable[bytes | None], timeout: float, job: subprocess.Popen | None = None
    ) -> bool:
        """Polls until every key in ``keys`` has a record, ``timeout`` seconds pass, or ``job``
        exits; True when every key has one."""
        wanted = set(keys)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= {r.key for r in self.records}:
                return True
            if job is not None and job.poll() is not None:
                return False
            self.poll(1.0)
        return wanted <= {r.key for r in self.records}

    def close(self) -> None:
        self._consumer.close()


def write_jsonl(records: Sequence[Message], failures_topic: str, output: str) -> list[str]:
    """The records' JSON values as the file outputs have them: predictions in
    ``OUTPUT-00000-of-00001.jsonl``, failures in ``OUTPUT_failures-00000-of-00001.jsonl``."""
    files = {
        False: f"{output}-00000-of-00001.jsonl",
        True: f"{output}_failures-00000-of-00001.jsonl",
    }
    Path(files[False]).parent.mkdir(parents=True, exist_ok=True)
    for failed, path in files.items():
        with open(path, "w") as f:
            for record in records:
                if (record.topic == failures_topic) == failed and record.value is not None:
                    f.write(record.value.decode() + "\n")
    return list(files.values())


def _job_flags(job: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--input_topic", required=True)
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--output_topic", required=True)
    parser.add_argument("--failures_topic")
    parser.add_argument("--message_format", default="uri")
    flags, _ = parser.parse_known_args(job)
    flags.failures_topic = flags.failures_topic or f"{flags.output_topic}-failures"
    return flags


def _stop(job: subprocess.Popen) -> None:
    """SIGTERM to the job command, which cancels its job; SIGKILL if it lingers."""
    if job.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m beam_ml_flink.messages",
        description="Run a Kafka classification job, produce images to its input topic, and read "
        "its answers back into JSON lines files.",
    )
    parser.add_argument("--input", required=True, help="A list file, folder or glob of images.")
    parser.add_argument("--output", required=True, help="Prefix of the JSON lines files.")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="Seconds between two messages (default 0.5)."
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="Stop waiting for answers after this many seconds (default 300).",
    )
    parser.add_argument("--show", type=int, default=20, metavar="N", help="Rows of the table.")
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- the job's command")
    args = parser.parse_args(argv)
    job_argv = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job_argv:
        parser.error("give the job's command after --")
    try:
        flags = _job_flags(job_argv)
    except SystemExit:
        parser.error(
            "the job's command needs --input_topic, --bootstrap_servers and --output_topic"
        )
    messages = image_messages(image_paths(args.input), flags.message_format)
    collector = Collector(flags.bootstrap_servers, [flags.output_topic, flags.failures_topic])
    job = subprocess.Popen(job_argv, start_new_session=True)
    try:
        produce(flags.bootstrap_servers, flags.input_topic, messages, args.interval)
        print(
            f"produced {len(messages)} messages to {flags.input_topic}; waiting for the answers",
            file=sys.stderr,
            flush=True,
        )
        answered = collector.until_answered((m.key for m in messages), args.timeout, job)
    finally:
        _stop(job)
        collector.poll(1.0)
        collector.close()
    write_jsonl(collector.records, flags.failures_topic, args.output)
    keys = {m.key for m in messages}
    got = [r for r in collector.records if r.key in keys]
    print(
        f"{len({r.key for r in got})} of {len(messages)} messages answered "
        f"({sum(r.topic == flags.failures_topic for r in got)} failures, "
        f"{len(got) - len({r.key for r in got})} duplicates)",
        file=sys.stderr,
    )
    if args.show:
        from beam_ml_flink.__main__ import print_results

        print_results(args.output, args.show)
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main())
