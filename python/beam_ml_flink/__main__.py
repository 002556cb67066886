"""``python -m beam_ml_flink``: classify images with any Beam runner.

    python -m beam_ml_flink --input images.txt --output out/results --model_path model.pt \
        [--labels labels.txt] [--runner DirectRunner] [any Beam pipeline option]

With ``--streaming`` the input folder or glob is watched and new images are classified as they
arrive, until ``--stop_after`` seconds have passed or the command is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

# Beam logs notices when its modules are imported that do not concern the run (that BigQuery's
# client library is missing, say): quiet unless --verbose, before those imports.
if "--verbose" not in sys.argv:
    logging.getLogger().setLevel(logging.ERROR)


import glob
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms import window

from beam_ml_flink._core import Error
from beam_ml_flink.arguments import ArgumentParser
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.counts import (
    CLASSIFIED,
    COUNTS,
    FAILED_DECODE,
    FAILED_INFERENCE,
    FAILED_READ,
    METRICS_NAMESPACE,
    failures_by_stage,
)
from beam_ml_flink.embeddings import ImageEmbedderHandler, write_npy_shards
from beam_ml_flink.kafka import ClassifyMessages, ReadMessages, write_messages
from beam_ml_flink.messages import consumer_lag
from beam_ml_flink.options import (
    STATE_DICT_RESIZE,
    FlinkStreamingOptions,
    ImageClassificationOptions,
    add_bootstrap_servers_flag,
    add_labels_flag,
    without_labels_flag,
)
from beam_ml_flink.parquet_reader import read_parquet
from beam_ml_flink.pipeline import (
    FAILURES,
    ClassifiedImages,
    ClassifyImageBytes,
    ClassifyImages,
    image_uris,
    merge_failures,
    output_files,
    write_results,
)
from beam_ml_flink.progress import ProgressReporter, count_inputs
from beam_ml_flink.pubsub import is_pubsub, read_pubsub
from beam_ml_flink.services import JAVA_17_FLAGS, cancel_flink_jobs, flink_job_metrics
from beam_ml_flink.shards import ReadShards, expand_patterns, is_sharded, local_shard_paths
from beam_ml_flink.stores import StoreError, check_remote_input, check_stores
from beam_ml_flink.streaming import Watch, watched_image_uris
from beam_ml_flink.window_files import remove_temp_folder

# The DirectRunner runs this pipeline in batch (it has no streaming runner for it).
BATCH_ONLY_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
FLINK_RUNNERS = ("FlinkRunner", "PortableRunner")
# Runners whose workers are this process or its children, on this machine.
LOCAL_RUNNERS = (*BATCH_ONLY_RUNNERS, "PrismRunner")
# The runners of Beam's Python Pub/Sub IO.
PUBSUB_RUNNERS = ("DataflowRunner", "DirectRunner")
# The runners this command runs on (docs/runners.md); Beam also takes them in lower case and
# without "Runner" (--runner flink).
RUNNERS = (*LOCAL_RUNNERS, *FLINK_RUNNERS, *PUBSUB_RUNNERS)
# What the summary calls each stage's failures.
FAILED_AT = {
    FAILED_READ: "could not be read",
    FAILED_DECODE: "could not be decoded",
    FAILED_INFERENCE: "failed in inference",
}
# A Kafka job's checkpoints: its consumer offsets are committed with each, and a restarted job
# resumes from the last one.
KAFKA_CHECKPOINT_MS = 10_000
# A Kafka job's bundles close after at most this long: each step hands its records on when its
# bundle closes. make bench-streaming, checkpoints on: at 8 messages/s p50 0.19 s with 100 ms
# against 2.4 s with Beam's 1000 ms, and saturation 98.3 images/s against 92.0.
KAFKA_BUNDLE_MS = 100
# What a cancelled streaming job leaves undone.
FILES_CANCELLED = "the windows still open are not written"
KAFKA_CANCELLED = (
    "the messages read since its last checkpoint are read again by the next job of the same "
    "--consumer_group, which starts from the offsets committed with that checkpoint"
)
# Flink's "forever" for --shutdown_sources_after_idle_ms (Java's Long.MAX_VALUE).
FOREVER_MS = 2**63 - 1

logger = logging.getLogger("beam_ml_flink")


# Flags that name local files or folders (or URIs, left as they are).
PATH_FLAGS = (
    "input",
    "output",
    "model_path",
    "model_state_dict_path",
    "labels",
    "images_dir",
    "watch_models",
)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, PipelineOptions]:
    """This pipeline's flags, checked (with a usable --help), and Beam's options."""
    parser = ArgumentParser(
        prog="python -m beam_ml_flink",
        usage="%(prog)s --input IMAGES --output PREFIX --model_path MODEL [flags] "
        "[Beam pipeline options]",
        description="Classify images with a TorchScript model or an AOTInductor package in an "
        "Apache Beam pipeline, on --runner DirectRunner (the default), PrismRunner, FlinkRunner "
        "or PortableRunner. Every Beam pipeline option is accepted as well.",
    )
    ImageClassificationOptions._add_argparse_args(parser)
    FlinkStreamingOptions._add_argparse_args(parser)
    add_labels_flag(parser)
    add_bootstrap_servers_flag(parser)
    args, _ = parser.parse_known_args(argv)
    # Checked here, not by argparse: a required flag in a PipelineOptions subclass would break
    # every other pipeline's options in a process that imports this module.
    if args.input_subscription:
        if args.input_topic:
            parser.error("give either --input_topic or --input_subscription, not both")
        if not is_pubsub(args.input_subscription):
            parser.error(
                "--input_subscription is a Pub/Sub subscription, projects/P/subscriptions/S; "
                f"got {args.input_subscription}"
            )
        args.input_topic = args.input_subscription
    if not (args.input or args.input_topic):
        parser.error("--input (images) or --input_topic (Kafka messages) is required")
    if args.input and args.input_topic:
        parser.error("give either --input or --input_topic, not both")
    if not (args.output or args.output_topic):
        parser.error("--output (a prefix of files) or --output_topic (Kafka) is required")
    if args.output_topic and not args.input_topic:
        parser.error("--output_topic needs --input_topic: Kafka records answer Kafka messages")
    if args.model_state_dict_path:
        if not args.model_name:
            parser.error("--model_state_dict_path needs --model_name (e.g. mobilenet_v2)")
        if args.model_path:
            parser.error("give either --model_path or --model_state_dict_path, not both")
    elif not args.model_path:
        parser.error("--model_path (TorchScript or an AOTInductor package) is required")
    if args.output_kind == "embeddings" and args.output_format == "csv":
        parser.error(
            "--output_format csv holds a class index per image: embeddings go to json or parquet"
        )
    if args.normalize_embeddings and args.output_kind != "embeddings":
        parser.error("--normalize_embeddings needs --output_kind embeddings")
    if args.output_kind == "embeddings":
        for flag in ("labels", "top_k"):
            if getattr(args, flag) is not None:
                parser.error(
                    f"--{flag} names classes, and --output_kind embeddings writes the model's "
                    f"vectors, not classes: drop --{flag} or --output_kind embeddings"
                )
    # Remote paths are read through Beam's filesystems with this command's options (the S3
    # endpoint and keys); a store that does not answer, refuses the keys or lacks a bucket stops
    # the command here, within seconds.
    filesystem_options = PipelineOptions(without_labels_flag(list(argv)))
    FileSystems.set_options(filesystem_options)
    try:
        check_stores([(name, getattr(args, name)) for name in PATH_FLAGS], filesystem_options)
    except StoreError as e:
        parser.error(str(e))
    model = args.model_path or args.model_state_dict_path
    for what, path in (("model", model), ("labels file", args.labels)):
        if path and not FileSystems.exists(path):
            parser.error(f"the {what} {path} does not exist")
    if args.images_dir and "://" not in args.images_dir and not os.path.isdir(args.images_dir):
        parser.error(f"--images_dir {args.images_dir} is not a folder")
    if args.input and is_sharded(args.input, args.input_format):
        _check_shards(parser, args.input, streaming="--streaming" in argv)
    elif args.input:
        _check_input(parser, args.input, streaming="--streaming" in argv)
    if args.output:
        _check_output(parser, args.output)
    # The workers may run in another folder (DOCKER containers, a worker pool): local paths reach
    # them absolute.
    for name in PATH_FLAGS:
        value = getattr(args, name)
        if value and "://" not in value:
            setattr(args, name, os.path.abspath(value))
    beam_argv = without_labels_flag(list(argv))
    standard = PipelineOptions(beam_argv).view_as(StandardOptions)
    runner = _runner(parser, standard.runner)
    if standard.runner and standard.runner != runner:
        beam_argv.append(f"--runner={runner}")  # the name the checks below and Beam both know
    if runner == "FlinkRunner" and not _given(beam_argv, "job_server_jvm_properties"):
        beam_argv += [f"--job_server_jvm_properties={flag}" for flag in JAVA_17_FLAGS]
    if is_pubsub(args.input_topic):
        beam_argv = _pubsub_argv(parser, args, runner, beam_argv)
    elif args.input_topic:
        beam_argv = _kafka_argv(parser, args, runner, beam_argv)
    elif standard.streaming:
        if runner in BATCH_ONLY_RUNNERS:
            parser.error(
                "--streaming needs a streaming runner: the DirectRunner runs this pipeline in "
                "batch; use --runner PrismRunner (make run-streaming) or FlinkRunner"
            )
        if not (os.path.isdir(args.input) or set("*?[") & set(args.input)):
            parser.error(
                f"--streaming watches a folder or a glob of images; --input {args.input} is "
                "neither (a list of images is classified without --streaming)"
            )
        if runner in FLINK_RUNNERS and not _given(beam_argv, "shutdown_sources_after_idle_ms"):
            # Flink ends a job whose sources have finished, and the watch's source (an impulse)
            # finishes at once: kept alive, it lets the watch poll until --stop_after.
            idle_ms = round(args.stop_after * 1000) if args.stop_after else FOREVER_MS
            beam_argv.append(f"--shutdown_sources_after_idle_ms={idle_ms}")
        if runner in FLINK_RUNNERS and not _given(beam_argv, "finish_bundle_before_checkpointing"):
            # The watch starts from one element (an impulse). If a checkpoint comes while the
            # step that received it has its bundle open, Beam's Flink operator keeps that
            # bundle's output in checkpointed state and emits it only with a later element or
            # watermark, which never come: the watch would never start. Finishing bundles
            # before each checkpoint barrier hands the output on first.
            beam_argv.append("--finish_bundle_before_checkpointing")
    elif args.watch_models:
        parser.error("--watch_models needs --streaming: only a running job can swap its model")
    if args.watch_models and "://" not in args.watch_models:
        folder = args.watch_models
        if set("*?[") & set(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            parser.error(
                f"--watch_models {args.watch_models}: the folder {folder} does not exist, so no "
                "model could ever appear there; create it, or give the folder that will receive "
                "the models"
            )
    return args, PipelineOptions(beam_argv)


def _runner(parser: argparse.ArgumentParser, given: str | None) -> str:
    """The runner --runner names, as RUNNERS spells it; a usage error if it is none of them."""
    if not given:
        return "DirectRunner"
    names = {runner.lower(): runner for runner in RUNNERS}
    names |= {name.removesuffix("runner"): runner for name, runner in names.items()}
    runner = names.get(given.split(".")[-1].lower())
    if runner is None:
        parser.error(
            f"--runner {given} is not a runner this command runs on: use DirectRunner (the "
            "default), PrismRunner, FlinkRunner or PortableRunner (DataflowRunner for Pub/Sub "
            "input)"
        )
    return runner


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def _check_input(parser: argparse.ArgumentParser, input: str, streaming: bool) -> None:
    """A local --input must be there before the pipeline starts: a list file, a folder, or a
    glob that matches files (a watched glob may match nothing yet). A list that names no image
    is allowed, with a warning: it is almost always a mistake."""
    if not _is_local(input):
        problem = None if streaming else check_remote_input(input)
        if problem:
            parser.error(problem)
        return
    if set("*?[") & set(input):
        if not streaming and not glob.glob(input):
            parser.error(f"--input {input}: no file matches this pattern; check the pattern")
        return
    if not os.path.exists(input):
        parser.error(
            f"--input {input} does not exist; give a list of images (one path per line), "
            "a folder or a glob"
        )
    if os.path.isfile(input):
        try:
            # Read up to the first entry only: a list may name a billion images.
            with open(input, errors="replace") as f:
                named = any(line.strip() and not line.lstrip().startswith("#") for line in f)
        except OSError as e:
            parser.error(f"--input {input} cannot be read: {e.strerror}")
        if not named:
            logger.warning("the input list %s names no images: nothing will be classified", input)


def _check_shards(parser: argparse.ArgumentParser, input: str, streaming: bool) -> None:
    """Shards are read in batch; every local shard the --input names must be there."""
    if streaming:
        parser.error(
            f"--input {input} names shards, which are read in batch: leave out --streaming "
            "(--streaming watches a folder of images)"
        )
    if not _is_local(input):
        problem = check_remote_input(input, expand_patterns(input))
        if problem:
            parser.error(problem)
        return
    found, missing = local_shard_paths(input)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        parser.error(
            f"--input {input}: {len(missing)} of its shards or patterns match no file: {shown}; "
            "check the range or pattern"
        )
    if not found:
        parser.error(f"--input {input}: no shard matches; check the pattern")


def _check_output(parser: argparse.ArgumentParser, output: str) -> None:
    """A local --output prefix must be in a folder that can be created and written: tried by
    creating it and a file in it, then removing what the try created."""
    if not _is_local(output):
        return
    folder = os.path.dirname(os.path.abspath(output))
    missing = folder
    while not os.path.exists(missing) and os.path.dirname(missing) != missing:
        missing = os.path.dirname(missing)
    created = folder if not os.path.exists(folder) else None
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".beam-ml-flink-write-check-"):
            pass
    except OSError as e:
        parser.error(
            f"--output {output}: the folder {folder} cannot be written ({e.strerror}); "
            "give a prefix in a folder you can write"
        )
    finally:
        # Remove the folders the try made, up to the first one that was there already.
        while created and created != missing:
            with contextlib.suppress(OSError):
                os.rmdir(created)
            created = os.path.dirname(created)


def _pubsub_argv(
    parser: argparse.ArgumentParser, args: argparse.Namespace, runner: str, beam_argv: list[str]
) -> list[str]:
    """Checks the Pub/Sub flags; Beam's flags for a Pub/Sub job: streaming."""
    if runner not in PUBSUB_RUNNERS:
        parser.error(
            f"Pub/Sub input ({args.input_topic}) runs on the runners of Beam's Python Pub/Sub IO: "
            "--runner DataflowRunner or DirectRunner; on Flink, use Kafka (--input_topic NAME "
            "--bootstrap_servers HOST:PORT)"
        )
    if args.output_topic:
        parser.error(
            "with Pub/Sub input the results go to files: give --output, not --output_topic"
        )
    if _given(beam_argv, "streaming"):
        return list(beam_argv)
    return [*beam_argv, "--streaming"]  # a topic is unbounded


def _kafka_argv(
    parser: argparse.ArgumentParser, args: argparse.Namespace, runner: str, beam_argv: list[str]
) -> list[str]:
    """Checks the Kafka flags; Beam's flags for a Kafka job: streaming, with checkpoints."""
    if runner not in FLINK_RUNNERS:
        parser.error(
            "--input_topic runs on Flink (Beam's KafkaIO is Java, expanded for this job and run "
            "in Flink's JVM): use --runner FlinkRunner or PortableRunner (make run-kafka)"
        )
    if not args.bootstrap_servers:
        parser.error("--input_topic needs --bootstrap_servers HOST:PORT (the Kafka brokers)")
    if args.output_topic and not args.failures_topic:
        args.failures_topic = f"{args.output_topic}-failures"
    if args.output_topic and args.failures_topic == args.output_topic:
        parser.error("--failures_topic must differ from --output_topic")
    beam_argv = list(beam_argv)
    if not _given(beam_argv, "streaming"):
        beam_argv.append("--streaming")  # a topic is unbounded
    if not _given(beam_argv, "checkpointing_interval"):
        beam_argv.append(f"--checkpointing_interval={KAFKA_CHECKPOINT_MS}")
    if not _given(beam_argv, "max_bundle_time_mills"):
        beam_argv.append(f"--max_bundle_time_mills={KAFKA_BUNDLE_MS}")
    return beam_argv


def _workers_here(options: PipelineOptions) -> bool:
    runner = (options.view_as(StandardOptions).runner or "DirectRunner").split(".")[-1]
    environment = options.view_as(PortableOptions).environment_type or ""
    return runner in LOCAL_RUNNERS or environment.upper() == "LOOPBACK"


def _given(argv: list[str], option: str) -> bool:
    return any(a == f"--{option}" or a.startswith(f"--{option}=") for a in argv)


def handler_for(args: argparse.Namespace) -> ImageClassifierHandler:
    """The model handler the flags describe."""
    resize = args.resize
    # None leaves the handler its recipe: the --preprocess_config file's, the one beside the
    # model, or torchvision's Resize(256).
    if resize is None and args.crop_pct is None and args.preprocess_config is None:
        resize = STATE_DICT_RESIZE if args.model_state_dict_path else None
    handler: type[ImageClassifierHandler] = ImageClassifierHandler
    kind: dict[str, Any] = {"labels": args.labels}
    if args.top_k is not None:
        kind["top_k"] = args.top_k
    if args.output_kind == "embeddings":
        handler, kind = ImageEmbedderHandler, {"normalize": args.normalize_embeddings}
    return handler(
        args.model_path or args.model_state_dict_path,
        **kind,
        model_name=args.model_name if args.model_state_dict_path else None,
        model_sha256=args.model_sha256,
        device=args.device,
        resize=resize,
        crop=args.crop,
        interpolation=args.interpolation,
        crop_pct=args.crop_pct,
        mean=args.mean,
        std=args.std,
        preprocess_config=args.preprocess_config,
        draft=args.draft,
        optimize=not args.no_optimize,
        forward_batch_size=args.forward_batch_size,
        precision=args.precision,
        watch_models=args.watch_models,
        poll_interval=args.poll_interval,
        min_batch_size=args.batch_size,
        max_batch_size=args.batch_size,
    )


def check_model(args: argparse.Namespace, options: PipelineOptions) -> None:
    """Loads a local model once before the pipeline starts: a model the workers could not use
    (not TorchScript, not a classifier, the wrong input size or labels, a GPU that is not there)
    stops the command with its reason and exit code 2, instead of failing every worker. It loads
    on the CPU unless the workers run on this machine, whose device is then the one checked."""
    model = args.model_path or args.model_state_dict_path
    if os.path.isdir(model):
        flag = "--model_path" if args.model_path else "--model_state_dict_path"
        sys.stderr.write(
            f"python -m beam_ml_flink: error: {flag} {model} is a directory; give the model file\n"
        )
        sys.exit(2)
    if _is_local(model) and not os.path.isfile(model):
        return
    device = args.device if _workers_here(options) else "cpu"
    try:
        handler_for(argparse.Namespace(**{**vars(args), "device": device})).load_model()
    except (Error, ValueError, OSError) as e:
        sys.stderr.write(f"python -m beam_ml_flink: error: {e}\n")
        sys.exit(2)


def run(argv: Sequence[str] | None = None) -> PipelineResult:
    """Builds and runs the pipeline, waits for it, and logs a summary."""
    args, options = parse(sys.argv[1:] if argv is None else argv)
    check_model(args, options)
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    streaming = options.view_as(StandardOptions).streaming
    if args.input_topic:
        classified = classify_messages(pipeline, args)
    else:
        if streaming:
            watch = Watch(args.poll_interval, args.window_size, args.stop_after)
            uris = watched_image_uris(pipeline, args.input, watch)
            classified = uris | "ClassifyImages" >> ClassifyImages(handler_for(args))
        elif is_sharded(args.input, args.input_format):
            images, failures = pipeline | "ReadShards" >> ReadShards(
                args.input, args.input_format, args.image_column, args.id_column
            )
            classified = merge_failures(
                images | "ClassifySamples" >> ClassifyImageBytes(handler_for(args)), failures
            )
        else:
            uris = image_uris(pipeline, args.input, args.images_dir)
            classified = uris | "ClassifyImages" >> ClassifyImages(handler_for(args))
    reporter = None
    if args.progress_interval > 0:
        reporter = progress_reporter(args, streaming or bool(args.input_topic))
        reporter.start()
    try:
        result = _run_and_wait(pipeline, args, options, classified, streaming, reporter)
    finally:
        if reporter is not None:
            reporter.stop()
    failed = log_summary(
        result, time.perf_counter() - started, flink_master(options), failures_output(args)
    )
    if streaming and args.output:
        for prefix in (args.output, f"{args.output}_{FAILURES}"):
            remove_temp_folder(prefix)
    if args.output_kind == "embeddings" and args.output_format == "parquet" and args.output:
        # After a stream too: the windows it wrote (a cancelled stream's open ones are not).
        if npy := write_npy_shards(args.output):
            logger.info(
                "the vectors as %d .npy shards, each with its images in a Parquet file: %s, ...",
                len(npy) // 2,
                ", ".join(npy[:2]),
            )
    if args.show and args.output:
        print_results(args.output, args.show)
    if args.fail_on_error and failed != 0:
        # Unknown counts fail too: a script asked to be told of failures cannot be told "none".
        logger.error(
            "--fail_on_error: %s; exit status 1",
            f"{failed} inputs failed" if failed else "the runner reported no counts of failures",
        )
        sys.exit(1)
    return result


def progress_reporter(args: argparse.Namespace, streaming: bool) -> ProgressReporter:
    """The progress lines of the run: a batch's (with its input count where known), or a
    stream's (with the consumer group's lag where the stream is Kafka's)."""
    if not streaming:
        total = None if is_sharded(args.input, args.input_format) else count_inputs(args.input)
        return ProgressReporter(args.progress_interval, total, METRICS_NAMESPACE, logger)
    backlog = None
    if args.input_topic and not is_pubsub(args.input_topic):

        def backlog() -> str:
            group = args.consumer_group
            try:
                lag = consumer_lag(args.bootstrap_servers, args.input_topic, group)
            except Exception as e:  # noqa: BLE001 - the line says why; the job runs on
                return f"Kafka lag unknown (the broker did not tell: {e})"
            return f"Kafka lag {lag:,} messages (consumer group {group})"

    return ProgressReporter(
        args.progress_interval, None, METRICS_NAMESPACE, logger, streaming=True, backlog=backlog
    )


def _run_and_wait(
    pipeline: beam.Pipeline,
    args: argparse.Namespace,
    options: PipelineOptions,
    classified: ClassifiedImages,
    streaming: bool,
    reporter: ProgressReporter | None,
) -> PipelineResult:
    """Writes the results, runs the pipeline and waits for it as its kind of job needs."""
    if args.output_topic:
        write_messages(
            classified,
            args.bootstrap_servers,
            args.output_topic,
            args.failures_topic,
            args.expansion_service,
        )
    else:
        write_results(classified, args.output, args.output_format, args.output_kind)
    try:
        result = pipeline.run()
    except Exception as e:
        if not _refused_artifacts(e):
            raise
        endpoint = options.view_as(PortableOptions).job_endpoint
        sys.stderr.write(
            f"python -m beam_ml_flink: error: the job server at {endpoint} could not stage the "
            f"job's artifacts ({_rpc_details(e)}). It writes them under its --artifacts-dir, "
            "which must be a folder or bucket it can write and every TaskManager can read; its "
            "log says what failed\n"
        )
        sys.exit(1)
    if reporter is not None:
        reporter.result = result
    if args.input_topic:
        cancelled = FILES_CANCELLED if is_pubsub(args.input_topic) else KAFKA_CANCELLED
        wait_or_cancel(result, args.stop_after, cancelled, flink_master(options))
    elif streaming:
        wait_or_cancel(result, flink_rest=flink_master(options))
    else:
        result.wait_until_finish()
    return result


def classify_messages(pipeline: beam.Pipeline, args: argparse.Namespace) -> ClassifiedImages:
    """The messages of --input_topic, classified; in windows of --window_size seconds when the
    results go to files."""
    if is_pubsub(args.input_topic):
        messages = read_pubsub(pipeline, args.input_topic)
    else:
        messages = pipeline | "ReadMessages" >> ReadMessages(
            args.bootstrap_servers, args.input_topic, args.consumer_group, args.expansion_service
        )
    if not args.output_topic:
        messages = messages | "Windows" >> beam.WindowInto(window.FixedWindows(args.window_size))
    return messages | "ClassifyMessages" >> ClassifyMessages(handler_for(args), args.message_format)


def _refused_artifacts(error: BaseException) -> bool:
    """Whether `error` is a job server's refusal of the job's artifacts (Beam's client offers
    them in `offer_artifacts` and gets only a gRPC status back, often without details)."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "offer_artifacts":
            return True
        frame = frame.tb_next
    return False


def _rpc_details(error: BaseException) -> str:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    said = [str(f()) for f in (code, details) if callable(f) and f()]
    return ": ".join(said) or str(error)


def flink_master(options: PipelineOptions) -> str | None:
    """The REST address (host:port) of the Flink cluster the job runs on, where known: the
    --flink_master option, else FLINK_MASTER (which `python -m beam_ml_flink.services` sets when
    it starts a cluster or is given one)."""
    given = options.view_as(FlinkRunnerOptions).flink_master
    if given and not given.startswith("["):
        return str(given)
    return os.environ.get("FLINK_MASTER") or None


def cancel(result: PipelineResult, flink_rest: str | None) -> None:
    """Cancels the job through its runner and, where it runs on a Flink cluster, on the cluster
    too: Beam's job server stops only its own wait there, and the job would keep its slots."""
    try:
        result.cancel()
    except Exception as e:  # noqa: BLE001 - Beam's Ctrl-C handler may have stopped it first
        logger.info("the job had already stopped with its job server: %s", e)
    job_id = getattr(result, "_job_id", None)
    if flink_rest and job_id:
        try:
            cancelled = cancel_flink_jobs(flink_rest, job_id.rsplit("_", 1)[0])
        except OSError as e:
            logger.warning("could not cancel the job on the Flink cluster at %s: %s", flink_rest, e)
        else:
            if cancelled:
                logger.info("cancelled on the Flink cluster at %s: %s", flink_rest, cancelled)


def wait_or_cancel(
    result: PipelineResult,
    stop_after: float | None = None,
    cancelled: str = FILES_CANCELLED,
    flink_rest: str | None = None,
) -> None:
    """Waits for a streaming job, for `stop_after` seconds at most (then cancels it); Ctrl-C or
    SIGTERM cancels it (the windows already closed are written; those still open are not)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: where the command inherited SIGINT ignored (a script's background job), the
    # handler Beam's job server installed stops Prism and then raises nothing, and the job
    # would end in an error instead of cancelled.
    previous = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, interrupt)
    try:
        if stop_after is None:
            result.wait_until_finish()
        else:
            result.wait_until_finish(duration=round(stop_after * 1000))
            if not PipelineState.is_terminal(result.state):
                logger.info("--stop_after %.0f s: cancelling the job; %s", stop_after, cancelled)
                cancel(result, flink_rest)
    except KeyboardInterrupt:
        logger.info("interrupted: cancelling the job; %s", cancelled)
        cancel(result, flink_rest)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def log_summary(
    result: PipelineResult,
    seconds: float,
    flink_rest: str | None = None,
    failures_output: str | None = None,
) -> int | None:
    """Logs what became of every input, from the Beam counters of :mod:`beam_ml_flink.counts`
    where the runner reports them (or, for a job on a Flink cluster whose job server returns
    none, where Flink has them): images classified, failures by stage and where their reasons
    are. Returns the number of failed inputs, or None where the runner reported no counts."""
    totals = run_totals(result, flink_rest)
    if totals is None:
        classified, failed = COUNTS.snapshot()
        if classified + failed:
            # A cancelled stream's runner reports nothing; LOOPBACK workers counted here.
            logger.info(
                "finished in %.1f s: %d images classified, %d failed, as this process's "
                "workers counted them (the runner reported no metrics)%s",
                seconds,
                classified,
                failed,
                f"; the reasons are in {failures_output}" if failed and failures_output else "",
            )
            return failed
        logger.info(
            "finished in %.1f s (the runner reported no metrics of the classification)", seconds
        )
        return None
    classified = totals.get(CLASSIFIED, 0)
    stages = failures_by_stage(totals)
    failed = sum(stages.values())
    by_stage = ", ".join(f"{n} {FAILED_AT[stage]}" for stage, n in stages.items() if n)
    where = f"; the reasons are in {failures_output}" if failures_output else ""
    if failed and not classified:
        logger.warning(
            "finished in %.1f s: every input failed (%s); no image was classified%s",
            seconds,
            by_stage,
            where,
        )
        return failed
    text = f"finished in {seconds:.1f} s: {classified} images classified, {failed} failed"
    if failed:
        text += f" ({by_stage})"
    batch_count = totals.get("batch_size.count", 0)
    if batch_count:
        text += (
            f"; {batch_count} batches of {totals.get('batch_size.sum', 0) / batch_count:.1f} "
            f"images on average, {totals.get('batch_inference_ms.sum', 0) / batch_count:.0f} ms "
            "of inference per batch on average"
        )
    logger.info("%s%s", text, where if failed else "")
    return failed


def run_totals(result: PipelineResult, flink_rest: str | None = None) -> dict[str, int] | None:
    """The counters of METRICS_NAMESPACE summed over the job's steps (distributions as NAME.count
    and NAME.sum), from the runner, else from the Flink cluster's accumulators; None where
    neither reports any."""
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception as e:  # noqa: BLE001 - some runners do not report metrics
        logger.info("the runner reported no metrics: %s", e)
        metrics = {"counters": [], "distributions": []}
    totals: dict[str, int] = {}
    for counter in metrics["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or 0)
    for distribution in metrics["distributions"]:
        name = distribution.key.metric.name
        if distribution.committed is not None:
            totals[f"{name}.count"] = totals.get(f"{name}.count", 0) + distribution.committed.count
            totals[f"{name}.sum"] = totals.get(f"{name}.sum", 0) + distribution.committed.sum
    job_id = getattr(result, "_job_id", None)
    if not totals and flink_rest and job_id:
        with contextlib.suppress(OSError, ValueError, KeyError):
            totals = flink_job_metrics(flink_rest, job_id.rsplit("_", 1)[0], METRICS_NAMESPACE)
    return totals or None


def failures_output(args: argparse.Namespace) -> str:
    """Where the run writes its failures, as the summary names them."""
    if args.output_topic:
        return f"the Kafka topic {args.failures_topic}"
    suffix = ".parquet" if args.output_format == "parquet" else ".jsonl"
    return f"{args.output}_{FAILURES}-*{suffix}"


def print_results(output: str, limit: int) -> None:
    """Prints up to ``limit`` results read back from the output files, then the files."""
    files = output_files(output)
    rows: list[tuple[str, str, str]] = []
    for path in files:
        for record in _records(path):
            if len(rows) >= limit:
                break
            rows.append(_row(record))
    width = max([len(r[0]) for r in rows] + [5])
    print(f"\n{'image':<{width}}  {'top-1':<28}  score")
    for image, label, score in rows:
        print(f"{image:<{width}}  {label:<28}  {score}")
    print("\noutput files:")
    for path in files:
        print(f"  {path}")


def _records(path: str) -> Iterator[dict[str, Any] | str]:
    """An output file's records: Parquet rows as dicts, JSON lines parsed, csv lines as text."""
    with FileSystems.open(path) as f:
        if path.endswith(".parquet"):
            yield from read_parquet(f).to_pylist()
            return
        for line in f.read().decode().splitlines():
            yield json.loads(line) if line.startswith("{") else line


def _row(record: dict[str, Any] | str) -> tuple[str, str, str]:
    if isinstance(record, str):  # the original pipeline's csv: path,index
        image, index = record.rsplit(",", 1)
        return image, f"class {index}", ""
    if "error" in record:
        reason = record["error"].removeprefix(record["image"] + ": ")
        return record["image"], f"FAILED: {reason}", ""
    if "embedding" in record:
        vector = record["embedding"]
        norm = sum(x * x for x in vector) ** 0.5
        return record["image"], f"a vector of {len(vector)}", f"|v| {norm:.3f}"
    if "top_k" in record:
        best = record["top_k"][0]
        label, index, score = best["label"], best["index"], best["score"]
    else:  # a Parquet row
        label, index = record["top_labels"][0], record["top_indices"][0]
        score = record["top_scores"][0]
    return record["image"], label or f"class {index}", f"{score:.3f}"


def main() -> None:
    verbose = "--verbose" in sys.argv
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logger.setLevel(logging.INFO)
    if not verbose:
        # The file sink's notes on its own mechanics (replacing the previous run's files, an
        # output with no shard to finalize) are not the user's concern.
        logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
        # "Connecting anonymously" on gs:// without credentials (an emulator, public buckets).
        logging.getLogger("apache_beam.internal.gcp.auth").setLevel(logging.ERROR)
    run()


if __name__ == "__main__":
    main()
