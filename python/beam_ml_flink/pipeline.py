"""The classification pipeline: image URIs in, JSON lines of predictions and failures out.

Every input URI comes out exactly once: as a prediction, or as a failure with its reason (a
missing path, a directory, an undecodable file, a failed batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple, cast

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.typehints.decorators import no_annotations

from beam_ml_flink._core import Classification
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.counts import FAILED_INFERENCE, FAILED_READ, count_failures
from beam_ml_flink.embeddings import Embedding, embedding_record, embedding_schema
from beam_ml_flink.stores import image_pattern, scheme
from beam_ml_flink.window_files import ParquetRows, WriteWindowFiles

# A file this large is refused before it is read: no image the decoder accepts is bigger.
MAX_FILE_BYTES = 1 << 30
FAILURES = "failures"
OUTPUT_FORMATS = ("json", "csv", "parquet")
_GLOB_CHARACTERS = frozenset("*?[")


class Prediction(NamedTuple):
    """A classified image."""

    image: Any  # its key: the URI, or the message's MessageId
    classification: Classification | Embedding
    model: str | None  # the path of the model that classified it


class ClassifiedImages(NamedTuple):
    """The two outputs of :class:`ClassifyImages`."""

    predictions: beam.PCollection  # a Prediction for each classified image
    failures: beam.PCollection  # (uri, reason) for each image that could not be classified


def _missing(error: Exception) -> bool:
    """Whether a filesystem's error says that the path is not there: FileNotFoundError locally,
    an object store's 404 (google-cloud-storage's NotFound, Beam's S3 client's code 404)."""
    if isinstance(error, FileNotFoundError):
        return True
    return getattr(error, "code", None) == 404 or type(error).__name__ == "NotFound"


class ReadImage(beam.DoFn):
    """Reads an image's bytes through Beam's FileSystems: (key, uri) in, (key, bytes) out;
    unreadable paths become (key, reason) failures.

    Beam's S3 filesystem makes a new client (a boto3 session and client, about 150 ms of a
    core) for every file it opens, which made images stored one object each several times
    slower than shards. An s3:// image is read here through one client per DoFn instance, made
    as Beam's filesystem makes it, with the same options."""

    def __init__(self, max_bytes: int = MAX_FILE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._s3: Any = None

    def _open(self, uri: str) -> Any:
        if not uri.startswith("s3://") or (
            CompressionTypes.detect_compression_type(uri) != CompressionTypes.UNCOMPRESSED
        ):
            return FileSystems.open(uri)
        if self._s3 is None:
            from apache_beam.io.aws.s3io import S3IO

            # The options Beam's S3 filesystem would give its own client for this path.
            self._s3 = S3IO(options=cast(Any, FileSystems.get_filesystem(uri))._options)
        return self._s3.open(uri)

    def process(self, element: tuple[Any, str]) -> Iterator[Any]:
        key, uri = element
        try:
            with self._open(uri) as f:
                data = f.read(self._max_bytes + 1)
        except IsADirectoryError:
            yield pvalue.TaggedOutput(
                FAILURES, (key, f"{uri}: is a directory, not an image file; list the files inside")
            )
            return
        except Exception as e:  # noqa: BLE001 - any filesystem error is this image's failure
            reason = "no such file; check the path" if _missing(e) else f"could not be read: {e}"
            yield pvalue.TaggedOutput(FAILURES, (key, f"{uri}: {reason}"))
            return
        if len(data) > self._max_bytes:
            yield pvalue.TaggedOutput(
                FAILURES,
                (key, f"{uri}: larger than {self._max_bytes} bytes; refused before decoding"),
            )
            return
        yield key, data


def _split_result(item: tuple[Any, PredictionResult]) -> Iterator[Any]:
    key, result = item
    classification = cast(Classification | Embedding, result.inference)
    if classification.ok:
        yield Prediction(key, classification, result.model_id)
    else:
        yield pvalue.TaggedOutput(FAILURES, (key, f"{key}: {classification.error}"))


def _failed_batch(bad: tuple[list[tuple[Any, bytes]], tuple[type, str, Any]]) -> Iterator[Any]:
    batch, (_, error, _) = bad
    count_failures(FAILED_INFERENCE, len(batch))
    for key, _data in batch:
        yield key, f"{key}: the batch holding this image failed: {error}"


class ClassifyImageBytes(beam.PTransform):
    """(key, encoded image) pairs in; :class:`ClassifiedImages` out: a Prediction naming the key
    for each classified image, (key, reason) for each that could not be classified. The key is
    any value whose ``str`` names the image in a failure's reason (a URI, an id)."""

    def __init__(self, handler: ImageClassifierHandler) -> None:
        super().__init__()
        self._handler = handler

    @no_annotations  # a NamedTuple of PCollections, which Beam would warn about as a type hint
    def expand(self, images: beam.PCollection) -> ClassifiedImages:
        results, dead = (
            images
            | "RunInference"
            >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        split = results | "SplitFailures" >> beam.FlatMap(_split_result).with_outputs(
            FAILURES, main="predictions"
        )
        failed_batches = dead.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch)
        failures = (split[FAILURES], failed_batches) | "ClassifyFailures" >> beam.Flatten()
        return ClassifiedImages(split.predictions, failures)


class ReadImages(beam.PTransform):
    """(key, uri) pairs in; out ``images``, (key, bytes), read through Beam's FileSystems (local
    paths, gs:// where installed), and ``failures``, (key, reason) for what could not be read."""

    def __init__(self, max_bytes: int = MAX_FILE_BYTES) -> None:
        super().__init__()
        self._max_bytes = max_bytes

    @no_annotations  # a NamedTuple of PCollections, which Beam would warn about as a type hint
    def expand(self, uris: beam.PCollection) -> pvalue.DoOutputsTuple:
        return uris | "ReadImage" >> beam.ParDo(ReadImage(self._max_bytes)).with_outputs(
            FAILURES, main="images"
        )


def merge_failures(classified: ClassifiedImages, *more: beam.PCollection) -> ClassifiedImages:
    """``classified`` with the failures of earlier steps (reading, parsing) added to its own;
    those are counted here as inputs that could not be read."""
    counted = [
        failures | f"CountReadFailures{i}" >> beam.Map(_counted, FAILED_READ)
        for i, failures in enumerate(more)
    ]
    failures = (*counted, classified.failures) | "AllFailures" >> beam.Flatten()
    return ClassifiedImages(classified.predictions, failures)


def _counted(failure: tuple[Any, str], stage: str) -> tuple[Any, str]:
    count_failures(stage)
    return failure


class ClassifyImages(beam.PTransform):
    """Image URIs in; :class:`ClassifiedImages` (predictions and failures) out.

    The images are read through Beam's FileSystems (local paths, gs:// where installed) and
    classified by ``RunInference(KeyedModelHandler(handler))``.
    """

    def __init__(self, handler: ImageClassifierHandler, max_bytes: int = MAX_FILE_BYTES) -> None:
        super().__init__()
        self._handler = handler
        self._max_bytes = max_bytes

    @no_annotations  # a NamedTuple of PCollections, which Beam would warn about as a type hint
    def expand(self, uris: beam.PCollection) -> ClassifiedImages:
        read = (
            uris
            | "KeyByUri" >> beam.Map(lambda uri: (uri, uri))
            | "ReadImages" >> ReadImages(self._max_bytes)
        )
        classified = read.images | "Classify" >> ClassifyImageBytes(self._handler)
        return merge_failures(classified, read[FAILURES])


def image_uris(
    pipeline: beam.Pipeline, input: str, images_dir: str | None = None
) -> beam.PCollection:
    """The image URIs to classify: a glob, a folder (a remote one ends with '/'), or a text file
    with one path or URI per line."""
    if os.path.isdir(input):
        input = os.path.join(input, "*")
    input = image_pattern(input)
    if _GLOB_CHARACTERS & set(input):
        return (
            pipeline
            | "MatchImages" >> fileio.MatchFiles(input)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
        )
    return (
        pipeline
        | "ReadImageList" >> beam.io.ReadFromText(input)
        | "ImagePaths" >> beam.FlatMap(_list_entry, images_dir)
    )


def _list_entry(line: str, images_dir: str | None) -> Iterator[str]:
    name = line.strip()
    if not name or name.startswith("#"):
        return
    if images_dir and not _is_absolute(name):
        name = FileSystems.join(images_dir, name)
    yield name


def _is_absolute(name: str) -> bool:
    return os.path.isabs(name) or FileSystems.get_scheme(name) not in (None, "file")


def _metadata(image: Any) -> dict[str, Any] | None:
    """What a shard's sample carries along (its .json, .txt, .cls members), or None."""
    return getattr(image, "metadata", None)


def prediction_json(prediction: Prediction) -> str:
    """One output line of a classified image (or of an embedded one: its vector)."""
    if isinstance(prediction.classification, Embedding):
        line = embedding_record(prediction.image, prediction.classification, prediction.model)
        if metadata := _metadata(prediction.image):
            line["metadata"] = metadata
        return json.dumps(line)
    record: dict[str, Any] = {
        "image": str(prediction.image),
        "top_k": [
            {"index": index, "label": label, "score": round(score, 6)}
            for index, label, score in prediction.classification.top_k
        ],
        "model": prediction.model,
    }
    metadata = _metadata(prediction.image)
    if metadata:
        record["metadata"] = metadata
    return json.dumps(record)


def prediction_record(prediction: Prediction) -> dict[str, Any]:
    """One row of the Parquet predictions (:func:`prediction_schema`, or
    :func:`~beam_ml_flink.embeddings.embedding_schema` for an embedded image)."""
    metadata = _metadata(prediction.image)
    if isinstance(prediction.classification, Embedding):
        record = embedding_record(prediction.image, prediction.classification, prediction.model)
        return {**record, "metadata": json.dumps(metadata) if metadata else None}
    top_k = prediction.classification.top_k
    return {
        "image": str(prediction.image),
        "top_indices": [index for index, _, _ in top_k],
        "top_labels": [label for _, label, _ in top_k],
        "top_scores": [score for _, _, score in top_k],
        "model": prediction.model,
        "metadata": json.dumps(metadata) if metadata else None,
    }


def failure_record(item: tuple[Any, str]) -> dict[str, str]:
    """One row of the Parquet failures (:data:`FAILURE_SCHEMA`)."""
    image, reason = item
    return {"image": str(image), "error": reason}


def prediction_csv(prediction: Prediction) -> str:
    """The original pipeline's ``path,index`` line (top-1 class index)."""
    classification = cast(Classification, prediction.classification)
    return f"{str(prediction.image)},{classification.top_k[0][0]}"


def failure_json(item: tuple[str, str]) -> str:
    """One output line of an image that could not be classified."""
    uri, reason = item
    return json.dumps({"image": str(uri), "error": reason})


def prediction_schema() -> Any:
    """The typed columns of Parquet predictions."""
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),
            ("top_indices", pa.list_(pa.int64())),
            ("top_labels", pa.list_(pa.string())),
            ("top_scores", pa.list_(pa.float32())),
            ("model", pa.string()),
            ("metadata", pa.string()),  # JSON of a shard sample's .json/.txt/.cls, else null
        ]
    )


def failure_schema() -> Any:
    """The columns of Parquet failures."""
    import pyarrow as pa

    return pa.schema([("image", pa.string()), ("error", pa.string())])


def write_results(
    classified: ClassifiedImages,
    output: str,
    output_format: str = "json",
    output_kind: str = "classes",
) -> None:
    """Writes predictions (or, with ``output_kind`` 'embeddings', vectors) to files starting
    with ``output`` and failures to ``output_failures``; a streaming job writes a set of files
    per window, named by its start and end."""
    failures_prefix = f"{output}_{FAILURES}"
    if not classified.predictions.is_bounded:
        _write_windows(classified, output, failures_prefix, output_format, output_kind)
        return
    if output_format == "parquet":
        schema = embedding_schema() if output_kind == "embeddings" else prediction_schema()
        _ = (
            classified.predictions
            | "PredictionRows" >> beam.Map(prediction_record)
            | "WritePredictions"
            >> beam.io.WriteToParquet(
                output, schema, file_name_suffix=".parquet", record_batch_size=256
            )
        )
        _ = (
            classified.failures
            | "FailureRows" >> beam.Map(failure_record)
            | "WriteFailures"
            >> beam.io.WriteToParquet(
                failures_prefix,
                failure_schema(),
                file_name_suffix=".parquet",
                record_batch_size=256,
            )
        )
        return
    # Beam's S3 uploader cannot write an empty object (it completes a multipart upload of no
    # part, which S3 refuses: apache_beam/io/aws/s3io.py, S3Uploader.finish): on s3:// an empty
    # text output (no failures, say) is left out instead of failing the run. Parquet files are
    # never empty.
    empty: dict[str, Any] = {"skip_if_empty": True} if scheme(output) == "s3" else {}
    if output_format == "csv":
        # Exactly ``output``, as the original pipeline.
        _ = (
            classified.predictions
            | "PredictionsCsv" >> beam.Map(prediction_csv)
            | "WritePredictions" >> beam.io.WriteToText(output, shard_name_template="", **empty)
        )
    else:
        _ = (
            classified.predictions
            | "PredictionsJson" >> beam.Map(prediction_json)
            | "WritePredictions" >> beam.io.WriteToText(output, file_name_suffix=".jsonl", **empty)
        )
    _ = (
        classified.failures
        | "FailuresJson" >> beam.Map(failure_json)
        | "WriteFailures"
        >> beam.io.WriteToText(failures_prefix, file_name_suffix=".jsonl", **empty)
    )


def _write_windows(
    classified: ClassifiedImages,
    output: str,
    failures_prefix: str,
    output_format: str,
    output_kind: str,
) -> None:
    """A stream's files: a set per window (see :mod:`beam_ml_flink.window_files`)."""
    rows: Callable[[Prediction], Any]
    failure_rows: Callable[[tuple[Any, str]], Any]
    sink: Callable[[], fileio.FileSink]
    failure_sink: Callable[[], fileio.FileSink]
    if output_format == "parquet":
        schema = embedding_schema() if output_kind == "embeddings" else prediction_schema()
        rows, failure_rows, suffix = prediction_record, failure_record, ".parquet"
        sink = partial(ParquetRows, schema)
        failure_sink = partial(ParquetRows, failure_schema())
    else:
        rows = prediction_csv if output_format == "csv" else prediction_json
        failure_rows, suffix = failure_json, "" if output_format == "csv" else ".jsonl"
        sink = failure_sink = fileio.TextSink
    _ = (
        classified.predictions
        | "PredictionRows" >> beam.Map(rows)
        | "WritePredictions" >> WriteWindowFiles(output, suffix, sink)
    )
    _ = (
        classified.failures
        | "FailureRows" >> beam.Map(failure_rows)
        | "WriteFailures" >> WriteWindowFiles(failures_prefix, suffix or ".jsonl", failure_sink)
    )


def output_files(output: str) -> list[str]:
    """The files a run wrote under the ``output`` prefix, predictions first."""
    paths = sorted(m.path for m in FileSystems.match([f"{output}*"])[0].metadata_list)
    return sorted(paths, key=lambda p: f"{output}_{FAILURES}" in p)
