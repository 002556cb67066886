"""Kafka in and out: each message of the input topic is an image (its URI, or its encoded bytes)
keyed by its id; each comes out as one record keyed by the same id, a prediction on the output
topic or a failure with its reason on the failures topic.

The reads and writes are Beam's own ``ReadFromKafka`` and ``WriteToKafka``: KafkaIO (Java),
expanded by a Java expansion service whose transforms run in the Flink JVM (EMBEDDED), so no
Docker is needed (see ``beam_ml_flink.services.ExpansionService``).
"""

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
from apache_beam.typehints.decorators import no_annotations

from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.pipeline import (
    FAILURES,
    ClassifiedImages,
    ClassifyImageBytes,
    Prediction,
    ReadImages,
    failure_json,
    merge_failures,
    prediction_json,
)

MESSAGE_FORMATS = ("uri", "bytes")
# The newest larger message a default Kafka broker takes is 1 MB: images above that need the
# broker's and the topic's message.max.bytes raised, or --message_format uri.
MAX_MESSAGE_BYTES = 64 << 20


class ReadMessages(ReadFromKafka):
    """The messages of ``topic`` as rows of (key, value, topic, partition, offset, timestamp, ...),
    each timestamped with its producer's create time. Offsets are committed to ``group`` when Flink
    finalizes a checkpoint, so a restarted job goes on where the last checkpoint was."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group: str,
        expansion_service: str,
        consumer_config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            consumer_config={
                "bootstrap.servers": bootstrap_servers,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "max.partition.fetch.bytes": str(MAX_MESSAGE_BYTES),
                **(consumer_config or {}),
            },
            topics=[topic],
            commit_offset_in_finalize=True,
            timestamp_policy=ReadFromKafka.create_time_policy,
            with_metadata=True,
            expansion_service=expansion_service,
        )


class WriteMessages(WriteToKafka):
    """(key, value) byte pairs to ``topic``."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        expansion_service: str,
        producer_config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            producer_config={
                "bootstrap.servers": bootstrap_servers,
                "max.request.size": str(MAX_MESSAGE_BYTES),
                **(producer_config or {}),
            },
            topic=topic,
            expansion_service=expansion_service,
        )


class MessageId(NamedTuple):
    """Where a message's image came from: its key (the image's id) and what its output record
    names as ``"image"`` (the URI of a uri message, else the id)."""

    key: str
    image: str

    def __str__(self) -> str:
        return self.image


def message_coordinates(message: Any) -> str:
    """topic/partition@offset: a message's place, which names a message without a key."""
    return f"{message.topic}/{message.partition}@{message.offset}"


class ParseMessages(beam.DoFn):
    """Kafka rows in; out (MessageId, URI) for uri messages or (MessageId, bytes) for bytes
    messages, and (MessageId, reason) under FAILURES for a message with no key, no value or a URI
    that is not text. Each element keeps its message's timestamp."""

    def __init__(self, message_format: str) -> None:
        if message_format not in MESSAGE_FORMATS:
            raise ValueError(
                f"message format must be one of {', '.join(MESSAGE_FORMATS)}, "
                f"got {message_format!r}"
            )
        self._format = message_format

    def process(self, message: Any) -> Iterator[Any]:
        key: bytes | None = message.key
        value: bytes | None = message.value
        where = message_coordinates(message)
        if key is None:
            # Its failure record is keyed by its place instead.
            failure = (
                MessageId(where, where),
                f"{where}: the message has no key; give each message its image's id as the key",
            )
            yield pvalue.TaggedOutput(FAILURES, failure)
            return
        image_id = key.decode("utf-8", errors="replace")
        if not value:
            yield pvalue.TaggedOutput(
                FAILURES,
                (
                    MessageId(image_id, image_id),
                    f"{image_id}: the message ({where}) is empty; its value must be "
                    + ("an image's URI" if self._format == "uri" else "an encoded image"),
                ),
            )
            return
        if self._format == "bytes":
            yield MessageId(image_id, image_id), bytes(value)
            return
        try:
            uri = bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            yield pvalue.TaggedOutput(
                FAILURES,
                (
                    MessageId(image_id, image_id),
                    f"{image_id}: the message ({where}) is not a URI "
                    "(not UTF-8 text); with --message_format uri each value is an image's path or "
                    "URI, with --message_format bytes the encoded image",
                ),
            )
            return
        yield MessageId(image_id, uri), uri


class ClassifyMessages(beam.PTransform):
    """Kafka rows (from :class:`ReadMessages`) in; :class:`ClassifiedImages` out, each keyed by its
    message's :class:`MessageId`: every message comes out once, a prediction or a failure."""

    def __init__(self, handler: ImageClassifierHandler, message_format: str) -> None:
        super().__init__()
        self._handler = handler
        self._format = message_format
        self._parse = ParseMessages(message_format)  # checks the format now, not on a worker

    @no_annotations  # a NamedTuple of PCollections, which Beam would warn about as a type hint
    def expand(self, messages: beam.PCollection) -> ClassifiedImages:
        parsed = messages | "ParseMessages" >> beam.ParDo(self._parse).with_outputs(
            FAILURES, main="images"
        )
        if self._format == "bytes":
            classified = parsed.images | "Classify" >> ClassifyImageBytes(self._handler)
            return merge_failures(classified, parsed[FAILURES])
        read = parsed.images | "ReadImages" >> ReadImages()
        classified = read.images | "Classify" >> ClassifyImageBytes(self._handler)
        return merge_failures(classified, parsed[FAILURES], read[FAILURES])


def _key(image: Any) -> bytes:
    return (image.key if isinstance(image, MessageId) else str(image)).encode()


def prediction_message(prediction: Prediction) -> tuple[bytes, bytes]:
    """A prediction's output record: the message's key, today's JSON line as the value."""
    return _key(prediction.image), prediction_json(prediction).encode()


def failure_message(item: tuple[Any, str]) -> tuple[bytes, bytes]:
    """A failure's output record: the message's key, the failure's JSON line as the value."""
    return _key(item[0]), failure_json(item).encode()


def write_messages(
    classified: ClassifiedImages,
    bootstrap_servers: str,
    output_topic: str,
    failures_topic: str,
    expansion_service: str,
) -> None:
    """Predictions to ``output_topic``, failures to ``failures_topic``, keyed by message key."""
    _ = (
        classified.predictions
        | "PredictionMessages"
        >> beam.Map(prediction_message).with_output_types(tuple[bytes, bytes])
        | "WritePredictions" >> WriteMessages(bootstrap_servers, output_topic, expansion_service)
    )
    _ = (
        classified.failures
        | "FailureMessages" >> beam.Map(failure_message).with_output_types(tuple[bytes, bytes])
        | "WriteFailures" >> WriteMessages(bootstrap_servers, failures_topic, expansion_service)
    )


__all__ = [
    "MESSAGE_FORMATS",
    "ClassifyMessages",
    "MessageId",
    "ParseMessages",
    "ReadMessages",
    "WriteMessages",
    "failure_message",
    "prediction_message",
    "write_messages",
]
