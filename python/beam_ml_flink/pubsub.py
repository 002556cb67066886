"""Pub/Sub in, for users of the original pipeline on Dataflow: each message of a topic or a
subscription is an image, its data the image's URI (as the original pipeline's messages) or its
encoded bytes, its id the message's ``id`` attribute (else Pub/Sub's message id). The messages
become the rows :class:`beam_ml_flink.kafka.ClassifyMessages` takes, so every message comes out
once, a prediction or a failure with its reason, as on Kafka.

Beam's Python Pub/Sub IO needs ``apache-beam[gcp]`` and runs on Dataflow and the DirectRunner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

ID_ATTRIBUTE = "id"


def is_pubsub(name: str | None) -> bool:
    """Whether a topic or subscription name is Pub/Sub's (projects/P/topics/T or
    projects/P/subscriptions/S), not a Kafka topic."""
    return bool(name) and name.startswith("projects/")  # type: ignore[union-attr]


class Message(NamedTuple):
    """A Pub/Sub message in the shape of a Kafka row: key, value, and where it came from."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: str
    offset: str


class PubsubToMessages(beam.DoFn):
    """PubsubMessage in; a :class:`Message` out, keyed by the ``id`` attribute (else the message
    id; a message with neither has no key and becomes a failure downstream)."""

    def __init__(self, source: str, id_attribute: str = ID_ATTRIBUTE) -> None:
        self._source = source
        self._id_attribute = id_attribute

    def process(self, message: Any) -> Iterator[Message]:
        attributes = message.attributes or {}
        key = attributes.get(self._id_attribute) or message.message_id
        yield Message(
            key.encode() if key else None,
            message.data,
            self._source,
            "0",
            message.message_id or "?",
        )


def read_pubsub(pipeline: beam.Pipeline, topic: str) -> beam.PCollection:
    """The messages of a Pub/Sub topic or subscription as :class:`Message` rows."""
    from apache_beam.io.gcp.pubsub import ReadFromPubSub

    kind = "subscription" if "/subscriptions/" in topic else "topic"
    return (
        pipeline
        | "ReadPubSub" >> ReadFromPubSub(**{kind: topic}, with_attributes=True)
        | "PubSubMessages" >> beam.ParDo(PubsubToMessages(topic))
    )
