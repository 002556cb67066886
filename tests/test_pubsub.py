"""Pub/Sub in, at the transform level: no Pub/Sub emulator is reachable from here (Google's is
shipped with the gcloud SDK, not by a package registry), so Pub/Sub messages come from a
TestStream, through the same parsing and classification as on Pub/Sub, on the DirectRunner."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_pipeline, test_stream
from apache_beam.testing.util import assert_that, equal_to
from test_beam import demo_handler
from test_cli import classify

from beam_ml_flink.kafka import ClassifyMessages
from beam_ml_flink.pubsub import PubsubToMessages, is_pubsub
from conftest import DEMO_MODEL

TOPIC = "projects/demo/topics/images"


def test_pubsub_names_are_told_from_kafka_topics() -> None:
    assert is_pubsub(TOPIC) and is_pubsub("projects/p/subscriptions/s")
    assert not is_pubsub("images") and not is_pubsub(None)


def test_every_pubsub_message_answered_once(
    photos: dict[str, bytes], demo_top1: dict[str, int]
) -> None:
    """Photos as bytes messages keyed by their `id` attribute, one keyed only by its message id,
    an empty one and one that is not an image: a prediction (the reference top-1) or a failure
    each, keyed as the message."""
    names = sorted(photos)
    stream = test_stream.TestStream()
    for i, name in enumerate(names):
        stream = stream.add_elements(
            [PubsubMessage(photos[name], {"id": name}, message_id=f"m{i}")]
        )
    stream = stream.add_elements(
        [
            PubsubMessage(photos[names[0]], {}, message_id="only-a-message-id"),
            PubsubMessage(b"", {"id": "empty"}, message_id="e"),
            PubsubMessage(b"not an image", {"id": "text"}, message_id="t"),
        ]
    ).advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with test_pipeline.TestPipeline(runner="DirectRunner", options=options) as p:
        classified = (
            p
            | stream
            | beam.ParDo(PubsubToMessages(TOPIC))
            | ClassifyMessages(demo_handler(min_batch_size=1, max_batch_size=4), "bytes")
        )
        top1 = classified.predictions | "Top1" >> beam.Map(
            lambda p: (str(p.image), p.classification.top_k[0][0])
        )
        assert_that(
            top1,
            equal_to(
                [(name, demo_top1[name]) for name in names]
                + [("only-a-message-id", demo_top1[names[0]])]
            ),
            label="predictions",
        )
        reasons = classified.failures | "Reasons" >> beam.Map(
            lambda f: (str(f[0]), "is empty" in f[1] or "unrecognised image format" in f[1])
        )
        assert_that(reasons, equal_to([("empty", True), ("text", True)]), label="failures")


def test_pubsub_on_flink_is_a_usage_error(tmp_path) -> None:
    run = classify(
        f"--input_topic={TOPIC}",
        f"--output={tmp_path / 'r'}",
        f"--model_path={DEMO_MODEL}",
        "--runner=FlinkRunner",
    )
    assert run.returncode == 2
    assert "Pub/Sub input" in run.stderr and "use Kafka" in run.stderr
    assert "Traceback" not in run.stderr
    run = classify(
        "--input_subscription=images",
        f"--output={tmp_path / 'r'}",
        f"--model_path={DEMO_MODEL}",
    )
    assert run.returncode == 2
    assert "projects/P/subscriptions/S" in run.stderr
