"""Command-line options of the classification pipeline, as Beam ``PipelineOptions``."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from beam_ml_flink._core import INTERPOLATIONS
from beam_ml_flink.arguments import (
    positive_int,
    resize,
    seconds,
    seconds_or_zero,
    sha256_digest,
    triple,
    true_or_false,
)
from beam_ml_flink.embeddings import OUTPUT_KINDS
from beam_ml_flink.kafka import MESSAGE_FORMATS
from beam_ml_flink.pipeline import OUTPUT_FORMATS
from beam_ml_flink.services.kafka import JAVA_EXPANSION_PORT
from beam_ml_flink.shards import INPUT_FORMATS

# The original dataflow-ml-starter pipeline resizes to 224x224 with no crop.
STATE_DICT_RESIZE = (224, 224)

# The topics of the command's --help, in its order, each with what its flags are about.
INPUT = "input"
MODEL = "model"
PREPROCESSING = "preprocessing"
OUTPUT = "output"
STREAMING = "streaming"
MESSAGES = "Kafka and Pub/Sub"
FLINK = "Flink"
RUN = "the run"
FLAG_GROUPS = {
    INPUT: "What to classify: images, a list of them, or shards.",
    MODEL: "The classifier and how it runs.",
    PREPROCESSING: "How each image becomes the model's input (the model's recipe).",
    OUTPUT: "Where the predictions and the failures go, and what they hold.",
    STREAMING: "With --streaming, the --input folder or glob is watched for new images.",
    MESSAGES: "Messages in (--input_topic, --input_subscription) instead of --input; records out "
    "(--output_topic) instead of files.",
    FLINK: "Flink's own options for the job (Beam Java's FlinkPipelineOptions).",
    RUN: "What the command tells and how it ends. Every Beam pipeline option (--runner, "
    "--flink_master, ...) is accepted as well.",
}


def flag_group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The parser's group of flags named `title` (one of FLAG_GROUPS). The first call makes
    every group, so that --help lists them in FLAG_GROUPS' order whichever options class adds
    its flags first."""
    # argparse keeps its groups in this list and has no public way to find one by title.
    groups = {group.title: group for group in parser._action_groups}
    for name, description in FLAG_GROUPS.items():
        if name not in groups:
            groups[name] = parser.add_argument_group(name, description)
    return groups[title]


def add_labels_flag(parser: argparse.ArgumentParser) -> None:
    """The CLI's ``--labels``, kept out of Beam's parser where it means Dataflow job labels."""
    model = flag_group(parser, MODEL)
    model.add_argument("--labels", help="A text file with one class name per line.")


def add_bootstrap_servers_flag(parser: argparse.ArgumentParser) -> None:
    """The CLI's ``--bootstrap_servers``: Beam's KafkaStreamsRunnerOptions already declares it, so
    it is added to the CLI's parser alone (Beam's parser reads the same value)."""
    messages = flag_group(parser, MESSAGES)
    messages.add_argument(
        "--bootstrap_servers",
        metavar="HOST:PORT",
        help="Kafka: the brokers of --input_topic and --output_topic.",
    )


def without_labels_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--labels FILE`` / ``--labels=FILE``, for Beam's own parser."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--labels":
            skip = True
        elif not arg.startswith("--labels="):
            kept.append(arg)
    return kept


class ImageClassificationOptions(PipelineOptions):
    """What to classify, with which model, and where the results go.

    ``--labels`` (the class names file) is parsed by the CLI alone: Beam's Google Cloud options
    already own ``--labels`` (Dataflow job labels).
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        images = flag_group(parser, INPUT)
        model = flag_group(parser, MODEL)
        preprocessing = flag_group(parser, PREPROCESSING)
        results = flag_group(parser, OUTPUT)
        streaming = flag_group(parser, STREAMING)
        messages = flag_group(parser, MESSAGES)
        run = flag_group(parser, RUN)
        images.add_argument(
            "--input",
            help="A text file with one image path or URI per line, a folder or glob of image "
            "files, or shards: WebDataset tar files or Parquet files of image bytes, with brace "
            "ranges and globs ('shards/{00000..00009}.tar').",
        )
        images.add_argument(
            "--input_format",
            choices=INPUT_FORMATS,
            default="auto",
            help="auto (default): shards when --input ends in .tar, .tar.gz, .tgz or .parquet, "
            "else images or a list of them; list; webdataset; parquet.",
        )
        images.add_argument(
            "--image_column",
            default="jpg",
            help="Parquet shards: the column of encoded images (default jpg, as img2dataset).",
        )
        images.add_argument(
            "--id_column",
            default="key",
            help="Parquet shards: the column of sample ids (default key, as img2dataset); an "
            "image id is SHARD/ID, or SHARD/rowN where the shard has no such column.",
        )
        results.add_argument(
            "--output",
            help="Prefix of the output files: PREFIX-*.jsonl predictions, "
            "PREFIX_failures-*.jsonl failures (with --output_format csv, predictions go to "
            "exactly PREFIX).",
        )
        model.add_argument(
            "--model_path",
            help="An image classifier: TorchScript, or an AOTInductor package (.pt2); a path or a "
            "URI (s3://, gs://).",
        )
        model.add_argument(
            "--model_sha256",
            type=sha256_digest,
            help="The SHA-256 of the model file (sha256sum's digest): checked before the model is "
            "loaded; a model with another digest is refused, never run.",
        )
        model.add_argument(
            "--model_state_dict_path",
            help="A torchvision state dict (the original pipeline's flag); needs --model_name.",
        )
        model.add_argument(
            "--model_name", help="The torchvision architecture of --model_state_dict_path."
        )
        results.add_argument(
            "--top_k", type=positive_int, help="Classes kept per image (default 5)."
        )
        preprocessing.add_argument(
            "--resize",
            type=resize,
            default=None,
            help="Shorter side before a center crop (default 256), or height,width with no crop "
            "(default 224,224 with --model_state_dict_path, as the original pipeline).",
        )
        preprocessing.add_argument(
            "--crop", type=positive_int, default=None, help="Center crop side (default 224)."
        )
        preprocessing.add_argument(
            "--interpolation",
            choices=INTERPOLATIONS,
            default=None,
            help="The resize filter, Pillow's (as torchvision's InterpolationMode names it), bit "
            "for bit (default bilinear).",
        )
        preprocessing.add_argument(
            "--crop_pct",
            type=float,
            default=None,
            help="timm's recipe instead of --resize: the shorter side becomes "
            "floor(crop / crop_pct), then the center crop (0.875 with --crop 224 is --resize 256).",
        )
        preprocessing.add_argument(
            "--mean", type=triple, default=None, help="Normalize mean (default ImageNet's)."
        )
        preprocessing.add_argument(
            "--std", type=triple, default=None, help="Normalize std (default ImageNet's)."
        )
        preprocessing.add_argument(
            "--preprocess_config",
            metavar="FILE",
            help="The model's own recipe: a timm config.json (its pretrained_cfg) or a Hugging "
            "Face preprocessor_config.json, a path or URI; the flags above, where given, win "
            "over it.",
        )
        model.add_argument(
            "--device", default="cpu", help="cpu, cuda or cuda:N (CPU and GPU also accepted)."
        )
        model.add_argument(
            "--batch_size", type=positive_int, default=32, help="Largest batch per model call."
        )
        images.add_argument(
            "--images_dir",
            help="A folder (or URI prefix) joined to relative names in the --input list.",
        )
        results.add_argument(
            "--output_format",
            choices=OUTPUT_FORMATS,
            default="json",
            help="json: one JSON line per image; csv: the original pipeline's path,index lines; "
            "parquet: typed columns (image, top_indices, top_labels, top_scores, model, "
            "metadata; failures: image, error).",
        )
        results.add_argument(
            "--output_kind",
            choices=OUTPUT_KINDS,
            default="classes",
            help="classes: each image's top classes (the default); embeddings: the model's "
            "output vector per image (a model that returns features gives its features), as "
            "JSON lines (image, embedding, model) or Parquet list<float32> columns.",
        )
        results.add_argument(
            "--normalize_embeddings",
            action="store_true",
            help="With --output_kind embeddings: each vector divided by its L2 norm.",
        )
        preprocessing.add_argument(
            "--draft",
            action="store_true",
            help="Decode JPEGs much larger than needed at a reduced DCT scale, like PIL's draft(): "
            "about 3x faster on camera-size photos; answers may differ slightly from the recipe.",
        )
        model.add_argument(
            "--no_optimize",
            action="store_true",
            help="Run the model as saved instead of frozen and optimized for inference.",
        )
        model.add_argument(
            "--forward_batch_size",
            type=positive_int,
            help="Most images per forward pass; a larger batch, once decoded, runs as several "
            "(default: on the CPU 4 or 8, whichever the first passes run faster; on CUDA the "
            "whole batch).",
        )
        model.add_argument(
            "--precision",
            choices=("fp32", "fp16", "bf16"),
            default="fp32",
            help="What the model computes in: fp32 as saved (default), or fp16 / bf16 on a GPU "
            "(the CPU runs them too, usually slower).",
        )
        # With Beam's --streaming, --input (a folder or glob) is watched.
        streaming.add_argument(
            "--poll_interval",
            type=seconds,
            default=5.0,
            help="Streaming: seconds between two listings of the watched folders (default 5).",
        )
        streaming.add_argument(
            "--window_size",
            type=seconds,
            default=60.0,
            help="Streaming: seconds of arrival time per output window; a window's files are "
            "written when it closes (default 60).",
        )
        streaming.add_argument(
            "--stop_after",
            type=seconds,
            help="Streaming: stop watching after this many seconds; the job then writes its "
            "last windows and ends (default: run until interrupted). With --input_topic the job "
            "is cancelled then.",
        )
        streaming.add_argument(
            "--watch_models",
            metavar="GLOB",
            help="Streaming: a folder or glob of model files; a model file added there while "
            "the job runs replaces the model, and the predictions after it name it.",
        )
        # Kafka: messages in, records out (see beam_ml_flink.kafka).
        messages.add_argument(
            "--input_topic",
            help="Kafka: classify the messages of this topic (instead of --input); each key is "
            "an image's id, each value its URI or its bytes (--message_format).",
        )
        messages.add_argument(
            "--input_subscription",
            help="Pub/Sub: classify the messages of this subscription (projects/P/subscriptions/"
            "S); --input_topic projects/P/topics/T reads a topic. Each message's data is an "
            "image's URI or bytes (--message_format), its id the `id` attribute.",
        )
        messages.add_argument(
            "--consumer_group",
            default="beam-ml-flink",
            help="Kafka: the consumer group whose offsets the job commits at each checkpoint "
            "(default beam-ml-flink).",
        )
        messages.add_argument(
            "--message_format",
            choices=MESSAGE_FORMATS,
            default="uri",
            help="Kafka: each message's value is an image's URI, read through Beam's "
            "FileSystems (default), or the encoded image's bytes.",
        )
        messages.add_argument(
            "--output_topic",
            help="Kafka: predictions to this topic, keyed by the message's key (else to files "
            "starting with --output, per window).",
        )
        messages.add_argument(
            "--failures_topic",
            help="Kafka: failures to this topic (default: OUTPUT_TOPIC-failures).",
        )
        messages.add_argument(
            "--expansion_service",
            metavar="HOST:PORT",
            default=f"localhost:{JAVA_EXPANSION_PORT}",
            help="Kafka: the Java expansion service that expands KafkaIO "
            f"(default localhost:{JAVA_EXPANSION_PORT}, which `python -m "
            "beam_ml_flink.services --expansion-service` starts).",
        )
        results.add_argument(
            "--show",
            type=int,
            default=0,
            metavar="N",
            help="After the run, print a table of up to N results read back from the output.",
        )
        run.add_argument(
            "--progress_interval",
            type=seconds_or_zero,
            default=10.0,
            metavar="SECONDS",
            help="A progress line every this many seconds: for a batch run, images done, failed, "
            "images/s and the time left where the input count is known; for a stream, records "
            "answered, failed, records/s over the interval and, from Kafka, the consumer "
            "group's lag; 0 turns it off (default 10).",
        )
        run.add_argument(
            "--fail_on_error",
            action="store_true",
            help="Exit with status 1 when any input failed (could not be read, decoded or "
            "classified), after the run; without it a run whose inputs failed still exits 0, "
            "its summary counting them.",
        )
        run.add_argument(
            "--verbose",
            action="store_true",
            help="Show every library's log messages (Beam's, Flink's), not only warnings that "
            "concern the run.",
        )


class FlinkStreamingOptions(PipelineOptions):
    """Flink's checkpointing and bundle options, under the names of Beam Java's
    FlinkPipelineOptions. Declared here because Beam Python passes on only the options it knows."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        flink = flag_group(parser, FLINK)
        flink.add_argument(
            "--checkpointing_interval",
            type=int,
            help="Flink: milliseconds between checkpoints (a Kafka job checkpoints every 10 s "
            "unless told otherwise; -1 turns checkpoints off).",
        )
        flink.add_argument(
            "--checkpointing_mode",
            choices=("EXACTLY_ONCE", "AT_LEAST_ONCE"),
            help="Flink: the checkpointing mode (Flink's default EXACTLY_ONCE).",
        )
        flink.add_argument(
            "--state_backend",
            choices=("filesystem", "rocksdb"),
            help="Flink: where Beam's state lives between checkpoints (with "
            "--state_backend_storage_path).",
        )
        flink.add_argument(
            "--state_backend_storage_path",
            metavar="URI",
            help="Flink: where checkpoints are stored, e.g. file:///tmp/checkpoints.",
        )
        flink.add_argument(
            "--finish_bundle_before_checkpointing",
            nargs="?",
            const=True,
            type=true_or_false,
            metavar="true|false",
            help="Flink: finish every open bundle before a checkpoint barrier, so that no "
            "step's output waits in checkpointed state (Beam's default false; true for a "
            "folder watch on Flink, whose one starting element could otherwise stay buffered "
            "and the watch never start).",
        )
        flink.add_argument(
            "--max_bundle_size",
            type=int,
            help="Flink: most elements in a bundle (Beam's default 1000 when streaming).",
        )
        flink.add_argument(
            "--max_bundle_time_mills",
            type=int,
            help="Flink: most milliseconds a bundle stays open (a Kafka job's 100 unless told "
            "otherwise, Beam's default 1000 for other streams); each step of a streaming job "
            "hands its results on when its bundle closes, so this bounds the latency each step "
            "adds.",
        )
